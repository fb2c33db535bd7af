"""Replacing the ``forward`` of UNet modules on a clone of a host MODEL, the host's way.

ComfyUI 0.3.64 ``comfy/model_patcher.py`` ``ModelPatcher.add_object_patch``: the replacement is installed while the
host has the clone patched and removed afterwards; no host function is touched. Used by the single-token
cross-attention and the shared CFG prefix.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import torch


def clone_with_forward_patches(
    model, find_paths: Callable[[torch.nn.Module], list[str]], make_patch: Callable[[torch.nn.Module, Callable], object]
):
    """``(clone, paths)``: a clone of ``model`` whose module at ``diffusion_model.<path>`` (for each path
    ``find_paths`` gives for the clone's UNet) has its ``forward`` replaced by ``make_patch(module, fallback)``.

    ``fallback`` is the forward the patch replaces: the clone's own object patch for that key if another pack set one,
    else the module's class forward (never whatever happens to be installed on the shared module at this moment,
    which may belong to another clone).
    """
    m = model.clone()
    paths = find_paths(m.get_model_object("diffusion_model"))
    for path in paths:
        key = f"diffusion_model.{path}.forward"
        module = m.get_model_object(f"diffusion_model.{path}")
        fallback = m.object_patches.get(key) or types.MethodType(type(module).forward, module)
        m.add_object_patch(key, make_patch(module, fallback))
    return m, paths
