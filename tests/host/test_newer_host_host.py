"""The newer-host mode (``tests/support/newer_host_emulation.py``): it is in effect where asked for, and under it the
pack loads and edits with the same pixels as on the plain host.

``tests/run.sh`` runs the loading, one-node edit, modular-graph and bf16 host tests a second time with
``PBE_NEWER_HOST=1``; the first two tests here check that this pass really runs under the emulation (in-process and
in the session's ComfyUI). The comparison starts its own newer-host ComfyUI beside the session's and runs the same
API workflows on both: with the layers built without weights until loaded, the results are the same PNG pixels;
with ``--fp16-intermediates`` (the VAE's outputs in fp16) they stay within what fp16 rounding of the latents moves.
"""

import io
import json
import uuid

import newer_host_emulation
import numpy as np
import pbe_fixtures
import pytest
import workflow_schema as ws
from comfy_host import execution_error, temporary_server
from host_util import BOX, SIZE
from images import make_photo, png_bytes

pytestmark = pytest.mark.host

MODEL = "original-fp32.safetensors"


def test_in_process_host_runs_in_the_mode_asked_for():
    from comfy_inprocess import import_host

    import_host()
    import comfy.ops
    import comfy.sd
    import torch

    linear = comfy.ops.manual_cast.Linear(3, 4)
    embedding = comfy.ops.disable_weight_init.Embedding(5, 2)
    if newer_host_emulation.enabled():
        assert linear.weight is None and linear.bias is None and embedding.weight.is_meta
        report = linear.load_state_dict({"weight": torch.ones(4, 3), "extra": torch.ones(1)}, strict=False)
        assert report.missing_keys == ["bias"] and report.unexpected_keys == ["extra"]
        assert getattr(comfy.sd.VAE, "_pbe_newer_host", False)
    else:
        assert linear.weight.shape == (4, 3) and not embedding.weight.is_meta
        assert not getattr(comfy.sd.VAE, "_pbe_newer_host", False)


def test_session_server_runs_in_the_mode_asked_for(comfy_server):
    marked = "newer-host mode: comfy.ops Linear and Embedding are built without weights" in comfy_server.log()
    assert marked == newer_host_emulation.enabled(), comfy_server.log()[-3000:]


def _prompts(server, tag):
    """The one-node edit and the modular graph (workflows/api), on uploaded images of the host tests' geometry."""
    y0, y1, x0, x1 = BOX
    alpha = np.full((SIZE, SIZE), 255, np.uint8)
    alpha[y0:y1, x0:x1] = 0
    server.upload(f"nh-src-{tag}.png", png_bytes(np.dstack([make_photo(SIZE, SIZE, 0), alpha])))
    server.upload(f"nh-ex-{tag}.png", png_bytes(make_photo(224, 192, 1)))
    out = {}
    for name in ("pbe_one_node_edit", "pbe_modular_graph"):
        prompt = json.loads(ws.api_workflows()[name].read_text())
        for node in prompt.values():
            inputs, title = node["inputs"], node["_meta"]["title"]
            if title == "Source":
                inputs["image"] = f"nh-src-{tag}.png"
            elif title == "Exemplar":
                inputs["image"] = f"nh-ex-{tag}.png"
            if node["class_type"] == "PBE_LoadModel":
                inputs["model_name"] = MODEL
            if "steps" in inputs:
                inputs["steps"] = 3
            if "working_size" in inputs:
                inputs["working_size"] = 0
            if node["class_type"] == "SaveImage":
                inputs["filename_prefix"] = f"nh_{name}_{tag}"
        out[name] = prompt
    return out


def _results(server):
    """``{workflow name: result pixels (H, W, 3) uint8}`` of both workflows on ``server``."""
    from PIL import Image

    results = {}
    for name, prompt in _prompts(server, uuid.uuid4().hex[:8]).items():
        entry = server.run(prompt)
        assert execution_error(entry) is None, (name, execution_error(entry), server.log()[-3000:])
        (img,) = [i for out in entry["outputs"].values() for i in out.get("images", []) if i["type"] == "output"]
        data = server.view(img["filename"], img["subfolder"], img["type"])
        results[name] = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return results


@pytest.fixture(scope="module")
def plain_results():
    paths = pbe_fixtures.write_all_layouts(pbe_fixtures.fixture_root())
    with temporary_server(prefix="pbe-plain-", models=paths, newer_host=False) as server:
        yield _results(server)


@pytest.mark.parametrize("intermediates", ["fp32", "fp16"])
def test_the_edit_under_the_newer_host_gives_the_plain_hosts_pixels(plain_results, intermediates):
    paths = pbe_fixtures.write_all_layouts(pbe_fixtures.fixture_root())
    env = {newer_host_emulation.INTERMEDIATES_ENV: intermediates}
    with temporary_server(prefix="pbe-newer-", models=paths, newer_host=True, env=env) as server:
        assert "newer-host mode: comfy.ops Linear and Embedding" in server.log()
        newer = _results(server)
    for name, plain in plain_results.items():
        diff = np.abs(newer[name].astype(int) - plain.astype(int))
        if intermediates == "fp32":
            assert diff.max() == 0, (name, int(diff.max()), int((diff > 0).sum()))
        else:
            # fp16 latents and decoded pixels: 11 significant bits, below 1/255 on 0..1 pixels; the sampler's
            # trajectory amplifies the latent's rounding a little
            assert diff.max() <= 3 and diff.mean() < 0.5, (name, int(diff.max()), float(diff.mean()))


def test_outputs_evicted_from_the_cache_are_rebuilt_with_the_same_results(plain_results):
    """Newer hosts cache node outputs by RAM pressure (0.38-era ``main.py``, ``CacheType.RAM_PRESSURE``): a cached
    MODEL, VAE or PBE_ENCODER can be dropped and PBE_LoadModel run again, which starts the encoder's own cache of
    exemplar encodings empty. ``--cache-none`` (0.3.64) is the extreme of that: every prompt evicts and reloads
    everything. The results stay the plain host's, prompt after prompt."""
    paths = pbe_fixtures.write_all_layouts(pbe_fixtures.fixture_root())
    with temporary_server(prefix="pbe-nocache-", models=paths, newer_host=False, extra_args=["--cache-none"]) as server:
        first = _results(server)
        second = _results(server)
        log = server.log()
    assert log.count("Paint by Example: loaded") == 4, "every prompt should have loaded the model again"
    assert log.count("Paint by Example: encoding") == 4, "every reloaded encoder should have encoded again"
    for name, plain in plain_results.items():
        assert np.array_equal(first[name], plain) and np.array_equal(second[name], plain), name
