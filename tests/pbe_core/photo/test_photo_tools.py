"""Exemplar pad preprocessing, exemplar blend and strength, colour match (Lab against scikit-image)."""

import numpy as np
import pytest
import torch

from pbe_core.exemplar import mixing as mix
from pbe_core.exemplar import preprocess as pre
from pbe_core.photo import color_match as cm


def test_pad_keeps_aspect_ratio_and_orientation():
    image = torch.zeros(1, 100, 300, 3)
    image[:, :, :150, 0] = 1.0  # red left half
    out = pre.pad(image)[0]  # (3, 224, 224)
    mean = torch.tensor(pre.CLIP_MEAN).view(3, 1)
    content_h = round(224 * 100 / 300)  # 75
    top = (224 - content_h) // 2
    assert torch.allclose(out[:, : top - 1].flatten(1).mean(1, keepdim=True), mean, atol=1e-6)  # neutral bars
    assert torch.allclose(out[:, top + content_h + 1 :].flatten(1).mean(1, keepdim=True), mean, atol=1e-6)
    band = out[:, top + 2 : top + content_h - 2]
    assert band[0, :, :100].mean() > 0.99 and band[0, :, 124:].mean() < 0.01  # red on the left, not squashed away
    assert pre.preprocess(image, "pad").shape == (1, 3, 224, 224)


def test_prepare_exemplars_cuts_the_object_out_with_its_padding():
    """The object mask: outside it CLIP's mean colour, then the crop of the mask's box plus ``crop_padding`` pixels
    (clipped to the image), preprocessed like a whole exemplar."""
    image = torch.rand(1, 100, 100, 3)
    mask = torch.zeros(1, 100, 100)
    mask[:, 40:60, 45:70] = 1
    cut = torch.where(mask[..., None] > 0, image, torch.tensor(pre.CLIP_MEAN))
    for padding, (y0, y1, x0, x1) in ((0, (40, 60, 45, 70)), (20, (20, 80, 25, 90)), (40, (0, 100, 5, 100))):
        got = pre.prepare_exemplars(image, mask, "squash", crop_padding=padding)
        assert torch.equal(got, pre.preprocess(cut[:, y0:y1, x0:x1], "squash")), padding
    assert not torch.equal(pre.prepare_exemplars(image, mask, "squash"), pre.preprocess(image, "squash"))


def test_blend_and_strength():
    c = torch.randn(3, 1, 8)
    u = torch.randn(1, 1, 8)
    assert torch.allclose(mix.blend(c, [1, 0, 0]), c[:1])
    assert torch.allclose(mix.blend(c, [1, 1, 2]), (c[0] + c[1] + 2 * c[2]).unsqueeze(0) / 4)
    assert torch.allclose(mix.strength(c, u, 0.0), u.expand_as(c))
    assert torch.equal(mix.strength(c, u, 1.0), c)
    assert torch.allclose(mix.strength(c, u, 2.0), 2 * c - u)
    assert mix.parse_weights("", 3) == [1.0, 1.0, 1.0]
    assert mix.parse_weights("1; 2.5, 3", 3) == [1.0, 2.5, 3.0]
    with pytest.raises(ValueError, match="2 exemplar weights"):
        mix.parse_weights("1, 2", 3)
    with pytest.raises(ValueError, match="not numbers"):
        mix.parse_weights("a, b", 2)
    with pytest.raises(ValueError, match="positive sum"):
        mix.parse_weights("1, -1", 2)


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
