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

__all__ = ["channels_last_strides", "conv_weights_to_channels_last_", "is_conv_kernel"]


def is_conv_kernel(t: torch.Tensor) -> bool:
    """A 4-D floating-point tensor: a 2-D convolution kernel (out, in, kh, kw)."""
    return t.dim() == 4 and t.is_floating_point()


def channels_last_strides(shape: torch.Size | tuple[int, ...]) -> tuple[int, int, int, int]:
    """The strides of a dense channels-last (N, C, H, W) tensor, as ``Tensor.to(memory_format=torch.channels_last)``
    gives them, also for a 1x1 kernel (whose bytes are the same in both orders but whose strides are not)."""
    _, c, h, w = shape
    return (h * w * c, 1, w * c, c)


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

    A convolution kernel here is a contiguous 4-D CPU floating-point tensor. A 1x1 kernel's bytes are already in
    channels-last order, so it only gets channels-last strides (nothing moves): torch picks a convolution's output
    order from its input's and kernel's strides, so a 1x1 convolution on an NCHW input (the SD-1 UNet's ``proj_out``
    after its transformer) then gives a channels-last output too. ``also_in_memory`` are other tensors that may share
    memory with these (the rest of the checkpoint): a kernel whose bytes overlap any other tensor's is skipped. The
    tensors must be writable (the pack's loader gives copy-on-write maps of the file or memory of their own).
    """
    candidates = {
        k: t
        for k, t in tensors.items()
        if is_conv_kernel(t)
        and t.device.type == "cpu"
        and t.is_contiguous()
        and t.stride() != channels_last_strides(t.shape)
    }
    if not candidates:
        return []
    skip = _shared(candidates, [*tensors.values(), *also_in_memory])
    done = []
    with torch.no_grad():
        for k, t in candidates.items():
            if k in skip:
                continue
            if t.shape[2] * t.shape[3] > 1:
                nhwc = t.permute(0, 2, 3, 1).contiguous()  # one kernel's worth of scratch memory
                t.view(-1).copy_(nhwc.view(-1))
            t.set_(t.untyped_storage(), t.storage_offset(), t.shape, channels_last_strides(t.shape))
            done.append(k)
    return done
