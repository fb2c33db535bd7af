"""The bad-input matrix, host-free half: each bad or sloppy input of the matrix gets a clear error that names the values and the
fix, or, where the input is legitimate, a correct result; nothing in a model file is executed.

The same cases run through a live ComfyUI in ``host/test_bad_inputs_host.py``. Decisions these tests pin down (see
README, "Conventions"): an empty mask and LoadImage's 64x64 placeholder are refused (not passed through); batches are
1 or N per input; sides that are not multiples of 8 are padded and cropped back; values outside 0..1 beyond
resampling overshoot are refused; ``center_crop`` refuses exemplars more than 64 times wider than high.
"""

import json
import re
import subprocess
import sys
import time

import bad_models
import pytest
import torch
import unprivileged
from hypothesis import given, settings
from hypothesis import strategies as st

from pbe_core.edit import conditioning as edit_conditioning
from pbe_core.exemplar import preprocess as pre
from pbe_core.photo import crop_stitch, inputs, mask_ops
from pbe_core.weights.checkpoint import CheckpointError, check_fits, load_checkpoint, precheck


def _image(h, w, b=1, c=3, seed=0):
    return torch.rand(b, h, w, c, generator=torch.Generator().manual_seed(seed))


def _box_mask(h, w, b=1):
    m = torch.zeros(b, h, w)
    m[:, h // 4 : max(h // 4 + 1, 3 * h // 4), w // 4 : max(w // 4 + 1, 3 * w // 4)] = 1
    return m


# --- images: masks -----------------------------------------------------------------------------------------------
def test_mask_of_another_size_names_both_sizes_and_the_fix():
    with pytest.raises(ValueError, match=r"Mask is 40x48 but the image is 72x64; resize the mask or connect"):
        inputs.check_mask(torch.ones(1, 48, 40), _image(64, 72))


def test_empty_mask_is_refused_with_the_fix():
    """Decision: refused, not "return the source unchanged": an edit with no region would only re-encode the photo,
    and a silent no-op hides a wiring mistake (the mask of another image, an inverted mask)."""
    with pytest.raises(ValueError, match=r"Mask is empty: no pixel is >= 0.5.*Paint the region to replace"):
        inputs.check_mask(torch.zeros(1, 64, 72), _image(64, 72))
    faint = torch.full((1, 64, 72), 0.49)  # below the references' 0.5 threshold everywhere
    with pytest.raises(ValueError, match="empty"):
        inputs.check_mask(faint, _image(64, 72))
    two = torch.stack([_box_mask(64, 72)[0], torch.zeros(64, 72)])
    with pytest.raises(ValueError, match=r"Mask \[1\] of the batch are empty"):
        inputs.check_mask(two, _image(64, 72, b=2))


def test_loadimage_placeholder_mask_is_refused_but_a_real_64px_mask_is_a_mask():
    with pytest.raises(ValueError, match=r"No mask: the image has no alpha channel.*64x64 placeholder.*MaskEditor"):
        inputs.check_mask(torch.zeros(1, 64, 64), _image(128, 96))
    # on a 64x64 image the same tensor is the image's own (empty) mask: the message says so, not "no alpha"
    with pytest.raises(ValueError, match="Mask is empty"):
        inputs.check_mask(torch.zeros(1, 64, 64), _image(64, 64))
    assert inputs.check_mask(_box_mask(64, 64), _image(64, 64)).shape == (1, 64, 64)


def test_mask_covering_everything_repaints_the_whole_image():
    h, w = 75, 100
    image, mask = _image(h, w), torch.ones(1, h, w)
    assert torch.equal(inputs.check_mask(mask, image), mask)
    keep = edit_conditioning.keep_mask(mask)
    assert not keep.any()
    assert torch.equal(edit_conditioning.masked_source(image, keep), torch.full((1, h, w, 3), 0.5))
    # grow and feather have nothing to do and return the mask as it is
    assert torch.equal(mask_ops.feather_mask(mask, 8), mask) and torch.equal(mask_ops.grow_mask(mask, 5), mask)
    assert torch.equal(mask_ops.grow_mask(mask, -5), mask)  # off-image counts as region: a full mask stays full
    windows = crop_stitch.plan_windows((h, w), mask_ops.connected_regions(mask), working_size=64)
    assert [wd.box for wd in windows] == [(0, 0, h, w)]
    edit = torch.rand(1, *windows[0].target, 3)
    out = crop_stitch.stitch(image, edit, windows[0], mask)
    # every pixel is the edit's: the edited window scaled back to the image (bicubic, as the stitch documents), exactly
    back = torch.nn.functional.interpolate(
        edit.permute(0, 3, 1, 2), size=(h, w), mode="bicubic", align_corners=False, antialias=True
    ).clamp(0, 1).permute(0, 2, 3, 1)
    assert torch.equal(out, back)


# --- images: sizes -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw", [(1, 1), (1, 7), (2, 3), (53, 77), (8, 8), (513, 511), (3, 1000)])
def test_any_size_pads_to_multiples_of_8_and_crops_back(hw):
    h, w = hw
    image, mask = _image(h, w), _box_mask(h, w)
    padded, pmask, (oh, ow) = edit_conditioning.pad_to_multiple(image, mask, 8)
    assert (oh, ow) == (h, w) and padded.shape[1] % 8 == 0 and padded.shape[2] % 8 == 0
    assert torch.equal(padded[:, :h, :w], image) and torch.equal(pmask[:, :h, :w], mask)
    assert not pmask[:, h:].any() and not pmask[:, :, w:].any()  # the padding is kept, never repainted


@pytest.mark.parametrize("hw", [(1, 1), (1, 7), (53, 77), (513, 511), (3, 1000), (2000, 30)])
def test_any_size_goes_through_crop_and_stitch_and_keeps_the_rest(hw):
    h, w = hw
    image, region = _image(h, w), _box_mask(h, w)
    paste = mask_ops.feather_mask(region, 4)
    windows = crop_stitch.plan_windows((h, w), mask_ops.connected_regions(paste), working_size=64)
    out = image
    for window in windows:
        th, tw = window.target
        assert th % 8 == 0 and tw % 8 == 0 and max(th, tw) == 64
        crop = crop_stitch.crop_to_window(image, window)
        out = crop_stitch.stitch(out, 1 - crop, window, paste)  # a stand-in edit: the negative
    assert out.shape == image.shape
    assert torch.equal(out[paste == 0], image[paste == 0])
    assert not torch.equal(out[region == 1], image[region == 1])


def _spy_on_distances(monkeypatch):
    sizes = []
    real = mask_ops._nearest_support

    def spy(m, cap):
        sizes.append(m[0].numel())
        return real(m, cap)

    monkeypatch.setattr(mask_ops, "_nearest_support", spy)
    return sizes


def test_8000px_masks_stay_cheap(monkeypatch):
    """An 8000x8000 mask: feathering works on crops around the regions (two small regions in opposite corners are
    two small crops, not the whole photo), and a mask covering everything is left as it is without any distance
    pass. Before, the corners case ran the distance pass over all 64 megapixels (27 s, 6 GB on 2 cores)."""
    n = 8000
    sizes = _spy_on_distances(monkeypatch)
    corners = torch.zeros(1, n, n)
    corners[:, 100:150, 200:260] = 1
    corners[:, -150:-100, -260:-200] = 1
    t0 = time.monotonic()
    feathered = mask_ops.feather_mask(corners, 8)
    grown = mask_ops.grow_mask(corners, 6)
    assert len(sizes) == 4 and max(sizes) < 0.001 * n * n, sizes  # 2 crops each, about 70x80 px
    assert feathered[0, 100 - 7, 230] > 0 and feathered[0, 100 - 8, 230] == 0
    assert grown[0, -100 + 5, -230] == 1 and grown[0, -100 + 6, -230] == 0
    assert len(crop_stitch.plan_windows((n, n), mask_ops.connected_regions(feathered), working_size=64)) == 2
    sizes.clear()
    full = torch.ones(1, n, n)
    assert torch.equal(mask_ops.feather_mask(full, 8), full) and torch.equal(mask_ops.grow_mask(full, 3), full)
    assert sizes == []
    assert time.monotonic() - t0 < 60  # a few seconds on 2 cores; the bound only catches the old whole-image pass


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    boxes=st.lists(st.tuples(st.integers(0, 90), st.integers(0, 130), st.integers(1, 12), st.integers(1, 12)),
                   min_size=1, max_size=6),
    pixels=st.integers(-9, 9),
    grey=st.booleans(),
)  # fmt: skip
def test_cluster_crops_give_the_same_masks_as_one_crop(boxes, pixels, grey):
    """Grow and feather crop by crop (with tiny tiles, so a 100x140 mask has many clusters) equal the one-crop
    computation exactly."""
    mask = torch.zeros(2, 100, 140)
    for i, (y, x, hh, ww) in enumerate(boxes):
        mask[i % 2, y : y + hh, x : x + ww] = 0.5 + 0.5 * (i % 3) / 2 if grey else 1.0

    def run():
        if pixels >= 0:
            return mask_ops.feather_mask(mask, pixels), mask_ops.grow_mask(mask, pixels, shape="square")
        return mask_ops.grow_mask(mask, pixels), mask_ops.grow_mask(mask, pixels, shape="square")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mask_ops, "_CLUSTER_TILE", 4)
        clustered = run()
        mp.setattr(mask_ops, "_support_crops", lambda m, pad: [c] if (c := mask_ops._support_crop(m, pad)) else [])
        whole = run()
    for a, b in zip(clustered, whole, strict=True):
        assert torch.equal(a, b)


