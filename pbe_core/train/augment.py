"""The exemplar's augmentations (the paper's section 3.3): resize to the CLIP size, horizontal flip (p 0.5), rotation
within +-20 degrees, blur (p 0.3), elastic transform (p 0.3); then CLIP normalisation.

The geometric and photometric transforms are albumentations' (``pip install albumentations``, which brings OpenCV);
none is written here. Each call is seeded, so a sample is the same whichever worker draws it and after a resume.
"""

from __future__ import annotations

import numpy as np
import torch

from ..exemplar.preprocess import normalize


def exemplar_transform(size: int = 224):
    """The albumentations pipeline: uint8 (H, W, 3) -> uint8 (size, size, 3)."""
    import albumentations as A
    import cv2

    return A.Compose(
        [
            A.Resize(size, size, interpolation=cv2.INTER_CUBIC),
            A.HorizontalFlip(p=0.5),
            A.Rotate(limit=20, border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0),
            A.Blur(p=0.3),
            A.ElasticTransform(p=0.3),
        ]
    )


def augment_exemplar(transform, crop: np.ndarray, seed: int) -> torch.Tensor:
    """Augment one object crop, uint8 (H, W, 3), with ``transform`` seeded by ``seed``.

    Returns CLIP-normalised float32 (3, size, size) (CLIP mean/std from :mod:`pbe_core.exemplar.preprocess`).
    """
    transform.set_random_seed(seed)
    out = transform(image=np.ascontiguousarray(crop))["image"]
    x = torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1).float().div(255)
    return normalize(x[None])[0]
