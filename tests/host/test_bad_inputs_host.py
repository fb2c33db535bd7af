"""The bad-input matrix on a live headless ComfyUI, through ``POST /prompt`` only: every bad input of the matrix ends its prompt
with an error that names the problem and the fix (HTTP 400 from validation, or the prompt's execution_error), a
malicious pickle creates nothing, no file is left in the output or temp folder, the server stays up, and the very
next valid prompt succeeds. Legitimate odd inputs (any size, a full mask, grey, RGBA, batches, a 1x1 exemplar) give
a result of the input's size that differs from the source only inside the (feathered) region.

Host-free counterparts: ``tests/pbe_core/test_bad_inputs.py``; the model cases are built by
``tests/support/bad_models.py``.
"""

import os
import random
import re
from pathlib import Path

import bad_models
import mutations
import numpy as np
import pbe_fixtures
import pytest
import torch
import unprivileged
from comfy_host import PromptRejected, execution_error, temporary_server
from host_prompts import run_ok, uid
from host_util import SIZE
from images import make_photo, png_bytes
from safetensors.torch import load, save_file

pytestmark = pytest.mark.host

MODEL = "original-fp16.safetensors"
HERE = Path(__file__).resolve().parent


# --- prompts -------------------------------------------------------------------------------------------------------
def sampler(image, mask, exemplar, **widgets):
    """PBE_Sampler on the tiny model: 1 step, whole image (working_size 0) unless told otherwise."""
    inputs = {
        "model": ["load", 0], "encoder": ["load", 1], "vae": ["load", 2], "image": image, "mask": mask,
        "exemplar": exemplar, "seed": 1, "steps": 1, "cfg": 5.0, "sampler_name": "reference", "scheduler": "normal",
        "denoise": 1.0, "mask_grow": 0, "mask_feather": 4, "working_size": 0,
    }  # fmt: skip
    inputs.update(widgets)
    return {"class_type": "PBE_Sampler", "inputs": inputs}


def load_image(name):
    return {"class_type": "LoadImage", "inputs": {"image": name}}


def graph(source="source.png", exemplar="exemplar.png", model=MODEL, **nodes):
    p = {
        "load": {"class_type": "PBE_LoadModel", "inputs": {"model_name": model}},
        "src": load_image(source),
        "ex": load_image(exemplar),
    }
    p.update(nodes)
    return p


def edit(source="source.png", exemplar="exemplar.png", image=("src", 0), mask=("src", 1), ex=("ex", 0), diff=True,
         **widgets):  # fmt: skip
    """One edit; with ``diff``, PBETest_ImageDiff saves where the result differs from the source."""
    p = graph(source, exemplar, pbe=sampler(list(image), list(mask), list(ex), **widgets))
    if diff:
        p["diff"] = {"class_type": "PBETest_ImageDiff", "inputs": {"a": ["pbe", 0], "b": list(image), "filename": f"{uid()}.st"}}
    return p


def valid_prompt():
    return edit(seed=random.randint(0, 2**31))  # noqa: S311 - a seed, not a secret


def diff_of(server, entry, node="diff"):
    """(shape of the result, shape of the source, box where they differ or None, result finite)."""
    t = load(server.view(entry["outputs"][node]["tensors"][0]["filename"]))
    box = tuple(int(v) for v in t["box"])
    return tuple(t["shape_a"].tolist()), tuple(t["shape_b"].tolist()), None if box[0] < 0 else box, bool(t["finite"])


def _files(server):
    """Every file in the server's output and temp folders, with its size."""
    out = {}
    for root in (server.output_dir, server.temp_dir):
        for dirpath, _, names in os.walk(root):
            for n in names:
                p = Path(dirpath) / n
                out[str(p)] = p.stat().st_size
    return out


def _validation_text(body):
    texts = []

    def walk(x):
        if isinstance(x, dict):
            for k, v in x.items():
                if k in ("message", "details") and isinstance(v, str):
                    texts.append(v)
                else:
                    walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(body)
    return "\n".join(texts)