# --- images: channels, batches, values ------------------------------------------------------------------------------
def test_grayscale_and_rgba_become_rgb():
    grey = _image(20, 30, c=1)
    assert torch.equal(inputs.check_image(grey), grey.expand(-1, -1, -1, 3))
    rgba = _image(20, 30, c=4)
    assert torch.equal(inputs.check_image(rgba), rgba[..., :3])
    assert torch.equal(pre.preprocess(grey), pre.preprocess(grey.expand(-1, -1, -1, 3)))
    assert torch.equal(pre.preprocess(rgba), pre.preprocess(rgba[..., :3]))
    with pytest.raises(ValueError, match=r"has shape \(1, 20, 30, 2\); expected a ComfyUI IMAGE"):
        inputs.check_image(_image(20, 30, c=2))


@pytest.mark.parametrize(
    "source, mask, exemplar, n",
    [(1, 1, 1, 1), (3, 1, 1, 3), (1, 3, 1, 3), (1, 1, 3, 3), (3, 3, 1, 3), (3, 1, 3, 3), (3, 3, 3, 3)],
)
def test_batches_of_one_are_used_for_every_result(source, mask, exemplar, n):
    assert inputs.batch_size(source=source, mask=mask, exemplar=exemplar) == n
    assert inputs.repeat_to(torch.zeros(source, 2), n).shape == (n, 2)


