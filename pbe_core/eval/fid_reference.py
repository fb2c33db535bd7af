"""The FID reference set: CLIP statistics of a folder of real images, cached as ``.npz``.

The paper's reference is COCO test2017 (40,670 images) made square by ``scripts/create_square_gt_for_fid.py``:
torchvision ``Resize(512)`` (shorter side, bilinear on PIL) then ``CenterCrop(512)``, saved as PNG. Give that folder as
``--fid-reference``. As ``fid_score.py`` lists a folder, the files are those directly inside it whose extension is one of
:data:`IMAGE_EXTENSIONS` (lower case, as its glob), sorted.

Computing 40k CLIP features takes a while, so the statistics are saved beside the report as
``fid_reference_<key>.npz`` (``mu``, ``sigma``, ``n``, ``key``). The key is the sha256 of the file list (names, sizes,
modification times), the CLIP weights' sha256, the input size, dtype and :data:`PREPROCESS_VERSION`: changing any of
them computes the statistics again. A ``.npz`` of ``mu``/``sigma`` may also be given directly (pytorch-fid's format);
it is then trusted to come from the same model and preprocessing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .clip_features import ClipImageEncoder, features_of_files
from .fid import feature_statistics

log = logging.getLogger(__name__)

#: ``fid_score.py``'s IMAGE_EXTENSIONS
IMAGE_EXTENSIONS = ("bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp")
#: bump when :func:`pbe_core.eval.clip_features.clip_preprocess` changes what it computes
PREPROCESS_VERSION = "clip-transform-1"


class FidReferenceError(ValueError):
    """The reference folder or statistics file cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class ReferenceStats:
    """``mu`` (D,), ``sigma`` (D, D) float64 of ``n`` images; ``source`` the folder or file; ``cache`` the npz
    written or read (None for a given npz); ``cached`` whether it was read rather than computed."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    source: Path
    key: str
    cache: Path | None
    cached: bool

    def describe(self) -> dict:
        return {"source": str(self.source), "n_images": self.n, "key": self.key,
                "cache": str(self.cache) if self.cache else None, "read_from_cache": self.cached}


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly in ``folder`` as ``fid_score.py`` globs them (``*.{ext}``, lower case), sorted."""
    folder = Path(folder)
    files = sorted(p for ext in IMAGE_EXTENSIONS for p in folder.glob(f"*.{ext}") if p.is_file())
    skipped = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS
               and p.suffix.lstrip(".") not in IMAGE_EXTENSIONS]
    if skipped:
        log.warning("%s: %d images with upper-case extensions (e.g. %s) are skipped, as fid_score.py skips them",
                    folder, len(skipped), skipped[0].name)
    return files


def cache_key(files: list[Path], encoder: ClipImageEncoder) -> str:
    """sha256 (hex) of what the statistics depend on; see the module docstring."""
    listing = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    blob = json.dumps(
        {"files": listing, "clip_sha256": encoder.sha256, "size": encoder.size, "dtype": str(encoder.dtype),
         "preprocess": PREPROCESS_VERSION},
        sort_keys=True, separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _read_npz(path: Path, dim: int) -> tuple[np.ndarray, np.ndarray, int, str]:
    try:
        with np.load(path, allow_pickle=False) as f:
            mu, sigma = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
            n = int(f["n"]) if "n" in f else -1
            key = str(f["key"]) if "key" in f else ""
    except (KeyError, ValueError, OSError) as e:
        raise FidReferenceError(f"{path} is not an FID statistics file with 'mu' and 'sigma' arrays ({e})") from None
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise FidReferenceError(
            f"{path} holds statistics of shape mu {mu.shape}, sigma {sigma.shape}; the CLIP model gives {dim}-d "
            f"features. Compute them from the image folder with the same model (give the folder instead)."
        )
    return mu, sigma, n, key


def reference_statistics(
    encoder: ClipImageEncoder, reference: str | Path, cache_dir: str | Path, batch_size: int = 50, workers: int = 0
) -> ReferenceStats:
    """Statistics of ``reference`` (a folder of images, or a ``.npz`` of ``mu``/``sigma``), cached in ``cache_dir``."""
    reference = Path(reference)
    if reference.is_file() and reference.suffix == ".npz":
        mu, sigma, n, key = _read_npz(reference, encoder.dim)
        log.warning("FID reference statistics read from %s: they must come from the same CLIP model and preprocessing",
                    reference)
        return ReferenceStats(mu, sigma, n, reference, key, None, True)
    if not reference.is_dir():
        raise FidReferenceError(
            f"FID reference {reference} is neither a folder of images nor a .npz of statistics; give the folder of "
            f"512x512 COCO test2017 crops (scripts/create_square_gt_for_fid.py of the official repository)"
        )
    files = list_images(reference)
    if len(files) < 2:
        raise FidReferenceError(f"FID reference folder {reference} has {len(files)} images ({', '.join(IMAGE_EXTENSIONS)}); it needs at least 2")
    key = cache_key(files, encoder)
    cache = Path(cache_dir) / f"fid_reference_{key[:16]}.npz"
    if cache.is_file():
        mu, sigma, n, stored_key = _read_npz(cache, encoder.dim)
        if stored_key == key and n == len(files):
            log.info("FID reference statistics of %d images read from %s", n, cache)
            return ReferenceStats(mu, sigma, n, reference, key, cache, True)
        log.warning("%s does not match the reference folder (key or count differs); computing again", cache)
    log.info("FID reference: CLIP features of %d images in %s", len(files), reference)
    mu, sigma = feature_statistics(features_of_files(encoder, files, batch_size, workers))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, mu=mu, sigma=sigma, n=np.int64(len(files)), key=np.str_(key))
    tmp.replace(cache)
    return ReferenceStats(mu, sigma, len(files), reference, key, cache, False)
