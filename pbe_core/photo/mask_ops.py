"""Mask tools for editing real photographs: grow/shrink, feather, fill holes, boxes, regions.

Conventions (ComfyUI's): a MASK is a float tensor of shape ``(B, H, W)`` with values in ``[0, 1]``, where
**1 = region to replace** (the host's polarity; Paint by Example's own training code uses the opposite, the
caller converts at the model boundary, not here). Every function also accepts a single ``(H, W)`` mask and
returns the same rank it was given. Outputs keep the input's floating dtype (bool/integer inputs become
float32). Nothing here resamples; pixels keep their positions.

"Region" means ``mask >= threshold`` (0.5 by default, see :func:`binarize`) wherever a yes/no answer is
needed (bounding boxes, regions, holes). The morphological operations (:func:`grow_mask`, :func:`feather_mask`)
work on the grey values directly.

Only torch, numpy and the standard library are used: this module must run without ComfyUI and without SciPy.
Values are checked where they enter (``pbe_core.edit.plan.plan_edit``, a node's ``execute``): these helpers trust them.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

BBox = tuple[int, int, int, int]
"""``(y0, x0, y1, x1)`` in pixels, half-open: rows ``y0..y1-1`` and columns ``x0..x1-1``."""

#: ComfyUI's LoadImage returns a 64x64 all-zero MASK when the picture has no alpha channel.
PLACEHOLDER_SIDE = 64


# --- shape handling --------------------------------------------------------------------------------------------------
def _as_batch(mask: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Return ``(mask as (B, H, W) float, was_2d)``. Values are the caller's to check (``pbe_core.photo.inputs``)."""
    was_2d = mask.ndim == 2
    m = mask.unsqueeze(0) if was_2d else mask
    if not m.is_floating_point():
        m = m.to(torch.float32)
    return m, was_2d


def _restore(m: torch.Tensor, was_2d: bool) -> torch.Tensor:
    return m[0] if was_2d else m


def _support_crop(m: torch.Tensor, pad: int) -> tuple[slice, slice] | None:
    """Rows/columns of the non-zero pixels of the whole batch, widened by ``pad`` and clipped to the image.

    The operations below only change pixels within ``pad`` of a non-zero pixel, so they can run on this crop:
    it keeps a 4000x3000 photograph with a small mask cheap.
    """
    nz = m > 0
    rows = torch.nonzero(nz.any(dim=(0, 2))).flatten()
    if rows.numel() == 0:
        return None
    cols = torch.nonzero(nz.any(dim=(0, 1))).flatten()
    h, w = m.shape[-2:]
    y0, y1 = max(int(rows[0]) - pad, 0), min(int(rows[-1]) + 1 + pad, h)
    x0, x1 = max(int(cols[0]) - pad, 0), min(int(cols[-1]) + 1 + pad, w)
    return slice(y0, y1), slice(x0, x1)


#: side of the tiles :func:`_support_crops` clusters the mask on
_CLUSTER_TILE = 64


