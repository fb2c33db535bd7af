"""No edit silently does nothing, and the edit path's errors name the fix: on a live headless ComfyUI, through
``POST /prompt`` only, as found with real photos."""

import dataclasses
import time

import numpy as np
import pbe_fixtures
import pytest
import torch
from comfy_host import execution_error
from host_util import fetch_tensor
from images import make_photo, png_bytes
from safetensors.torch import save_file

pytestmark = pytest.mark.host

MODEL = "original.ckpt"


def _sampler(image, mask, exemplar, exemplar_mask=None, **widgets):
    inputs = {
        "model": ["load", 0], "encoder": ["load", 1], "vae": ["load", 2], "image": image, "mask": mask,
        "exemplar": exemplar, "seed": 3, "steps": 2, "cfg": 5.0, "sampler_name": "reference", "scheduler": "normal",
        "denoise": 1.0, "mask_grow": 0, "mask_feather": 4, "working_size": 0, **widgets,
    }  # fmt: skip
    if exemplar_mask is not None:
        inputs["exemplar_mask"] = exemplar_mask
    return {"class_type": "PBE_Sampler", "inputs": inputs}


def _prompt(source, exemplar="exemplar.png", model=MODEL, **sampler):
    return {
        "load": {"class_type": "PBE_LoadModel", "inputs": {"model_name": model}},
        "src": {"class_type": "LoadImage", "inputs": {"image": source}},
        "ex": {"class_type": "LoadImage", "inputs": {"image": exemplar}},
        "pbe": _sampler(["src", 0], ["src", 1], ["ex", 0], **sampler),
        "save": {"class_type": "PBETest_SaveTensor", "inputs": {"value": ["pbe", 0], "filename": f"{time.monotonic_ns()}.st"}},
    }  # fmt: skip


def _run(server, prompt):
    entry = server.run(prompt, timeout=900)
    return entry, execution_error(entry)


