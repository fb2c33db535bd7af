"""pbe_core.photo.crop_stitch on real photographs (scikit-image's samples), at their own odd sizes and upscaled to
3000+ pixels: window maths, resampling shapes, exact paste-back, orientation, borders, tiny and huge masks,
several regions."""

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pbe_core.photo import crop_stitch as cs
from pbe_core.photo import mask_ops as mo

skdata = pytest.importorskip("skimage.data")

HYP = settings(max_examples=50, derandomize=True, deadline=None)
PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field"]  # 512x512 300x451 400x600 427x640 872x1000


# --- fixtures --------------------------------------------------------------------------------------------------------
def load_photo(name: str) -> torch.Tensor:
    """(1, H, W, 3) float32 in [0, 1]."""
    return torch.from_numpy(getattr(skdata, name)().astype(np.float32) / 255.0)[None]


def upscale(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    out = F.interpolate(img.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False)
    return out.clamp(0, 1).permute(0, 2, 3, 1).contiguous()


@pytest.fixture(scope="module")
def photos() -> dict[str, torch.Tensor]:
    return {n: load_photo(n) for n in PHOTOS}


@pytest.fixture(scope="module")
def big_coffee() -> torch.Tensor:
    """coffee (400x600) upscaled 7.5x to 3000x4500."""
    return upscale(load_photo("coffee"), (3000, 4500))


@pytest.fixture(scope="module")
def big_hubble() -> torch.Tensor:
    """hubble_deep_field (872x1000) upscaled to 2616x3000 (aspect kept)."""
    return upscale(load_photo("hubble_deep_field"), (2616, 3000))


def ellipse_mask(hw, center, radii) -> torch.Tensor:
    """(1, H, W) binary ellipse; radii (ry, rx) differ so that orientation matters."""
    y = torch.arange(hw[0], dtype=torch.float32).view(-1, 1)
    x = torch.arange(hw[1], dtype=torch.float32).view(1, -1)
    cy, cx = center
    ry, rx = radii
    return ((((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2) <= 1.0).float()[None]


def assert_untouched(out: torch.Tensor, src: torch.Tensor, paste: torch.Tensor) -> None:
    """Every pixel where the paste mask is 0 is bit-identical (float ==, all channels) to the source."""
    changed = (out != src).any(dim=-1)  # (B, H, W)
    assert not bool((changed & (paste == 0)).any()), "a pixel outside the paste mask changed"


def check_window(win: cs.CropWindow, image_hw, bbox, *, margin=0.25, working_size=512, multiple=8, min_side=64):
    """The window invariants the planner promises."""
    h, w = image_hw
    y0, x0, y1, x1 = bbox
    assert 0 <= win.y0 < win.y1 <= h and 0 <= win.x0 < win.x1 <= w, "window outside the image"
    pad = math.ceil(margin * max(y1 - y0, x1 - x0))
    assert win.y0 <= max(y0 - pad, 0) and win.y1 >= min(y1 + pad, h), "mask box + margin not covered (rows)"
    assert win.x0 <= max(x0 - pad, 0) and win.x1 >= min(x1 + pad, w), "mask box + margin not covered (cols)"
    assert win.height >= min(min_side, h) and win.width >= min(min_side, w)
    th, tw = win.target
    assert th % multiple == 0 and tw % multiple == 0 and th >= multiple and tw >= multiple
    if win.height >= win.width:
        assert th == working_size
        exact = working_size * win.width / win.height
        assert abs(tw - exact) <= multiple / 2 or tw == multiple
    else:
        assert tw == working_size
        exact = working_size * win.height / win.width
        assert abs(th - exact) <= multiple / 2 or th == multiple
    assert win.scale == pytest.approx(working_size / max(win.height, win.width))
    assert win.mask_box == tuple(bbox)


def mask_positions(h: int, w: int) -> dict[str, tuple[int, int, int, int]]:
    """Mask boxes (half-open) at characteristic places of an h x w image; asymmetric (taller than wide or not)."""
    bh, bw = max(h // 6, 2), max(w // 5, 3)
    return {
        "center": (h // 2 - bh // 2, w // 2 - bw // 2, h // 2 - bh // 2 + bh, w // 2 - bw // 2 + bw),
        "top": (0, w // 3, bh, w // 3 + bw),
        "bottom": (h - bh, w // 3, h, w // 3 + bw),
        "left": (h // 3, 0, h // 3 + bh, bw),
        "right": (h // 3, w - bw, h // 3 + bh, w),
        "top_left_corner": (0, 0, bh, bw),
        "bottom_right_corner": (h - bh, w - bw, h, w),
        "most": (h // 80, w // 80, h - h // 80, w - w // 80),  # 95% of the image
    }


# --- planning --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("shape", ["square", "mask_aspect"])
def test_plan_window_invariants_on_photos(photos, name, shape):
    h, w = photos[name].shape[1:3]
    for where, bbox in mask_positions(h, w).items():
        win = cs.plan_window((h, w), bbox, shape=shape)
        check_window(win, (h, w), bbox)
        if where == "most":
            assert win.box == (0, 0, h, w), "a mask over most of the image must get the whole image"


@pytest.mark.parametrize("hw", [(3000, 4500), (2616, 3000), (4500, 3000)])
@pytest.mark.parametrize("shape", ["square", "mask_aspect"])
def test_plan_window_on_large_photos_shifts_at_borders(hw, shape):
    h, w = hw
    centre = cs.plan_window(hw, mask_positions(h, w)["center"], shape=shape)
    for where, bbox in mask_positions(h, w).items():
        win = cs.plan_window(hw, bbox, shape=shape)
        check_window(win, hw, bbox)
        if where != "most":
            # same box size wherever it sits: shifted at a border, never shrunk
            assert win.size == centre.size, where
    top_left = cs.plan_window(hw, mask_positions(h, w)["top_left_corner"], shape=shape)
    assert (top_left.y0, top_left.x0) == (0, 0)
    bottom_right = cs.plan_window(hw, mask_positions(h, w)["bottom_right_corner"], shape=shape)
    assert (bottom_right.y1, bottom_right.x1) == (h, w)


def test_small_mask_on_large_photo_gets_a_small_window():
    win = cs.plan_window((3000, 4500), (1000, 2000, 1100, 2080))  # 100x80 px
    check_window(win, (3000, 4500), (1000, 2000, 1100, 2080))
    assert win.size == (150, 150) and win.target == (512, 512)  # mask + 25 px each side, squared
    assert (win.y0, win.x0) == (975, 1965)


def test_tiny_mask_is_clamped_to_min_side_and_logged(caplog):
    caplog.set_level(logging.INFO, logger="pbe_core.photo.crop_stitch")
    bbox = (1500, 2200, 1503, 2203)  # 3x3 px on a 3000x4500 photo
    win = cs.plan_window((3000, 4500), bbox)
    check_window(win, (3000, 4500), bbox)
    assert win.size == (64, 64) and win.target == (512, 512) and win.scale == 8.0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    msg = warnings[0].getMessage()
    assert "3x3" in msg and "64" in msg and "0.22%" in msg and "grow the mask" in msg


def test_square_is_limited_by_min_area_fraction(caplog):
    caplog.set_level(logging.INFO, logger="pbe_core.photo.crop_stitch")
    bbox = (1000, 500, 1100, 2500)  # 100 x 2000 px: the 3000-px square around it would make it 2.2% of the window
    win = cs.plan_window((3000, 4500), bbox, shape="square", min_area_fraction=0.05)
    check_window(win, (3000, 4500), bbox)
    assert win.width == 3000 and win.height == 1333  # only as tall as keeps the box at >= 5%: 200000 / (0.05 * 3000)
    assert 100 * 2000 / (win.height * win.width) >= 0.05
    assert any("instead of square" in r.getMessage() for r in caplog.records)
    loose = cs.plan_window((3000, 4500), bbox, shape="square", min_area_fraction=0.0)
    assert loose.size == (3000, 3000)


def test_mask_aspect_follows_the_mask():
    win = cs.plan_window((3000, 4500), (1000, 1000, 1400, 2200), shape="mask_aspect")  # 400 x 1200
    assert win.size == (400 + 600, 1200 + 600) and win.target == (288, 512)  # 512 * 1000/1800 = 284.4 -> 288


@HYP
@given(
    h=st.integers(1, 5000),
    w=st.integers(1, 5000),
    fy=st.tuples(st.floats(0, 1), st.floats(0, 1)),
    fx=st.tuples(st.floats(0, 1), st.floats(0, 1)),
    margin=st.sampled_from([0.0, 0.1, 0.25, 1.0, 3.0]),
    shape=st.sampled_from(["square", "mask_aspect"]),
    working_size=st.sampled_from([256, 512, 768]),
    multiple=st.sampled_from([8, 64]),
)
def test_plan_window_invariants_random(h, w, fy, fx, margin, shape, working_size, multiple):
    y0, y1 = sorted(int(f * h) for f in fy)
    x0, x1 = sorted(int(f * w) for f in fx)
    bbox = (min(y0, h - 1), min(x0, w - 1), max(y1, min(y0, h - 1) + 1), max(x1, min(x0, w - 1) + 1))
    win = cs.plan_window((h, w), bbox, margin=margin, shape=shape, working_size=working_size, multiple=multiple)
    check_window(win, (h, w), bbox, margin=margin, working_size=working_size, multiple=multiple)
    # context beyond mask + margin (or the minimum side) is only ever added while the box keeps >= 2% of the window
    mh, mw = bbox[2] - bbox[0], bbox[3] - bbox[1]
    pad = math.ceil(margin * max(mh, mw))
    smallest = (min(max(mh + 2 * pad, 64), h), min(max(mw + 2 * pad, 64), w))
    if win.size != smallest:
        assert shape == "square" and mh * mw / (win.height * win.width) >= 0.02
        assert max(win.size) == max(smallest)  # only the short side was widened


# --- several regions -------------------------------------------------------------------------------------------------
def test_plan_windows_merges_overlapping_and_keeps_far_regions_apart(caplog):
    caplog.set_level(logging.INFO, logger="pbe_core.photo.crop_stitch")
    hw = (3000, 4500)
    boxes = [(100, 100, 300, 300), (150, 380, 350, 560), (2500, 4000, 2700, 4300), (2000, 100, 2040, 150)]
    wins = cs.plan_windows(hw, boxes)
    assert len(wins) == 3
    for a in range(len(wins)):
        for b in range(a + 1, len(wins)):
            assert not wins[a].overlaps(wins[b])
    assert wins[0].mask_box == (100, 100, 350, 560)  # the two close ones, merged
    check_window(wins[0], hw, wins[0].mask_box)
    for box in boxes:  # every region lies in exactly one window
        inside = [wn for wn in wins if wn.y0 <= box[0] and wn.x0 <= box[1] and wn.y1 >= box[2] and wn.x1 >= box[3]]
        assert len(inside) == 1
    assert any("4 mask regions -> 3 window" in r.getMessage() for r in caplog.records)
    assert cs.plan_windows(hw, []) == []


def test_several_regions_end_to_end_on_a_3000px_photo(big_coffee):
    src = big_coffee
    hw = tuple(src.shape[1:3])
    mask = torch.clamp(
        ellipse_mask(hw, (600, 700), (200, 120))
        + ellipse_mask(hw, (700, 1020), (90, 140))  # close to the first: one window
        + ellipse_mask(hw, (2500, 3900), (150, 300)),  # far away: its own window
        0,
        1,
    )
    regions = mo.connected_regions(mask)
    assert len(regions) == 3
    wins = cs.plan_windows(hw, regions)
    assert len(wins) == 2
    paste = mo.feather_mask(mo.grow_mask(mask, 4), 16)
    out = src
    for win in wins:
        crop = cs.crop_to_window(out, win)
        out = cs.stitch(out, 1.0 - crop, win, paste)  # "edit" = invert
    assert_untouched(out, src, paste)
    inside = mask[0] == 1
    assert float((out[0][inside] - (1 - src[0][inside])).abs().mean()) < 0.02
    assert bool(torch.isfinite(out).all())


# --- crop ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PHOTOS)
def test_crop_to_window_shapes_and_ranges(photos, name):
    img = photos[name]
    h, w = img.shape[1:3]
    m = ellipse_mask((h, w), (h * 0.4, w * 0.6), (h * 0.1, w * 0.15))
    win = cs.plan_window((h, w), mo.mask_bbox(m), shape="mask_aspect")
    crop = cs.crop_to_window(img, win)
    mcrop = cs.crop_to_window(m, win)
    assert crop.shape == (1, *win.target, 3) and crop.dtype == torch.float32
    assert mcrop.shape == (1, *win.target)
    for t in (crop, mcrop):
        assert bool(torch.isfinite(t).all()) and float(t.min()) >= 0 and float(t.max()) <= 1


def test_crop_without_resampling_is_exact(photos):
    img = photos["astronaut"]
    win = cs.CropWindow(100, 40, 164, 104, (64, 64), 1.0)
    assert torch.equal(cs.crop_to_window(img, win), img[:, 100:164, 40:104])
    m = torch.rand(2, 512, 512)
    assert torch.equal(cs.crop_to_window(m, win), m[:, 100:164, 40:104])


def test_crop_downscale_is_antialiased(big_hubble):
    win = cs.plan_window(tuple(big_hubble.shape[1:3]), (0, 0, 2616, 3000))
    assert win.target == (448, 512) and win.scale < 0.2
    crop = cs.crop_to_window(big_hubble, win)
    plain = F.interpolate(big_hubble.permute(0, 3, 1, 2), size=win.target, mode="area").permute(0, 2, 3, 1)
    # a box average is alias-free; the antialiased bicubic must be close to it (a non-antialiased one is not)
    assert float((crop - plain).abs().mean()) < 0.01


# --- stitch ----------------------------------------------------------------------------------------------------------
def edit_round_trip(src, mask, *, grow=3, feather=12, shape="square", edit=lambda c: 1.0 - c):
    hw = tuple(src.shape[1:3])
    win = cs.plan_window(hw, mo.mask_bbox(mask), shape=shape)
    paste = mo.feather_mask(mo.grow_mask(mo.binarize(mask), grow), feather)
    crop = cs.crop_to_window(src, win)
    out = cs.stitch(src, edit(crop), win, paste)
    return out, paste, win


@pytest.mark.parametrize("name", PHOTOS)
def test_stitch_is_bit_identical_outside_the_feather(photos, name):
    src = photos[name]
    h, w = src.shape[1:3]
    mask = ellipse_mask((h, w), (h * 0.35, w * 0.6), (h * 0.12, w * 0.2))
    out, paste, win = edit_round_trip(src, mask)
    assert out.shape == src.shape and out.dtype == src.dtype
    assert bool(torch.isfinite(out).all())
    assert_untouched(out, src, paste)
    full = paste[0] == 1
    assert bool((out[0][full] != src[0][full]).any())
    assert float((out[0][full] - (1 - src[0][full])).abs().mean()) < 0.03


@pytest.mark.parametrize("where", ["top", "bottom", "left", "right", "top_left_corner", "bottom_right_corner", "most"])
def test_stitch_at_borders_and_corners_on_a_3000px_photo(big_coffee, where):
    src = big_coffee
    h, w = src.shape[1:3]
    y0, x0, y1, x1 = mask_positions(h, w)[where]
    mask = torch.zeros(1, h, w)
    mask[0, y0:y1, x0:x1] = 1.0
    out, paste, win = edit_round_trip(src, mask, feather=24)
    check_window(win, (h, w), (y0, x0, y1, x1))
    assert_untouched(out, src, paste)
    assert bool(torch.isfinite(out[0, win.y0 : win.y1, win.x0 : win.x1]).all())


def test_tiny_mask_round_trip_on_a_3000px_photo(big_coffee, caplog):
    src = big_coffee
    mask = torch.zeros(1, 3000, 4500)
    mask[0, 1500:1503, 2200:2203] = 1.0
    with caplog.at_level(logging.WARNING, logger="pbe_core.photo.crop_stitch"):
        out, paste, win = edit_round_trip(src, mask, grow=0, feather=4)
    assert win.size == (64, 64)
    assert any("3x3" in r.getMessage() for r in caplog.records)
    changed = (out[0] != src[0]).any(dim=-1)
    assert mo.mask_bbox(changed.float()) is not None
    y0, x0, y1, x1 = mo.mask_bbox(changed.float())
    # feather 4: nothing changes 4 or more pixels away from the 3x3 box
    assert y0 >= 1500 - 3 and x0 >= 2200 - 3 and y1 <= 1503 + 3 and x1 <= 2203 + 3


def test_stitch_orientation_solid_red_lands_exactly_on_the_mask(photos):
    # non-square source, asymmetric mask box (wide, off-centre, near the top-right)
    src = photos["chelsea"]  # 300 x 451
    mask = torch.zeros(1, 300, 451)
    mask[0, 40:100, 250:400] = 1.0
    mask[0, 100:130, 250:280] = 1.0  # an L: a foot at the bottom-left
    win = cs.plan_window((300, 451), mo.mask_bbox(mask), shape="mask_aspect")
    assert win.target[0] != win.target[1]
    th, tw = win.target
    red = torch.zeros(1, th, tw, 3)
    red[..., 0] = 1.0
    out = cs.stitch(src, red, win, mask)
    # resampling a constant may round the 1.0 by an ulp; where it lands must be exact
    reddened = ((out[0] - torch.tensor([1.0, 0.0, 0.0])).abs().amax(dim=-1) < 1e-6) & (out[0] != src[0]).any(-1)
    assert torch.equal(reddened, mask[0].bool())
    assert_untouched(out, src, mask)


def test_stitch_orientation_quadrants(photos):
    # an edit whose four quadrants differ lands with its top-left at the window's top-left: no flip, no transpose
    src = photos["rocket"]  # 427 x 640
    win = cs.plan_window((427, 640), (50, 300, 110, 520), shape="mask_aspect")
    th, tw = win.target
    assert th < tw
    edit = torch.zeros(1, th, tw, 3)
    edit[:, : th // 2, : tw // 2] = torch.tensor([1.0, 0, 0])  # top-left red
    edit[:, : th // 2, tw // 2 :] = torch.tensor([0, 1.0, 0])  # top-right green
    edit[:, th // 2 :, : tw // 2] = torch.tensor([0, 0, 1.0])  # bottom-left blue
    edit[:, th // 2 :, tw // 2 :] = 1.0  # bottom-right white
    paste = torch.zeros(1, 427, 640)
    paste[0, win.y0 : win.y1, win.x0 : win.x1] = 1.0
    out = cs.stitch(src, edit, win, paste)[0]
    corners = {
        (win.y0, win.x0): [1, 0, 0],
        (win.y0, win.x1 - 1): [0, 1, 0],
        (win.y1 - 1, win.x0): [0, 0, 1],
        (win.y1 - 1, win.x1 - 1): [1, 1, 1],
    }
    for (y, x), rgb in corners.items():
        torch.testing.assert_close(out[y, x], torch.tensor(rgb, dtype=torch.float32), atol=1e-5, rtol=0)
    assert torch.equal(out[: win.y0], src[0, : win.y0]) and torch.equal(out[:, win.x1 :], src[0, :, win.x1 :])


def test_unedited_round_trip_is_close(photos):
    src = photos["coffee"]
    mask = ellipse_mask((400, 600), (200, 330), (60, 90))
    out, paste, win = edit_round_trip(src, mask, edit=lambda c: c)
    assert win.scale > 1.5  # enlarged to 512 and shrunk back: close, not exact (bicubic is not invertible)
    err = (out - src).abs()[0][paste[0] > 0]
    assert float(err.mean()) < 0.01
    assert_untouched(out, src, paste)


def test_stitch_batches(photos):
    a = photos["astronaut"]
    src = torch.cat([a, a.flip(1)])  # two different sources
    mask = ellipse_mask((512, 512), (300, 200), (40, 80))
    win = cs.plan_window((512, 512), mo.mask_bbox(mask))
    th, tw = win.target
    colours = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]]).view(2, 1, 1, 3).expand(2, th, tw, 3)
    out = cs.stitch(src, colours, win, mask)
    assert out.shape == (2, 512, 512, 3)
    for i in range(2):
        assert torch.equal(out[i][mask[0] == 0], src[i][mask[0] == 0])
        torch.testing.assert_close(out[i][mask[0] == 1], colours[i, 0, 0].expand(int(mask.sum()), 3))
    samples = cs.stitch(a, colours, win, mask[0])  # one photo, several samples
    assert samples.shape == (2, 512, 512, 3) and torch.equal(samples[0][mask[0] == 0], a[0][mask[0] == 0])


def test_stitch_warns_when_the_feather_is_cut_by_the_window(photos, caplog):
    src = photos["astronaut"]
    mask = torch.zeros(1, 512, 512)
    mask[0, 200:240, 200:240] = 1.0
    win = cs.plan_window((512, 512), mo.mask_bbox(mask))  # 10 px margin
    with caplog.at_level(logging.WARNING, logger="pbe_core.photo.crop_stitch"):
        cs.stitch(src, cs.crop_to_window(src, win), win, mo.feather_mask(mask, 8))
        assert not caplog.records
        cs.stitch(src, cs.crop_to_window(src, win), win, mo.feather_mask(mask, 30))
    assert any("inner edges" in r.getMessage() for r in caplog.records)