def expect_refusal(server, prompt, problem, fix, *, at_validation=None):
    """Queue a bad prompt; return the error text after checking everything a refusal must do."""
    before = _files(server)
    try:
        pid = server.queue(prompt)
    except PromptRejected as e:
        assert at_validation is not False, f"refused at validation, expected at execution: {e.body}"
        text = _validation_text(e.body)
    else:
        assert at_validation is not True, "expected a validation error (HTTP 400)"
        entry = server.wait(pid, timeout=600)
        text = execution_error(entry)
        assert text is not None, "the bad prompt succeeded"
    assert re.search(problem, text), text
    assert re.search(fix, text), text
    assert _files(server) == before, "a refused prompt left files in the output or temp folder"
    assert server.alive()
    run_ok(server, valid_prompt())  # the very next valid prompt succeeds
    return text


def expect_edit(server, prompt, hw, region_box, reach):
    """The prompt succeeds; the result has the source's size and differs only within ``reach`` px of the box."""
    before = set(_files(server))
    entry = run_ok(server, prompt)
    shape, src_shape, box, finite = diff_of(server, entry)
    assert shape[:3] == src_shape[:3] and tuple(shape[1:3]) == hw and shape[3] == 3 and finite
    assert box is not None, "nothing was edited"
    y0, x0, y1, x1 = region_box
    assert box[0] >= y0 - reach and box[1] >= x0 - reach and box[2] <= y1 + reach and box[3] <= x1 + reach, box
    assert all(f.endswith(".st") for f in set(_files(server)) - before)
    return entry


# --- inputs ------------------------------------------------------------------------------------------------------------
def _rgba(h, w, box, seed=3):
    """Photo-like RGBA; alpha 0 (LoadImage: mask 1) inside box = (y0, x0, y1, x1)."""
    alpha = np.full((h, w), 255, np.uint8)
    y0, x0, y1, x1 = box
    alpha[y0:y1, x0:x1] = 0
    return np.dstack([make_photo(h, w, seed), alpha])


UPLOADS = {
    "bi_other_size.png": lambda: _rgba(80, 96, (20, 20, 60, 70)),
    "bi_no_region.png": lambda: _rgba(SIZE, SIZE, (0, 0, 0, 0)),
    "bi_all_region.png": lambda: _rgba(SIZE, SIZE, (0, 0, SIZE, SIZE)),
    "bi_odd.png": lambda: _rgba(53, 77, (10, 20, 41, 61)),
    "bi_1x1.png": lambda: _rgba(1, 1, (0, 0, 1, 1)),
    "bi_small.png": lambda: _rgba(100, 100, (40, 20, 60, 60)),
    "bi_grey.png": lambda: np.dstack([make_photo(96, 96, 5)[..., 0], _rgba(96, 96, (30, 30, 70, 60))[..., 3]]),
    "bi_ex_1x1.png": lambda: make_photo(1, 1, 7),
}


@pytest.fixture(scope="module")
def uploads(comfy_server, images):
    for name, make in UPLOADS.items():
        comfy_server.upload(name, png_bytes(make()))
    g = torch.Generator().manual_seed(0)
    img, mask = torch.rand(1, 64, 64, 3, generator=g), torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:40] = 1
    nan, inf = img.clone(), img.clone()
    nan[0, 5, 7, 1] = float("nan")
    inf[0, 40, 3, 0] = float("inf")
    tensors = {
        "bi_nan.st": {"image": nan, "mask": mask},
        "bi_inf.st": {"image": inf, "mask": mask},
        "bi_255.st": {"image": (img * 255).round(), "mask": mask},
        "bi_grey1.st": {"image": img[..., :1].contiguous(), "mask": mask},
        "bi_ok.st": {"image": img, "mask": mask},
    }
    for name, t in tensors.items():
        save_file(t, str(comfy_server.input_dir / name))


def _tensor(name):
    return {"class_type": "PBETest_LoadTensor", "inputs": {"filename": name}}


# --- the image matrix -----------------------------------------------------------------------------------------------
def test_mask_and_source_of_different_sizes(comfy_server, uploads):
    p = edit(mask=("other", 1))
    p["other"] = load_image("bi_other_size.png")
    expect_refusal(comfy_server, p, r"Mask is 96x80 but the image is 128x128", r"resize the mask or connect the image's own mask")


def test_empty_mask_is_refused(comfy_server, uploads):
    expect_refusal(comfy_server, edit("bi_no_region.png"), r"Mask is empty: no pixel is >= 0\.5",
                   r"Paint the region to replace in the mask editor", at_validation=False)  # fmt: skip


