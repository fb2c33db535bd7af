"""The photo tools on a real headless ComfyUI: crop/stitch around a host sampler, blend and strength, colour match."""

import pytest
import torch
from host_prompts import modular_prompt, one_node_prompt, run_ok
from host_util import BOX, SIZE, assert_edited_only_near, fetch_tensor, upload_photo_with_box

pytestmark = pytest.mark.host


def _region_values(comfy_server, prompt):
    out = fetch_tensor(comfy_server, run_ok(comfy_server, prompt), "save")[0]
    y0, y1, x0, x1 = BOX
    return out[y0:y1, x0:x1]


def _position(results):
    """Where each result lies between the first and the last: its projection on the line joining them (0 .. 1)."""
    a, b = results[0].flatten(), results[-1].flatten()
    d = b - a
    return [float((r.flatten() - a) @ d / (d @ d)) for r in results]


def _path(what, results, first, last, between):
    """How ``results`` go from the first to the last, printed: (distances from the first, from the last, position)."""
    from_first = [float((r - results[0]).abs().mean()) for r in results]
    from_last = [float((r - results[-1]).abs().mean()) for r in results]
    pos = _position(results)
    print(f"{what}: distance from {first}", [f"{d:.4f}" for d in from_first])  # noqa: T201
    print(f"{what}: distance from {last}", [f"{d:.4f}" for d in from_last])  # noqa: T201
    print(f"{what}: position between {between}", [f"{p:.3f}" for p in pos])  # noqa: T201
    return from_first, from_last, pos


def _blend_prompt(w, **kw):
    p = one_node_prompt("original.ckpt", steps=4, exemplar_link=("batch", 0), exemplar_weights=f"{1 - w}, {w}", **kw)
    p["ex2"] = {"class_type": "LoadImage", "inputs": {"image": "exemplar2.png"}}
    p["batch"] = {"class_type": "ImageBatch", "inputs": {"image1": ["ex", 0], "image2": ["ex2", 0]}}
    return p


def test_blend_moves_monotonically_between_the_two_exemplars(comfy_server, images):
    ws = [0.0, 0.25, 0.5, 0.75, 1.0]
    results = [_region_values(comfy_server, _blend_prompt(w)) for w in ws]
    from_a, from_b, pos = _path("blend", results, "exemplar A's result", "exemplar B's result", "A's and B's result")
    assert all(a < b for a, b in zip(pos, pos[1:], strict=False))
    assert all(a < b for a, b in zip(from_a, from_a[1:], strict=False))
    assert all(a > b for a, b in zip(from_b, from_b[1:], strict=False))


def test_strength_moves_monotonically_from_unconditional_to_exemplar(comfy_server, images):
    """Strength 0 (the learned unconditional vector) -> 1 (the exemplar): the result moves monotonically from one
    to the other. (Beyond 1 the random test model saturates; no claim is made there.)"""
    ss = [0.0, 0.25, 0.5, 0.75, 1.0]
    results = [_region_values(comfy_server, one_node_prompt("original.ckpt", steps=4, exemplar_strength=s)) for s in ss]
    _, from_1, pos = _path("strength", results, "the strength-0 result", "the strength-1 result", "the two results")
    assert all(a < b for a, b in zip(pos, pos[1:], strict=False))
    assert all(a > b for a, b in zip(from_1, from_1[1:], strict=False))


def test_crop_and_stitch_nodes_around_a_host_ksampler(comfy_server, images):
    box = (300, 380, 600, 700)
    photo = upload_photo_with_box(comfy_server, "wide.png", 700, 1100, box)
    p = modular_prompt("original.ckpt")
    p["src"]["inputs"]["image"] = "wide.png"
    p["crop"] = {"class_type": "PBE_CropForEdit", "inputs": {"image": ["src", 0], "mask": ["src", 1], "working_size": 128,
                                                           "context_margin": 0.25, "window_shape": "square", "feather": 4}}
    p["cond"]["inputs"].update({"image": ["crop", 0], "mask": ["crop", 1]})
    p["stitch"] = {"class_type": "PBE_StitchEdit", "inputs": {"stitch": ["crop", 2], "edited": ["decode", 0]}}
    p["save"]["inputs"]["value"] = ["stitch", 0]
    out = fetch_tensor(comfy_server, run_ok(comfy_server, p), "save")[0]
    assert_edited_only_near(out, photo, box, reach=5)


def test_mask_tools_and_color_match_run(comfy_server, images):
    p = one_node_prompt("original.ckpt", steps=3, color_match=True, feather=4)
    p["tools"] = {"class_type": "PBE_MaskTools", "inputs": {"mask": ["src", 1], "grow": 2, "feather": 0,
                                                         "fill_holes": True, "shape": "box"}}
    p["pbe"]["inputs"]["mask"] = ["tools", 0]
    out = fetch_tensor(comfy_server, run_ok(comfy_server, p), "save")[0]
    assert out.shape == (SIZE, SIZE, 3) and torch.isfinite(out).all()


def test_exemplar_batch_gives_each_exemplar_its_own_edit(comfy_server, images):
    """Exemplars of different sizes through Exemplar Batch into one run: one result each, and an exemplar's edit is
    the one it gives alone (the sampler squashing it itself) with the same noise: the first result of a batch, and a
    batch of one. (The k-th result of a batch gets the k-th noise of the seed, as in a KSampler batch.)"""
    from images import make_photo, png_bytes

    comfy_server.upload("exemplar_wide.png", png_bytes(make_photo(180, 300, 7)))

    def run(exemplar_link, *batched):
        p = one_node_prompt("original.ckpt", steps=3, exemplar_link=exemplar_link)
        p["ex_wide"] = {"class_type": "LoadImage", "inputs": {"image": "exemplar_wide.png"}}
        if batched:
            extra = {f"exemplar_{k}": [key, 0] for k, key in enumerate(batched[1:], start=2)}
            p["batch"] = {"class_type": "PBE_ExemplarBatch",
                          "inputs": {"exemplar": [batched[0], 0], "preprocess": "squash", **extra}}
        return fetch_tensor(comfy_server, run_ok(comfy_server, p), "save")

    together = run(("batch", 0), "ex", "ex_wide")
    assert together.shape[0] == 2
    ex_alone, wide_alone = run(("ex", 0))[0], run(("ex_wide", 0))[0]
    wide_batched = run(("batch", 0), "ex_wide")
    assert wide_batched.shape[0] == 1
    print("exemplar batch: first result vs alone", float((together[0] - ex_alone).abs().max()),  # noqa: T201
          "wide exemplar batched vs alone", float((wide_batched[0] - wide_alone).abs().max()),
          "the two exemplars alone", float((ex_alone - wide_alone).abs().max()))
    assert (together[0] - ex_alone).abs().max() <= 1e-4  # a batch of two rounds differently (measured 7e-6)
    assert torch.equal(wide_batched[0], wide_alone)
    assert (ex_alone - wide_alone).abs().max() > 0.01  # the comparison can fail: the exemplar changes the edit
