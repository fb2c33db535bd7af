"""Checks on user inputs (images, masks, batches) with errors that name the values and the fix.

Conventions: IMAGE (B, H, W, C) float in [0, 1]; MASK (B, H, W) float in [0, 1], 1 = region to replace.

Batch rule (documented in the README): every batched input (source, mask, exemplar) has either 1 item or the same
number N as the others; a single item is used for all N results. Anything else is an error, never a silent pick.
"""

from __future__ import annotations

import math

import torch

from .mask_ops import is_placeholder_mask

#: IMAGE values are 0..1. Resampling (bicubic, Lanczos) overshoots by a few percent and is accepted as it is; values
#: beyond this margin mean another convention (0..255, -1..1, linear HDR) and are refused with the fix.
IMAGE_RANGE_MARGIN = 0.25


def wxh(t: torch.Tensor) -> str:
    """'WIDTHxHEIGHT' of an IMAGE (B, H, W, C) or MASK (B, H, W)."""
    if t.ndim == 4:
        return f"{t.shape[2]}x{t.shape[1]}"
    return f"{t.shape[-1]}x{t.shape[-2]}"


def check_image(image: torch.Tensor, what: str = "Image") -> torch.Tensor:
    """Validate an IMAGE; return it as (B, H, W, 3) float32 (grey repeated, alpha dropped)."""
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"{what} is not an image tensor (got {type(image).__name__}).")
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{what} has shape {tuple(image.shape)}; expected a ComfyUI IMAGE (batch, height, width, 3).")
    if image.shape[0] == 0 or image.shape[1] == 0 or image.shape[2] == 0:
        raise ValueError(f"{what} is empty (shape {tuple(image.shape)}).")
    image = image.float()
    lo, hi = (float(v) for v in torch.aminmax(image))  # one pass; NaN propagates into both, inf shows as inf
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{what} contains NaN or infinite pixels; fix or replace the node that produced it.")
    if lo < -IMAGE_RANGE_MARGIN or hi > 1 + IMAGE_RANGE_MARGIN:
        hint = "divide 8-bit values by 255" if hi > 2 else "map -1..1 values with (x + 1) / 2" if lo < 0 else "clamp it"
        raise ValueError(
            f"{what} has values from {lo:g} to {hi:g}, but a ComfyUI IMAGE holds 0..1; {hint} before this node."
        )
    if image.shape[-1] == 1:
        image = image.expand(-1, -1, -1, 3)
    return image[..., :3]


def check_mask_values(mask: torch.Tensor, what: str = "Mask") -> torch.Tensor:
    """Validate a MASK on its own (rank, finite values); return it as (B, H, W) float32 clamped to [0, 1]."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{what} is not a mask tensor (got {type(mask).__name__}).")
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim == 4 and mask.shape[-1] == 1:
        mask = mask[..., 0]
    if mask.ndim != 3:
        raise ValueError(f"{what} has shape {tuple(mask.shape)}; expected a ComfyUI MASK (batch, height, width).")
    mask = mask.float()
    if not torch.isfinite(mask).all():
        raise ValueError(f"{what} contains NaN or infinite values; fix or replace the node that produced it.")
    return mask.clamp(0, 1)


def check_mask(mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Validate a MASK against its image; return it as (B, H, W) float32 in [0, 1].

    Raises when the mask is the 64x64 placeholder or empty (nothing to paint: an edit with no region would only
    re-encode the photo), when its size differs from the image's, or when it holds NaN.
    """
    if isinstance(mask, torch.Tensor) and mask.ndim in (2, 3):
        hw = tuple(image.shape[1:3])
        if is_placeholder_mask(mask if mask.ndim == 3 else mask[None], hw):
            raise ValueError(
                "No mask: the image has no alpha channel, so LoadImage gave its empty 64x64 placeholder. Paint the "
                "region to replace (right-click the Load Image node -> Open in MaskEditor) or connect a MASK."
            )
    mask = check_mask_values(mask)
    if tuple(mask.shape[-2:]) != tuple(image.shape[1:3]):
        raise ValueError(
            f"Mask is {wxh(mask)} but the image is {wxh(image)}; resize the mask or connect the image's own mask."
        )
    empty = [i for i in range(mask.shape[0]) if not bool((mask[i] >= 0.5).any())]
    if empty:
        raise ValueError(
            f"Mask {'is' if mask.shape[0] == 1 else f'{empty} of the batch are'} empty: no pixel is >= 0.5, so there "
            f"is nothing to replace. Paint the region to replace in the mask editor (white = replace)."
        )
    return mask


def check_finite(**values: float) -> None:
    """Refuse NaN or infinite settings (a prompt posted to the API can hold them; the host's range check lets NaN
    through), naming each one."""
    bad = [f"{k}={v}" for k, v in values.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise ValueError(f"{', '.join(bad)}: settings must be finite numbers; set {'them' if len(bad) > 1 else 'it'} "
                         f"to a number.")


def check_choice(name: str, value, options) -> None:
    """Refuse a value that is not one of a widget's options (ComfyUI 0.3.64 does not check the options of its V3
    combo inputs; later versions refuse such a prompt before it runs)."""
    options = list(options)
    if value not in options:
        shown = ", ".join(map(str, options[:12])) + (", ..." if len(options) > 12 else "")
        raise ValueError(f"{name} must be one of {shown}; got {value!r}.")


def batch_size(**counts: int) -> int:
    """The common batch size N of several inputs, each of which must have 1 or N items."""
    n = max(counts.values())
    bad = {k: v for k, v in counts.items() if v not in (1, n)}
    if bad:
        listing = ", ".join(f"{k}: {v}" for k, v in counts.items())
        raise ValueError(
            f"Batch sizes do not match ({listing}). Each input must have 1 item (used for every result) or the same "
            f"number as the others; split or repeat the batches."
        )
    return n


def repeat_to(t: torch.Tensor, n: int) -> torch.Tensor:
    """Repeat a batch of 1 to n items (a batch of n stays as it is)."""
    return t if t.shape[0] == n else t.expand(n, *t.shape[1:])
