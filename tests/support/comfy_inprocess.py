"""Import a real ComfyUI and this pack into the current process (for in-process host tests and the benchmarks).

The HTTP harness (``comfy_host.py``) is how a user's client sees the pack; this is how a node sees the host: the same
``comfy`` modules, model management and samplers, without a server. Steps (docs/design/host.md):

* ComfyUI's folder goes first on ``sys.path`` (its top-level ``nodes.py`` must win over this repository's ``nodes/``
  package, which is only ever imported as part of the pack);
* where torch finds no CUDA GPU, ``comfy.cli_args.args.cpu = True`` *before* ``comfy.model_management`` is imported,
  else a CUDA build of torch on a machine without a GPU fails at import (``--lowvram`` and friends can be set the same
  way); where it finds one, ComfyUI takes the GPU in its default memory mode, as it does for a user
  (:func:`host_device`; ``PBE_HOST_DEVICE`` overrides the choice);
* with ``PBE_NEWER_HOST=1``, the newer-host behaviours of ``tests/support/newer_host_emulation.py`` are applied;
* the pack is imported as a package under a fixed name, as ComfyUI's loader does with a custom-node folder.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACK_MODULE = "comfyui_paint_by_example"


def host_device() -> str:
    """Where the in-process host runs: ``PBE_HOST_DEVICE`` (``cpu`` or ``cuda``) if set, else ``cuda`` where torch
    finds a CUDA GPU and ``cpu`` where it does not (:func:`choose_device`)."""
    import torch

    return choose_device(os.environ.get("PBE_HOST_DEVICE"), torch.cuda.is_available())


def host_version() -> str:
    """``ComfyUI <version> at <path>`` for the ComfyUI of ``COMFYUI_PATH`` (its ``comfyui_version.py``)."""
    path = os.path.join(os.environ["COMFYUI_PATH"], "comfyui_version.py")
    text = Path(path).read_text(encoding="utf-8") if os.path.isfile(path) else ""
    found = [ln.split("=", 1)[1].strip().strip("\"'") for ln in text.splitlines() if ln.startswith("__version__")]
    return f"ComfyUI {found[0] if found else '(version unknown)'} at {os.environ['COMFYUI_PATH']}"


def choose_device(requested: str | None, cuda_available: bool) -> str:
    """The device the host tests run ComfyUI on: ``requested`` (``PBE_HOST_DEVICE``: ``cpu``, ``cuda``, or empty /
    ``auto`` for the machine's choice) and whether the host's torch finds a CUDA GPU. A GPU asked for where there is
    none is an error naming both, not a quiet fall-back to the CPU."""
    device = (requested or "auto").strip().lower()
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"PBE_HOST_DEVICE={device!r}: give cpu, cuda or auto (the default: cuda where torch finds "
                         f"a CUDA GPU)")
    if device == "auto":
        return "cuda" if cuda_available else "cpu"
    if device == "cuda" and not cuda_available:
        raise ValueError("PBE_HOST_DEVICE=cuda, but the host's torch finds no CUDA GPU (torch.cuda.is_available() "
                         "is False); unset PBE_HOST_DEVICE to run on the CPU")
    return device


def import_host(comfy_path: str | os.PathLike | None = None, **cli_args):
    """Put ComfyUI on ``sys.path`` and set its CLI args (``cpu=True`` where :func:`host_device` is the CPU, unless
    given); apply the newer-host mode where it is on; return ``comfy.model_management``.

    Must run before anything imports ``comfy.model_management``; later calls only check that it already has.
    """
    path = str(Path(comfy_path or os.environ["COMFYUI_PATH"]).resolve())
    if path in sys.path:
        sys.path.remove(path)
    sys.path.insert(0, path)
    shadow = sys.modules.get("nodes")
    if shadow is not None and Path(getattr(shadow, "__file__", "") or "").resolve().parent.parent == REPO:
        del sys.modules["nodes"]  # this repository's nodes/ package, imported top-level by mistake
    import comfy.cli_args

    settings = {"cpu": host_device() == "cpu", **cli_args}
    if "comfy.model_management" not in sys.modules:
        for k, v in settings.items():
            setattr(comfy.cli_args.args, k, v)
    import comfy.model_management
    import newer_host_emulation

    if newer_host_emulation.enabled():
        newer_host_emulation.apply()
    return comfy.model_management


def import_pack():
    """The pack's ``nodes`` package, imported as ComfyUI imports a custom-node folder (host must be imported first)."""
    if PACK_MODULE not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            PACK_MODULE, REPO / "__init__.py", submodule_search_locations=[str(REPO)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_MODULE] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{PACK_MODULE}.nodes")


def pack_module(name: str):
    """A submodule of the imported pack, e.g. ``pack_module("nodes.sampler")``."""
    import_pack()
    return importlib.import_module(f"{PACK_MODULE}.{name}")
