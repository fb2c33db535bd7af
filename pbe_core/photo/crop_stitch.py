"""Crop-and-stitch: edit a small part of a large photograph at the model's working size, paste it back exactly.

Paint by Example was trained at 512x512 on whole images whose mask box covered 2-80% of the picture. Real
photographs are 4000x3000 and their masks can be anywhere and of any size, so the pipeline

1. cuts a *context window* around the mask (:func:`plan_window` / :func:`plan_windows`),
2. scales it to the working size (:func:`crop_to_window`), where the model edits it,
3. scales the edit back and pastes it through a feathered mask (:func:`stitch`); every pixel outside the
   feathered region is bit-identical to the source.

Conventions (ComfyUI's): IMAGE = float ``(B, H, W, C)`` in ``[0, 1]``; MASK = float ``(B, H, W)`` in ``[0, 1]``,
**1 = region to replace**. Boxes and windows are ``(y0, x0, y1, x1)`` in source pixels, half-open. Sizes are
always ``(height, width)``; nothing here ever swaps the two.

Only torch and the standard library are used (no ComfyUI). Inputs are checked where they enter
(``pbe_core.edit.plan.plan_edit``): these helpers trust them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

BBox = tuple[int, int, int, int]

#: Mask-box coverage of the whole picture in Paint by Example's training data (fraction of the area).
TRAINED_AREA_FRACTION = (0.02, 0.80)


@dataclass(frozen=True)
class CropWindow:
    """A crop of the source and the working size it is edited at.

    ``y0, x0, y1, x1``: the window in source pixels, half-open (rows ``y0..y1-1``, columns ``x0..x1-1``).
    ``target``: ``(height, width)`` of the working image the model sees; both multiples of the planner's
    ``multiple``. ``scale``: working long side / window long side (> 1 means the crop is enlarged).
    ``mask_box``: the mask box ``(y0, x0, y1, x1)`` the window was planned for (for :func:`plan_windows`, the
    union of a cluster's boxes), or None.
    """

    y0: int
    x0: int
    y1: int
    x1: int
    target: tuple[int, int]
    scale: float
    mask_box: BBox | None = None

    def __post_init__(self) -> None:
        if not (0 <= self.y0 < self.y1 and 0 <= self.x0 < self.x1):
            raise ValueError(
                f"CropWindow ({self.y0}, {self.x0}, {self.y1}, {self.x1}) is empty or negative; "
                "y0 < y1 and x0 < x1 are needed, all >= 0."
            )
        th, tw = self.target
        if th < 1 or tw < 1:
            raise ValueError(f"CropWindow target {self.target} must be a positive (height, width).")

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the window in source pixels."""
        return self.height, self.width

    @property
    def box(self) -> BBox:
        return self.y0, self.x0, self.y1, self.x1

    def overlaps(self, other: CropWindow) -> bool:
        """True if the two windows share at least one pixel."""
        return self.y0 < other.y1 and other.y0 < self.y1 and self.x0 < other.x1 and other.x0 < self.x1


# --- planning ------------------------------------------------------------------------------------------------------
def _round_to_multiple(value: float, multiple: int) -> int:
    """Nearest multiple of ``multiple`` (halves round up), at least ``multiple``."""
    return max(multiple, multiple * math.floor(value / multiple + 0.5))


def _working_size(h: int, w: int, working_size: int, multiple: int) -> tuple[int, int]:
    """Long side = ``working_size``; short side = the nearest multiple of ``multiple`` to the same aspect."""
    if h >= w:
        return working_size, _round_to_multiple(working_size * w / h, multiple)
    return _round_to_multiple(working_size * h / w, multiple), working_size


def _place(start: int, length: int, window: int, limit: int) -> int:
    """Start of a ``window``-long span centred on ``[start, start + length)``, shifted to fit ``[0, limit)``."""
    s = start - (window - length) // 2
    return min(max(s, 0), limit - window)


def plan_window(
    image_hw: tuple[int, int],
    mask_bbox: Sequence[int],
    *,
    margin: float = 0.25,
    shape: str = "square",
    working_size: int = 512,
    multiple: int = 8,
    min_area_fraction: float = 0.02,
    min_side: int = 64,
) -> CropWindow:
    """Choose the context window around one mask box and the working size to edit it at.

    ``image_hw``: ``(H, W)`` of the source. ``mask_bbox``: ``(y0, x0, y1, x1)``, half-open, source pixels (see
    ``mask_ops.mask_bbox``). Returns a :class:`CropWindow` inside the image.

    How the window is chosen:

    * **margin** is a fraction of the mask box's *long side*, added on all four sides (``ceil``-ed to whole
      pixels). A fraction keeps the context proportional to the object whatever the photo's resolution (a
      pixel margin would mean eight times less on a 4000-px photo than on a 512-px one); taking it from the long
      side gives thin masks real context on their narrow sides too. The window always contains the mask box
      plus this margin, as far as the image allows.
    * **min_side** (64 source pixels): neither side is smaller. A 3x3-pixel mask would otherwise be blown up
      170 times; 64 px caps the enlargement at ``working_size / 64`` (8x at 512) and keeps some scene around
      the object. Masks of 9x9 px or more (at the default 2%) still reach ``min_area_fraction`` in a 64-px
      window; smaller ones do not, and a warning says so.
    * **shape**: ``"square"`` widens the short side towards the long one (Paint by Example was trained on
      squares), but only as far as the mask box still covers ``min_area_fraction`` of the window: context is
      added, never so much that the object becomes a speck. ``"mask_aspect"`` keeps the margin-expanded box.
    * **min_area_fraction** (0.02, the low end of the training range): the window is never grown past the point
      where the mask box covers less than this. When even the smallest allowed window (mask + margin, or
      ``min_side``) is below it, the window is kept and a warning is logged (grow the mask, or lower the
      margin). A small mask on a huge photo therefore gets a small window around it, not a downscaled photo.
    * The window stays inside the image: at a border it is *shifted*, not shrunk; a side is shrunk only when
      the image itself is smaller, so a mask covering most of the image gets the whole image.

    Working size: the long side is ``working_size`` and the short side the multiple of ``multiple`` nearest to
    the window's aspect (so both are multiples of ``multiple``, at least ``multiple``; the aspect is off by at
    most half a ``multiple`` on the short side).
    """
    h, w = (int(v) for v in image_hw)
    y0, x0, y1, x1 = (int(v) for v in mask_bbox)
    mh, mw = y1 - y0, x1 - x0
    area = mh * mw
    pad = math.ceil(margin * max(mh, mw))
    wh, ww = mh + 2 * pad, mw + 2 * pad
    clamped_to_min = wh < min_side or ww < min_side
    wh, ww = max(wh, min_side), max(ww, min_side)

    if shape == "square" and wh != ww:
        side = max(wh, ww)
        # the short side may grow only while the mask box still covers min_area_fraction of the window
        allowed = side if min_area_fraction == 0 else math.floor(area / (min_area_fraction * side))
        limit = min(side, h if wh < ww else w)  # the image may not have room for the square anyway
        short = min(wh, ww)
        if wh < ww:
            wh = max(wh, min(limit, allowed))
        else:
            ww = max(ww, min(limit, allowed))
        if short <= allowed < limit:  # (below `short` even mask + margin misses the fraction: warned below)
            logger.info(
                "plan_window: kept the window at %dx%d instead of square so that the %dx%d mask box covers at least "
                "%.0f%% of it.",
                wh,
                ww,
                mh,
                mw,
                100 * min_area_fraction,
            )

    # inside the image: shrink only if the image is smaller, then shift (never shrink) at the borders
    wh, ww = min(wh, h), min(ww, w)
    wy0, wx0 = _place(y0, mh, wh, h), _place(x0, mw, ww, w)

    frac = area / (wh * ww)
    if frac < min_area_fraction:
        if clamped_to_min:
            reason = (
                f"the {mh}x{mw}-pixel mask box is too small: even the minimum {min_side}-pixel window makes it only "
                f"{100 * frac:.2f}% of the window"
            )
            fix = "grow the mask (grow_mask, box_mask) or paint a larger region"
        else:
            reason = f"the {mh}x{mw}-pixel mask box covers only {100 * frac:.2f}% of its {wh}x{ww} window"
            fix = "lower the margin (a fraction of the mask box's long side, so thin masks get a wide band)"
        logger.warning(
            "plan_window: %s; Paint by Example was trained on mask boxes covering %.0f-%.0f%% of the picture, so "
            "the edit may be weak. To fix: %s.",
            reason,
            100 * TRAINED_AREA_FRACTION[0],
            100 * TRAINED_AREA_FRACTION[1],
            fix,
        )
    elif frac > TRAINED_AREA_FRACTION[1]:
        logger.info(
            "plan_window: the %dx%d mask box covers %.0f%% of its %dx%d window, leaving the model little context; "
            "Paint by Example was trained on at most %.0f%% (raise the margin if the image has room).",
            mh,
            mw,
            100 * frac,
            wh,
            ww,
            100 * TRAINED_AREA_FRACTION[1],
        )

    target = _working_size(wh, ww, working_size, multiple)
    window = CropWindow(wy0, wx0, wy0 + wh, wx0 + ww, target, working_size / max(wh, ww), (y0, x0, y1, x1))
    logger.debug("plan_window: mask box %s in %dx%d image -> %s", (y0, x0, y1, x1), h, w, window)
    return window


def _union(a: Sequence[int], b: Sequence[int]) -> BBox:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def plan_windows(image_hw: tuple[int, int], mask_bboxes: Sequence[Sequence[int]], **kwargs) -> list[CropWindow]:
    """Windows for several disjoint mask regions: one per cluster of regions whose windows would overlap.

    ``mask_bboxes``: the regions' boxes, e.g. ``mask_ops.connected_regions(mask)``; ``kwargs`` go to
    :func:`plan_window`. Returns the windows sorted top-to-bottom, left-to-right; each one's ``mask_box`` is the
    union of the mask boxes it serves. The windows do not overlap, so they can be edited independently and
    stitched one after another into the same image with the same (whole-image) paste mask.

    Why one window per cluster, not one window for everything: two small masks at opposite corners of a
    4000-px photo would otherwise share one window of nearly the whole photo, each mask shrunk to a few pixels
    of the 512-px working image and below the 2% the model was trained on. Separate windows edit each at full
    working resolution. Regions whose windows would overlap are merged (and re-planned as one box, repeatedly,
    until no two windows overlap) because overlapping windows cannot be edited independently: each crop would
    contain the other's unedited region as context, and the later paste would overwrite the earlier edit's seam.
    """
    boxes = [tuple(int(v) for v in b) for b in mask_bboxes]
    planned: dict[tuple[int, ...], CropWindow] = {}  # plan (and log about) each box once
    while True:
        for b in boxes:
            if b not in planned:
                planned[b] = plan_window(image_hw, b, **kwargs)
        windows = [planned[b] for b in boxes]
        pair = next(
            (
                (i, j)
                for i in range(len(windows))
                for j in range(i + 1, len(windows))
                if windows[i].overlaps(windows[j])
            ),
            None,
        )
        if pair is None:
            break
        i, j = pair
        merged = _union(boxes[i], boxes[j])
        boxes = [b for k, b in enumerate(boxes) if k not in (i, j)] + [merged]
    if len(mask_bboxes) != len(boxes):
        logger.info(
            "plan_windows: %d mask regions -> %d window(s) after merging overlaps", len(mask_bboxes), len(boxes)
        )
    return sorted(windows, key=lambda wnd: (wnd.y0, wnd.x0))


# --- resampling ------------------------------------------------------------------------------------------------------
def _resize_image(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, h, w, C)`` -> ``(B, size[0], size[1], C)``: bicubic, antialiased when shrinking, clamped to [0, 1]."""
    if tuple(x.shape[1:3]) == tuple(size):
        return x.clone()
    y = F.interpolate(x.permute(0, 3, 1, 2), size=size, mode="bicubic", align_corners=False, antialias=True)
    return y.clamp_(0.0, 1.0).permute(0, 2, 3, 1).contiguous()


def _resize_mask(m: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(B, h, w)`` -> ``(B, size[0], size[1])``: bilinear, antialiased when shrinking; values stay in [0, 1]."""
    if tuple(m.shape[1:3]) == tuple(size):
        return m.clone()
    y = F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=False, antialias=True)
    return y.clamp_(0.0, 1.0).squeeze(1)


