"""Load a checkpoint's tensors into a freshly built network, and refuse a file that does not fit it.

Whether the file fits is decided without reading the weights of the network being loaded:

* the **shapes** come from what each layer declares at construction (``Linear``'s ``in_features`` and
  ``out_features``, a convolution's channels, groups and kernel size, a norm's channel count, an ``Embedding``'s
  size), see :func:`declared_shapes`;
* **completeness** comes from what loading itself reports: ``Module.load_state_dict``'s missing and unexpected keys.

Why: a host may build its layers without weights and fill them in only when the state dict arrives. ComfyUI's
``comfy/ops.py`` (``disable_weight_init``, 0.38-era, under dynamic VRAM) creates ``Linear`` with ``weight`` and
``bias`` set to None and ``Embedding`` with a weight on the meta device; their ``_load_from_state_dict`` takes the
tensors without checking shapes and records absent ones as missing. The state dict of such a network before loading
lacks every Linear weight, so it cannot say what the file must hold; the layers' declared sizes and the loading
report can, on every host. Torch only (no ``comfy``): the exemplar encoder and the host glue both use it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from .checkpoint import CheckpointError, mismatch_message

__all__ = ["declared_shapes", "load_checked"]


def _layer_shapes(m: nn.Module) -> dict[str, tuple[int, ...]] | None:
    """The shapes of a known layer type's own weights, from its construction arguments; None for other modules."""
    if isinstance(m, nn.Linear):
        return {"weight": (m.out_features, m.in_features), "bias": (m.out_features,)}
    if isinstance(m, nn.modules.conv._ConvNd):
        if m.transposed:
            weight = (m.in_channels, m.out_channels // m.groups, *m.kernel_size)
        else:
            weight = (m.out_channels, m.in_channels // m.groups, *m.kernel_size)
        return {"weight": weight, "bias": (m.out_channels,)}
    if isinstance(m, nn.GroupNorm):
        return {"weight": (m.num_channels,), "bias": (m.num_channels,)}
    if isinstance(m, nn.LayerNorm):
        return {"weight": tuple(m.normalized_shape), "bias": tuple(m.normalized_shape)}
    if isinstance(m, nn.Embedding):
        return {"weight": (m.num_embeddings, m.embedding_dim)}
    if isinstance(m, nn.modules.batchnorm._NormBase):
        n = (m.num_features,)
        return {"weight": n, "bias": n, "running_mean": n, "running_var": n, "num_batches_tracked": ()}
    return None


def declared_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """``{state-dict key: shape}`` for every weight whose shape ``module``'s layers declare.

    Linear, convolution (plain and transposed), GroupNorm, LayerNorm, Embedding and batch-norm layers: from their
    construction arguments, whether or not a weight tensor exists yet. A tensor registered directly on another kind
    of module (e.g. CLIP's class embedding) has no such arguments: its registered shape is its declaration (on the
    meta device too). Keys absent here are left to loading, which reports the ones no layer takes.
    """
    out: dict[str, tuple[int, ...]] = {}
    for name, m in module.named_modules():
        prefix = f"{name}." if name else ""
        layer = _layer_shapes(m)
        if layer is not None:
            out.update({prefix + k: s for k, s in layer.items()})
            continue
        for k, t in [*m._parameters.items(), *m._buffers.items()]:
            if t is not None and k not in m._non_persistent_buffers_set:
                out[prefix + k] = tuple(t.shape)
    return out


def load_checked(
    module: nn.Module,
    sd: Mapping[str, torch.Tensor],
    what: str,
    path: str,
    prepare: Callable[[str, torch.Tensor], torch.Tensor] = lambda k, v: v,
    optional: Callable[[str], bool] = lambda k: False,
) -> None:
    """Make ``sd``'s tensors the weights of ``module`` (``load_state_dict(..., assign=True)``: each layer's own
    ``_load_from_state_dict`` runs, the host's where it has one), or raise :class:`CheckpointError` naming what does
    not fit: a tensor of another shape than its layer declares (checked first; such a tensor is never loaded), a
    weight that loading reports missing, a tensor it reports unused.

    ``prepare(key, tensor)``: the tensor to load for a key (a cast, say); with ``assign`` it *becomes* the weight, so
    an uncast tensor stays the caller's memory (one copy of the weights). ``optional(key)``: a missing key that is
    not an error (a buffer the module computes itself).
    """
    declared = declared_shapes(module)
    wrong = [(k, tuple(v.shape), declared[k]) for k, v in sd.items() if k in declared and tuple(v.shape) != declared[k]]
    bad = {k for k, _, _ in wrong}
    report = module.load_state_dict({k: prepare(k, v) for k, v in sd.items() if k not in bad}, strict=False, assign=True)
    missing = [k for k in report.missing_keys if k not in bad and not optional(k)]
    unexpected = list(report.unexpected_keys)
    if missing or unexpected or wrong:
        raise CheckpointError(mismatch_message(missing, unexpected, wrong, what, path))
