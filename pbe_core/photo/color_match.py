"""Colour match: remove the colour drift of an edit relative to the photo around it.

The edit is decoded from a latent, so even the part of the picture the model was told to keep comes back slightly
shifted in colour (VAE round trip, the model's own drift); after pasting, the painted region can look tinted against
its surroundings. We measure that drift where it is visible: on a ring of pixels just outside the region, the
decoded edit and the source show the same scene, so their colour statistics should agree. In CIE Lab, per channel,
the edit is mapped ``x -> (x - mean_edit) * (std_src / std_edit) + mean_src`` with the ring's statistics
(Reinhard et al. 2001, "Color transfer between images", restricted to a ring). The object's own colours are kept
relative to each other; only the global shift and contrast of the edit are corrected.
"""

from __future__ import annotations

import torch

from . import mask_ops

# sRGB (D65) <-> XYZ, IEC 61966-2-1
_RGB2XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]])
_WHITE = torch.tensor([0.95047, 1.0, 1.08883])


def _linear(c: torch.Tensor) -> torch.Tensor:
    return torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _gamma(c: torch.Tensor) -> torch.Tensor:
    c = c.clamp(min=0)
    return torch.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1 / 2.4) - 0.055)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB (..., 3) in [0, 1] -> CIE Lab (..., 3): L in [0, 100]."""
    xyz = _linear(rgb.clamp(0, 1)) @ _RGB2XYZ.to(rgb).T / _WHITE.to(rgb)
    d = 6 / 29
    f = torch.where(xyz > d**3, xyz.clamp(min=1e-12) ** (1 / 3), xyz / (3 * d * d) + 4 / 29)
    return torch.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE Lab (..., 3) -> sRGB (..., 3), clamped to [0, 1]."""
    fy = (lab[..., 0] + 16) / 116
    f = torch.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], -1)
    d = 6 / 29
    xyz = torch.where(f > d, f**3, 3 * d * d * (f - 4 / 29)) * _WHITE.to(lab)
    rgb = xyz @ torch.linalg.inv(_RGB2XYZ.to(lab)).T
    return _gamma(rgb).clamp(0, 1)


def ring_mask(region: torch.Tensor, width: int) -> torch.Tensor:
    """Pixels within ``width`` of the region but outside it: (B, H, W) bool."""
    grown = mask_ops.grow_mask(region.float(), width) > 0.5
    return grown & ~(region > 0.5)


def color_match(edited: torch.Tensor, source: torch.Tensor, region: torch.Tensor, ring_width: int = 16,
                max_gain: float = 2.0) -> torch.Tensor:
    """Correct ``edited`` (B, H, W, 3) in [0, 1] so that its ring around ``region`` (B, H, W; 1 = edited) matches the
    colour statistics of ``source`` (B or 1, H, W, 3) there. Returns a new (B, H, W, 3) image; where the ring is
    empty (the region covers the image) the edit is returned unchanged. ``max_gain`` bounds the std ratio."""
    ring = ring_mask(region, ring_width)
    out = edited.clone()
    lab_e = rgb_to_lab(edited.float())
    lab_s = rgb_to_lab(source.float())
    for i in range(edited.shape[0]):
        r = ring[min(i, ring.shape[0] - 1)]
        if int(r.sum()) < 16:
            continue
        e, s = lab_e[i][r], lab_s[min(i, lab_s.shape[0] - 1)][r]
        gain = (s.std(0) / e.std(0).clamp(min=1e-3)).clamp(1 / max_gain, max_gain)
        lab = (lab_e[i] - e.mean(0)) * gain + s.mean(0)
        out[i] = lab_to_rgb(lab).to(out.dtype)
    return out
