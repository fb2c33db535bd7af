"""Test images as the tests write them to files: PNG bytes of an array, and a smooth photo-like array.

numpy and Pillow only (no torch), so the client's tests can use it on the lowest Python the pack claims.
"""

import io

import numpy as np
from PIL import Image


def png_bytes(image, **save_options) -> bytes:
    """A PNG file's bytes of ``image``: a uint8 array (H, W) or (H, W, C), or a PIL image; ``save_options`` go to
    Pillow's ``save`` (e.g. ``optimize=True``)."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    image.save(buf, format="PNG", **save_options)
    return buf.getvalue()


def make_photo(h, w, seed):
    """An h x w RGB uint8 photo-like image: smooth colour waves plus seeded noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / 9.0), np.cos(yy / 7.0), np.sin((xx + yy) / 13.0)], -1) * 90 + 128
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
