"""pbe_core.photo.mask_ops: exactness against SciPy's ndimage (an independent oracle) and properties with hypothesis.

Masks come from scikit-image's sample photographs (thresholded) as well as from hypothesis. SciPy is only used
here, as the reference; pbe_core itself must not need it.
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pbe_core.photo import mask_ops as mo

ndi = pytest.importorskip("scipy.ndimage")  # comes with scikit-image (the test extra)
skdata = pytest.importorskip("skimage.data")

HYP = settings(max_examples=50, derandomize=True, deadline=None)


# --- helpers ---------------------------------------------------------------------------------------------------------
def disc_footprint(r: int) -> np.ndarray:
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return (y * y + x * x) <= r * r


def footprint(r: int, shape: str) -> np.ndarray:
    return disc_footprint(r) if shape == "disc" else np.ones((2 * r + 1, 2 * r + 1), dtype=bool)


def ref_grow(m: np.ndarray, pixels: int, shape: str) -> np.ndarray:
    """SciPy grey dilation/erosion with off-image pixels ignored (cval = -inf / +inf)."""
    if pixels == 0:
        return m
    fp = footprint(abs(pixels), shape)
    if pixels > 0:
        return ndi.grey_dilation(m, footprint=fp, mode="constant", cval=-np.inf)
    return ndi.grey_erosion(m, footprint=fp, mode="constant", cval=np.inf)


def ref_feather_binary(m: np.ndarray, pixels: int) -> np.ndarray:
    d = ndi.distance_transform_edt(m == 0)
    t = np.clip(1.0 - d / pixels, 0.0, 1.0)
    return np.maximum(m, t * t * (3 - 2 * t))


def photo_mask(name: str, level: float = 0.55) -> torch.Tensor:
    """A (1, H, W) binary mask from a photograph: its bright pixels. Real shapes, holes and many regions."""
    img = getattr(skdata, name)().astype(np.float32) / 255.0
    grey = img.mean(axis=-1) if img.ndim == 3 else img
    return torch.from_numpy((grey >= level).astype(np.float32))[None]


@st.composite
def grey_masks(draw, max_side: int = 24):
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    values = st.sampled_from([0.0, 0.0, 0.0, 0.25, 0.5, 1.0, 1.0])
    return draw(arrays(np.float32, (h, w), elements=values))


@st.composite
def solid_shapes(draw):
    """A filled rectangle or disc somewhere in a small image (possibly touching or crossing the border)."""
    h = draw(st.integers(8, 40))
    w = draw(st.integers(8, 40))
    cy = draw(st.integers(0, h - 1))
    cx = draw(st.integers(0, w - 1))
    m = np.zeros((h, w), np.float32)
    if draw(st.booleans()):
        ry, rx = draw(st.integers(0, 10)), draw(st.integers(0, 10))
        m[max(cy - ry, 0) : cy + ry + 1, max(cx - rx, 0) : cx + rx + 1] = 1.0
    else:
        r = draw(st.integers(0, 10))
        y, x = np.mgrid[0:h, 0:w]
        m[(y - cy) ** 2 + (x - cx) ** 2 <= r * r] = 1.0
    return m


# --- binarize / bbox / box -------------------------------------------------------------------------------------------
def test_binarize_reads_8bit_128_as_region():
    m = torch.arange(256, dtype=torch.float32).div(255.0).view(16, 16)
    out = mo.binarize(m)
    assert out.shape == (16, 16) and out.dtype == torch.float32
    assert torch.equal(out.flatten(), (torch.arange(256) >= 128).float())
    assert float(mo.binarize(torch.tensor([[0.5]]))) == 1.0


def test_mask_bbox_half_open_batch_union_and_empty():
    m = torch.zeros(2, 30, 40)
    assert mo.mask_bbox(m) is None
    m[0, 5:9, 7:20] = 1.0
    assert mo.mask_bbox(m[0]) == (5, 7, 9, 20)
    m[1, 20, 39] = 1.0
    assert mo.mask_bbox(m) == (5, 7, 21, 40)
    m[1, 25, 0] = 0.4  # below the threshold: not region
    assert mo.mask_bbox(m) == (5, 7, 21, 40)


def test_box_mask_on_photo_and_empty():
    m = photo_mask("chelsea")
    y0, x0, y1, x1 = mo.mask_bbox(m)
    out = mo.box_mask(m)
    assert out.shape == m.shape
    assert bool((out[0, y0:y1, x0:x1] == 1).all())
    outside = torch.ones_like(out[0], dtype=torch.bool)
    outside[y0:y1, x0:x1] = False
    assert torch.equal(out[0][outside], m[0][outside])
    empty = torch.zeros(3, 10, 12)
    assert torch.equal(mo.box_mask(empty), empty)


@HYP
@given(grey_masks())
def test_box_mask_contains_mask(m):
    out = mo.box_mask(torch.from_numpy(m)).numpy()
    assert (out >= m).all()


# --- grow / shrink ---------------------------------------------------------------------------------------------------
@HYP
@given(grey_masks(), st.integers(-9, 9), st.sampled_from(["disc", "square"]), st.booleans())
def test_grow_matches_scipy(m, pixels, shape, binary):
    if binary:  # binary masks grow by large discs through distances, the rest through max filters
        m = (m > 0).astype(np.float32)
    out = mo.grow_mask(torch.from_numpy(m), pixels, shape=shape).numpy()
    np.testing.assert_array_equal(out, ref_grow(m, pixels, shape))


@HYP
@given(solid_shapes(), st.integers(1, 8), st.sampled_from(["disc", "square"]))
def test_closing_contains_and_opening_is_contained(m, k, shape):
    t = torch.from_numpy(m)
    closed = mo.grow_mask(mo.grow_mask(t, k, shape=shape), -k, shape=shape)
    opened = mo.grow_mask(mo.grow_mask(t, -k, shape=shape), k, shape=shape)
    assert bool((closed >= t).all())
    assert bool((opened <= t).all())


def test_grow_and_shrink_photo_mask_batch():
    m = torch.cat([photo_mask("chelsea"), photo_mask("chelsea", 0.3)])
    for pixels in (7, -4):
        out = mo.grow_mask(m, pixels)
        assert out.shape == m.shape and out.dtype == m.dtype
        for i in range(2):
            np.testing.assert_array_equal(out[i].numpy(), ref_grow(m[i].numpy(), pixels, "disc"))


def test_shrink_keeps_a_mask_that_touches_the_border_on_the_border():
    m = torch.zeros(20, 30)
    m[:8, :10] = 1.0  # top-left corner block
    out = mo.grow_mask(m, -3)
    assert mo.mask_bbox(out) == (0, 0, 5, 7)


def test_grow_disc_is_round_square_is_square():
    m = torch.zeros(21, 21)
    m[10, 10] = 1.0
    disc = mo.grow_mask(m, 5)
    square = mo.grow_mask(m, 5, shape="square")
    assert int(disc.sum()) == int(disc_footprint(5).sum()) and float(disc[5, 5]) == 0.0  # corner not reached
    assert int(square.sum()) == 121


# --- feather ---------------------------------------------------------------------------------------------------------
@HYP
@given(solid_shapes(), st.integers(1, 12))
def test_feather_binary_properties(m, pixels):
    out = mo.feather_mask(torch.from_numpy(m), pixels).numpy()
    d = ndi.distance_transform_edt(m == 0) if m.any() else np.full(m.shape, np.inf)
    assert (out >= m).all(), "feathering reduced the mask"
    assert (out[d >= pixels] == 0).all(), "feather reaches beyond its radius"
    assert (out[(d > 0) & (d < pixels)] > 0).all() and (out <= 1).all()
    np.testing.assert_array_equal(out[m == 1], 1.0)
    np.testing.assert_allclose(out, ref_feather_binary(m, pixels), atol=1e-6)


@HYP
@given(grey_masks(), st.integers(1, 8))
def test_feather_grey_never_reduces_and_stays_within_radius(m, pixels):
    out = mo.feather_mask(torch.from_numpy(m), pixels).numpy()
    assert (out >= m).all()
    d = ndi.distance_transform_edt(m == 0) if m.any() else np.full(m.shape, np.inf)
    assert (out[d >= pixels] == 0).all()


def test_feather_is_monotone_along_a_ray():
    m = torch.zeros(1, 40, 40)
    m[0, 15:25, 15:25] = 1.0
    out = mo.feather_mask(m, 10)[0, 20, 24:40]
    assert float(out[0]) == 1.0
    assert bool((out[1:] <= out[:-1]).all()) and float(out[10]) == 0.0 and float(out[9]) > 0


def test_feather_on_a_3000px_photo_mask_stays_local():
    # the chelsea mask at full size, placed in the bottom-right corner of a 3000x4500 canvas
    cat = photo_mask("chelsea")[0]
    big = torch.zeros(1, 3000, 4500)
    big[0, -cat.shape[0] :, -cat.shape[1] :] = cat
    out = mo.feather_mask(big, 24)
    assert bool(torch.isfinite(out).all())
    assert bool((out >= big).all())
    y0, x0, _, _ = mo.mask_bbox(out, threshold=1e-12)  # the feather's reach: less than 24 px from the cat
    assert y0 > 3000 - cat.shape[0] - 24 and x0 > 4500 - cat.shape[1] - 24
    small = mo.feather_mask(cat, 24)
    assert torch.equal(out[0, -cat.shape[0] :, -cat.shape[1] :], small)


# --- holes and regions -----------------------------------------------------------------------------------------------
def test_fill_holes_ring_and_open_notch():
    m = torch.zeros(1, 20, 20)
    m[0, 4:15, 4:15] = 1.0
    m[0, 7:12, 7:12] = 0.0  # a hole
    out = mo.fill_holes(m)
    assert bool((out[0, 4:15, 4:15] == 1).all())
    m[0, 9, 12:15] = 0.0  # cut a channel from the hole to the outside: no longer a hole
    assert torch.equal(mo.fill_holes(m), m)
    empty = torch.zeros(5, 5)
    assert torch.equal(mo.fill_holes(empty), empty)


def test_fill_holes_diagonal_gap_is_still_a_hole():
    # background is 4-connected: a hole touching the outside only diagonally is filled
    m = torch.ones(5, 5)
    m[2, 2] = 0.0
    m[0, 0] = m[1, 1] = 0.0
    out = mo.fill_holes(m)
    assert float(out[2, 2]) == 1.0 and float(out[1, 1]) == 1.0 and float(out[0, 0]) == 0.0


@pytest.mark.parametrize("door", [True, False])
def test_fill_holes_winding_corridor(door):
    # a boustrophedon corridor inside a closed frame: with a door it all reaches the outside, without it is a hole
    n = 301
    wall = np.zeros((n, n), dtype=bool)
    wall[[0, -1], :] = wall[:, [0, -1]] = True
    for i, r in enumerate(range(2, n - 2, 2)):
        if i % 2:
            wall[r, 2:-1] = True
        else:
            wall[r, 1:-2] = True
    if door:
        wall[1, 0] = False
    m = torch.from_numpy(wall.astype(np.float32))
    out = mo.fill_holes(m).numpy()
    np.testing.assert_array_equal(out >= 0.5, ndi.binary_fill_holes(wall))
    assert (out == 1).all() != door
    assert len(mo.connected_regions(m)) == 1


@pytest.mark.parametrize("name", ["astronaut", "coffee", "hubble_deep_field"])
def test_fill_holes_and_regions_match_scipy_on_photos(name):
    m = photo_mask(name, 0.45)
    ref = m[0].numpy() >= 0.5
    filled = mo.fill_holes(m)[0].numpy()
    np.testing.assert_array_equal(filled >= 0.5, ndi.binary_fill_holes(ref))
    np.testing.assert_array_equal(filled[~ndi.binary_fill_holes(ref)], m[0].numpy()[~ndi.binary_fill_holes(ref)])
    labels, _ = ndi.label(ref, structure=np.ones((3, 3)))
    want = sorted((s[0].start, s[1].start, s[0].stop, s[1].stop) for s in ndi.find_objects(labels))
    assert mo.connected_regions(m) == want


@HYP
@given(arrays(np.bool_, st.tuples(st.integers(1, 30), st.integers(1, 30))))
def test_fill_holes_and_regions_match_scipy_random(region):
    m = torch.from_numpy(region.astype(np.float32))
    np.testing.assert_array_equal(mo.fill_holes(m).numpy() >= 0.5, ndi.binary_fill_holes(region))
    labels, _ = ndi.label(region, structure=np.ones((3, 3)))
    want = sorted((s[0].start, s[1].start, s[0].stop, s[1].stop) for s in ndi.find_objects(labels))
    assert mo.connected_regions(m) == want


def test_connected_regions_disjoint_blobs_and_empty():
    m = torch.zeros(2, 50, 60)
    m[0, 2:6, 3:9] = 1.0
    m[0, 40:50, 50:60] = 1.0
    m[1, 20:22, 30:31] = 1.0
    m[1, 22, 31] = 1.0  # diagonal neighbour: same region
    assert mo.connected_regions(m) == [(2, 3, 6, 9), (20, 30, 23, 32), (40, 50, 50, 60)]
    assert mo.connected_regions(torch.zeros(4, 4)) == []


# --- placeholder and errors ------------------------------------------------------------------------------------------
def test_is_placeholder_mask():
    zero = torch.zeros(1, 64, 64)
    assert mo.is_placeholder_mask(zero, (512, 512))
    assert mo.is_placeholder_mask(zero[0], (300, 451))
    assert not mo.is_placeholder_mask(zero, (64, 64))  # a real (empty) mask of a 64x64 image
    painted = zero.clone()
    painted[0, 3, 3] = 1.0
    assert not mo.is_placeholder_mask(painted, (512, 512))
    assert not mo.is_placeholder_mask(torch.zeros(1, 512, 512), (512, 512))