@pytest.mark.parametrize("h, w, width", [(872, 1000, 2), (1999, 3001, 1)])
def test_a_thin_stroke_on_a_large_photo_is_edited(comfy_server, images, h, w, width):
    """A stroke 1-2 px wide: scaled to the working size it would vanish (and the photo came back bit-identical,
    reported as a success); now the model is given the latent cells it touches and the stroke comes back edited."""
    photo = make_photo(h, w, 4)
    alpha = np.full((h, w), 255, np.uint8)
    alpha[h // 3 : h // 3 + 400, w // 2 : w // 2 + width] = 0  # the stroke: alpha 0 = mask 1
    name = f"stroke_{w}x{h}.png"
    comfy_server.upload(name, png_bytes(np.dstack([photo, alpha])))
    entry, error = _run(comfy_server, _prompt(name, working_size=512))
    assert error is None, error
    out = fetch_tensor(comfy_server, entry, "save")[0]
    src = torch.from_numpy(photo).float() / 255
    stroke = torch.from_numpy(alpha == 0)
    assert out.shape == src.shape
    assert (out[stroke] - src[stroke]).abs().mean() > 1e-3  # edited
    far = torch.ones(h, w, dtype=torch.bool)
    far[h // 3 - 8 : h // 3 + 408, w // 2 - 8 : w // 2 + width + 8] = False
    assert torch.equal(out[far], src[far])  # and only there


@pytest.fixture(scope="module")
def other_model(comfy_server, tmp_path_factory):
    """A second tiny checkpoint whose exemplar tokens are 32 wide (the first one's are 64)."""
    spec = dataclasses.replace(pbe_fixtures.TINY, unet={**pbe_fixtures.TINY.unet, "cross_attention_dim": 32},
                               clip={**pbe_fixtures.TINY.clip, "projection_dim": 32})  # fmt: skip
    path = tmp_path_factory.mktemp("other") / "other-32.safetensors"
    save_file(pbe_fixtures.original_state_dict(*pbe_fixtures.build_modules(spec, seed=5)), str(path))
    name = comfy_server.add_model("other-32.safetensors", path)
    yield name
    (comfy_server.models_dir / "paint_by_example" / name).unlink()  # the session server's list is the others' too


def test_model_and_encoder_of_different_checkpoints_name_both(comfy_server, images, other_model):
    """Before: a raw 'mat1 and mat2 shapes cannot be multiplied'. Now both loaders and the fix, in the one-node
    sampler and in the modular graph (where only the model sees the exemplar tokens)."""
    p = _prompt("source.png")
    p["other"] = {"class_type": "PBE_LoadModel", "inputs": {"model_name": other_model}}
    p["pbe"]["inputs"]["encoder"] = ["other", 1]
    _, error = _run(comfy_server, p)
    assert error and "The PBE_ENCODER (from" in error and "other-32.safetensors) makes 32-wide exemplar tokens" in error
    assert "takes 64-wide ones" in error and "from the same 'Load Paint-by-Example Model' node" in error
    modular = {
        "load": {"class_type": "PBE_LoadModel", "inputs": {"model_name": MODEL}},
        "other": {"class_type": "PBE_LoadModel", "inputs": {"model_name": other_model}},
        "src": {"class_type": "LoadImage", "inputs": {"image": "source.png"}},
        "ex": {"class_type": "LoadImage", "inputs": {"image": "exemplar.png"}},
        "enc": {"class_type": "PBE_ExemplarEncode", "inputs": {"encoder": ["other", 1], "exemplar": ["ex", 0], "preprocess": "squash"}},
        "cond": {"class_type": "PBE_InpaintConditioning", "inputs": {"positive": ["enc", 0], "negative": ["enc", 1], "vae": ["load", 2], "image": ["src", 0], "mask": ["src", 1]}},
        "sample": {"class_type": "KSampler", "inputs": {"model": ["load", 0], "positive": ["cond", 0], "negative": ["cond", 1], "latent_image": ["cond", 2], "seed": 1, "steps": 1, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "save": {"class_type": "PBETest_SaveTensor", "inputs": {"value": ["sample", 0], "filename": "crossed.st"}},
    }  # fmt: skip
    _, error = _run(comfy_server, modular)
    assert error and "The exemplar conditioning is 32 wide, but the Paint-by-Example model (from" in error
    assert "Connect MODEL, PBE_ENCODER and VAE from the same" in error


def test_a_cut_out_exemplars_own_mask_gives_the_object(comfy_server, images):
    """An RGBA cut-out (transparent background): LoadImage's MASK is 1 on the background. Wired to exemplar_mask it
    gives the same edit as the object's own mask painted in the mask editor, not the edit of the background."""
    ex = make_photo(200, 160, 9)
    obj = np.zeros((200, 160), np.uint8)
    obj[50:150, 40:120] = 255
    comfy_server.upload("cutout.png", png_bytes(np.dstack([ex, obj])))  # alpha = the object
    comfy_server.upload("cutout_object.png", png_bytes(obj))

    def edit(mask_link, marks):
        p = _prompt("source.png", exemplar="cutout.png", exemplar_mask=mask_link, exemplar_mask_marks=marks)
        p["objmask"] = {"class_type": "LoadImageMask", "inputs": {"image": "cutout_object.png", "channel": "red"}}
        entry, error = _run(comfy_server, p)
        assert error is None, error
        return fetch_tensor(comfy_server, entry, "save")[0]

    natural = edit(["ex", 1], "auto")  # the cut-out's own MASK, as wired by hand
    painted = edit(["objmask", 0], "object")  # the object, 1 = object
    background = edit(["ex", 1], "object")  # what the natural wiring encoded before: the background
    assert torch.equal(natural, painted)
    assert not torch.equal(natural, background)


def test_a_working_size_too_large_for_memory_is_refused_up_front(comfy_server, images):
    """working_size 4096 ended in the allocator's message after 39 s at 9.5 GB; now the need is predicted (the
    host's own VAE estimates) and refused before anything runs, with a size that fits."""
    start = time.monotonic()
    _, error = _run(comfy_server, _prompt("source.png", working_size=4096))
    assert error and "An edit at 4096x4096 needs about" in error and "GB are free. Lower working_size to" in error
    assert time.monotonic() - start < 30
    assert comfy_server.alive()
    entry, error = _run(comfy_server, _prompt("source.png"))  # the next prompt runs
    assert error is None, error
