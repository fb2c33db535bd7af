"""The training region: the object box extended at random, as a rectangle or a Bezier-curve polygon.

Facts from the paper (section 3.3; docs/design/training.md): the box is extended by up to 40 % of the free space on
each side; half of the time the region is a polygon of four Bezier curves, one per side of the extended box, with
jittered control points (+-5 px at 512 px), otherwise the extended rectangle; then a random square crop around it is
resized to the training size. Written for this project (numpy only).

Coordinates are continuous pixels: pixel (x, y) covers [x, x+1) x [y, y+1) and belongs to a region when its centre
(x + 0.5, y + 0.5) does. Boxes are (x0, y0, x1, y1) floats with x0 < x1, y0 < y1.
"""

from __future__ import annotations

import numpy as np

Box = tuple[float, float, float, float]


def extend_box(box: Box, width: float, height: float, rng: np.random.Generator, max_fraction: float = 0.4) -> Box:
    """Move each side of ``box`` outwards by U(0, ``max_fraction``) of the free space between it and the image edge."""
    x0, y0, x1, y1 = box
    u = rng.uniform(0.0, max_fraction, size=4)
    return (x0 - u[0] * x0, y0 - u[1] * y0, x1 + u[2] * (width - x1), y1 + u[3] * (height - y1))


def square_crop(box: Box, width: int, height: int, rng: np.random.Generator) -> tuple[int, int, int]:
    """A random square ``(left, top, side)`` that contains ``box``, inside the image where the image allows.

    The side is uniform between the box's longer side and the image's shorter side; the position is uniform over the
    placements that contain the box and stay inside the image. When the box is longer than the image's shorter side,
    the square sticks out of the image on that axis (the caller pads), centred on the box.
    """
    x0, y0, x1, y1 = box
    need = max(int(np.ceil(x1)) - int(np.floor(x0)), int(np.ceil(y1)) - int(np.floor(y0)))  # whole pixels
    side = int(rng.integers(need, max(need, min(width, height)) + 1))

    def place(lo_box: float, hi_box: float, size: int) -> int:
        lo = max(0, int(np.ceil(hi_box)) - side)  # the square must reach the box's far side
        hi = min(int(np.floor(lo_box)), size - side)  # ... start before its near side, and end inside the image
        if lo > hi:
            return int(round((lo_box + hi_box - side) / 2))
        return int(rng.integers(lo, hi + 1))

    return place(x0, x1, width), place(y0, y1, height), side


def to_crop(box: Box, crop: tuple[int, int, int], size: int) -> Box:
    """Map a box from image pixels into the crop ``(left, top, side)`` resized to ``size`` x ``size``."""
    left, top, side = crop
    s = size / side
    return ((box[0] - left) * s, (box[1] - top) * s, (box[2] - left) * s, (box[3] - top) * s)


def _cubic(p: np.ndarray, n: int) -> np.ndarray:
    """``n`` points of the cubic Bezier curve with control points ``p`` (4, 2), from p0 up to (not incl.) p3."""
    t = np.linspace(0.0, 1.0, n, endpoint=False)[:, None]
    return (1 - t) ** 3 * p[0] + 3 * (1 - t) ** 2 * t * p[1] + 3 * (1 - t) * t**2 * p[2] + t**3 * p[3]


def bezier_polygon(
    box: Box, rng: np.random.Generator, jitter: float = 5.0, core: Box | None = None, points_per_curve: int = 32
) -> np.ndarray:
    """Vertices (4 * points_per_curve, 2) of a closed polygon of four cubic Bezier curves along the sides of ``box``.

    Each side's curve runs corner to corner with two inner control points at 1/3 and 2/3 of the side; every control
    point (corners included) is moved by U(-j, j) in x and y, j = min(``jitter``, a quarter of the shorter side of
    ``box`` and of ``core``, the object box inside it). The curves lie in the convex hull of their control points, so
    every vertex stays within j of the outline of ``box``; vertices are then clamped into ``box``. Hence the polygon
    lies inside ``box``, and it winds once around every point farther than j from that outline, which includes the
    middle of ``core``: the polygon covers the object's centre.
    """
    x0, y0, x1, y1 = box
    c = core or box
    j = min(jitter, 0.25 * min(x1 - x0, y1 - y0), 0.25 * min(c[2] - c[0], c[3] - c[1]))
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]) + rng.uniform(-j, j, size=(4, 2))
    pts = []
    for i in range(4):
        a, b = corners[i], corners[(i + 1) % 4]
        inner = np.stack([a + (b - a) / 3, a + 2 * (b - a) / 3]) + rng.uniform(-j, j, size=(2, 2))
        pts.append(_cubic(np.stack([a, inner[0], inner[1], b]), points_per_curve))
    poly = np.concatenate(pts)
    poly[:, 0] = poly[:, 0].clip(x0, x1)
    poly[:, 1] = poly[:, 1].clip(y0, y1)
    return poly


def polygon_mask(poly: np.ndarray, height: int, width: int) -> np.ndarray:
    """Rasterise a closed polygon (N, 2) of (x, y) vertices: (height, width) bool, True where a pixel centre is inside
    (even-odd rule)."""
    out = np.zeros((height, width), dtype=bool)
    gx0, gy0 = max(int(np.floor(poly[:, 0].min())), 0), max(int(np.floor(poly[:, 1].min())), 0)
    gx1, gy1 = min(int(np.ceil(poly[:, 0].max())), width), min(int(np.ceil(poly[:, 1].max())), height)
    if gx1 <= gx0 or gy1 <= gy0:
        return out
    px = np.arange(gx0, gx1) + 0.5
    py = (np.arange(gy0, gy1) + 0.5)[:, None]
    inside = np.zeros((gy1 - gy0, gx1 - gx0), dtype=bool)
    xa, ya = poly[:, 0], poly[:, 1]
    xb, yb = np.roll(xa, -1), np.roll(ya, -1)
    for ax, ay, bx, by in zip(xa, ya, xb, yb, strict=True):
        if ay == by:
            continue
        crosses = (ay > py) != (by > py)  # (rows, 1): the edge spans this row's centre line
        if not crosses.any():
            continue
        x_at = ax + (py - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (px < x_at)
    out[gy0:gy1, gx0:gx1] = inside
    return out


def rectangle_mask(box: Box, height: int, width: int) -> np.ndarray:
    """(height, width) bool, True where a pixel centre lies inside ``box``."""
    xs = np.arange(width) + 0.5
    ys = np.arange(height) + 0.5
    return ((ys >= box[1]) & (ys <= box[3]))[:, None] & ((xs >= box[0]) & (xs <= box[2]))[None, :]


def region_mask(ext_box: Box, box: Box, size: int, rng: np.random.Generator, bezier_rate: float = 0.5,
                jitter: float = 5.0) -> tuple[np.ndarray, bool]:
    """The region to repaint, (size, size) bool (True = fill), and whether it is a polygon.

    With probability ``bezier_rate`` a Bezier polygon along ``ext_box`` (:func:`bezier_polygon`), else the rectangle
    ``ext_box``; boxes in crop pixels, ``jitter`` in the same pixels. The pixel holding the centre of the object
    ``box`` is always part of the region: a box thinner than a pixel could otherwise fall between pixel centres.
    """
    if rng.random() < bezier_rate:
        mask, is_poly = polygon_mask(bezier_polygon(ext_box, rng, jitter, core=box), size, size), True
    else:
        mask, is_poly = rectangle_mask(ext_box, size, size), False
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    mask[min(max(int(cy), 0), size - 1), min(max(int(cx), 0), size - 1)] = True
    return mask, is_poly
