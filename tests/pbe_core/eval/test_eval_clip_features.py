"""CLIP for the metrics: offline, safe loading; ``clip.load``'s preprocessing; ``encode_image`` features.

Oracles: torchvision's transforms composed as ``clip/clip.py`` composes them, and transformers' own
``CLIPModel.from_pretrained`` + ``vision_model`` + ``visual_projection`` (``tests/support/eval_oracles.py``).
"""

from __future__ import annotations

import json
import shutil

import eval_fixtures
import eval_oracles
import numpy as np
import pytest
import torch
from lightning_pickle import save_malicious_checkpoint
from PIL import Image

from pbe_core.eval.clip_features import ClipLoadError, clip_preprocess, features_of_files, load_clip

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _image(w: int, h: int, mode: str) -> Image.Image:
    rgb = eval_fixtures.photo("astronaut")
    im = Image.fromarray(rgb).resize((w, h), Image.BICUBIC)
    if mode == "RGBA":
        im = im.convert("RGBA")
        im.putalpha(Image.fromarray(np.linspace(0, 255, w * h).reshape(h, w).astype(np.uint8)))
        return im
    return im.convert(mode) if mode != "RGB" else im


# sizes: square (COCOEE's 512), landscape and portrait, a short side already 224 (no resize), one whose long side
# becomes 303 after resizing (crop offset round(39.5) = 40 vs floor 39: where CLIPImageProcessor differs), tiny
SIZES = [(512, 512, "RGB"), (451, 300, "RGB"), (300, 451, "RGB"), (224, 300, "RGB"), (448, 606, "RGB"),
         (606, 448, "L"), (97, 150, "RGBA"), (33, 20, "P"), (225, 1000, "RGB")]


@pytest.mark.parametrize("w, h, mode", SIZES)
def test_preprocess_is_clip_load_transform_bit_for_bit(w, h, mode):
    """Equal (torch.equal) to torchvision's Resize(224, bicubic) -> CenterCrop -> RGB -> ToTensor -> Normalize."""
    im = _image(w, h, mode)
    ours = clip_preprocess(im, 224)
    assert ours.shape == (3, 224, 224) and ours.dtype == torch.float32
    assert torch.equal(ours, eval_oracles.clip_load_transform(224)(im))


def test_preprocess_check_would_catch_a_floor_centre_crop():
    """The size 448x606 resizes to 224x303, where rounding the crop offset (40) and flooring it (39, as transformers'
    CLIPImageProcessor does) differ by a row, so the bit-exact test above tells the two apart."""
    im = _image(448, 606, "RGB")
    resized = im.resize((224, 303), Image.BICUBIC)
    floor = eval_oracles.get_tensor_clip()(resized.crop((0, 39, 224, 263)))
    assert not torch.allclose(floor, eval_oracles.clip_load_transform(224)(im), atol=1e-3)


def test_features_are_encode_image_of_transformers_clipmodel(tiny):
    """get_image_features on our preprocessing == transformers' from_pretrained model on torchvision's (to 1e-6)."""
    encoder = load_clip(tiny["clip"])
    files = sorted(tiny["results"].glob("*.png"))[:5] + sorted(tiny["cocoee"].glob("Ref_3500/*.png"))[:3]
    ours = features_of_files(encoder, files, batch_size=3)
    pixels = torch.stack([eval_oracles.clip_load_transform(224)(Image.open(p)) for p in files])
    reference = eval_oracles.encode_image(tiny["clip"], pixels)
    assert ours.shape == (8, 16) and ours.dtype == np.float64
    np.testing.assert_allclose(ours, reference, rtol=0, atol=1e-6)
    norms = np.linalg.norm(ours, axis=1)
    assert np.all(np.abs(norms - 1) > 0.01), "encode_image is not normalised; FID and QS use it raw"


def test_bin_only_folder_is_read_by_the_safe_loader_not_torch_load(tiny, tmp_path, monkeypatch):
    folder = tmp_path / "clip-bin"
    folder.mkdir()
    shutil.copy(tiny["clip"] / "config.json", folder / "config.json")
    from safetensors.torch import load_file

    torch.save(load_file(tiny["clip"] / "model.safetensors"), folder / "pytorch_model.bin")

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load must not be called on a user file")

    monkeypatch.setattr(torch, "load", refuse)
    encoder = load_clip(folder)
    assert encoder.weights.name == "pytorch_model.bin"
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(encoder.features(pixels), load_clip(tiny["clip"]).features(pixels))


def test_malicious_bin_is_refused_and_runs_nothing(tiny, tmp_path):
    folder, marker = tmp_path / "clip-evil", tmp_path / "pwned"
    folder.mkdir()
    shutil.copy(tiny["clip"] / "config.json", folder / "config.json")
    save_malicious_checkpoint(folder / "pytorch_model.bin", marker, via="system")
    with pytest.raises(ClipLoadError, match=r"unsafe: its pickle names os\.system.*Nothing in it was run"):
        load_clip(folder)
    assert not marker.exists()


def test_folder_errors_name_the_fix(tiny, tmp_path):
    with pytest.raises(ClipLoadError, match="no config.json.*clip-vit-base-patch32"):
        load_clip(tmp_path)
    shutil.copy(tiny["clip"] / "config.json", tmp_path / "config.json")
    with pytest.raises(ClipLoadError, match="none of model.safetensors, pytorch_model.bin"):
        load_clip(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip_vision_model"}))
    with pytest.raises(ClipLoadError, match="whole CLIPModel"):
        load_clip(tmp_path)


def test_tiny_model_is_flagged_as_not_vit_b32(tiny):
    encoder = load_clip(tiny["clip"])
    assert not encoder.is_vit_b32 and encoder.describe()["architecture"]["patch_size"] == 32
