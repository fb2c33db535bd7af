"""Fixtures of the fine-tuning's tests (pbe_core/train)."""

import pytest


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    """What a fine-tuning starts from: a tiny SD-1.x checkpoint as ``safetensors`` and ``ckpt``, and CLIP vision
    weights as transformers 5 (``clip``) and 4 (``clip_tf4``) name them."""
    import pbe_fixtures  # here, not on top: a Python without torch still reads this file (the stdlib-only run)

    d = tmp_path_factory.mktemp("sd1")
    return {
        "safetensors": pbe_fixtures.write_sd1_checkpoint(d / "sd1.safetensors"),
        "ckpt": pbe_fixtures.write_sd1_checkpoint(d / "sd1.ckpt"),
        "clip": pbe_fixtures.write_clip_vision(d / "clip.safetensors"),
        "clip_tf4": pbe_fixtures.write_clip_vision(d / "clip4.safetensors", vision_model_level=True),
    }
