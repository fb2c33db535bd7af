"""A toy detection dataset for the training tests: small images of coloured shapes on plain or striped backgrounds,
with their object boxes written in all three annotation formats the trainer reads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image


def toy_images(n: int = 6, size: tuple[int, int] = (96, 128), seed: int = 0):
    """``[(name, uint8 (H, W, 3), [(x0, y0, x1, y1) pixel boxes])]``: one or two shapes per image."""
    rng = np.random.default_rng(seed)
    h, w = size
    out = []
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        bg = rng.integers(0, 256, 3)
        img = np.empty((h, w, 3), np.uint8)
        img[:] = bg
        if i % 2:
            img[(xx // 8) % 2 == 0] = (bg * 0.7).astype(np.uint8)
        boxes = []
        for _ in range(1 + i % 2):
            bw, bh = int(rng.integers(24, 56)), int(rng.integers(20, 48))
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            colour = rng.integers(0, 256, 3)
            if rng.random() < 0.5:  # a rectangle
                img[y0 : y0 + bh, x0 : x0 + bw] = colour
            else:  # an ellipse
                inside = ((xx - x0 - bw / 2) / (bw / 2)) ** 2 + ((yy - y0 - bh / 2) / (bh / 2)) ** 2 <= 1
                img[inside] = colour
            boxes.append((x0, y0, x0 + bw, y0 + bh))
        out.append((f"img{i:02d}", img, boxes))
    return out


def write_toy_dataset(root: Path, n: int = 6, size: tuple[int, int] = (96, 128), seed: int = 0) -> dict[str, Path]:
    """Write the images (PNG for COCO/txt, the same as .jpg-named PNG files for Open Images) and
    ``coco.json``, ``openimages.csv``, ``txt/<stem>.txt``. Returns the paths by name."""
    root = Path(root)
    images = root / "images"
    oi_images = root / "openimages"
    txt = root / "txt"
    for d in (images, oi_images, txt):
        d.mkdir(parents=True, exist_ok=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "shape"}]}
    rows = []
    for i, (name, img, boxes) in enumerate(toy_images(n, size, seed)):
        h, w = img.shape[:2]
        Image.fromarray(img).save(images / f"{name}.png")
        Image.fromarray(img).save(oi_images / f"{name}.jpg", format="PNG")  # lossless; PIL reads by content
        coco["images"].append({"id": i, "file_name": f"{name}.png", "width": w, "height": h})
        lines = []
        for j, (x0, y0, x1, y1) in enumerate(boxes):
            coco["annotations"].append(
                {"id": 100 * i + j, "image_id": i, "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0}
            )
            rows.append({"ImageID": name, "Source": "toy", "LabelName": "/m/shape", "Confidence": 1,
                         "XMin": x0 / w, "XMax": x1 / w, "YMin": y0 / h, "YMax": y1 / h})
            lines.append(f"{x0} {y0} {x1} {y1} shape")
        (txt / f"{name}.txt").write_text("# x_min y_min x_max y_max label\n" + "\n".join(lines) + "\n")
    (root / "coco.json").write_text(json.dumps(coco))
    with open(root / "openimages.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return {"root": root, "images": images, "coco": root / "coco.json", "openimages": root / "openimages.csv",
            "openimages_images": oi_images, "txt": txt}