def crop_to_window(x: torch.Tensor, window: CropWindow) -> torch.Tensor:
    """Cut ``window`` out of an IMAGE or MASK and resize it to ``window.target``.

    ``x``: IMAGE ``(B, H, W, C)`` or MASK ``(B, H, W)``, float in ``[0, 1]``. Returns ``(B, th, tw, C)`` or
    ``(B, th, tw)`` with ``(th, tw) = window.target``, same dtype.

    Filters: images are resampled **bicubic** (sharp when the crop is enlarged, which is the common case for a
    mask on a photo) with **antialiasing** when shrinking (without it, a 4000-px window scaled to 512 aliases
    into moire the model then "repairs"); bicubic overshoots, so the result is clamped to [0, 1]. Masks are
    resampled **bilinear** (antialiased when shrinking), which never leaves [0, 1] and is left fractional:
    binarize it (``mask_ops.binarize``) before giving it to the model, which was trained on hard masks. When the
    window already has the target size, the crop is returned unchanged (no resampling at all).
    """
    sub = x[:, window.y0 : window.y1, window.x0 : window.x1]
    return _resize_image(sub, window.target) if x.ndim == 4 else _resize_mask(sub, window.target)


# --- stitching -------------------------------------------------------------------------------------------------------
def _common_batch(*sizes: int) -> int | None:
    """The batch size several tensors broadcast to (each 1 or the same number), or None if they cannot."""
    out = max(sizes)
    return None if any(s not in (1, out) for s in sizes) else out


