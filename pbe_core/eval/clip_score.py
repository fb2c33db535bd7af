"""The paper's CLIP score: how much the box of the result looks like the exemplar, per CLIP ViT-B/32.

As ``eval_tool/clip_score/region_clip_score.py`` with its ``test_bench_dataset.py`` compute it, for each id:

1. result ``{id}.png`` -> RGB -> ``ToTensor`` -> CLIP ``Normalize`` (the whole 512x512 frame, normalised first);
2. the box from ``{id}_mask.png`` read as 8-bit grey: the flat (raster-order) indices of the pixels equal to 255, their
   first and last, unravelled to ``(top, left)`` and ``(bottom, right)``; the crop is ``[top:bottom, left:right]``,
   so the last row and column of the box are *excluded* (the end index is used as an exclusive bound);
3. the crop resized to 224x224 by torchvision's tensor ``Resize`` of the time (torchvision 0.12: bilinear,
   ``align_corners=False``, no antialiasing);
4. the exemplar ``{id}_ref.png`` -> ``PIL.Image.resize((224, 224))`` with Pillow's default filter (bicubic for RGB:
   a squash to 224x224, no centre crop, unlike ``clip.load``'s transform) -> RGB -> ``ToTensor`` -> ``Normalize``;
5. ``encode_image`` of both, each L2-normalised, ``100 * cosine``; the score is the mean over ids (not clipped at 0).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .clip_features import ClipImageEncoder, normalize, to_tensor

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]  # top, left, bottom, right (bottom/right exclusive, as the official crop uses them)


class ClipScoreError(ValueError):
    """A mask or result cannot be scored; the message names the file and the fix."""


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file as (H, W) uint8 grey (Pillow ``convert("L")``; equal to OpenCV's grey read on black/white masks)."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.uint8)


def official_box(mask: np.ndarray, where: str = "mask") -> Box:
    """The crop box as the official tool finds it: first and last pixel == 255 in raster order (see module docstring).

    For a rectangle of 255 this is (top row, left column, bottom row, right column) of the rectangle, the last two used
    as exclusive ends. Raises :class:`ClipScoreError` when no pixel is 255 or the crop would be empty.
    """
    flat = np.flatnonzero(mask.ravel() == 255)
    if flat.size == 0:
        raise ClipScoreError(f"{where} has no pixel equal to 255, so it marks no box; give the benchmark's box mask")
    (top, left), (bottom, right) = (np.unravel_index(i, mask.shape) for i in (flat[0], flat[-1]))
    if bottom <= top or right <= left:
        raise ClipScoreError(
            f"{where}: the box from ({top}, {left}) to ({bottom}, {right}) leaves an empty crop (the official crop "
            f"excludes the last row and column); the box must be at least 2x2 pixels"
        )
    return int(top), int(left), int(bottom), int(right)


def crop_pixels(result, box: Box, size: int = 224) -> torch.Tensor:
    """Result PIL image + box -> (3, size, size) float32 CLIP-normalised crop, steps 1-3 of the module docstring."""
    pixels = normalize(to_tensor(result.convert("RGB")))
    top, left, bottom, right = box
    crop = pixels[:, top:bottom, left:right]
    return F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False, antialias=False)[0]


def exemplar_pixels(exemplar, size: int = 224) -> torch.Tensor:
    """Exemplar PIL image -> (3, size, size) float32 CLIP-normalised, step 4 of the module docstring."""
    # Pillow's default resample (no argument, as the official code calls it): bicubic, nearest for "1"/"P" images
    return normalize(to_tensor(exemplar.resize((size, size)).convert("RGB")))


def cosine_scores(result_features: np.ndarray, exemplar_features: np.ndarray) -> np.ndarray:
    """(N, D) and (N, D) -> (N,) ``100 * cos`` in [-100, 100], float64."""
    a = result_features / np.linalg.norm(result_features, axis=1, keepdims=True)
    b = exemplar_features / np.linalg.norm(exemplar_features, axis=1, keepdims=True)
    return 100.0 * np.einsum("nd,nd->n", a, b)


def clip_scores(
    encoder: ClipImageEncoder,
    results: Sequence[str | Path],
    exemplars: Sequence[str | Path],
    masks: Sequence[str | Path],
    batch_size: int = 50,
) -> np.ndarray:
    """Per-image CLIP scores (N,) in [-100, 100] for aligned lists of result, exemplar and mask files."""
    from PIL import Image

    if not len(results) == len(exemplars) == len(masks):
        raise ValueError(f"{len(results)} results, {len(exemplars)} exemplars and {len(masks)} masks")
    scores = np.empty(len(results), dtype=np.float64)
    for start in range(0, len(results), batch_size):
        crops, refs = [], []
        for i in range(start, min(start + batch_size, len(results))):
            mask = read_mask(masks[i])
            with Image.open(results[i]) as res:
                if res.size != (mask.shape[1], mask.shape[0]):
                    raise ClipScoreError(
                        f"result {results[i]} is {res.size[0]}x{res.size[1]} but its mask {masks[i]} is "
                        f"{mask.shape[1]}x{mask.shape[0]}; the box is in the benchmark's pixels, so save results at "
                        f"the GT size (512x512)"
                    )
                crops.append(crop_pixels(res, official_box(mask, str(masks[i])), encoder.size))
            with Image.open(exemplars[i]) as ref:
                refs.append(exemplar_pixels(ref, encoder.size))
        end = start + len(crops)
        scores[start:end] = cosine_scores(encoder.features(torch.stack(crops)), encoder.features(torch.stack(refs)))
        log.info("CLIP score: %d / %d images", end, len(results))
    return scores
