"""Write realistic PyTorch-Lightning checkpoints for tests, without Lightning (or numpy) installed.

The official Paint-by-Example ``model.ckpt`` is a Lightning 1.4 *training* checkpoint: a torch zip
file (pickle protocol 2) whose pickle names classes the loader's machine does not have:
``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint`` (a dict key in ``callbacks``),
``numpy.core.multiarray.scalar`` and ``numpy.dtype`` (the monitored score) and ``_codecs.encode``
(how protocol 2 spells ``bytes``). :func:`save_lightning_checkpoint` writes the same structure with
``torch.save(obj, path, pickle_module=<this module>, pickle_protocol=2)``: this module's
:class:`Pickler`, a pure-Python ``pickle._Pickler``, writes a GLOBAL opcode for each
:class:`FakeGlobal` instead of importing it, so nothing is imported and ``sys.modules`` is untouched.

:func:`save_malicious_checkpoint` writes a checkpoint that plain ``torch.load(weights_only=False)``
would let run code (it creates a marker file). Never load it with ``torch.load`` in-process.
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
import sys

import torch

__all__ = ["FakeCall", "FakeGlobal", "FakeStorage", "Pickler", "save_lightning_checkpoint", "save_malicious_checkpoint"]

MODEL_CHECKPOINT = "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"


class FakeGlobal:
    """A module-level name (class or function) pickled as ``GLOBAL module name`` without importing it."""

    def __init__(self, dotted: str) -> None:
        self.module, _, self.name = dotted.rpartition(".")

    def __call__(self, *args, **kwargs):  # save_reduce insists that the callable is callable
        raise TypeError(f"{self.module}.{self.name} is a pickling stand-in")

    def __repr__(self) -> str:
        return f"FakeGlobal({self.module}.{self.name})"


class FakeCall:
    """An object pickled as ``REDUCE(func, args)`` (then ``BUILD(state)`` if state is given)."""

    def __init__(self, func: FakeGlobal | object, args: tuple, state: object = None) -> None:
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


class FakeStorage:
    """A storage reference pickled as persistent id ``('storage', torch.<type>, key, location, numel)``,
    pointing at whatever record the test wants (or at none)."""

    def __init__(self, storage_type: str, key: str, numel: int, location: str = "cpu") -> None:
        self.pid = ("storage", FakeGlobal(f"torch.{storage_type}"), key, location, numel)


class Pickler(pickle._Pickler):
    """Pure-Python pickler (``torch.save`` subclasses it and adds ``persistent_id``) that writes fakes."""

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, FakeStorage):
            self.save_pers(obj.pid)
            return
        if not isinstance(obj, FakeGlobal):
            super().save(obj, save_persistent_id)
            return
        memo = self.memo.get(id(obj))
        if memo is not None:
            self.write(self.get(memo[0]))
            return
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)


def save_with_fakes(path: str | os.PathLike, obj: object) -> None:
    """``torch.save`` with this module's pickler at protocol 2, as Lightning 1.4 saved."""
    before = set(sys.modules)
    torch.save(obj, path, pickle_module=sys.modules[__name__], pickle_protocol=2)
    leaked = {m for m in set(sys.modules) - before if m.startswith(("pytorch_lightning", "numpy"))}
    assert not leaked, f"saving imported {leaked}"


def _numpy_float64(value: float) -> FakeCall:
    """``numpy.float64(value)`` as numpy pickles it: ``scalar(dtype('f8'), <8 bytes>)``."""
    f8 = FakeCall(FakeGlobal("numpy.dtype"), ("f8", False, True), (3, "<", None, None, None, -1, -1, 0))
    return FakeCall(FakeGlobal("numpy.core.multiarray.scalar"), (f8, struct.pack("<d", value)))


