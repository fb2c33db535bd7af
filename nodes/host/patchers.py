"""The host's model patcher, as its own loaders use it (for MODEL, VAE and the exemplar encoder alike)."""

from __future__ import annotations

import comfy.model_patcher


def patcher_class():
    """The patcher class the host's own loaders wrap models in: ``comfy.model_patcher.CoreModelPatcher`` where it
    exists (0.38-era ``comfy/model_patcher.py``; ``main.py`` makes it ``ModelPatcherDynamic`` under dynamic VRAM,
    which falls back to the static patcher for a CPU load device), else ``ModelPatcher`` (0.3.64). Read at call
    time: ``main.py`` rebinds the name at start-up."""
    return getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)


def wrap_in_patcher(model, load_device, offload_device, load):
    """Wrap ``model`` in the host's patcher and run ``load()`` (which puts the weights in), in the host's order.

    0.38-era ``comfy/sd.py`` (``load_diffusion_model_state_dict``, ``VAE``) creates the patcher first and then loads
    the state dict (with ``assign`` when ``patcher.is_dynamic()``); a patcher without ``is_dynamic`` (0.3.64) measures
    the model when it is created, so there the weights go in first.
    """
    cls = patcher_class()
    if hasattr(cls, "is_dynamic"):
        patcher = cls(model, load_device=load_device, offload_device=offload_device)
        load()
        model.to(offload_device)
        return patcher
    load()
    model.to(offload_device)
    return cls(model, load_device=load_device, offload_device=offload_device)