def test_loadimage_placeholder_mask_is_refused(comfy_server, uploads):
    expect_refusal(comfy_server, edit("source_rgb.png"), r"No mask: the image has no alpha channel.*64x64 placeholder",
                   r"Open in MaskEditor\) or connect a MASK")  # fmt: skip


@pytest.mark.parametrize("working_size", [0, 64])
def test_mask_covering_everything(comfy_server, uploads, working_size):
    expect_edit(comfy_server, edit("bi_all_region.png", working_size=working_size), (SIZE, SIZE), (0, 0, SIZE, SIZE), 0)


@pytest.mark.parametrize("working_size", [0, 64])
def test_odd_sides_not_multiples_of_8(comfy_server, uploads, working_size):
    expect_edit(comfy_server, edit("bi_odd.png", working_size=working_size), (53, 77), (10, 20, 41, 61), 4)


@pytest.mark.parametrize("working_size", [0, 64])
def test_one_pixel_source(comfy_server, uploads, working_size):
    expect_edit(comfy_server, edit("bi_1x1.png", working_size=working_size), (1, 1), (0, 0, 1, 1), 0)


def test_8000px_source_goes_through_a_window(comfy_server, uploads):
    """8000x8000 (a 100x100 photo scaled 80x, nearest): one working-size window, the rest bit-identical."""
    n = 8000
    p = graph("bi_small.png")
    p["big"] = {"class_type": "ImageScale", "inputs": {"image": ["src", 0], "upscale_method": "nearest-exact", "width": n, "height": n, "crop": "disabled"}}
    p["mimg"] = {"class_type": "MaskToImage", "inputs": {"mask": ["src", 1]}}
    p["mbig"] = {"class_type": "ImageScale", "inputs": {"image": ["mimg", 0], "upscale_method": "nearest-exact", "width": n, "height": n, "crop": "disabled"}}
    p["mask"] = {"class_type": "ImageToMask", "inputs": {"image": ["mbig", 0], "channel": "red"}}
    p["pbe"] = sampler(["big", 0], ["mask", 0], ["ex", 0], working_size=64, mask_feather=8)
    p["diff"] = {"class_type": "PBETest_ImageDiff", "inputs": {"a": ["pbe", 0], "b": ["big", 0], "filename": f"{uid()}.st"}}  # fmt: skip
    expect_edit(comfy_server, p, (n, n), (40 * 80, 20 * 80, 60 * 80, 60 * 80), 8)
    assert "editing the" in comfy_server.log()


def test_grey_sources(comfy_server, uploads):
    # a grey PNG with alpha (LoadImage makes it RGB) ...
    expect_edit(comfy_server, edit("bi_grey.png"), (96, 96), (30, 30, 70, 60), 4)
    # ... and a genuinely one-channel IMAGE tensor, as a custom node may emit
    p = edit(image=("t", 0), mask=("t", 1))
    p["t"] = _tensor("bi_grey1.st")
    expect_edit(comfy_server, p, (64, 64), (16, 16, 48, 40), 4)


def test_rgba_source_and_exemplar(comfy_server, uploads):
    """4-channel IMAGEs (JoinImageWithAlpha): the alpha channel is dropped."""
    p = edit(image=("rgba", 0), ex=("exrgba", 0))
    p["rgba"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["src", 0], "alpha": ["src", 1]}}
    p["exrgba"] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["ex", 0], "alpha": ["src", 1]}}
    expect_edit(comfy_server, p, (SIZE, SIZE), (32, 40, 96, 88), 4)


def _repeat(node, n):
    return {"class_type": "RepeatImageBatch", "inputs": {"image": [node, 0], "amount": n}}


def _mask_batch(p, n):
    p["m_img"] = {"class_type": "MaskToImage", "inputs": {"mask": ["src", 1]}}
    p["m_rep"] = _repeat("m_img", n)
    p["m_batch"] = {"class_type": "ImageToMask", "inputs": {"image": ["m_rep", 0], "channel": "red"}}
    return ["m_batch", 0]