@pytest.mark.parametrize("source, mask, exemplar", [(2, 3, 1), (2, 2, 3), (4, 2, 1), (1, 2, 3)])
def test_batches_that_disagree_name_every_size(source, mask, exemplar):
    listing = f"source: {source}, mask: {mask}, exemplar: {exemplar}"
    with pytest.raises(ValueError, match=rf"Batch sizes do not match \({listing}\).*1 item .*or the same number"):
        inputs.batch_size(source=source, mask=mask, exemplar=exemplar)


@pytest.mark.parametrize("mode", pre.PREPROCESS_MODES)
def test_one_pixel_exemplar_becomes_a_flat_224px_exemplar(mode):
    one = torch.tensor([[[[0.2, 0.6, 0.9]]]])
    x = pre.preprocess(inputs.check_image(one, "Exemplar image"), mode)
    assert x.shape == (1, 3, 224, 224) and torch.isfinite(x).all()
    assert torch.allclose(x, x[..., :1, :1].expand_as(x))


def test_strip_exemplars_are_squashed_but_not_center_cropped():
    strip = _image(1, 3000)
    assert pre.preprocess(strip, "squash").shape == (1, 3, 224, 224)
    with pytest.raises(ValueError, match=r"Exemplar is 3000x1 pixels: center_crop would keep only a 1x1 square.*'squash'"):
        pre.preprocess(strip, "center_crop")
    assert pre.preprocess(_image(10, 640), "center_crop").shape == (1, 3, 224, 224)  # 64:1 still works


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_or_inf_pixels_are_refused(bad):
    image = _image(16, 16)
    image[0, 3, 4, 1] = bad
    with pytest.raises(ValueError, match="Source image contains NaN or infinite pixels; fix or replace the node"):
        inputs.check_image(image, "Source image")
    with pytest.raises(ValueError, match="Exemplar image contains NaN or infinite pixels"):
        pre.preprocess(image)
    mask = _box_mask(16, 16)
    mask[0, 0, 0] = bad
    with pytest.raises(ValueError, match="Mask contains NaN or infinite values"):
        inputs.check_mask(mask, _image(16, 16))
    with pytest.raises(ValueError, match="Exemplar mask contains NaN or infinite values"):
        pre.prepare_exemplars(_image(16, 16), mask)


