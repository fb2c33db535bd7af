"""The exemplar's preprocessing (pbe_core.exemplar.preprocess): padding to a square, and cutting the object out of
an exemplar photo by its mask."""

import torch

from pbe_core.exemplar import preprocess as pre


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
