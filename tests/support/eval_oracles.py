"""Independent reference implementations the ``pbe_core.eval`` tests compare against.

Each is built from other libraries, not from ``pbe_core.eval``: torchvision's transforms (what ``clip.load`` composes),
transformers' own ``CLIPModel.from_pretrained`` loading and forward, torchmetrics' FID formula, scikit-learn's
``GaussianMixture.score_samples``. The CLIP constants are typed in again from the official code
(``get_tensor_clip`` in the repository's ``test_bench_dataset.py``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def clip_load_transform(size: int = 224) -> T.Compose:
    """``clip/clip.py`` ``_transform(n_px)``, composed from torchvision exactly as there."""
    return T.Compose([
        T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        lambda im: im.convert("RGB"),
        T.ToTensor(),
        T.Normalize(MEAN, STD),
    ])


def get_tensor_clip() -> T.Compose:
    """The eval tools' ``get_tensor_clip()``: ToTensor then CLIP Normalize."""
    return T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])


@lru_cache(maxsize=4)
def transformers_clip(folder: str):
    """The model as transformers itself loads it (``from_pretrained``, safetensors)."""
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(folder, local_files_only=True).eval()


@torch.no_grad()
def encode_image(folder: str | Path, pixels: torch.Tensor) -> np.ndarray:
    """OpenAI ``encode_image``: post-layernormed class token through the visual projection, float64 numpy."""
    model = transformers_clip(str(folder))
    pooled = model.vision_model(pixel_values=pixels).pooler_output
    return model.visual_projection(pooled).double().numpy()


def official_crop(result_path: Path, mask_path: Path, inclusive: bool = False, antialias: bool = False,
                  size: int = 224) -> torch.Tensor:
    """``test_bench_dataset.py``'s result crop, from torchvision and numpy: rows/cols of the first and last 255 pixel
    (``np.argwhere`` lists pixels in raster order), ``[r0:r1, c0:c1]``, torchvision tensor ``Resize``.
    ``inclusive``/``antialias`` give the deliberately wrong variants."""
    with Image.open(result_path) as im:
        result = get_tensor_clip()(im.convert("RGB"))
    with Image.open(mask_path) as im:
        mask = np.asarray(im.convert("L"))
    hits = np.argwhere(mask == 255)
    (r0, c0), (r1, c1) = hits[0], hits[-1]
    extra = 1 if inclusive else 0
    crop = result[:, r0 : r1 + extra, c0 : c1 + extra]
    return T.Resize([size, size], interpolation=T.InterpolationMode.BILINEAR, antialias=antialias)(crop)


def official_exemplar(ref_path: Path, squash: bool = True, size: int = 224) -> torch.Tensor:
    """``Image.open(ref).resize((224, 224)).convert("RGB")`` then ToTensor + Normalize; ``squash=False`` is the wrong
    variant that uses ``clip.load``'s resize-and-centre-crop instead."""
    with Image.open(ref_path) as image:
        if not squash:
            return clip_load_transform(size)(image)
        return get_tensor_clip()(image.resize((size, size)).convert("RGB"))


def cosine100(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """100 x cosine similarity by torch's own function."""
    return 100.0 * torch.nn.functional.cosine_similarity(torch.from_numpy(a), torch.from_numpy(b), dim=1).numpy()


def torchmetrics_fid(mu1, sigma1, mu2, sigma2) -> float:
    """torchmetrics' FID formula (trace of sqrt via eigenvalues of S1 S2), float64."""
    from torchmetrics.image.fid import _compute_fid

    t = [torch.as_tensor(np.asarray(x), dtype=torch.float64) for x in (mu1, sigma1, mu2, sigma2)]
    return float(_compute_fid(*t))
