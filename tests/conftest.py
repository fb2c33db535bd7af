"""Shared pytest setup: the host marker and its skip reason."""

import os
import sys
from pathlib import Path

import pytest

# the fixture generator and helpers live next to the tests
sys.path.insert(0, str(Path(__file__).parent))


def pytest_collection_modifyitems(config, items):
    comfy = os.environ.get("COMFYUI_PATH")
    if comfy and os.path.isfile(os.path.join(comfy, "main.py")):
        return
    reason = (
        "host test: needs a real ComfyUI; set COMFYUI_PATH to a ComfyUI checkout and run with a Python "
        "that has its requirements (see README, 'Tests against a real ComfyUI')"
    )
    for item in items:
        if "host" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def fixture_paths():
    """Every checkpoint layout of the same tiny random Paint-by-Example model: ``{layout name: path}``."""
    import pbe_fixtures

    return pbe_fixtures.write_all_layouts(pbe_fixtures.fixture_root())


@pytest.fixture(scope="session")
def tiny_modules():
    """The diffusers/transformers modules the fixture files were written from: ``(unet, vae, image_encoder)``."""
    import pbe_fixtures

    return pbe_fixtures.build_modules(pbe_fixtures.TINY, seed=0)
