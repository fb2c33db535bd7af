"""The Paint-by-Example edit without the host: plan what the model edits, then paste its result back.

Two functions, one on each side of the model::

    plan = plan_edit(image, mask, settings, batch=n_exemplars)    # 1. check the inputs, choose what to edit
    for window in plan.windows:                                    # 2. the host samples each window:
        edits.append(sample(window.image, window.region))          #    encode, sample, decode to window's size
    result = paste_back(plan, edits)                               # 3. put every edit back through the mask

:func:`plan_edit` is where the inputs are checked, once: the image and mask (values, sizes, batch), the settings. The
helpers it calls (``mask_ops``, ``crop_stitch``) trust what it hands them. It binarises the mask (a value >= 0.5 is
"replace"), grows it (``mask_grow``), feathers it outward for the paste (``mask_feather``), and chooses the windows:

* the whole source, when ``working_size`` is 0 or the source already is at the working size (long side = working
  size, both sides multiples of 8), as the official inference edits it; sides that are not multiples of 8 are padded
  (edge pixels, kept region) and cropped back when pasting;
* otherwise one window per cluster of mask regions (``crop_stitch.plan_windows``), or one for all of them
  (``one_window``, what *Crop for Edit* gives), each scaled to the working size.

Each :class:`EditWindow` holds exactly what the model gets: the pixels (B, h, w, 3) and the region at that size
(B, h, w), 1 = repaint (ComfyUI's polarity; ``conditioning`` turns it into the model's keep-mask). A region
the model could not see is made visible: if a thin stroke, scaled to the working size, covers no latent cell (the
model sees the mask at 1/8 of the pixels), its latent cells are taken whole (see :func:`visible_region`).

:func:`paste_back` consumes exactly the plan: each edit is scaled back to its window (or cropped to the unpadded
source) and blended through the feathered mask with :func:`crop_stitch.blend`, so every pixel outside that mask is
the source's, bit for bit. It refuses an edit that would hand back the source unchanged.

Conventions: IMAGE (B, H, W, C) float in [0, 1]; MASK (B, H, W) float in [0, 1], 1 = region to replace.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..photo import crop_stitch, inputs, mask_ops
from ..photo.color_match import color_match
from .conditioning import keep_mask, latent_keep_mask, pad_to_multiple

log = logging.getLogger(__name__)

#: the VAE's factor: sides of what the model edits are multiples of it, and one latent cell covers LATENT x LATENT
LATENT = 8
WINDOW_SHAPES = ("square", "mask_aspect")
#: the largest grow/shrink and feather the settings accept (the nodes' widget ranges)
MAX_MASK_PIXELS = 256


@dataclass(frozen=True)
class EditSettings:
    """How an edit is laid out (the sampling settings are the host's)."""

    mask_grow: int = 0  # pixels to grow (negative: shrink) the binarised mask
    mask_feather: int = 8  # width of the outward seam of the paste mask; 0 = hard edge
    working_size: int = 512  # long side the model edits at; 0 = the whole source as it is
    context_margin: float = 0.25  # context around the mask box, as a fraction of its long side
    window_shape: str = "square"  # "square" (the training crops' shape) or "mask_aspect"
    one_window: bool = False  # one window for all mask regions instead of one per cluster
    color_match: bool = False  # correct each edit's colour against a ring of the source around the mask

    def check(self) -> None:
        """Refuse settings no edit can use, naming each and the fix."""
        for name in ("mask_grow", "mask_feather", "working_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be a whole number, not {value!r}.")
        if abs(self.mask_grow) > MAX_MASK_PIXELS or not 0 <= self.mask_feather <= MAX_MASK_PIXELS:
            raise ValueError(
                f"mask_grow={self.mask_grow} / mask_feather={self.mask_feather}: grow must be within "
                f"-{MAX_MASK_PIXELS}..{MAX_MASK_PIXELS} pixels and feather within 0..{MAX_MASK_PIXELS}."
            )
        if self.working_size < 0 or self.working_size % LATENT or 0 < self.working_size < 64:
            fix = max(64, math.floor(self.working_size / LATENT + 0.5) * LATENT)
            raise ValueError(
                f"working_size={self.working_size} must be 0 (edit the whole image) or a multiple of {LATENT} of at "
                f"least 64; use {fix}."
            )
        if not (isinstance(self.context_margin, (int, float)) and math.isfinite(self.context_margin)
                and self.context_margin >= 0):  # fmt: skip
            raise ValueError(
                f"context_margin={self.context_margin!r} must be a fraction >= 0 of the mask box's long side (0.25 "
                f"= a quarter)."
            )
        inputs.check_choice("window_shape", self.window_shape, WINDOW_SHAPES)


@dataclass(frozen=True)
class EditWindow:
    """One thing the model edits. ``image``: (B, h, w, 3) with h, w multiples of 8; ``region``: (B, h, w) exactly
    0/1, 1 = repaint. ``crop``: the window of the source it was cut from, or None for the whole (padded) source."""

    image: torch.Tensor
    region: torch.Tensor
    crop: crop_stitch.CropWindow | None


@dataclass(frozen=True)
class EditPlan:
    """What :func:`paste_back` needs: the source (B, H, W, 3), the grown region (B, H, W) 0/1, the feathered paste
    mask (B, H, W) in [0, 1], the windows in editing order, and whether to colour-match."""

    source: torch.Tensor
    region: torch.Tensor
    paste: torch.Tensor
    windows: tuple[EditWindow, ...]
    color_match: bool = False

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.source.shape[1:3])