def _support_crops(m: torch.Tensor, pad: int) -> list[tuple[slice, slice]]:
    """Disjoint crops around the non-zero pixels of the batch, one per cluster: like :func:`_support_crop`, but two
    small regions at opposite corners of an 8000-px photo give two small crops, not the whole photo.

    Each crop is the bounding box of a cluster's non-zero pixels widened by ``pad`` (clipped to the image), and
    every non-zero pixel within ``pad`` rows and ``pad`` columns of a pixel of a crop lies in that same crop. So an
    operation that changes only pixels within ``pad`` of a non-zero pixel, looking no further than ``pad``, gives
    the same result run crop by crop as on the whole image. Clusters: the connected groups of ``_CLUSTER_TILE``-px
    tiles within ``pad`` of a non-zero pixel; crops that still overlap are merged until none does.
    """
    nz = (m > 0).any(dim=0)
    h, w = nz.shape
    t = _CLUSTER_TILE
    gh, gw = -(-h // t), -(-w // t)
    tiles = torch.zeros(gh * t, gw * t, dtype=torch.bool, device=nz.device)
    tiles[:h, :w] = nz
    occupied = tiles.view(gh, t, gw, t).any(dim=3).any(dim=1)
    if not bool(occupied.any()):
        return []
    k = -(-pad // t)  # tiles a pixel within `pad` of an occupied tile can be in
    if k:
        occupied = F.max_pool2d(occupied[None, None].float(), 2 * k + 1, stride=1, padding=k)[0, 0] > 0
    run_y, run_x0, run_x1, labels = _label_runs(occupied.cpu().numpy(), diagonal=True)
    boxes = []
    for label in np.unique(labels):
        sel = labels == label
        boxes.append(
            (int(run_y[sel].min()) * t, int(run_x0[sel].min()) * t, min(int(run_y[sel].max() + 1) * t, h),
             min(int(run_x1[sel].max()) * t, w))
        )  # fmt: skip
    merged = True
    while merged:  # concave clusters can have overlapping boxes
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    boxes[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    crops = []
    for y0, x0, y1, x1 in boxes:
        tight = _support_crop(m[:, y0:y1, x0:x1], pad)
        if tight is not None:  # the non-zero pixels of this box, widened by pad, clipped to the box (= the image)
            ys, xs = tight
            crops.append((slice(y0 + ys.start, y0 + ys.stop), slice(x0 + xs.start, x0 + xs.stop)))
    return crops


# --- thresholds and boxes --------------------------------------------------------------------------------------------
def binarize(mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``1.0`` where ``mask >= threshold``, else ``0.0``; same shape and float dtype as ``mask``.

    With the default 0.5 an 8-bit mask pixel of 128 (128/255 = 0.502) counts as region and 127 does not, which
    is how the reference implementations read 8-bit masks.
    """
    m, was_2d = _as_batch(mask)
    return _restore((m >= threshold).to(m.dtype), was_2d)


def mask_bbox(mask: torch.Tensor, threshold: float = 0.5) -> BBox | None:
    """Bounding box ``(y0, x0, y1, x1)`` (half-open, pixels) of ``mask >= threshold``, or ``None`` if empty.

    A batch ``(B, H, W)`` gives the box of the union of its masks: the crop-and-stitch pipeline cuts one window
    for the whole batch so that the batch stays one tensor.
    """
    m, _ = _as_batch(mask)
    region = (m >= threshold).any(dim=0)
    rows = torch.nonzero(region.any(dim=1)).flatten()
    if rows.numel() == 0:
        return None
    cols = torch.nonzero(region.any(dim=0)).flatten()
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def box_mask(mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Replace each mask of the batch by its bounding box, filled with 1.

    The box is that of ``mask >= threshold``; the result is ``max(box, mask)``, so it always contains the input
    (faint pixels below the threshold outside the box are kept as they are). An empty mask stays as it is.
    Paint by Example was trained on box-shaped masks, so a box is often the better thing to give it.
    """
    m, was_2d = _as_batch(mask)
    out = m.clone()
    for i in range(m.shape[0]):
        bb = mask_bbox(m[i], threshold)
        if bb is not None:
            y0, x0, y1, x1 = bb
            out[i, y0:y1, x0:x1] = 1.0
    return _restore(out, was_2d)


def is_placeholder_mask(mask: torch.Tensor, image_hw: tuple[int, int]) -> bool:
    """True if ``mask`` is ComfyUI's "no mask" placeholder for an image of size ``image_hw = (H, W)``.

    LoadImage returns an all-zero 64x64 MASK for a picture without an alpha channel. Such a mask means "none
    given" unless the image itself is 64x64 (then it is a real, if empty, mask of the right size).
    """
    if mask.shape[-2:] != (PLACEHOLDER_SIDE, PLACEHOLDER_SIDE):
        return False
    if tuple(int(s) for s in image_hw) == (PLACEHOLDER_SIDE, PLACEHOLDER_SIDE):
        return False
    return not bool(mask.any())


# --- distances -----------------------------------------------------------------------------------------------------
def _nearest_support(m: torch.Tensor, cap: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For the pixels near the region ``m > 0``: squared Euclidean distance to its nearest pixel, and that value.

    Returns ``(index, d2, value)``: flat indices into ``m`` of the pixels outside the region that have a region
    pixel at most ``cap - 1`` rows and ``cap - 1`` columns away (every pixel closer than ``cap`` is among them),
    their squared distance to the nearest region pixel (exact below ``cap``, ``>= cap**2`` otherwise) and that
    pixel's value (the largest, where several are equally near).

    Exact, in two separable passes: the nearest region pixel of each column (cumulative max/min of row
    indices, over the whole crop), then the best of the ``2 * cap - 1`` columns around each pixel, for the
    pixels near the region only (a band along the edge, much smaller than a large mask).
    """
    b, h, w = m.shape
    support = m > 0
    rows = torch.arange(h, dtype=torch.int32).view(1, h, 1).expand(b, h, w)
    far = h + cap + 1
    above = torch.where(support, rows, torch.full_like(rows, -far)).cummax(dim=1).values
    below = torch.where(support, rows, torch.full_like(rows, h + far)).flip(1).cummin(dim=1).values.flip(1)
    d_above, d_below = rows - above, below - rows
    v_above = torch.where(above >= 0, m.gather(1, above.clamp(0, h - 1).long()), torch.zeros_like(m))
    v_below = torch.where(below < h, m.gather(1, below.clamp(0, h - 1).long()), torch.zeros_like(m))
    g = torch.minimum(d_above, d_below).clamp(max=cap).flatten()  # vertical distance, per column
    v = torch.where(
        d_above < d_below, v_above, torch.where(d_below < d_above, v_below, torch.maximum(v_above, v_below))
    ).flatten()
    v = torch.where(g >= cap, torch.zeros_like(v), v)

    # A pixel is within reach only if some column at most cap - 1 away has a region pixel less than cap rows
    # away: count such columns in a sliding window along each row (cumulative sums, O(1) passes).
    hits = F.pad((g < cap).view(b, h, w).to(torch.int32).cumsum(dim=2), (1, 0))
    cols = torch.arange(w)
    window = hits.index_select(2, (cols + cap).clamp(max=w)) - hits.index_select(2, (cols - cap + 1).clamp(min=0))
    index = torch.nonzero(((window > 0) & ~support).flatten()).flatten()
    col = index % w
    best_d2 = torch.full(index.shape, 2 * cap * cap + 1, dtype=torch.int64)
    best_v = torch.zeros(index.shape, dtype=m.dtype)
    for dx in range(-cap + 1, cap):
        # columns off the image count as "no region there"
        inside = (col + dx >= 0) & (col + dx < w)
        src = torch.where(inside, index + dx, index)
        gs = torch.where(inside, g[src], cap).long()
        vs = torch.where(inside, v[src], 0.0)
        d2 = gs * gs + dx * dx
        better = (d2 < best_d2) | ((d2 == best_d2) & (vs > best_v))
        best_d2 = torch.where(better, d2, best_d2)
        best_v = torch.where(better, vs, best_v)
    return index, best_d2, best_v


# --- grow / shrink ---------------------------------------------------------------------------------------------------
def _shift(x: torch.Tensor, offset: int, dim: int, fill: float = float("-inf")) -> torch.Tensor:
    """``out[i] = x[i + offset]`` along ``dim``; ``fill`` where that falls off the image (-inf: neutral for max)."""
    if offset == 0:
        return x
    n = x.shape[dim]
    out = torch.full_like(x, fill)
    if abs(offset) >= n:
        return out
    if offset > 0:
        out.narrow(dim, 0, n - offset).copy_(x.narrow(dim, offset, n - offset))
    else:
        out.narrow(dim, -offset, n + offset).copy_(x.narrow(dim, 0, n + offset))
    return out


def _running_max(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Max over ``[i - radius, i + radius]`` along ``dim`` (pixels off the image ignored), in O(log radius) passes.

    Doubling: after padding both ends with ``radius`` times -inf, ``m_k[j]`` holds the max of the ``k`` values
    from ``j`` on; two copies of the largest ``m_k`` with ``k <= 2 * radius + 1`` cover each window exactly.
    """
    width = 2 * radius + 1
    n = x.shape[dim]
    pad_shape = list(x.shape)
    pad_shape[dim] = radius
    pad = torch.full(pad_shape, float("-inf"), dtype=x.dtype, device=x.device)
    m, k = torch.cat([pad, x, pad], dim=dim), 1
    while 2 * k <= width:
        m = torch.maximum(m, _shift(m, k, dim))  # m[j] = max xp[j .. j + 2k - 1]
        k *= 2
    # window of x[i] = xp[i .. i + width - 1] = xp[i .. i + k - 1] U xp[i + width - k .. i + width - 1]
    return torch.maximum(m.narrow(dim, 0, n), m.narrow(dim, width - k, n))


def _disc_offsets(radius: int) -> list[tuple[int, int]]:
    """``(dx, h)`` with ``h = floor(sqrt(radius**2 - dx**2))``: the disc is the union of these columns."""
    out = []
    for dx in range(-radius, radius + 1):
        h = int(np.floor(np.sqrt(radius * radius - dx * dx)))
        while (h + 1) ** 2 + dx * dx <= radius * radius:  # guard against sqrt rounding down too far
            h += 1
        while h * h + dx * dx > radius * radius:
            h -= 1
        out.append((dx, h))
    return out


def _dilate(m: torch.Tensor, radius: int, shape: str) -> torch.Tensor:
    """Grey-value dilation of ``(B, H, W)`` by a square or disc of ``radius``; off-image pixels are ignored."""
    if shape == "square":
        return _running_max(_running_max(m, radius, 1), radius, 2)
    # Disc {dy^2 + dx^2 <= r^2} = union over dx of vertical segments of half-height h(dx). The vertical max of
    # half-height h is built up one step at a time (a 3x1 max-pool per step), and each column offset dx picks
    # it up when h reaches h(dx): about 3 * radius tensor passes, exact for grey values too.
    by_height: dict[int, list[int]] = {}
    for dx, h in _disc_offsets(radius):
        by_height.setdefault(h, []).append(dx)
    out = torch.full_like(m, float("-inf"))
    vert = m
    for h in range(radius + 1):
        if h > 0:
            # max_pool2d pads with -inf, i.e. ignores off-image pixels, as wanted
            vert = F.max_pool2d(vert.unsqueeze(1), kernel_size=(3, 1), stride=1, padding=(1, 0)).squeeze(1)
        for dx in by_height.get(h, ()):
            out = torch.maximum(out, _shift(vert, dx, 2))
    return out


#: Above this radius a binary mask is grown by a disc through distances (see grow_mask); below, by max filters.
_DISC_BY_DISTANCE_FROM = 4


def _grow_binary_disc(b: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary ``(B, H, W)`` mask grown by the disc of ``radius``: the pixels at Euclidean distance <= radius."""
    index, d2, _ = _nearest_support(b, radius + 1)
    grown = (b > 0).flatten().clone()
    grown[index[d2 <= radius * radius]] = True
    return grown.view_as(b).to(b.dtype)


def grow_mask(mask: torch.Tensor, pixels: int, *, shape: str = "disc") -> torch.Tensor:
    """Grow (``pixels > 0``) or shrink (``pixels < 0``) a mask by an exact structuring element.

    ``mask``: ``(B, H, W)`` or ``(H, W)``, float in ``[0, 1]``, 1 = region to replace. Returns the same shape
    and dtype, values in ``[0, 1]``.

    * ``shape="disc"`` (default): the Euclidean digital disc ``{(dy, dx): dy**2 + dx**2 <= pixels**2}``, so a
      region grows by the same distance in every direction (a square element turns circles into rounded squares).
    * ``shape="square"``: the ``(2 * pixels + 1)``-wide square (chessboard distance), as a max-pool.

    Growing is a grey-value dilation (max filter over the element), shrinking a grey-value erosion (min
    filter), computed exactly (not approximated by blurs): with max-pools and shifted maxima, or, for a binary
    mask and a disc of radius > 4, as "Euclidean distance <= pixels" (the same pixels, at a cost that does not
    grow with the radius; the max filter's does, so large discs on large grey masks are slow). Pixels
    outside the image are ignored, so a region touching the border stays touching it when shrunk (the region
    is assumed to continue past the edge, as in ComfyUI's GrowMask). ``grow(-k)`` after ``grow(k)`` is a
    morphological closing and therefore contains the original mask.
    """
    m, was_2d = _as_batch(mask)
    out = m.clone()
    if pixels == 0 or m.numel() == 0:
        return _restore(out, was_2d)
    radius = abs(pixels)
    for ys, xs in _support_crops(m, radius):  # none if all zero: nothing to grow, nothing to shrink
        sub = m[:, ys, xs]
        if bool((sub == 1).all()):
            continue  # all ones up to the image's edges (the crop holds the zero ring otherwise): stays all ones
        if shape == "disc" and radius > _DISC_BY_DISTANCE_FROM and bool(((sub == 0) | (sub == 1)).all()):
            # A binary mask (the usual case) grows by a large disc faster through distances than through a
            # max filter, whose cost is proportional to the radius; same pixels either way. Erosion grows the
            # complement; off the image counts as "no complement", i.e. the region continues past the edge.
            res = _grow_binary_disc(sub, radius) if pixels > 0 else 1.0 - _grow_binary_disc(1.0 - sub, radius)
        else:
            # Erosion = -dilation(-m): with -inf as the off-image value, off-image pixels stay neutral in both.
            res = _dilate(sub, radius, shape) if pixels > 0 else -_dilate(-sub, radius, shape)
        out[:, ys, xs] = res
    return _restore(out, was_2d)


# --- feather ---------------------------------------------------------------------------------------------------------
def feather_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Soften the mask's edge with a smooth ramp that goes **outward only**.

    ``mask``: ``(B, H, W)`` or ``(H, W)``, float in ``[0, 1]``, 1 = region to replace; ``pixels >= 0`` is the
    ramp's width. Returns the same shape and dtype, values in ``[0, 1]``.

    Method (distance based, exact): for every pixel, ``d`` = Euclidean distance to the nearest pixel of the
    region ``mask > 0`` and ``v`` = that pixel's value; the result is
    ``max(mask, v * smoothstep(1 - d / pixels))`` with ``smoothstep(t) = 3t^2 - 2t^3``. Hence:

    * it is never below the input (inside the region, ``d = 0``, the value is unchanged);
    * it is exactly 0 wherever ``d >= pixels`` (so nothing beyond ``pixels`` of the region is touched, which is
      what lets the stitch keep those pixels bit-identical);
    * it falls smoothly from the region's value to 0 (smoothstep has zero slope at both ends, so the seam shows
      no kink on either side).

    Unlike a blur, this does not eat into the region: the pixels to replace are replaced in full, the ramp only
    blends the surrounding ones. Binarize first if the mask has a faint halo you do not want to spread.
    """
    m, was_2d = _as_batch(mask)
    out = m.clone()
    if pixels == 0 or m.numel() == 0:
        return _restore(out, was_2d)
    for ys, xs in _support_crops(m, pixels):
        sub = m[:, ys, xs]
        if bool((sub > 0).all()):
            continue  # the region fills the crop up to the image's edges: no pixel outside it to feather
        index, d2, v = _nearest_support(sub, pixels)
        t = (1.0 - torch.sqrt(d2.to(torch.float64)) / pixels).clamp(0.0, 1.0)
        ramp = (t * t * (3.0 - 2.0 * t)).to(m.dtype)
        feathered = sub.flatten().clone()  # pixels of the region, and those far from it, keep their values
        feathered[index] = v * ramp  # these lie outside the region (value 0), so this is max(mask, v * ramp)
        out[:, ys, xs] = feathered.view_as(sub)
    return _restore(out, was_2d)


# --- connected components (numpy, on runs) -------------------------------------------------------------------------
def _label_runs(region: np.ndarray, diagonal: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Connected components of a 2-D bool array, as runs: ``(run_y, run_x0, run_x1, label)``.

    A run is a horizontal stretch ``[x0, x1)`` of True pixels in row ``y``; runs come sorted by (row, start).
    Runs in consecutive rows are joined when they overlap (4-connectivity) or also when they touch diagonally
    (``diagonal``, 8-connectivity). ``label`` is the smallest run index of each run's component. Cost grows
    with the number of runs, not of pixels.
    """
    h, w = region.shape
    padded = np.zeros((h, w + 2), dtype=np.int8)
    padded[:, 1:-1] = region
    step = np.diff(padded, axis=1)  # +1 where a run starts, -1 one past its end (row-major order)
    run_y, run_x0 = np.nonzero(step == 1)
    _, run_x1 = np.nonzero(step == -1)
    n = run_y.size
    # Run a (row y, [a0, a1)) touches run b (row y + 1, [b0, b1)) iff b0 < a1 + d and b1 > a0 - d, with d = 1 for
    # diagonal contact. On keys row * stride + column (rows sorted, runs in a row disjoint and sorted) the
    # touching b's form a contiguous range, found with two binary searches.
    d = 1 if diagonal else 0
    stride = w + 2
    key0 = run_y * stride + run_x0
    key1 = run_y * stride + run_x1
    lo = np.searchsorted(key1, (run_y + 1) * stride + run_x0 - d, side="right")
    hi = np.searchsorted(key0, (run_y + 1) * stride + run_x1 + d, side="left")
    count = np.maximum(hi - lo, 0)
    src = np.repeat(np.arange(n), count)
    dst = (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)) + np.repeat(lo, count)
    # Union by hooking roots onto the smaller neighbouring root, then pointer jumping, until nothing changes.
    labels = np.arange(n)
    while True:
        low = np.minimum(labels[src], labels[dst])
        new = labels.copy()
        np.minimum.at(new, labels[src], low)
        np.minimum.at(new, labels[dst], low)
        while True:  # pointer jumping: every run points straight at its root
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, labels):
            return run_y, run_x0, run_x1, labels
        labels = new


# --- holes -----------------------------------------------------------------------------------------------------------
def fill_holes(mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Fill the holes of each mask: background pixels that cannot reach the image border are set to 1.

    ``mask``: ``(B, H, W)`` or ``(H, W)``, float in ``[0, 1]``, 1 = region. Region = ``mask >= threshold``;
    background = the rest, connected through its 4 neighbours (the usual pairing with an 8-connected region, and
    SciPy's ``binary_fill_holes`` default). Returns the same shape and dtype; pixels outside holes keep their
    values, holes become 1.

    The background's connected components are labelled (on runs, see :func:`connected_regions`); those with
    no pixel on the border are the holes.
    """
    m, was_2d = _as_batch(mask)
    out = m.clone()
    # Holes lie inside the region's bounding box. Work on that box widened by one pixel: the widened frame is
    # either the image border or background that reaches the border straight outward, so it stands in for the
    # image border exactly.
    crop = _support_crop((m >= threshold).to(m.dtype), 1)
    if crop is None:
        return _restore(out, was_2d)
    ys, xs = crop
    sub = m[:, ys, xs]
    background = (sub < threshold).cpu().numpy()
    holes = np.zeros(background.shape, dtype=bool)
    for i in range(background.shape[0]):
        hh, ww = background[i].shape
        run_y, run_x0, run_x1, labels = _label_runs(background[i], diagonal=False)
        on_border = (run_y == 0) | (run_y == hh - 1) | (run_x0 == 0) | (run_x1 == ww)
        reaches = np.zeros(labels.size, dtype=bool)
        reaches[labels[on_border]] = True
        hole = ~reaches[labels]
        # paint the hole runs: +1 at each start, -1 one past each end, running sum along the row
        delta = np.zeros((hh, ww + 1), dtype=np.int32)
        np.add.at(delta, (run_y[hole], run_x0[hole]), 1)
        np.add.at(delta, (run_y[hole], run_x1[hole]), -1)
        holes[i] = np.cumsum(delta, axis=1)[:, :ww] > 0
    filled = torch.from_numpy(holes).to(sub.device)
    out[:, ys, xs] = torch.where(filled, torch.ones_like(sub), sub)
    return _restore(out, was_2d)


# --- connected regions ---------------------------------------------------------------------------------------------
def connected_regions(mask: torch.Tensor, threshold: float = 0.5) -> list[BBox]:
    """Bounding boxes ``(y0, x0, y1, x1)`` (half-open) of the 8-connected regions of ``mask >= threshold``.

    A batch gives the regions of the union of its masks (one set of windows serves the whole batch). Sorted
    top-to-bottom, then left-to-right. An empty mask gives ``[]``.

    Works on runs (horizontal stretches of region pixels): runs in consecutive rows that touch, diagonally
    included, are joined by union with pointer jumping, all in numpy; cost grows with the number of runs, not
    of pixels.
    """
    m, _ = _as_batch(mask)
    region = (m >= threshold).any(dim=0).cpu().numpy()
    h, w = region.shape
    if not region.any():
        return []
    run_y, run_x0, run_x1, labels = _label_runs(region, diagonal=True)
    roots, inverse = np.unique(labels, return_inverse=True)
    k = roots.size
    y0 = np.full(k, h)
    x0 = np.full(k, w)
    y1 = np.zeros(k, dtype=np.int64)
    x1 = np.zeros(k, dtype=np.int64)
    np.minimum.at(y0, inverse, run_y)
    np.minimum.at(x0, inverse, run_x0)
    np.maximum.at(y1, inverse, run_y + 1)
    np.maximum.at(x1, inverse, run_x1)
    boxes = sorted(zip(y0.tolist(), x0.tolist(), y1.tolist(), x1.tolist(), strict=True))
    logger.debug("connected_regions: %d region(s) from %d run(s)", len(boxes), run_y.size)
    return [(int(a), int(b), int(c), int(d)) for a, b, c, d in boxes]