@pytest.mark.parametrize(
    "lo, hi, hint",
    [(0, 255, "divide 8-bit values by 255"), (-1, 1, r"map -1\.\.1 values with \(x \+ 1\) / 2"), (0, 1.4, "clamp it")],
)
def test_values_outside_0_1_are_refused_with_the_conversion(lo, hi, hint):
    image = lo + (hi - lo) * _image(8, 8)
    image[0, 0, 0] = torch.tensor([lo, hi, lo])
    with pytest.raises(ValueError, match=rf"Source image has values from {lo:g} to {hi:g}.*holds 0\.\.1; {hint}"):
        inputs.check_image(image, "Source image")


def test_resampling_overshoot_is_accepted_as_it_is():
    image = _image(8, 8) * 1.1 - 0.05
    assert torch.equal(inputs.check_image(image), image)  # kept, so the paste-back stays exact


# --- models: the matrix -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", [c for c in bad_models.MATRIX if c.name != "unreadable_folder"], ids=lambda c: c.name)
def test_bad_model_is_refused_with_the_problem_and_the_fix(tmp_path, fixture_paths, case):
    marker = tmp_path / "pwned"
    path = case.build(tmp_path, fixture_paths, marker)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert re.search(case.problem, msg) and re.search(case.fix, msg), msg
    assert str(path) in msg  # which file
    if case.at_validation:  # the cheap check before a prompt runs says the same
        with pytest.raises(CheckpointError) as e2:
            precheck(path)
        assert str(e2.value) == msg
    else:
        precheck(path)  # needs the tensors: the cheap check lets it through to the loader
    assert not marker.exists()


def test_a_trojaned_but_complete_model_is_refused(tmp_path, fixture_paths):
    """The weights of the trojan are a working Paint-by-Example model: refusing is a decision, not a side effect."""
    from pbe_core.weights.safe_torch_load import load_state_dict

    marker = tmp_path / "pwned"
    path = bad_models.BY_NAME["malicious_pickle"].build(tmp_path, fixture_paths, marker)
    assert len(load_state_dict(path)) > 100  # readable, safely, by the generic reader
    with pytest.raises(CheckpointError, match=r"unsafe: its pickle names os\.system"):
        load_checkpoint(path)
    assert not marker.exists()


def test_valid_layouts_pass_the_cheap_check(fixture_paths):
    for path in fixture_paths.values():
        precheck(path)


_UNREADABLE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from pbe_core.weights.checkpoint import CheckpointError, load_checkpoint, precheck
out = {}
for path in sys.argv[2:]:
    for f in (precheck, load_checkpoint):
        try:
            f(path)
            out[path + f.__name__] = None
        except CheckpointError as e:
            out[path + f.__name__] = str(e)
