"""Fixtures for the host tests: one headless ComfyUI for the session, with the pack, the probe pack and every tiny
fixture checkpoint layout; test images uploaded through the API."""

from pathlib import Path

import numpy as np
import pbe_fixtures
import pytest
from comfy_host import temporary_server
from host_util import BOX, SIZE, make_photo, png_bytes

HERE = Path(__file__).resolve().parent

@pytest.fixture(scope="session")
def comfy_server():
    paths = pbe_fixtures.write_all_layouts(pbe_fixtures.fixture_root())
    with temporary_server(models=paths, extra_packs={"pbe_test_probe": HERE.parent / "support" / "host_probe"}) as server:
        yield server


@pytest.fixture(scope="session")
def images(comfy_server):
    """Uploads: 'source.png' (RGBA, alpha 0 = region), 'exemplar.png' (224x224), 'exemplar2.png'. Returns arrays."""
    src = make_photo(SIZE, SIZE, 0)
    alpha = np.full((SIZE, SIZE), 255, np.uint8)
    y0, y1, x0, x1 = BOX
    alpha[y0:y1, x0:x1] = 0
    rgba = np.dstack([src, alpha])
    ex1 = make_photo(224, 224, 1)
    ex2 = 255 - make_photo(224, 224, 2)
    for name, arr in (("source.png", rgba), ("source_rgb.png", src), ("exemplar.png", ex1), ("exemplar2.png", ex2)):
        comfy_server.upload(name, png_bytes(arr))
    region = np.zeros((SIZE, SIZE), np.float32)
    region[y0:y1, x0:x1] = 1
    return {"source": src, "region": region, "exemplar": ex1, "exemplar2": ex2}
