"""Test inputs for ``pbe_core.eval``: a tiny COCOEE-format set from scikit-image photos and a tiny random CLIP.

Nothing is downloaded. The CLIP model is transformers' ``CLIPModel`` with the ViT-B/32 *shape* where it matters to the
code (224 px input, 32 px patches, a visual projection) but tiny widths, seeded random weights, written with
``save_pretrained`` (safetensors) plus a ``preprocessor_config.json``. The benchmark set follows the official layout
and names (``id_list.npy``, ``GT_3500/{id:012d}_GT.png``, ``Ref_3500/{id:012d}_ref.png``,
``Mask_bbox_3500/{id:012d}_mask.png``); its "results" are the GT photos with the box replaced (by the exemplar for
even rows, by another photo's patch for odd ones), so scores differ from row to row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

#: ids as in the official id_list.npy (its first entries, one 12-digit one and made-up ones)
IDS = (1773, 3419, 3658, 4594, 7544, 900100376112, 2218241, 283, 10092, 55150, 71226, 120853)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
          "colorwheel", "camera", "cat", "moon", "coins")
#: boxes (top, left, bottom, right) in 512 px GT coordinates, inclusive of the last pixel; some larger than 224 so that
#: the official resize of the crop downsamples (where antialiasing would matter), some smaller (it upsamples)
BOXES = ((100, 120, 301, 380), (40, 60, 460, 470), (200, 210, 320, 300), (10, 10, 250, 180), (150, 90, 420, 450),
         (300, 300, 500, 500), (60, 200, 200, 480), (5, 5, 506, 506), (256, 32, 400, 200), (90, 90, 170, 410),
         (120, 300, 480, 420), (220, 140, 330, 390))
#: exemplar sizes (w, h): all non-square, so a squash and a centre crop differ
REF_SIZES = ((150, 97), (201, 260), (80, 133), (317, 190), (96, 96 + 41), (240, 161), (123, 77), (300, 211),
             (64, 120), (181, 140), (255, 99), (133, 222))


def photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as (H, W, 3) uint8 RGB."""
    from skimage import data

    img = getattr(data, name)()
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3].astype(np.uint8))


def square(img: np.ndarray, size: int = 512) -> Image.Image:
    """Centre square crop resized to ``size`` (how COCOEE's GT images are 512x512)."""
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return Image.fromarray(img[top : top + s, left : left + s]).resize((size, size), Image.BICUBIC)


def write_tiny_clip(folder: Path, seed: int = 0, projection_dim: int = 16) -> Path:
    """A tiny random ``CLIPModel`` (ViT, 224 px, patch 32) saved as transformers does: config.json, model.safetensors,
    preprocessor_config.json. Weights are redrawn from N(0, 0.5^2) / sqrt(fan_in) so that different images get
    clearly different features (transformers' default init maps every image to nearly the same embedding)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 64, "max_position_embeddings": 8, "bos_token_id": 0, "eos_token_id": 1,
                     "pad_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 224, "patch_size": 32},
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / fan_in**0.5))
            elif "class_embedding" in name:
                p.copy_(torch.randn(p.shape, generator=g))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)  # safetensors
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(folder)
    return folder


def box_mask(box: tuple[int, int, int, int], size: int = 512) -> Image.Image:
    """A benchmark box mask: 255 inside the (inclusive) box, 0 elsewhere, mode L."""
    mask = np.zeros((size, size), dtype=np.uint8)
    top, left, bottom, right = box
    mask[top : bottom + 1, left : right + 1] = 255
    return Image.fromarray(mask)


def write_cocoee(root: Path, n: int = len(IDS)) -> dict:
    """The tiny benchmark under ``root/cocoee`` and results under ``root/out/results``; returns the paths used.

    Also writes ``root/reference/`` (FID reference images: other 512x512 crops of the same photos, flipped) and
    ``root/gmm_train/`` (64 random 224x224 crops of the photos, to fit test GMMs on CLIP features of real images).
    """
    rng = np.random.default_rng(0)
    bench, out = root / "cocoee", root / "out" / "results"
    for d in ("GT_3500", "Ref_3500", "Mask_bbox_3500"):
        (bench / d).mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    ids = np.array(IDS[:n], dtype=np.int64)
    np.save(bench / "id_list.npy", ids)
    photos = [photo(p) for p in PHOTOS]
    names = []
    for i, image_id in enumerate(ids):
        name = str(int(image_id)).zfill(12)
        names.append(name)
        gt = square(photos[i])
        gt.save(bench / "GT_3500" / f"{name}_GT.png", compress_level=1)
        box = BOXES[i]
        box_mask(box).save(bench / "Mask_bbox_3500" / f"{name}_mask.png", compress_level=1)
        donor = photos[(i + 5) % len(photos)]
        w, h = REF_SIZES[i]
        y0, x0 = rng.integers(0, donor.shape[0] - h), rng.integers(0, donor.shape[1] - w)
        ref = Image.fromarray(donor[y0 : y0 + h, x0 : x0 + w])
        ref.save(bench / "Ref_3500" / f"{name}_ref.png", compress_level=1)
        top, left, bottom, right = box
        size = (right - left + 1, bottom - top + 1)
        fill = ref if i % 2 == 0 else Image.fromarray(photos[(i + 3) % len(photos)]).resize(size, Image.BICUBIC)
        result = gt.copy()
        result.paste(fill.resize(size, Image.BICUBIC), (left, top))
        result.save(out / f"{name}.png", compress_level=1)
    reference = root / "reference"
    reference.mkdir(exist_ok=True)
    for i, img in enumerate(photos):
        for j, flip in enumerate((img, img[:, ::-1], img[::-1])):
            square(np.ascontiguousarray(flip)).save(reference / f"ref_{i:02d}_{j}.png", compress_level=1)
    train = root / "gmm_train"
    train.mkdir(exist_ok=True)
    for k in range(64):
        img = photos[k % len(photos)]
        s = int(rng.integers(64, min(img.shape[:2]) + 1))
        y0, x0 = rng.integers(0, img.shape[0] - s + 1), rng.integers(0, img.shape[1] - s + 1)
        Image.fromarray(img[y0 : y0 + s, x0 : x0 + s]).resize((224, 224), Image.BICUBIC).save(train / f"crop_{k:02d}.png", compress_level=1)
    return {"cocoee": bench, "out": root / "out", "results": out, "names": names, "reference": reference,
            "gmm_train": train}


_CACHE: dict = {}


def tiny_set() -> dict:
    """The tiny CLIP and benchmark, written once per test process into a temporary folder (removed at exit).

    Keys: those of :func:`write_cocoee`, plus ``clip`` (the model folder) and ``root``.
    """
    if not _CACHE:
        import atexit
        import shutil
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="pbe-eval-tests-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _CACHE.update(write_cocoee(root), clip=write_tiny_clip(root / "clip"), root=root)
    return dict(_CACHE)
