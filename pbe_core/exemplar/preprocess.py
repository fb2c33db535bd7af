"""Exemplar image preprocessing: ComfyUI IMAGE tensors -> CLIP-normalised pixels for the exemplar encoder.

Two published conventions (docs/design/inference.md):

* ``squash`` (official inference, the default): the whole exemplar resized to 224x224 with PIL's bicubic filter,
  ignoring its aspect ratio;
* ``center_crop`` (diffusers' ``CLIPImageProcessor``): shortest side to 224 (bicubic), then the central 224x224;
  can cut off parts of a wide exemplar.

And one of ours: ``pad`` keeps the aspect ratio: the long side goes to 224 and the short side is padded evenly with
CLIP's mean colour (which normalises to zero), so a wide object is neither squashed nor cut.

Then scale to [0, 1] and normalise with CLIP's mean and std. Both references resize an 8-bit PIL image with Pillow's
bicubic filter, and so do we: the IMAGE is quantised to 8 bits (exact for pixels LoadImage read from a file, which are
``k / 255``) and resized by Pillow itself (ComfyUI's own dependency), so the pixels the encoder sees are the
references' to the bit.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

PREPROCESS_MODES = ("squash", "center_crop", "pad")

#: what an exemplar mask marks (see :func:`object_mask`)
MASK_MARKS = ("auto", "object", "background")

#: center_crop resizes the whole exemplar before cutting the central square (as transformers does): beyond this aspect
#: ratio that intermediate grows without bound (a 1x8000 strip would become 224 x 1.8 million pixels).
MAX_CENTER_CROP_ASPECT = 64


def _to_nchw_rgb(image: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) in [0, 1] with C in {1, 3, 4} -> (B, 3, H, W) float32 (grey repeated, alpha dropped)."""
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"Exemplar image has shape {tuple(image.shape)}; expected a ComfyUI IMAGE (batch, height, width, 3)."
        )
    if image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"Exemplar image is empty ({image.shape[2]}x{image.shape[1]} pixels).")
    x = image[..., :3] if image.shape[-1] >= 3 else image.expand(*image.shape[:-1], 3)
    x = x.float()
    if not torch.isfinite(x).all():
        raise ValueError("Exemplar image contains NaN or infinite pixels; fix the node that produced it.")
    return x.clamp(0, 1).movedim(-1, 1)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pillow's bicubic resize of (B, 3, H, W) in [0, 1] to ``size`` (height, width), on 8-bit pixels as the references.

    Returns (B, 3, *size) float32 in [0, 1], multiples of 1/255. A side that keeps its length is not resampled (as in
    Pillow).
    """
    from PIL import Image  # ComfyUI's own dependency; imported here so that importing the engine stays light

    nh, nw = size
    pixels = (x.clamp(0, 1) * 255).round().to(torch.uint8).movedim(1, -1).cpu().numpy()
    out = [np.asarray(Image.fromarray(p).resize((nw, nh), Image.Resampling.BICUBIC)) for p in pixels]
    return torch.from_numpy(np.stack(out)).to(x.device).movedim(-1, 1).float() / 255


def normalize(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> CLIP-normalised."""
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def squash(image: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Official preprocessing: resize the whole image to size x size. (B,H,W,C) [0,1] -> (B,3,size,size) in [0,1]."""
    return _resize(_to_nchw_rgb(image), (size, size))


def center_crop(image: torch.Tensor, size: int = 224) -> torch.Tensor:
    """diffusers' preprocessing: shortest side to ``size``, central crop. (B,H,W,C) -> (B,3,size,size) in [0,1]."""
    x = _to_nchw_rgb(image)
    h, w = x.shape[-2:]
    if max(h, w) > MAX_CENTER_CROP_ASPECT * min(h, w):
        raise ValueError(
            f"Exemplar is {w}x{h} pixels: center_crop would keep only a {min(h, w)}x{min(h, w)} square of it "
            f"(aspect over {MAX_CENTER_CROP_ASPECT}:1). Use exemplar preprocessing 'squash', or crop the exemplar to "
            f"the object first."
        )
    # transformers' get_resize_output_image_size: the long side is truncated, not rounded
    if h <= w:
        nh, nw = size, int(size * w / h)
    else:
        nh, nw = int(size * h / w), size
    x = _resize(x, (nh, nw))
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[..., top : top + size, left : left + size]


def pad(image: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Aspect-preserving: long side to ``size``, short side padded with CLIP's mean. (B,H,W,C) -> (B,3,size,size)."""
    x = _to_nchw_rgb(image)
    h, w = x.shape[-2:]
    nh, nw = (size, max(1, round(size * w / h))) if h >= w else (max(1, round(size * h / w)), size)
    x = _resize(x, (nh, nw))
    out = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1).expand(x.shape[0], 3, size, size)
    out = out.clone()
    top, left = (size - nh) // 2, (size - nw) // 2
    out[..., top : top + nh, left : left + nw] = x
    return out


def preprocess(image: torch.Tensor, mode: str = "squash", size: int = 224) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) in [0, 1] -> CLIP-normalised pixels (B, 3, size, size), float32."""
    if mode == "squash":
        x = squash(image, size)
    elif mode == "center_crop":
        x = center_crop(image, size)
    elif mode == "pad":
        x = pad(image, size)
    else:
        raise ValueError(f"Unknown exemplar preprocessing {mode!r}; choose one of {', '.join(PREPROCESS_MODES)}.")
    return normalize(x)


#: the modes whose 224x224 result is 8-bit pixels, so that encoding it again (any mode) changes nothing
BATCH_MODES = ("squash", "center_crop")


def batch_exemplars(images: list[torch.Tensor], mode: str = "squash", size: int = 224) -> torch.Tensor:
    """Exemplars of any sizes as one IMAGE batch (N, size, size, 3) in [0, 1], each resized as ``mode`` does.

    A batch needs one shape, and the encoder sees ``size`` x ``size`` anyway: each image (or batch) is brought there
    by ``squash`` or ``center_crop``, whose pixels are multiples of 1/255. Encoding the batch then gives exactly the
    pixels that encoding each image alone with ``mode`` gives, whatever preprocessing the encoding node is set to:
    at ``size`` x ``size`` all three modes keep the image as it is (no resample, no crop, no padding).
    """
    if mode not in BATCH_MODES:
        raise ValueError(
            f"Unknown exemplar batch mode {mode!r}; choose one of {', '.join(BATCH_MODES)} ('pad' would fill with "
            f"CLIP's mean colour, which is not an 8-bit pixel)."
        )
    fit = squash if mode == "squash" else center_crop
    return torch.cat([fit(image, size) for image in images]).movedim(1, -1)


def object_mask(mask: torch.Tensor, marks: str = "auto") -> torch.Tensor:
    """The exemplar's object mask (B, H, W), 1 = the object, from a mask that marks the object or its background.

    Two natural wirings give opposite masks: painting the object in the mask editor gives 1 on the object, while
    LoadImage of a cut-out PNG (transparent background) gives 1 where the PNG is transparent, i.e. on the
    background (ComfyUI's MASK is 1 - alpha). ``marks``: ``"object"`` or ``"background"`` says which; ``"auto"``
    reads a mask that covers more than half of the exemplar's border, and leaves part of the exemplar free, as a
    cut-out's background (an object rarely touches most of the border; a background nearly always does), any other
    as the object.
    """
    if marks == "object":
        return mask
    if marks == "background":
        return 1.0 - mask
    out = mask.clone()
    for i in range(mask.shape[0]):
        m = mask[i] >= 0.5
        border = torch.cat([m[0], m[-1], m[1:-1, 0], m[1:-1, -1]])
        if bool(border.float().mean() > 0.5) and not bool(m.all()):
            log.info("Paint by Example: exemplar mask %d covers most of the border: read as the background of a "
                     "cut-out (LoadImage gives 1 where a PNG is transparent); set exemplar_mask_marks to 'object' if "
                     "it marks the object", i)
            out[i] = 1.0 - mask[i]
    return out


def apply_exemplar_mask(image: torch.Tensor, mask: torch.Tensor, pad: int = 10) -> torch.Tensor:
    """Cut the object out of the exemplar: keep pixels where ``mask`` >= 0.5, fill the rest with CLIP's mean colour
    (which normalises to zero, the most neutral input for CLIP), and crop to the mask's bounding box plus ``pad``
    pixels (the paper's training crops are padded by up to 10 px).

    image (B, H, W, C) in [0, 1]; mask (B or 1, H, W) in [0, 1], 1 = the object. Returns one (1, h, w, 3) tensor per
    exemplar: the crops differ in size, so each is preprocessed on its own.
    """
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.shape[-2:] != image.shape[1:3]:
        raise ValueError(
            f"Exemplar mask is {mask.shape[-1]}x{mask.shape[-2]} but the exemplar image is "
            f"{image.shape[2]}x{image.shape[1]}; resize the mask or connect the exemplar's own mask."
        )
    if mask.shape[0] not in (1, image.shape[0]):
        raise ValueError(
            f"{mask.shape[0]} exemplar masks for {image.shape[0]} exemplar images; give one mask or one per image."
        )
    if not bool(torch.isfinite(mask).all()):  # else NaN would read as "empty", the wrong diagnosis
        raise ValueError("Exemplar mask contains NaN or infinite values; fix or replace the node that produced it.")
    rgb = image[..., :3] if image.shape[-1] >= 3 else image.expand(*image.shape[:-1], 3)
    fill = torch.tensor(CLIP_MEAN, dtype=rgb.dtype, device=rgb.device)
    out = []
    for i in range(image.shape[0]):
        m = mask[min(i, mask.shape[0] - 1)] >= 0.5
        if not m.any():
            raise ValueError(
                f"Exemplar mask {i} is empty: nothing marks the object. Paint the object in the mask editor or "
                f"disconnect the exemplar mask to use the whole exemplar."
            )
        ys, xs = torch.nonzero(m, as_tuple=True)
        y0, y1 = max(int(ys.min()) - pad, 0), min(int(ys.max()) + 1 + pad, m.shape[0])
        x0, x1 = max(int(xs.min()) - pad, 0), min(int(xs.max()) + 1 + pad, m.shape[1])
        cut = torch.where(m[..., None], rgb[i], fill)
        out.append(cut[y0:y1, x0:x1].unsqueeze(0))
    return out


def prepare_exemplars(
    image: torch.Tensor, mask: torch.Tensor | None = None, mode: str = "squash", size: int = 224, crop_padding: int = 10
) -> torch.Tensor:
    """Everything between a ComfyUI exemplar IMAGE (and optional object MASK, 1 = object) and the encoder.

    image (B, H, W, C) in [0, 1]; mask (1 or B, H, W) or None; ``crop_padding``: pixels kept around the object's box.
    Returns CLIP-normalised pixels (B, 3, size, size).
    """
    if mask is None:
        return preprocess(image, mode, size)
    crops = apply_exemplar_mask(_to_nchw_rgb(image).movedim(1, -1), mask, pad=crop_padding)
    return torch.cat([preprocess(c, mode, size) for c in crops])
