"""The report's two pictures, drawn with Pillow alone: a grid of sample rows and a histogram of CLIP scores."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COLUMNS = ("source", "mask", "exemplar", "result")
_INK, _PAPER, _GRID, _BAR, _MEAN = (20, 20, 20), (255, 255, 255), (220, 220, 220), (70, 110, 180), (200, 60, 40)


@dataclass(frozen=True)
class GridRow:
    """One grid row: the four files of :data:`COLUMNS` and a caption (id, score)."""

    source: Path
    mask: Path
    exemplar: Path
    result: Path
    caption: str


def _tile(path: Path, size: int):
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((size, size), Image.BICUBIC)  # keeps the aspect ratio; the exemplar is not square
    tile = Image.new("RGB", (size, size), _PAPER)
    tile.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    return tile


def sample_grid(rows: Sequence[GridRow], tile: int = 160, pad: int = 4, caption_height: int = 16):
    """Rows of source | mask | exemplar | result tiles (each ``tile`` px, aspect kept) with a caption above each row."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    width = len(COLUMNS) * (tile + pad) + pad
    header = caption_height + pad
    height = header + len(rows) * (caption_height + tile + pad) + pad
    grid = Image.new("RGB", (width, height), _PAPER)
    draw = ImageDraw.Draw(grid)
    for c, name in enumerate(COLUMNS):
        draw.text((pad + c * (tile + pad), pad), name, fill=_INK, font=font)
    for r, row in enumerate(rows):
        y = header + r * (caption_height + tile + pad)
        draw.text((pad, y), row.caption, fill=_INK, font=font)
        for c, path in enumerate((row.source, row.mask, row.exemplar, row.result)):
            grid.paste(_tile(path, tile), (pad + c * (tile + pad), y + caption_height))
    return grid


def histogram(values: Sequence[float], title: str, xlabel: str, bins: int = 20, size: tuple[int, int] = (720, 420)):
    """A bar histogram of ``values`` with the mean marked, as a PIL RGB image of ``size``."""
    from PIL import Image, ImageDraw, ImageFont

    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    font = ImageFont.load_default()
    w, h = size
    left, right, top, bottom = 60, 20, 40, 50
    img = Image.new("RGB", size, _PAPER)
    draw = ImageDraw.Draw(img)
    draw.text((left, 12), title, fill=_INK, font=font)
    if values.size == 0:
        draw.text((left, h // 2), "no values", fill=_INK, font=font)
        return img
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    plot_w, plot_h = w - left - right, h - top - bottom
    step = max(1, math.ceil(int(counts.max()) / 4))  # integer count ticks, at most 4 of them
    peak = step * max(1, math.ceil(int(counts.max()) / step))

    def x_of(v: float) -> float:
        return left + (v - lo) / (hi - lo) * plot_w

    for tick in range(step, peak + 1, step):  # horizontal grid lines at whole counts
        y = top + plot_h * (1 - tick / peak)
        draw.line([(left, y), (left + plot_w, y)], fill=_GRID)
        draw.text((8, y - 6), str(tick), fill=_INK, font=font)
    for count, a, b in zip(counts, edges[:-1], edges[1:], strict=True):
        if count:
            y = top + plot_h * (1 - count / peak)
            draw.rectangle([x_of(a) + 1, y, x_of(b) - 1, top + plot_h], fill=_BAR)
    draw.line([(left, top + plot_h), (left + plot_w, top + plot_h)], fill=_INK)
    draw.line([(left, top), (left, top + plot_h)], fill=_INK)
    for v in np.linspace(lo, hi, 6):
        x = x_of(v)
        draw.line([(x, top + plot_h), (x, top + plot_h + 4)], fill=_INK)
        draw.text((x - 14, top + plot_h + 8), f"{v:.1f}", fill=_INK, font=font)
    mean = float(values.mean())
    draw.line([(x_of(mean), top), (x_of(mean), top + plot_h)], fill=_MEAN, width=2)
    draw.text((min(x_of(mean) + 4, w - 120), top + 2), f"mean {mean:.2f}", fill=_MEAN, font=font)
    draw.text((left + plot_w // 2 - 40, h - 18), f"{xlabel} (n = {values.size})", fill=_INK, font=font)
    return img