@pytest.mark.parametrize("source, mask, exemplar", [(2, 1, 1), (1, 3, 1), (1, 1, 3), (2, 2, 1), (3, 1, 3)])
def test_batches_broadcast_one_to_n(comfy_server, uploads, source, mask, exemplar):
    p = edit(diff=False)
    p["src_b"], p["ex_b"] = _repeat("src", source), _repeat("ex", exemplar)
    p["pbe"]["inputs"].update(image=["src_b", 0], exemplar=["ex_b", 0], mask=_mask_batch(p, mask))
    p["save"] = {"class_type": "PBETest_SaveTensor", "inputs": {"value": ["pbe", 0], "filename": f"{uid()}.st"}}
    entry = run_ok(comfy_server, p)
    out = load(comfy_server.view(entry["outputs"]["save"]["tensors"][0]["filename"]))["value"]
    assert out.shape == (max(source, mask, exemplar), SIZE, SIZE, 3)


@pytest.mark.parametrize("source, mask, exemplar", [(2, 3, 1), (2, 2, 3)])
def test_batches_that_disagree(comfy_server, uploads, source, mask, exemplar):
    p = edit(diff=False)
    p["src_b"], p["ex_b"] = _repeat("src", source), _repeat("ex", exemplar)
    p["pbe"]["inputs"].update(image=["src_b", 0], exemplar=["ex_b", 0], mask=_mask_batch(p, mask))
    p["save"] = {"class_type": "SaveImage", "inputs": {"images": ["pbe", 0], "filename_prefix": "bad_batch"}}
    expect_refusal(comfy_server, p, rf"Batch sizes do not match \(source: {source}, mask: {mask}, exemplar: {exemplar}\)",
                   r"Each input must have 1 item \(used for every result\) or the same number")  # fmt: skip


