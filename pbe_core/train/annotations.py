"""Object boxes for training, from three annotation formats, filtered to the paper's 2-80 % of the image.

* **COCO JSON**: ``images`` (``id``, ``file_name`` relative to the image folder, ``width``, ``height``) and
  ``annotations`` (``image_id``, ``bbox`` = [x, y, w, h] in pixels).
* **Open Images CSV** (``*-annotations-bbox.csv``): columns ``ImageID``, ``XMin``, ``XMax``, ``YMin``, ``YMax``
  (normalised to [0, 1]); the image is ``<ImageID>.jpg`` in the image folder.
* **one text file per image**: ``<stem>.txt`` in the annotation folder for the image ``<stem>.<ext>`` in the image
  folder; one box per line, ``x_min y_min x_max y_max`` in pixels (further tokens, e.g. a label, are ignored; ``#``
  starts a comment).

Every box becomes one :class:`BoxRecord` (one box per training sample), its coordinates normalised to [0, 1].
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


class AnnotationError(ValueError):
    """An annotation file is missing or malformed; the message names the file (and line) and the fix."""


@dataclass(frozen=True)
class BoxRecord:
    """One object box. ``box`` = (x0, y0, x1, y1) as fractions of the image's width and height, x0 < x1, y0 < y1;
    ``fraction`` = box area / image area, as computed from the annotation's own numbers."""

    image: str
    box: tuple[float, float, float, float]
    fraction: float


def fraction_in_range(area: float, image_area: float, lo: float, hi: float) -> bool:
    """``lo <= area / image_area <= hi``, both ends included.

    The ends are widened by 1e-9 (relative), far below one pixel of any image, so that a box of exactly 2 % or 80 %
    written in floating point (0.5 - 0.3 is 0.19999999999999998) is kept, and one a pixel smaller or larger is not.
    """
    r = area / image_area
    return lo * (1 - 1e-9) <= r <= hi * (1 + 1e-9)


def _record(image: Path, x0: float, y0: float, x1: float, y1: float, width: float, height: float):
    """Clip a box to the image and normalise it. Returns ``(record, box area, image area)`` in the annotation's own
    units (pixels, or 1.0 for normalised coordinates), or ``None`` for an empty box."""
    x0, x1 = max(0.0, min(x0, width)), max(0.0, min(x1, width))
    y0, y1 = max(0.0, min(y0, height)), max(0.0, min(y1, height))
    if x1 <= x0 or y1 <= y0:
        return None
    area, image_area = (x1 - x0) * (y1 - y0), width * height
    rec = BoxRecord(str(image), (x0 / width, y0 / height, x1 / width, y1 / height), area / image_area)
    return rec, area, image_area


def read_coco(path: str | Path, images: str | Path) -> Iterable[tuple[BoxRecord, float, float]]:
    """Yield ``(record, box area, image area)`` (pixels) for every box of a COCO JSON file."""
    path, images = Path(path), Path(images)
    try:
        data = json.loads(Path(path).read_text())
        info = {im["id"]: (im["file_name"], float(im["width"]), float(im["height"])) for im in data["images"]}
        anns = data["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise AnnotationError(f"{path} is not a COCO annotation file with 'images' and 'annotations' ({e}).") from e
    for a in anns:
        try:
            name, w, h = info[a["image_id"]]
            x, y, bw, bh = (float(v) for v in a["bbox"])
        except (KeyError, TypeError, ValueError) as e:
            raise AnnotationError(f"{path}: annotation {a.get('id', '?')} has no valid image_id/bbox ({e}).") from e
        out = _record(images / name, x, y, x + bw, y + bh, w, h)
        if out is not None:
            yield out


def read_openimages(path: str | Path, images: str | Path) -> Iterable[tuple[BoxRecord, float, float]]:
    """Yield ``(record, box area, 1.0)`` for every row of an Open Images box CSV (coordinates are normalised)."""
    path, images = Path(path), Path(images)
    try:
        f = open(path, newline="")
    except OSError as e:
        raise AnnotationError(f"Cannot read {path}: {e.strerror or e}.") from e
    with f:
        reader = csv.DictReader(f)
        need = {"ImageID", "XMin", "XMax", "YMin", "YMax"}
        if not need <= set(reader.fieldnames or ()):
            raise AnnotationError(
                f"{path} lacks the Open Images columns {sorted(need - set(reader.fieldnames or ()))}; expected a "
                f"'*-annotations-bbox.csv' file."
            )
        for line, row in enumerate(reader, start=2):
            try:
                x0, x1, y0, y1 = (float(row[k]) for k in ("XMin", "XMax", "YMin", "YMax"))
            except (TypeError, ValueError) as e:
                raise AnnotationError(f"{path}, line {line}: box coordinates are not numbers ({e}).") from e
            out = _record(images / f"{row['ImageID']}.jpg", x0, y0, x1, y1, 1.0, 1.0)
            if out is not None:
                yield out


def read_txt_folder(folder: str | Path, images: str | Path) -> Iterable[tuple[BoxRecord, float, float]]:
    """Yield ``(record, box area, image area)`` (pixels) from one ``<stem>.txt`` per image."""
    from PIL import Image

    folder, images = Path(folder), Path(images)
    if not folder.is_dir():
        raise AnnotationError(f"{folder} is not a folder; for data_format 'txt' give the folder of <image stem>.txt files.")
    by_stem = {p.stem: p for p in sorted(images.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}
    for txt in sorted(folder.glob("*.txt")):
        image = by_stem.get(txt.stem)
        if image is None:
            log.warning("%s has no image %s.* in %s; skipped.", txt, txt.stem, images)
            continue
        with Image.open(image) as im:  # reads the header only
            w, h = (float(v) for v in im.size)
        for n, line in enumerate(txt.read_text().splitlines(), start=1):
            tokens = line.split("#", 1)[0].split()
            if not tokens:
                continue
            try:
                x0, y0, x1, y1 = (float(t) for t in tokens[:4])
            except ValueError as e:
                raise AnnotationError(f"{txt}, line {n}: expected 'x_min y_min x_max y_max' in pixels, got {line!r}.") from e
            out = _record(image, x0, y0, x1, y1, w, h)
            if out is not None:
                yield out


READERS = {"coco": read_coco, "openimages": read_openimages, "txt": read_txt_folder}


def load_records(fmt: str, annotations: str | Path, images: str | Path, lo: float = 0.02, hi: float = 0.80) -> list[BoxRecord]:
    """Every box of the annotations whose area is ``lo``..``hi`` of its image (both ends included)."""
    if fmt not in READERS:
        raise AnnotationError(f"Unknown annotation format {fmt!r}; choose one of {', '.join(READERS)}.")
    kept, total = [], 0
    for rec, area, image_area in READERS[fmt](annotations, images):
        total += 1
        if fraction_in_range(area, image_area, lo, hi):
            kept.append(rec)
    log.info("%d of %d boxes cover %g-%g of their image; %d samples.", len(kept), total, lo, hi, len(kept))
    if not kept:
        raise AnnotationError(
            f"No box in {annotations} covers {lo:g}-{hi:g} of its image ({total} boxes read); check data_format, the "
            f"annotation file and min_box_fraction/max_box_fraction."
        )
    return kept
