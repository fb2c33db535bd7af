"""Shared pytest setup: the host marker and its skip reason."""

import os

import pytest


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