def plan_edit(image: torch.Tensor, mask: torch.Tensor, settings: EditSettings = EditSettings(),
              batch: int = 1) -> EditPlan:
    """Check the inputs and plan the edit (see the module docstring). ``batch``: how many results are asked for
    (the number of exemplars); source and mask have 1 item or the same number."""
    settings.check()
    image = inputs.check_image(image, "Source image")
    mask = inputs.check_mask(mask, image)
    n = inputs.batch_size(source=image.shape[0], mask=mask.shape[0], exemplar=batch)
    image, mask = inputs.repeat_to(image, n), inputs.repeat_to(mask, n)
    region = mask_ops.binarize(mask)
    if settings.mask_grow:
        region = mask_ops.grow_mask(region, settings.mask_grow)
        if not bool(region.any()):
            raise ValueError(f"mask_grow={settings.mask_grow} shrinks the mask to nothing; use a smaller shrink.")
    paste = mask_ops.feather_mask(region, settings.mask_feather) if settings.mask_feather else region
    h, w = image.shape[1:3]
    if settings.working_size == 0 or (max(h, w) == settings.working_size and h % LATENT == 0 and w % LATENT == 0):
        padded, padded_region, _ = pad_to_multiple(image, region, LATENT)
        windows = (EditWindow(padded, visible_region(padded_region), None),)
    else:
        kw = dict(margin=settings.context_margin, shape=settings.window_shape, working_size=settings.working_size)
        if settings.one_window:
            crops = [crop_stitch.plan_window((h, w), mask_ops.mask_bbox(paste), **kw)]
        else:
            crops = crop_stitch.plan_windows((h, w), mask_ops.connected_regions(paste), **kw)
        windows = tuple(_window(image, region, c) for c in crops)
    return EditPlan(image, region, paste, windows, settings.color_match)


def _window(image: torch.Tensor, region: torch.Tensor, crop: crop_stitch.CropWindow) -> EditWindow:
    log.info(
        "Paint by Example: editing the %dx%d window at (x %d, y %d) at %dx%d",
        crop.width, crop.height, crop.x0, crop.y0, crop.target[1], crop.target[0],
    )  # fmt: skip
    scaled = crop_stitch.crop_to_window(region, crop)
    # >= 0.5 after scaling, as the model was trained on hard masks; where that leaves nothing (a stroke thinner than
    # the scaling), every pixel the region touches at all
    binary = mask_ops.binarize(scaled)
    lost = ~binary.flatten(1).any(1)
    if bool(lost.any()):
        binary[lost] = (scaled[lost] > 0).to(binary.dtype)
    return EditWindow(crop_stitch.crop_to_window(image, crop), visible_region(binary), crop)


def visible_region(region: torch.Tensor) -> torch.Tensor:
    """The region as the model can see it: ``region`` (B, h, w) 0/1 itself, or, for a batch item whose region covers
    no latent cell (its keep-mask at latent size, bilinear as the model's, is above 0.5 everywhere: a stroke a few
    pixels wide), every latent cell it touches taken whole (8x8 pixels each)."""
    keep = latent_keep_mask(keep_mask(region), (region.shape[1] // LATENT, region.shape[2] // LATENT))
    unseen = ~(keep <= 0.5).flatten(1).any(1) & region.flatten(1).any(1)
    if not bool(unseen.any()):
        return region
    cells = F.max_pool2d(region[unseen].unsqueeze(1), LATENT)
    out = region.clone()
    out[unseen] = F.interpolate(cells, scale_factor=LATENT, mode="nearest").squeeze(1)
    log.info(
        "Paint by Example: the mask is too thin for the model to see at this size (it sees 8x8-pixel cells); "
        "editing the whole cells it touches"
    )
    return out


def paste_back(plan: EditPlan, edits: list[torch.Tensor]) -> torch.Tensor:
    """The source with each window's edit pasted back through the feathered mask (see the module docstring).

    ``edits[i]``: the model's result for ``plan.windows[i]``, (B, h, w, 3) in [0, 1] at that window's size.
    Returns (B, H, W, 3) float32; outside the paste mask it is the source, bit for bit.
    """
    if len(edits) != len(plan.windows):
        raise ValueError(f"{len(edits)} edits for {len(plan.windows)} windows; give one edit per window of the plan.")
    result = plan.source
    for window, edit in zip(plan.windows, edits, strict=True):
        if tuple(edit.shape[:3]) != tuple(window.image.shape[:3]):
            raise ValueError(
                f"The edit is {inputs.wxh(edit)} (batch {edit.shape[0]}) but its window is {inputs.wxh(window.image)} "
                f"(batch {window.image.shape[0]}); decode the window's own latent (VAE Decode gives that size)."
            )
        edit = edit[..., :3].float()
        if not bool(torch.isfinite(edit).all()):
            raise ValueError("The edit contains NaN or infinite values (the sampler or VAE overflowed); run the VAE "
                             "in float32 (weight_dtype fp32).")
        if window.crop is None:
            h, w = plan.size
            edit = edit[:, :h, :w]  # the padding goes
            if plan.color_match:
                edit = color_match(edit, plan.source, plan.region)
            result = crop_stitch.blend(result, edit, plan.paste)
        else:
            if plan.color_match:
                edit = color_match(edit, window.image, window.region)
            result = crop_stitch.stitch(result, edit, window.crop, plan.paste)
    if torch.equal(result, plan.source):
        raise ValueError(
            "The edit changed no pixel of the source: nothing of the model's result reached the region. Paint a "
            "larger region, or raise mask_grow."
        )
    return result
