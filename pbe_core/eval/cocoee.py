"""The COCOEE benchmark on disk: ids, file names, and where results go.

COCOEE (COCO Exemplar-based image Editing, from the Paint-by-Example paper) is 3,500 COCO val2017 photos, each with
one box and a hand-picked exemplar from COCO train2017. Its layout, as the official repository
(``Fantasy-Studio/Paint-by-Example``) reads it in ``ldm/data/test_bench_dataset.py`` and
``eval_tool/clip_score/test_bench_dataset.py``::

    COCOEE_DIR/
      id_list.npy                       int64 array of the 3,500 COCO image ids, in the order the tools use
                                        (not sorted; the repository ships it as test_bench/id_list.npy)
      GT_3500/{id:012d}_GT.png          the source photo, 512x512 RGB
      Ref_3500/{id:012d}_ref.png        the exemplar, any size
      Mask_bbox_3500/{id:012d}_mask.png the box, 512x512, white (255) = the region to fill

A result for id ``i`` is ``{i:012d}.png`` in the results folder: ``scripts/inference_test_bench.py`` writes it to
``<outdir>/results/`` (and, beside it, ``samples/`` and ``grid/`` copies that the metrics never read).

How the official results were generated (``scripts/inference_test_bench.py`` with ``inference_test_bench.sh``), for
the ``generate`` step to match: PLMS (``--plms``), 50 steps (``--ddim_steps`` default), guidance scale 5
(``--scale 5``; the unconditional branch is the model's learned vector), eta 0, 512x512 (latent 4x64x64), fp16
autocast with the EMA weights; ``seed_everything(42)`` once at start, then batches of 5 in ``id_list`` order with fresh
``torch.randn`` noise per batch (no ``--fixed_code``), so an image's noise depends on its batch position. Inputs: the
GT image in [-1, 1]; the mask as ``1 - ToTensor(mask)`` (1 = keep), resized to 64x64 with torchvision's tensor
``Resize`` (bilinear); the masked image = image * that mask; the exemplar ``PIL.resize((224, 224))`` (Pillow's
default, bicubic for RGB: a squash, no crop) then CLIP-normalised. The decoded image is clamped to [0, 1] and saved
as ``uint8(255 * x)`` (truncated, not rounded), the whole 512x512 frame: nothing is pasted back outside the box.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

ID_LIST = "id_list.npy"
GT_DIR = "GT_3500"
REF_DIR = "Ref_3500"
MASK_DIR = "Mask_bbox_3500"
#: the results sub-folder ``scripts/inference_test_bench.py`` writes (``<outdir>/results``)
RESULTS_DIR = "results"
#: the benchmark's size; a smaller set (``--allow-missing``, a test set) is scored but flagged
COCOEE_SIZE = 3500


class CocoeeError(ValueError):
    """The benchmark folder or the results folder is not as expected; the message names the files and the fix."""


def name_of(image_id: int | str) -> str:
    """The 12-digit zero-padded stem the benchmark's files use: ``1773 -> "000000001773"``."""
    return str(image_id).zfill(12)


@dataclass(frozen=True)
class CocoeeRow:
    """One benchmark entry: ``name`` is the 12-digit stem; the paths are the official files."""

    name: str
    gt: Path
    ref: Path
    mask: Path


def read_ids(root: str | Path) -> list[str]:
    """The benchmark's ids as 12-digit stems, in ``id_list.npy`` order.

    Without ``id_list.npy`` (the Google Drive archive may lack it) the stems of ``GT_3500/*_GT.png``, sorted, are used
    and a warning says so: the order does not change any metric (all are means or set statistics).
    """
    root = Path(root)
    id_file = root / ID_LIST
    if id_file.is_file():
        try:
            ids = np.load(id_file, allow_pickle=False)  # a plain int array; never unpickle a user file
        except ValueError as e:
            raise CocoeeError(f"{id_file} is not a plain integer array ({e}); use the id_list.npy of the repository") from None
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise CocoeeError(f"{id_file} holds a {ids.dtype} array of shape {ids.shape}; expected a 1-D integer array")
        names = [name_of(int(i)) for i in ids]
    elif (root / GT_DIR).is_dir():
        names = sorted(p.name[: -len("_GT.png")] for p in (root / GT_DIR).glob("*_GT.png"))
        log.warning("%s has no %s: using the %d ids found in %s/", root, ID_LIST, len(names), GT_DIR)
    else:
        raise CocoeeError(
            f"{root} is not a COCOEE folder: it has neither {ID_LIST} nor {GT_DIR}/. Give the folder that holds "
            f"{GT_DIR}/, {REF_DIR}/ and {MASK_DIR}/ (the unpacked test_bench archive)."
        )
    if len(set(names)) != len(names):
        raise CocoeeError(f"{id_file} lists some ids twice ({len(names)} entries, {len(set(names))} distinct)")
    if not names:
        raise CocoeeError(f"{root} lists no ids")
    return names


def read_rows(root: str | Path, names: Sequence[str] | None = None) -> list[CocoeeRow]:
    """The rows for ``names`` (default: :func:`read_ids`), checking that every GT, exemplar and mask file exists."""
    root = Path(root)
    names = read_ids(root) if names is None else list(names)
    rows = [
        CocoeeRow(
            name=n,
            gt=root / GT_DIR / f"{n}_GT.png",
            ref=root / REF_DIR / f"{n}_ref.png",
            mask=root / MASK_DIR / f"{n}_mask.png",
        )
        for n in names
    ]
    missing = [p for r in rows for p in (r.gt, r.ref, r.mask) if not p.is_file()]
    if missing:
        shown = ", ".join(str(p.relative_to(root)) for p in missing[:5])
        raise CocoeeError(
            f"{root} lacks {len(missing)} benchmark files (e.g. {shown}); unpack the whole COCOEE archive there"
        )
    return rows


def results_folder(out: str | Path) -> Path:
    """Where the results of ``out`` are: ``out/results/`` as the official script writes, else ``out`` itself."""
    out = Path(out)
    return out / RESULTS_DIR if (out / RESULTS_DIR).is_dir() else out


def result_path(results_dir: str | Path, name: str) -> Path:
    """The official result file name for a row: ``{id:012d}.png``."""
    return Path(results_dir) / f"{name}.png"
