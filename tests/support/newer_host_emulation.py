"""Newer-host mode of the host tests: behaviours of 0.38-era ComfyUI that the pack depends on, reproduced on top of
the shipped ComfyUI 0.3.64. Test code only; the pack never imports it.

Turned on with ``PBE_NEWER_HOST=1`` (``tests/run.sh`` runs the loading, one-node edit, modular-graph and bf16 host
tests a second time so). ``PBE_NEWER_HOST_INTERMEDIATES=fp16`` adds the ``--fp16-intermediates`` behaviour below.
Each reproduction is written here in the project's own words from what the newer public files say (repository
Comfy-Org/ComfyUI, read, not run; docs/design/host.md has the table); no host code is copied.

What is reproduced:

1. **Layers without weights until loaded** (``comfy/ops.py``, class ``disable_weight_init``, its ``Linear`` and
   ``Embedding``, 0.38-era, active while ``comfy.memory_management.aimdo_enabled`` is true, which ``main.py`` sets when
   dynamic VRAM starts: the default on an NVIDIA GPU). A ``Linear`` keeps only ``in_features`` / ``out_features``;
   ``weight`` and ``bias`` are None. An ``Embedding`` keeps its sizes and gets a weight on the meta device. When
   ``load_state_dict`` reaches such a layer, it takes ``weight`` (and ``bias``) from the state dict as parameters
   (the tensor itself with ``assign=True``, a copy otherwise) without comparing shapes; a key it does not know goes to
   the unexpected keys, an absent weight (or bias the layer was asked for) to the missing keys, and is zero-filled.
   As there, a subclass that brings its own ``_load_from_state_dict`` is built the old way.
2. **VAE outputs in the host's intermediate dtype** (``comfy/sd.py``, ``VAE.encode`` / ``VAE.decode`` and their tiled
   forms, 0.38-era: results go out as ``comfy.model_management.intermediate_dtype()``, fp16 when ComfyUI runs with
   ``--fp16-intermediates`` (``comfy/cli_args.py``), fp32 otherwise). 0.3.64 has neither the flag nor the function:
   ``PBE_NEWER_HOST_INTERMEDIATES=fp16`` stands for the flag, and ``intermediate_dtype`` is added.

How it reaches the host: in-process tests call :func:`apply` (``tests/support/comfy_inprocess.py`` does, after importing
``comfy.model_management``); a ComfyUI subprocess started by the test harness (``tests/support/comfy_host.py``) runs
this file as its launcher: ``python tests/support/newer_host_emulation.py main.py ARGS...`` installs an import hook that
applies the same patches right after ``comfy.ops`` and ``comfy.sd`` are first imported, then runs ComfyUI's ``main.py``
as ``__main__`` with ``ARGS`` (so ``main.py`` parses its own command line and sets up its environment as usual).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import runpy
import sys

log = logging.getLogger("pbe_tests.newer_host")

ENV = "PBE_NEWER_HOST"
INTERMEDIATES_ENV = "PBE_NEWER_HOST_INTERMEDIATES"


def enabled() -> bool:
    return os.environ.get(ENV, "") == "1"


def intermediate_dtype_name() -> str:
    value = (os.environ.get(INTERMEDIATES_ENV) or "fp32").strip().lower()
    if value not in ("fp32", "fp16"):
        raise ValueError(f"{INTERMEDIATES_ENV}={value!r}: give fp32 (the default) or fp16")
    return value


# --- 1. layers without weights until loaded -------------------------------------------------------------------------
def _make_lazy(cls, sizes, wants_bias):
    """Patch ``cls`` (a ``torch.nn.Linear`` or ``Embedding`` subclass of the host) so that, unless a subclass replaces
    ``_load_from_state_dict``, it is built without weights and filled by ``load_state_dict`` (see the docstring)."""
    import torch

    built_the_old_way = cls.__init__

    def load(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        if not getattr(self, "_pbe_lazy", False):
            return super(cls, self)._load_from_state_dict(
                state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
            )
        take_as_is = bool(local_metadata.get("assign_to_params_buffers", False))
        names = ("weight", "bias") if self._pbe_wants_bias is not None else ("weight",)
        for key, value in state_dict.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix):]
            if name in names and value is not None:
                setattr(self, name, torch.nn.Parameter(value if take_as_is else value.clone(), requires_grad=False))
            else:
                unexpected_keys.append(key)
        weight_size, bias_size = sizes(self)
        if getattr(self, "weight", None) is None or self.weight.is_meta:
            self.weight = torch.nn.Parameter(torch.zeros(weight_size), requires_grad=False)
            missing_keys.append(prefix + "weight")
        if self._pbe_wants_bias and getattr(self, "bias", None) is None:
            self.bias = torch.nn.Parameter(torch.zeros(bias_size), requires_grad=False)
            missing_keys.append(prefix + "bias")

    def init(self, *args, **kwargs):
        if type(self)._load_from_state_dict is not load:
            built_the_old_way(self, *args, **kwargs)
            return
        torch.nn.Module.__init__(self)
        self._pbe_lazy = True
        wants_bias(self, *args, **kwargs)

    cls.__init__ = init
    cls._load_from_state_dict = load


def _lazy_linear_sizes(self):
    return (self.out_features, self.in_features), (self.out_features,)


def _lazy_linear_fields(self, in_features, out_features, bias=True, device=None, dtype=None):
    self.in_features, self.out_features = in_features, out_features
    self.weight = None
    self.bias = None
    self._pbe_wants_bias = bool(bias)


def _lazy_embedding_sizes(self):
    return (self.num_embeddings, self.embedding_dim), None


def _lazy_embedding_fields(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None, norm_type=2.0,
                           scale_grad_by_freq=False, sparse=False, _weight=None, _freeze=False, device=None,
                           dtype=None):
    import torch

    self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
    self.padding_idx, self.max_norm, self.norm_type = padding_idx, max_norm, norm_type
    self.scale_grad_by_freq, self.sparse = scale_grad_by_freq, sparse
    kind = dtype if dtype is not None else torch.get_default_dtype()
    self.weight = torch.nn.Parameter(torch.empty((num_embeddings, embedding_dim), device="meta", dtype=kind),
                                     requires_grad=False)
    self._pbe_wants_bias = None


def patch_ops(ops) -> None:
    """Behaviour 1 on ``comfy.ops`` (idempotent)."""
    base = ops.disable_weight_init
    if getattr(base, "_pbe_newer_host", False):
        return
    _make_lazy(base.Linear, _lazy_linear_sizes, _lazy_linear_fields)
    _make_lazy(base.Embedding, _lazy_embedding_sizes, _lazy_embedding_fields)
    base._pbe_newer_host = True
    log.info("newer-host mode: comfy.ops Linear and Embedding are built without weights until loaded")


# --- 2. VAE outputs in the intermediate dtype -------------------------------------------------------------------------
def patch_vae(sd, model_management) -> None:
    """Behaviour 2 on ``comfy.sd.VAE`` and ``comfy.model_management`` (idempotent)."""
    import torch

    vae = sd.VAE
    if getattr(vae, "_pbe_newer_host", False):
        return
    dtype = {"fp16": torch.float16, "fp32": torch.float32}[intermediate_dtype_name()]
    if not hasattr(model_management, "intermediate_dtype"):
        model_management.intermediate_dtype = lambda: dtype

    def in_intermediate_dtype(method):
        def wrapped(self, *args, **kwargs):
            out = method(self, *args, **kwargs)
            return out.to(model_management.intermediate_dtype()) if out.is_floating_point() else out

        wrapped.__name__ = method.__name__
        return wrapped

    for name in ("encode", "decode", "encode_tiled", "decode_tiled"):
        if hasattr(vae, name):
            setattr(vae, name, in_intermediate_dtype(getattr(vae, name)))
    vae._pbe_newer_host = True
    log.info("newer-host mode: VAE outputs in %s (the host's intermediate dtype)", dtype)


def apply() -> None:
    """Both behaviours, in this process (``comfy`` importable, ``comfy.cli_args`` already set up)."""
    import comfy.model_management
    import comfy.ops
    import comfy.sd

    patch_ops(comfy.ops)
    patch_vae(comfy.sd, comfy.model_management)


# --- the launcher for ComfyUI subprocesses ----------------------------------------------------------------------------
class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Applies the patches right after ``comfy.ops`` / ``comfy.sd`` are executed for the first time."""

    def find_spec(self, name, path=None, target=None):
        if name not in ("comfy.ops", "comfy.sd"):
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        original = spec.loader.exec_module

        def exec_module(module):
            original(module)
            if name == "comfy.ops":
                patch_ops(module)
            else:
                patch_vae(module, sys.modules["comfy.model_management"])

        spec.loader.exec_module = exec_module
        return spec


def launch(argv: list[str]) -> None:
    """``argv``: ``["main.py", ComfyUI's arguments...]``, run from ComfyUI's folder."""
    script = os.path.abspath(argv[0])
    sys.argv = [script, *argv[1:]]
    sys.path[0] = os.path.dirname(script)
    sys.meta_path.insert(0, _PatchAfterImport())
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    launch(sys.argv[1:])
