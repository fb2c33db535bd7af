"""Convolution weights in channels-last memory order, converted in place: no second copy of the weights.

On the CPU, torch's convolutions (oneDNN) run faster when the activations are channels-last (NHWC), and they keep an
activation channels-last when the weight is. Converting a model with ``module.to(memory_format=torch.channels_last)``
allocates a new tensor for every weight; for this pack's weights, which are views of the checkpoint file's
copy-on-write memory map, the file's pages stay mapped (and counted in the process's memory) beside the copies, so
the VAE alone would cost ~320 MB more. Here each tensor's bytes are instead rewritten in channels-last order inside the
same memory (a written copy-on-write page replaces the file's page; the file itself is never written) and the tensor
object is re-pointed (``Tensor.set_``) at the same storage with channels-last strides. Every holder of that tensor
object sees the same values; only the order of the bytes in memory changes. The result is exact: the values are
moved, not computed.

A tensor whose bytes another tensor also views (a tied or sliced weight) is left as it is, since re-ordering the
shared bytes would change what the other one reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

__all__ = ["conv_weights_to_channels_last_"]


def _byte_span(t: torch.Tensor) -> tuple[int, int]:
    """[start, end) of the bytes ``t`` can read."""
    start = t.untyped_storage().data_ptr() + t.storage_offset() * t.element_size()
    extent = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride(), strict=True) if n > 0)
    return start, start + extent * t.element_size()


def _shared(candidates: dict[str, torch.Tensor], everything: Iterable[torch.Tensor]) -> set[str]:
    """Names in ``candidates`` whose bytes overlap those of any other tensor in ``everything``."""
    spans = []
    seen = set()
    for t in everything:
        if id(t) in seen or t.device.type != "cpu" or t.numel() == 0:
            continue
        seen.add(id(t))
        spans.append((*_byte_span(t), id(t)))
    spans.sort()
    overlapping: set[int] = set()
    end_so_far, owner = -1, None
    for start, end, ident in spans:
        if start < end_so_far:
            overlapping.update((ident, owner))
        if end > end_so_far:
            end_so_far, owner = end, ident
    return {k for k, t in candidates.items() if id(t) in overlapping}


def conv_weights_to_channels_last_(
    tensors: Mapping[str, torch.Tensor], also_in_memory: Iterable[torch.Tensor] = ()
) -> list[str]:
    """Re-order, in place, every convolution kernel in ``tensors`` to channels-last; return the names converted.

    A convolution kernel here is a 4-D CPU floating-point tensor larger than 1x1 in space that is contiguous (a 1x1
    kernel is already channels-last). ``also_in_memory`` are other tensors that may share memory with these (the rest
    of the checkpoint): a kernel whose bytes overlap any other tensor's is skipped. The tensors must be writable (the
    pack's loader gives copy-on-write maps of the file or memory of their own).
    """
    candidates = {
        k: t
        for k, t in tensors.items()
        if t.dim() == 4
        and t.device.type == "cpu"
        and t.is_floating_point()
        and t.shape[2] * t.shape[3] > 1
        and t.is_contiguous()
        and not t.is_contiguous(memory_format=torch.channels_last)
    }
    if not candidates:
        return []
    skip = _shared(candidates, [*tensors.values(), *also_in_memory])
    done = []
    with torch.no_grad():
        for k, t in candidates.items():
            if k in skip:
                continue
            nhwc = t.permute(0, 2, 3, 1).contiguous()  # one kernel's worth of scratch memory
            t.view(-1).copy_(nhwc.view(-1))
            t.set_(t.untyped_storage(), t.storage_offset(), t.shape, nhwc.permute(0, 3, 1, 2).stride())
            done.append(k)
    return done
