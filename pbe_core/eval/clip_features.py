"""CLIP ViT-B/32 image features, loaded offline, preprocessed as the official evaluation tools do.

All three official metrics use OpenAI CLIP ViT-B/32 (``clip.load("ViT-B/32")``): FID and QS take
``encode_image`` of the whole result, the CLIP score of the box crop and of the exemplar. ``encode_image`` is the
class token after ``ln_post`` times the visual projection: transformers' ``CLIPModel.get_image_features``, 512-d,
not L2-normalised. The model comes from a transformers folder (``openai/clip-vit-base-patch32`` layout:
``config.json`` + ``model.safetensors``, or ``pytorch_model.bin``), read without executing anything in it:
safetensors by safetensors, a ``.bin`` by the pack's restricted unpickler (:func:`pbe_core.weights.checkpoint.read_state_dict`,
which refuses a pickle that names code). Nothing is downloaded.

Preprocessing is written here with Pillow and torch, not taken from transformers' ``CLIPImageProcessor``: that
processor centre-crops at ``(h - 224) // 2`` while torchvision's ``CenterCrop`` (what ``clip.load`` returns) rounds,
so the two differ by a pixel row on some sizes. :func:`clip_preprocess` is ``clip.load``'s transform step for step.

The official tools run CLIP in fp16 on CUDA (``clip.load(..., device="cuda")`` keeps fp16 weights); the default
here is fp32 (``dtype`` chooses), so features differ from theirs by fp16 rounding (about 1e-3 relative).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

#: CLIP's normalisation (``clip/clip.py`` ``_transform``; also the eval tools' ``get_tensor_clip``)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
#: ViT-B/32 as ``clip.load`` builds it: patch, width, depth, projection, input size
VIT_B32 = {"patch_size": 32, "hidden_size": 768, "num_hidden_layers": 12, "projection_dim": 512, "image_size": 224}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class ClipLoadError(ValueError):
    """The CLIP folder cannot be used; the message names the file and the fix."""


def sha256_of(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in 4 MB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class ClipImageEncoder:
    """A loaded CLIP model used only for images.

    ``size`` is the input resolution (224 for ViT-B/32), ``dim`` the feature width (512), ``weights`` the file read and
    ``sha256`` its hash, ``shape`` the architecture numbers compared with :data:`VIT_B32`.
    """

    model: torch.nn.Module
    size: int
    dim: int
    weights: Path
    sha256: str
    shape: dict = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32

    @property
    def is_vit_b32(self) -> bool:
        """True when the architecture is OpenAI's ViT-B/32 (the paper's numbers need exactly that model)."""
        return self.shape == VIT_B32

    def describe(self) -> dict:
        """JSON-ready summary for reports."""
        return {
            "weights": str(self.weights),
            "sha256": self.sha256,
            "architecture": self.shape,
            "vit_b32": self.is_vit_b32,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
        }

    @torch.no_grad()
    def features(self, pixels: torch.Tensor) -> np.ndarray:
        """``encode_image``: (N, 3, size, size) CLIP-normalised float -> (N, dim) float64, not normalised."""
        if pixels.ndim != 4 or pixels.shape[1:] != (3, self.size, self.size):
            raise ValueError(f"CLIP takes (N, 3, {self.size}, {self.size}) pixels, got {tuple(pixels.shape)}")
        out = self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))
        if not torch.is_tensor(out):  # transformers 5 returns the output object, the projection as pooler_output
            out = out.pooler_output
        return out.float().cpu().numpy().astype(np.float64)


def load_clip(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> ClipImageEncoder:
    """Load a transformers CLIP folder (``config.json`` of a ``CLIPModel`` + weights) offline and safely.

    ``model.safetensors`` is preferred; ``pytorch_model.bin`` is read by the pack's restricted unpickler (never
    ``torch.load``). The text tower is loaded too (the checkpoint holds it) but never run.
    """
    from transformers import CLIPConfig, CLIPModel

    from ..weights.checkpoint import CheckpointError, read_state_dict

    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ClipLoadError(
            f"{folder} has no config.json; give the folder of openai/clip-vit-base-patch32 as transformers saves it "
            f"(config.json, model.safetensors, preprocessor_config.json)"
        )
    model_type = json.loads(config_file.read_text()).get("model_type")
    if model_type != "clip":
        raise ClipLoadError(
            f"{config_file} describes a {model_type!r} model; the metrics need a whole CLIPModel (model_type 'clip'), "
            f"e.g. openai/clip-vit-base-patch32"
        )
    weights = next((folder / n for n in WEIGHT_FILES if (folder / n).is_file()), None)
    if weights is None:
        raise ClipLoadError(
            f"{folder} has none of {', '.join(WEIGHT_FILES)}; download model.safetensors of "
            f"openai/clip-vit-base-patch32 into it (sharded checkpoints are not supported)"
        )
    if weights.suffix == ".bin":
        log.info("%s: no model.safetensors, reading %s with the restricted unpickler", folder, weights.name)
    try:
        state_dict = read_state_dict(weights)
    except CheckpointError as e:
        raise ClipLoadError(str(e)) from None
    config = CLIPConfig.from_pretrained(folder, local_files_only=True)
    model = CLIPModel(config)
    result = model.load_state_dict(state_dict, strict=False)
    needed = ("vision_model.", "visual_projection.")
    missing = [k for k in result.missing_keys if k.startswith(needed)]
    if missing:
        raise ClipLoadError(
            f"{weights} lacks {len(missing)} image-tower tensors (e.g. {', '.join(missing[:3])}); it is not the "
            f"checkpoint of {config_file}. Download both from the same model."
        )
    unexpected = [k for k in result.unexpected_keys if not k.endswith("position_ids")]  # old files save the buffer
    if unexpected:
        log.warning("%s: %d tensors not used by CLIPModel (e.g. %s)", weights, len(unexpected), ", ".join(unexpected[:3]))
    model.eval().requires_grad_(False).to(device=device, dtype=dtype)
    vision = config.vision_config
    shape = {
        "patch_size": vision.patch_size,
        "hidden_size": vision.hidden_size,
        "num_hidden_layers": vision.num_hidden_layers,
        "projection_dim": config.projection_dim,
        "image_size": vision.image_size,
    }
    encoder = ClipImageEncoder(
        model=model,
        size=vision.image_size,
        dim=config.projection_dim,
        weights=weights,
        sha256=sha256_of(weights),
        shape=shape,
        device=torch.device(device),
        dtype=dtype,
    )
    if not encoder.is_vit_b32:
        log.warning("%s is not CLIP ViT-B/32 (%s): the numbers are not comparable with the paper's", folder, shape)
    _check_preprocessor(folder)
    return encoder


def _check_preprocessor(folder: Path) -> None:
    """Warn if the folder's preprocessor_config.json normalises differently from CLIP (it is otherwise unused)."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return
    cfg = json.loads(path.read_text())
    for key, expected in (("image_mean", CLIP_MEAN), ("image_std", CLIP_STD)):
        if key in cfg and not np.allclose(cfg[key], expected, atol=1e-7):
            log.warning("%s: %s is %s, not CLIP's %s; CLIP's is used, as the official tools do", path, key, cfg[key], expected)


