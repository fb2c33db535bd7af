"""Optional: standard Inception FID (not the paper's number), by torchmetrics with torch-fidelity's InceptionV3.

Only when the user gives the InceptionV3 FID weights file (torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``,
as ``.pth`` or converted to ``.safetensors``); nothing is downloaded, and without the file or the two packages the
metric is skipped with a message. torch-fidelity opens its weights with ``torch.load(weights_only=False)``, so the
user's file never reaches it: the pack's safe reader (:func:`pbe_core.weights.checkpoint.read_state_dict`) takes the tensors
out, they are re-saved with ``torch.save`` into a private temporary folder, and that file (written here, tensors only)
is what torch-fidelity opens. Images go in as uint8; torchmetrics resizes them to 299x299 (bilinear, antialiased).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

PACKAGES = ("torchmetrics", "torch-fidelity")


class InceptionUnavailable(RuntimeError):
    """Inception FID cannot run here (no weights, no packages); the message says what to install or give."""


def _uint8_batches(paths: Sequence[Path], batch_size: int):
    """Consecutive files of the same size as (B, 3, H, W) uint8 tensors (the metric stacks a batch)."""
    from PIL import Image

    batch: list[np.ndarray] = []
    for path in paths:
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"), dtype=np.uint8)
        if batch and (array.shape != batch[0].shape or len(batch) == batch_size):
            yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)
            batch = []
        batch.append(array)
    if batch:
        yield torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2)


def inception_fid(
    generated: Sequence[str | Path],
    reference: Sequence[str | Path],
    weights: str | Path,
    device: str | torch.device = "cpu",
    batch_size: int = 50,
) -> float:
    """FID on InceptionV3 pool3 (2048-d) features between two lists of image files; raises InceptionUnavailable."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError as e:
        raise InceptionUnavailable(f"Inception FID needs {' and '.join(PACKAGES)} ({e}); pip install {' '.join(PACKAGES)}") from None
    from ..weights.checkpoint import CheckpointError, read_state_dict

    weights = Path(weights)
    try:
        state_dict = read_state_dict(weights)
    except (CheckpointError, OSError) as e:
        raise InceptionUnavailable(f"Inception weights {weights} were refused: {e}") from None
    with tempfile.TemporaryDirectory(prefix="pbe-inception-") as tmp:
        own_copy = Path(tmp) / "inception.pth"
        torch.save({k: v.contiguous() for k, v in state_dict.items()}, own_copy)
        try:
            metric = FrechetInceptionDistance(feature=2048, normalize=False, feature_extractor_weights_path=str(own_copy))
        except (RuntimeError, KeyError) as e:  # load_state_dict: missing/unexpected keys or shapes
            raise InceptionUnavailable(
                f"{weights} is not torch-fidelity's InceptionV3 FID weights ({str(e)[:300]}); give "
                f"weights-inception-2015-12-05-6726825d.pth"
            ) from None
    metric = metric.to(device)
    for real, paths in ((True, reference), (False, generated)):
        for batch in _uint8_batches([Path(p) for p in paths], batch_size):
            metric.update(batch.to(device), real=real)
    return float(metric.compute())
