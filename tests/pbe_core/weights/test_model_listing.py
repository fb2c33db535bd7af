"""The loader's model listing: links are followed, but a link back to its own folder never loops."""

import os
import threading

import pytest

from pbe_core.weights.model_listing import MAX_DEPTH, list_model_names

pytestmark = pytest.mark.stdlib

EXT = (".ckpt", ".safetensors")


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def _listed_within(base, seconds=20):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("names", list_model_names(base, EXT)), daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"listing {base} did not finish within {seconds} s"
    return out["names"]


def test_links_to_their_own_folder_are_entered_once(tmp_path):
    base = tmp_path / "paint_by_example"
    _touch(base / "a.safetensors")
    _touch(base / "sub" / "b.ckpt")
    os.symlink(base, base / "loop1", target_is_directory=True)
    os.symlink(base, base / "loop2", target_is_directory=True)
    os.symlink(base, base / "sub" / "up", target_is_directory=True)  # a link to an ancestor
    assert _listed_within(base) == ["a.safetensors", "sub/b.ckpt"]


def test_linked_folders_diffusers_folders_and_hidden_entries(tmp_path):
    data = tmp_path / "elsewhere"
    _touch(data / "linked.safetensors")
    _touch(data / "pipe" / "model_index.json")
    _touch(data / "pipe" / "unet" / "diffusion_pytorch_model.safetensors")
    base = tmp_path / "models"
    base.mkdir()
    os.symlink(data, base / "shared", target_is_directory=True)
    _touch(base / ".cache" / "x.safetensors")
    _touch(base / "notes.txt")
    assert _listed_within(base) == ["shared/linked.safetensors", "shared/pipe"]


def test_depth_is_bounded(tmp_path):
    deep = tmp_path.joinpath(*[f"d{k}" for k in range(MAX_DEPTH + 2)])
    _touch(deep / "too_deep.ckpt")
    _touch(tmp_path.joinpath(*[f"d{k}" for k in range(MAX_DEPTH)]) / "deepest.ckpt")
    assert _listed_within(tmp_path) == ["/".join(f"d{k}" for k in range(MAX_DEPTH)) + "/deepest.ckpt"]


def test_a_missing_or_unreadable_base_lists_nothing(tmp_path):
    assert list_model_names(tmp_path / "absent", EXT) == []