def test_batches_that_disagree_in_the_modular_graph(comfy_server, uploads):
    p = graph()
    p["ex_b"] = _repeat("ex", 3)
    p["src_b"] = _repeat("src", 2)
    p["enc"] = {"class_type": "PBE_ExemplarEncode", "inputs": {"encoder": ["load", 1], "exemplar": ["ex_b", 0], "preprocess": "squash"}}
    p["cond"] = {"class_type": "PBE_InpaintConditioning", "inputs": {"positive": ["enc", 0], "negative": ["enc", 1], "vae": ["load", 2], "image": ["src_b", 0], "mask": ["src", 1]}}  # fmt: skip
    p["dec"] = {"class_type": "VAEDecode", "inputs": {"samples": ["cond", 2], "vae": ["load", 2]}}
    p["save"] = {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": "bad_modular"}}
    expect_refusal(comfy_server, p, r"Batch sizes do not match \(source: 2, mask: 1, exemplar: 3\)", r"split or repeat")


@pytest.mark.parametrize("preprocess", ["squash", "center_crop"])
def test_one_pixel_exemplar(comfy_server, uploads, preprocess):
    expect_edit(comfy_server, edit(exemplar="bi_ex_1x1.png", exemplar_preprocess=preprocess), (SIZE, SIZE), (32, 40, 96, 88), 4)


@pytest.mark.parametrize(
    "tensor, role, problem, fix",
    [
        ("bi_nan.st", "image", r"Source image contains NaN or infinite pixels", r"fix or replace the node that produced it"),
        ("bi_inf.st", "exemplar", r"Exemplar image contains NaN or infinite pixels", r"fix or replace the node"),
        ("bi_255.st", "image", r"Source image has values from 0 to 255, but a ComfyUI IMAGE holds 0\.\.1", r"divide 8-bit values by 255"),
    ],
)  # fmt: skip
def test_nan_inf_and_out_of_range_pixels(comfy_server, uploads, tensor, role, problem, fix):
    if role == "image":
        p = edit(image=("t", 0), mask=("t", 1))
    else:
        p = edit(ex=("t", 0))
    p["t"] = _tensor(tensor)
    expect_refusal(comfy_server, p, problem, fix, at_validation=False)


@pytest.mark.parametrize(
    "widget, value, problem, fix, at_validation",
    [
        # the host's own range and option checks stay on for every widget the node's validate_inputs does not take
        ("steps", 0, r"Value 0 smaller than min of 1", r"steps", True),
        ("mask_feather", -3, r"Value -3 smaller than min of 0", r"mask_feather", True),
        # combo options: ComfyUI 0.3.64 leaves those of V3 nodes unchecked (newer hosts refuse them at validation);
        # the node checks them when it runs
        ("window_shape", "round", r"window_shape", r"'round' not in|must be one of square, mask_aspect", None),
        ("denoise", 0.0, r"Value 0\.0 smaller than min of 0\.01", r"denoise", True),
        # what the host cannot check: the node's own validate_inputs (working_size) and its entry (NaN)
        ("working_size", 13, r"working_size=13 must be 0 \(edit the whole image\) or a multiple of 8", r"use 64", True),
        ("cfg", float("nan"), r"cfg=nan: settings must be finite numbers", r"set it to a number", False),
    ],
)  # fmt: skip
def test_sloppy_widget_values_are_refused(comfy_server, uploads, widget, value, problem, fix, at_validation):
    expect_refusal(comfy_server, edit(**{widget: value}), problem, fix, at_validation=at_validation)


def test_a_validation_error_is_reported_once(comfy_server, uploads):
    """The host repeats a validate_inputs answer once per input the function takes; PBE_Sampler's takes only the
    input it checks, so its error comes once, labelled with that input."""
    with pytest.raises(PromptRejected) as e:
        comfy_server.queue(edit(working_size=13))
    errors = [err for node in e.value.body["node_errors"].values() for err in node["errors"]]
    assert len(errors) == 1, errors
    assert errors[0]["extra_info"]["input_name"] == "working_size"


def test_exemplar_encode_leaves_its_widget_ranges_to_the_host(comfy_server, uploads):
    p = graph()
    p["enc"] = {"class_type": "PBE_ExemplarEncode", "inputs": {"encoder": ["load", 1], "exemplar": ["ex", 0], "preprocess": "squash", "crop_padding": -5}}  # fmt: skip
    p["cond"] = {"class_type": "PBE_InpaintConditioning", "inputs": {"positive": ["enc", 0], "negative": ["enc", 1], "vae": ["load", 2], "image": ["src", 0], "mask": ["src", 1]}}  # fmt: skip
    p["dec"] = {"class_type": "VAEDecode", "inputs": {"samples": ["cond", 2], "vae": ["load", 2]}}
    p["save"] = {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": "bad_widget"}}
    expect_refusal(comfy_server, p, r"Value -5 smaller than min of 0", r"crop_padding", at_validation=True)


# --- the model matrix ----------------------------------------------------------------------------------------------
MODEL_CASES = [c for c in bad_models.MATRIX if c.name != "unreadable_folder"]


@pytest.mark.parametrize("case", MODEL_CASES, ids=lambda c: c.name)
def test_bad_model_files(comfy_server, uploads, fixture_paths, tmp_path, case):
    folder = comfy_server.models_dir / "paint_by_example"
    marker = tmp_path / "pwned"
    path = case.build(folder, fixture_paths, marker)
    try:
        assert path.name in comfy_server.object_info()["PBE_LoadModel"]["input"]["required"]["model_name"][1]["options"]
        p = edit()
        p["load"]["inputs"]["model_name"] = path.name
        p["save"] = {"class_type": "SaveImage", "inputs": {"images": ["pbe", 0], "filename_prefix": "bad_model"}}
        text = expect_refusal(comfy_server, p, case.problem, case.fix, at_validation=case.at_validation)
        assert path.name in text
    finally:
        bad_models.remove(path)
    assert not marker.exists()


def test_bad_model_in_the_modular_graph(comfy_server, uploads, fixture_paths, tmp_path):
    path = bad_models.BY_NAME["malicious_pickle"].build(comfy_server.models_dir / "paint_by_example", fixture_paths, tmp_path / "pwned")
    try:
        p = graph(model=path.name)
        p["enc"] = {"class_type": "PBE_ExemplarEncode", "inputs": {"encoder": ["load", 1], "exemplar": ["ex", 0], "preprocess": "squash"}}
        p["cond"] = {"class_type": "PBE_InpaintConditioning", "inputs": {"positive": ["enc", 0], "negative": ["enc", 1], "vae": ["load", 2], "image": ["src", 0], "mask": ["src", 1]}}  # fmt: skip
        p["sample"] = {"class_type": "KSampler", "inputs": {"model": ["load", 0], "positive": ["cond", 0], "negative": ["cond", 1], "latent_image": ["cond", 2], "seed": 1, "steps": 1, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}  # fmt: skip
        p["dec"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["load", 2]}}
        p["save"] = {"class_type": "SaveImage", "inputs": {"images": ["dec", 0], "filename_prefix": "bad_modular"}}
        expect_refusal(comfy_server, p, r"unsafe: its pickle names os\.system", r"Delete the file", at_validation=False)
    finally:
        bad_models.remove(path)
    assert not (tmp_path / "pwned").exists()


@pytest.fixture(scope="module")
def restricted_server(images, fixture_paths):
    """A second ComfyUI that cannot override file permissions (as root: without CAP_DAC_OVERRIDE, see
    unprivileged.py), so that a folder the user may not read really is unreadable to it."""
    reason = unprivileged.unavailable_reason()
    if reason:
        pytest.skip(reason)
    with temporary_server(
        "pbe-host-restricted-", models={MODEL: fixture_paths[MODEL]},
        extra_packs={"pbe_test_probe": HERE.parent / "support" / "host_probe"}, popen_kwargs=unprivileged.popen_kwargs(),
    ) as server:  # fmt: skip
        alpha = np.where(images["region"] > 0, 0, 255).astype(np.uint8)
        server.upload("source.png", png_bytes(np.dstack([images["source"], alpha])))
        server.upload("exemplar.png", png_bytes(images["exemplar"]))
        yield server


def test_model_folder_and_file_without_read_permission(restricted_server, fixture_paths, tmp_path):
    folder = restricted_server.models_dir / "paint_by_example"
    case = bad_models.BY_NAME["unreadable_folder"]
    path = case.build(folder, fixture_paths, tmp_path / "unused")
    closed = folder / "closed.safetensors"
    closed.write_bytes(fixture_paths[MODEL].read_bytes())
    closed.chmod(0)
    try:
        for name, problem, fix in (
            (path.name, case.problem, case.fix),
            (closed.name, r"Cannot read .*closed\.safetensors: permission denied", r"Give the user running ComfyUI read access"),
        ):  # fmt: skip
            p = edit()
            p["load"]["inputs"]["model_name"] = name
            expect_refusal(restricted_server, p, problem, fix, at_validation=True)
    finally:
        bad_models.remove(path)
        closed.unlink()


# --- fuzzed model files through the server ---------------------------------------------------------------------------
def _mutated_safetensors(src: bytes, rng: random.Random) -> bytes:
    """The tiny model with 1-3 header entries reshaped, retyped, renamed, renumbered or swapped; the header stays
    valid, so the damage reaches the pack's checks and the host's model building (see mutations.py)."""
    header, body = mutations.split_header(src)
    keys = sorted(k for k in header if k != "__metadata__")
    damage = [
        (rng.choice(mutations.HEADER_OPS), rng.choice(keys), rng.randrange(2**16), rng.choice(keys))
        for _ in range(rng.randint(1, 3))
    ]
    return mutations.join_header(mutations.apply_header_damage(header, damage), body)


def test_fuzzed_checkpoints_get_the_packs_errors(comfy_server, uploads, fixture_paths):
    """Bounded (16 files, seeded): each damaged copy of the model either loads (a swap of two same-shaped tensors, a
    retype of fp16 bits to bf16, cannot be told from the tensors) or is refused with the pack's CheckpointError: never
    a KeyError or RuntimeError from the host's model building, never a model with uninitialised weights. The server
    stays up and the next prompt works."""
    rng = random.Random(7)
    src = fixture_paths[MODEL].read_bytes()
    folder = comfy_server.models_dir / "paint_by_example"
    refused = 0
    for i in range(16):
        path = folder / f"fuzz-{i}.safetensors"
        path.write_bytes(_mutated_safetensors(src, rng))
        try:
            p = edit()
            p["load"]["inputs"]["model_name"] = path.name
            try:
                entry = comfy_server.run(p, timeout=600)
            except PromptRejected as e:  # refused by the cheap check: the pack's message
                assert path.name in _validation_text(e.body)
                refused += 1
                continue
            text = execution_error(entry)
            if text is not None:
                assert "CheckpointError: " in text and path.name in text, text
                assert re.search(r"download it again|not Paint by Example|own loaders", text), text
                refused += 1
        finally:
            path.unlink()
    assert refused >= 8  # most of this damage is detectable; a test that refuses nothing would test nothing
    assert comfy_server.alive()
    run_ok(comfy_server, valid_prompt())


def test_fixture_model_still_loads(comfy_server, uploads):
    """Sanity for the cases above: the graphs they break work with the real (tiny) model."""
    run_ok(comfy_server, valid_prompt())
    assert MODEL in pbe_fixtures.LAYOUTS
