"""What the loader offers: the checkpoint files and diffusers folders under a models folder.

Users link model folders into ComfyUI's (``ln -s /data/models models/paint_by_example``), so links are followed; but
a link may point back at its own folder or an ancestor, and a walk that follows links would then never end (ComfyUI
lists a node's options on every ``/object_info`` and every prompt validation, so the whole server would hang). This
walk enters every real folder at most once (by device and inode) and goes at most :data:`MAX_DEPTH` folders deep.
Standard library only.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

#: folders below the models folder the walk enters (a diffusers folder is one level; people nest a few more)
MAX_DEPTH = 8


def list_model_names(base: str | os.PathLike, extensions: tuple[str, ...]) -> list[str]:
    """Names relative to ``base`` ('/'-separated, sorted) of the files ending in one of ``extensions`` and of the
    diffusers folders (a folder below ``base`` holding ``model_index.json``; its own files are not listed apart).

    Hidden entries (``.name``) are skipped; unreadable folders are skipped with a debug message.
    """
    names: set[str] = set()
    seen: set[tuple[int, int]] = set()
    stack = [(os.fspath(base), "", 0)]
    while stack:
        folder, rel, depth = stack.pop()
        try:
            st = os.stat(folder)
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            log.debug("not listing %s: %s", folder, e)
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue  # a link back to a folder already walked
        seen.add((st.st_dev, st.st_ino))
        if rel and any(e.name == "model_index.json" for e in entries):
            names.add(rel)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = f"{rel}/{entry.name}" if rel else entry.name
            try:
                is_dir = entry.is_dir()  # follows links
            except OSError:
                continue
            if is_dir:
                if depth < MAX_DEPTH:
                    stack.append((entry.path, path, depth + 1))
            elif os.path.splitext(entry.name)[1].lower() in extensions:
                names.add(path)
    return sorted(names)