print(json.dumps(out))
"""


def test_folder_and_file_without_read_permission(tmp_path, fixture_paths):
    """Run by a process that cannot override file permissions (root without CAP_DAC_OVERRIDE, see unprivileged.py)."""
    reason = unprivileged.unavailable_reason()
    if reason:
        pytest.skip(reason)
    tmp_path.chmod(0o755)
    folder = bad_models.BY_NAME["unreadable_folder"].build(tmp_path, fixture_paths, tmp_path / "unused")
    file = tmp_path / "closed.safetensors"
    file.write_bytes(fixture_paths["original-fp16.safetensors"].read_bytes())
    file.chmod(0)
    try:
        r = subprocess.run(
            [sys.executable, "-c", _UNREADABLE, str(bad_models.Path(__file__).parents[2]), str(folder), str(file)],
            capture_output=True, text=True, timeout=300, check=True, **unprivileged.popen_kwargs(),
        )  # fmt: skip
    finally:
        bad_models.remove(folder)
        file.chmod(0o644)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    case = bad_models.BY_NAME["unreadable_folder"]
    for f in ("precheck", "load_checkpoint"):
        msg = out[str(folder) + f]
        assert msg and re.search(case.problem, msg) and re.search(case.fix, msg), msg
        assert re.search(r"Cannot read .*closed\.safetensors: permission denied\. Give the user running ComfyUI read",
                         out[str(file) + f])  # fmt: skip


# --- models: damaged files --------------------------------------------------------------------------------------------
def test_check_fits_names_missing_surplus_and_misshaped_tensors():
    expected = {"a": torch.zeros(2, 3), "b": torch.zeros(4), "c": torch.zeros(1)}
    check_fits(expected, {k: torch.zeros(v.shape) for k, v in expected.items()}, "UNet", "x.safetensors")
    got = {"a": torch.zeros(3, 2), "b": torch.zeros(4), "z": torch.zeros(1)}
    with pytest.raises(CheckpointError) as e:
        check_fits(expected, got, "UNet", "x.safetensors")
    msg = str(e.value)
    assert "x.safetensors: the UNet does not match" in msg
    assert "1 tensor(s) missing (e.g. 'c')" in msg and "1 it does not use (e.g. 'z')" in msg
    assert "'a' is (3, 2), expected (2, 3)" in msg and "download it again" in msg


def _original_sd(fixture_paths):
    return load_checkpoint(fixture_paths["original-fp16.safetensors"]).original_state_dict()


@pytest.mark.parametrize(
    "damage, message",
    [
        ("stray_block", r"blocks resblocks\.N are not numbered 0\.\.2: it has a block numbered 999999999"),
        ("gap", r"CLIP vision tower blocks vision_model\.encoder\.layers\.N are not numbered .*block\(s\) \[3\] are missing"),
        ("int_weight", r"the VAE tensor 'encoder\.conv_in\.weight' holds torch\.int16, not floating-point weights"),
        ("flat_weight", r"'vision_model\.embeddings\.patch_embedding\.weight' has shape \(.*\); a 4-dimensional"),
        ("encoder_shape", r"the exemplar encoder does not match .*'mapper\.resblocks\.0\.ln_1\.bias' is \(1,\)"),
        ("vae_level", r"the VAE encoder blocks encoder\.down\.N"),
    ],
)  # fmt: skip
def test_damaged_files_get_the_packs_error_not_a_crash_or_a_hang(tmp_path, fixture_paths, damage, message):
    from safetensors.torch import save_file

    from pbe_core.exemplar.encoder import ExemplarEncoder

    sd = _original_sd(fixture_paths)
    if damage == "stray_block":  # would otherwise build a billion mapper blocks
        sd["cond_stage_model.mapper.resblocks.999999999.ln_1.weight"] = torch.ones(4)
    elif damage == "gap":
        sd = {k: v for k, v in sd.items() if ".encoder.layers.3." not in k}
    elif damage == "int_weight":
        sd["first_stage_model.encoder.conv_in.weight"] = sd["first_stage_model.encoder.conv_in.weight"].to(torch.int16)
    elif damage == "flat_weight":
        k = "cond_stage_model.transformer.vision_model.embeddings.patch_embedding.weight"
        sd[k] = sd[k].flatten()
    elif damage == "encoder_shape":  # would otherwise be broadcast silently into the (width,) bias
        sd["cond_stage_model.mapper.resblocks.0.ln_1.bias"] = torch.zeros(1, dtype=torch.float16)
    elif damage == "vae_level":
        sd = {k: v for k, v in sd.items() if not k.startswith("first_stage_model.encoder.down.1.")}
    p = tmp_path / f"{damage}.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(p))
    with pytest.raises(CheckpointError, match=message):
        ExemplarEncoder.from_checkpoint(load_checkpoint(p))