def normalize(pixels01: torch.Tensor) -> torch.Tensor:
    """(3, H, W) or (N, 3, H, W) float in [0, 1] -> CLIP-normalised (torchvision ``Normalize`` with CLIP's mean/std)."""
    shape = (3, 1, 1)
    mean = torch.tensor(CLIP_MEAN, dtype=pixels01.dtype).view(shape)
    std = torch.tensor(CLIP_STD, dtype=pixels01.dtype).view(shape)
    return (pixels01 - mean) / std


def to_tensor(image) -> torch.Tensor:
    """PIL RGB image -> (3, H, W) float32 in [0, 1] (torchvision ``ToTensor``: uint8 / 255)."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div(255)


def clip_preprocess(image, size: int = 224) -> torch.Tensor:
    """``clip.load``'s transform: a PIL image of any mode/size -> (3, size, size) float32, CLIP-normalised.

    Steps, as ``clip/clip.py`` ``_transform`` composes torchvision's: ``Resize(size, BICUBIC)`` (shorter side to
    ``size``, the longer to ``int(size * long / short)``; untouched if the shorter side already is ``size``),
    ``CenterCrop(size)`` (offset ``int(round((side - size) / 2))``), convert to RGB (after the crop, as there),
    ``ToTensor``, ``Normalize``.
    """
    from PIL import Image

    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    if short != size:
        new_short, new_long = size, int(size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        image = image.resize((new_w, new_h), Image.BICUBIC)
    w, h = image.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    image = image.crop((left, top, left + size, top + size)).convert("RGB")
    return normalize(to_tensor(image))


class _ImageFiles(torch.utils.data.Dataset):
    """Files -> :func:`clip_preprocess` tensors, for a DataLoader (decoding dominates on CPU)."""

    def __init__(self, paths: Sequence[Path], size: int):
        self.paths, self.size = list(paths), size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return clip_preprocess(im, self.size)


def features_of_files(
    encoder: ClipImageEncoder, paths: Sequence[str | Path], batch_size: int = 50, workers: int = 0
) -> np.ndarray:
    """``encode_image`` of each file after :func:`clip_preprocess` -> (len(paths), dim) float64, in ``paths`` order."""
    paths = [Path(p) for p in paths]
    out = np.empty((len(paths), encoder.dim), dtype=np.float64)
    loader = torch.utils.data.DataLoader(_ImageFiles(paths, encoder.size), batch_size=batch_size, num_workers=workers)
    start = 0
    for i, batch in enumerate(loader):
        out[start : start + len(batch)] = encoder.features(batch)
        start += len(batch)
        if i % 20 == 0:
            log.info("CLIP features: %d / %d images", start, len(paths))
    return out