def _seam_cut(pm: torch.Tensor, window: CropWindow, h: int, w: int) -> int:
    """Paste-mask pixels on the window's edges that do not lie on the image's border (where the blend is cut)."""
    win = pm[:, window.y0 : window.y1, window.x0 : window.x1] > 0
    n = 0
    if window.y0 > 0:
        n += int(win[:, 0, :].sum())
    if window.y1 < h:
        n += int(win[:, -1, :].sum())
    if window.x0 > 0:
        n += int(win[:, :, 0].sum())
    if window.x1 < w:
        n += int(win[:, :, -1].sum())
    return n


def stitch(
    source: torch.Tensor, edited_crop: torch.Tensor, window: CropWindow, paste_mask: torch.Tensor
) -> torch.Tensor:
    """Paste an edited working-size crop back into the source image through ``paste_mask``.

    ``source``: IMAGE ``(B, H, W, C)`` float in ``[0, 1]``. ``edited_crop``: IMAGE ``(B, th, tw, C)`` with
    ``(th, tw) == window.target`` (what :func:`crop_to_window` gave, after editing). ``paste_mask``: MASK
    ``(B, H, W)`` or ``(H, W)`` in **source** pixels, values in ``[0, 1]``, 1 = take the edit (usually the
    feathered mask; only its part inside the window is used, and a warning is logged if it is still non-zero
    on the window's edge, where the blend would be cut). A batch of 1 in any argument is used for every
    item of the others (one photo, several samples). Returns a new IMAGE ``(B, H, W, C)`` of ``source``'s dtype.

    The crop is resized back to the window (bicubic, antialiased, as in :func:`crop_to_window`), clamped to
    [0, 1] and
    blended, inside the window only, as ``source * (1 - m) + edited * m``. The output is chosen with
    ``torch.where(m > 0, blend, source)`` rather than taken from the arithmetic, so that outside the window and
    wherever ``m == 0`` it is **bit-identical** to the source (``x * 1 + y * 0`` is not always ``x`` in floating
    point, and is NaN when ``y`` is).
    """
    pm = paste_mask.unsqueeze(0) if paste_mask.ndim == 2 else paste_mask
    _, h, w, c = source.shape
    b = max(source.shape[0], edited_crop.shape[0], pm.shape[0])
    ys, xs = slice(window.y0, window.y1), slice(window.x0, window.x1)
    cut = _seam_cut(pm, window, h, w)
    if cut:
        logger.warning(
            "stitch: the paste mask is non-zero on %d pixels of the window %s's inner edges, so the blend is cut off "
            "there and a seam may show; use a smaller feather or a larger margin.",
            cut,
            window.box,
        )

    back = _resize_image(edited_crop.to(source.dtype), window.size).clamp_(0.0, 1.0)  # an IMAGE stays in [0, 1]
    win = blend(source[:, ys, xs], back, pm[:, ys, xs])
    out = source.expand(b, h, w, c).clone()
    out[:, ys, xs] = win.expand(b, *win.shape[1:])
    return out


def blend(source: torch.Tensor, edit: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``source * (1 - m) + edit * m`` where ``mask`` > 0, and ``source`` itself, bit for bit, elsewhere.

    source, edit: IMAGE (B or 1, H, W, C); mask: (B or 1, H, W) in [0, 1]. The paste-back of every edit (whole
    source, window, colour match) goes through here. ``torch.where`` rather than the arithmetic alone, because
    ``x * 1 + y * 0`` is not always ``x`` in floating point.
    """
    m = mask.to(source.dtype).unsqueeze(-1)
    return torch.where(m > 0, source * (1.0 - m) + edit * m, source)
