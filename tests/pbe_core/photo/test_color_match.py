"""Colour matching (pbe_core.photo.color_match): Lab against scikit-image, a global shift removed, no ring no-op."""

import numpy as np
import pytest
import torch

from pbe_core.photo import color_match as cm


def test_lab_matches_scikit_image():
    color, data = pytest.importorskip("skimage.color"), pytest.importorskip("skimage.data")
    rgb = torch.from_numpy(data.astronaut()[::4, ::4].astype(np.float32) / 255)
    ours = cm.rgb_to_lab(rgb)
    ref = torch.from_numpy(color.rgb2lab(rgb.numpy().astype(np.float64))).float()
    assert (ours - ref).abs().max() < 1e-2  # Lab units (L 0..100); constants differ in the 4th digit
    back = cm.lab_to_rgb(ours)
    assert (back - rgb).abs().max() < 1e-4


def test_color_match_removes_a_global_shift():
    data = pytest.importorskip("skimage.data")
    src = torch.from_numpy(data.coffee().astype(np.float32) / 255)[None]  # (1, 400, 600, 3)
    region = torch.zeros(1, 400, 600)
    region[:, 150:260, 250:380] = 1
    shifted = (src * torch.tensor([1.08, 0.92, 0.97]) + torch.tensor([0.03, -0.02, 0.04])).clamp(0, 1)
    fixed = cm.color_match(shifted, src, region, ring_width=16)
    inside = region[0].bool()
    before = (shifted[0][inside] - src[0][inside]).abs().mean()
    after = (fixed[0][inside] - src[0][inside]).abs().mean()
    assert after < 0.5 * before, (before, after)
    assert torch.isfinite(fixed).all() and fixed.shape == src.shape


def test_color_match_without_a_ring_is_a_no_op():
    src = torch.rand(1, 32, 32, 3)
    edited = torch.rand(1, 32, 32, 3)
    assert torch.equal(cm.color_match(edited, src, torch.ones(1, 32, 32)), edited)
