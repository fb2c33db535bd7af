"""The pack's model folder in the host: ``models/paint_by_example`` (and the folders ``extra_model_paths.yaml`` adds).

Registered with the host's ``folder_paths`` with exactly the loader's file extensions; listed with a walk that enters
every folder once (``pbe_core.weights.model_listing``); names resolved back to paths with a message that says where the file
goes when it is not there.
"""

from __future__ import annotations

import os

import folder_paths

from ...pbe_core.weights.checkpoint import CHECKPOINT_EXTENSIONS
from ...pbe_core.weights.model_listing import list_model_names

FOLDER = "paint_by_example"


def register_model_folder() -> None:
    """Register ``models/paint_by_example`` with our extensions, keeping folders from extra_model_paths.yaml."""
    default = os.path.join(folder_paths.models_dir, FOLDER)
    paths, _ = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    if default not in paths:
        paths = [default, *paths]
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(CHECKPOINT_EXTENSIONS))


def list_models() -> list[str]:
    """Checkpoint files and diffusers folders (a folder holding model_index.json) under every registered path."""
    names: set[str] = set()
    for base in folder_paths.get_folder_paths(FOLDER):
        names.update(list_model_names(base, CHECKPOINT_EXTENSIONS))
    return sorted(names)


def resolve_model(name: str) -> str:
    """Full path of a listed file or folder; a clear error if it is not under models/paint_by_example."""
    if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
        raise ValueError(f"Model name {name!r} must be relative to models/{FOLDER}/.")
    for base in folder_paths.get_folder_paths(FOLDER):
        p = os.path.join(base, name)
        if os.path.exists(p):
            return p
    raise ValueError(
        f"Paint-by-Example model {name!r} was not found in {', '.join(folder_paths.get_folder_paths(FOLDER))}. "
        f"Put the checkpoint (or diffusers folder) into ComfyUI/models/{FOLDER}/ and refresh the page."
    )