def _adam_moments(param: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic fp32 ``exp_avg``/``exp_avg_sq`` shaped like ``param``."""
    g = torch.Generator().manual_seed(1000 + index)
    exp_avg = torch.randn(param.shape, generator=g) * 1e-3
    return exp_avg, exp_avg.square() + 1e-8


def save_lightning_checkpoint(
    path: str | os.PathLike,
    state_dict: dict[str, torch.Tensor],
    *,
    optimizer_param_names: list[str] | None = None,
    training: bool,
    epoch: int = 2,
    global_step: int = 1234,
    lr: float = 1e-5,
    moments=None,
) -> None:
    """Write ``state_dict`` as a Lightning 1.4.2 checkpoint.

    ``training=False``: ``{epoch, global_step, pytorch-lightning_version, state_dict}`` (what
    ``save_weights_only`` writes). ``training=True`` adds what the official ``model.ckpt`` carries:
    ``callbacks`` (keyed by the ModelCheckpoint class, with a numpy float64 score), ``optimizer_states``
    (AdamW ``exp_avg``/``exp_avg_sq``, fp32 and shaped like each of ``optimizer_param_names``, default
    all) and ``lr_schedulers`` (a LambdaLR). Tensors keep their dtype, strides and storage sharing.
    ``moments(param, index)`` gives each parameter's ``(exp_avg, exp_avg_sq)`` (default: seeded random values).
    """
    ckpt: dict = {
        "epoch": epoch,
        "global_step": global_step,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": collections.OrderedDict(state_dict),
    }
    if hasattr(state_dict, "_metadata"):  # nn.Module.state_dict() has it; it pickles as a BUILD
        ckpt["state_dict"]._metadata = state_dict._metadata
    if training:
        names = list(state_dict) if optimizer_param_names is None else list(optimizer_param_names)
        state = {}
        for i, name in enumerate(names):
            exp_avg, exp_avg_sq = (moments or _adam_moments)(state_dict[name], i)
            state[i] = {"step": global_step, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
        group = {"lr": lr, "betas": (0.9, 0.999), "eps": 1e-08, "weight_decay": 0.01, "amsgrad": False}
        group.update({"initial_lr": lr, "params": list(range(len(names)))})
        ckpt["callbacks"] = {
            FakeGlobal(MODEL_CHECKPOINT): {
                "monitor": None,
                "best_model_score": None,
                "best_model_path": "/logs/checkpoints/last.ckpt",
                "current_score": _numpy_float64(0.1234),
                "dirpath": "/logs/checkpoints",
            }
        }
        ckpt["optimizer_states"] = [{"state": state, "param_groups": [group]}]
        ckpt["lr_schedulers"] = [
            {
                "base_lrs": [lr],
                "last_epoch": global_step,
                "_step_count": global_step + 1,
                "verbose": False,
                "_get_lr_called_within_step": False,
                "_last_lr": [lr],
                "lr_lambdas": [None],
            }
        ]
    save_with_fakes(path, ckpt)


def malicious_call(marker_file: str | os.PathLike, via: str = "exec") -> FakeCall:
    """A REDUCE that creates ``marker_file`` when a plain unpickler runs it."""
    marker = os.fspath(marker_file)
    if via == "exec":
        return FakeCall(FakeGlobal("builtins.exec"), (f"open({marker!r}, 'w').close()",))
    if via == "system":
        return FakeCall(FakeGlobal("os.system"), (f"touch '{marker}'",))
    raise ValueError(via)


def save_malicious_checkpoint(
    path: str | os.PathLike, marker_file: str | os.PathLike, *, where: str = "top", via: str = "exec"
) -> None:
    """A valid-looking ``{'state_dict': {...}}`` checkpoint whose pickle creates ``marker_file`` when
    loaded with ``torch.load(weights_only=False)``. ``where``: ``"top"`` (a sibling of the state dict),
    ``"state_dict"`` (an entry of the state dict) or ``"tensor"`` (the hooks argument of a tensor's
    ``_rebuild_tensor_v2``). ``via``: ``"exec"`` (``builtins.exec``) or ``"system"`` (``os.system``)."""
    payload = malicious_call(marker_file, via)
    weight = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    sd: dict = collections.OrderedDict(weight=weight, bias=torch.ones(2))
    ckpt: dict = {"epoch": 0, "global_step": 0, "state_dict": sd}
    if where == "top":
        ckpt["hyper_parameters"] = payload
    elif where == "state_dict":
        sd["evil"] = payload
    elif where == "tensor":
        rebuild = FakeGlobal("torch._utils._rebuild_tensor_v2")
        sd["weight"] = FakeCall(rebuild, (weight.untyped_storage(), 0, (24,), (1,), False, payload))
    else:
        raise ValueError(where)
    save_with_fakes(path, ckpt)
