"""The two halves of a classifier-free-guidance batch share the UNet's layers before the first cross-attention.

ComfyUI evaluates the conditional and the unconditional prediction in one UNet call, as a batch of two halves
(``comfy/samplers.py`` ``calc_cond_batch``). For Paint by Example the halves differ only in the cross-attention
context (the exemplar token vs the learned unconditional vector): the noisy latent, the concat conditioning (masked
image and keep-mask) and the timestep are the same. So every layer the input passes through before the first
cross-attention computes the same values twice. In the SD-1 UNet those are, at the highest resolution, the first
ResBlock (``input_blocks.1.0``: two 3x3 convolutions) and the first transformer block's self-attention
(``input_blocks.1.1.transformer_blocks.0.attn1``: one of the five 4096-token self-attentions at 512^2, the UNet's most
expensive kind), plus cheap norms and projections around them.

:class:`SharedHalves` replaces the ``forward`` of those two modules on a clone of the MODEL (the host's
``ModelPatcher.add_object_patch``, as the single-token path does; no host function is touched). At every call it
checks that the two halves of every tensor argument are equal (``torch.equal``; about a millisecond) and then runs the
layer on one half and repeats the result; anything else (an odd batch, halves that differ, e.g. two different
latents, or a batch of one when cfg is 1) goes to the forward it replaced, unchanged. The result is exact up to fp32
rounding (the kernels may sum in another order for a batch of one than of two).

Under ``torch.compile`` (the host's ``TorchCompileModel`` node) the patch steps aside while the graph is traced: the
check reads the tensors' values (``torch.equal``), which the compiler cannot put in a graph (a graph break that cut
the UNet into dozens of separately compiled pieces and tripped the compiler's recompile limit). The compiled graph
then computes both halves, exactly the normal path; the single-token cross-attention, which only looks at shapes,
is compiled into the graph (tests/host/test_host_model_nodes_host.py).
"""

from __future__ import annotations

import logging
import math

import torch

from .forward_patches import clone_with_forward_patches

log = logging.getLogger(__name__)

#: True while torch.compile (dynamo) traces the code (torch >= 2.3; never on older torch, which has no such check)
_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)


class SharedHalves:
    """Drop-in ``forward`` that runs a layer once for a batch whose two halves are the same input."""

    def __init__(self, fallback):
        self.fallback = fallback

    @staticmethod
    def _halves_equal(args) -> int:
        """The half batch size if every tensor in ``args`` has the same even batch made of two equal halves, else 0."""
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if not tensors:
            return 0
        first = tensors[0]
        b = first.shape[0] if first.ndim else 0
        if b < 2 or b % 2 or any(t.ndim == 0 or t.shape[0] != b for t in tensors):
            return 0
        # One half is a batch of one: with a single position per channel (a 1x1 latent, from an image of 8x8 pixels
        # or less) torch's group norm refuses that where it took the batch of two. Such inputs cost nothing anyway.
        positions = first.shape[1] if first.ndim == 3 else math.prod(first.shape[2:]) if first.ndim >= 4 else 0
        if positions < 2:
            return 0
        h = b // 2
        return h if all(torch.equal(t[:h], t[h:]) for t in tensors) else 0

    def __call__(self, *args, **kwargs):
        if _is_compiling():  # see the module doc: torch.compile traces the normal path
            return self.fallback(*args, **kwargs)
        h = self._halves_equal([*args, *kwargs.values()])
        if not h:
            return self.fallback(*args, **kwargs)

        def half(a):
            return a[:h] if isinstance(a, torch.Tensor) else a

        out = self.fallback(*(half(a) for a in args), **{k: half(v) for k, v in kwargs.items()})
        return torch.cat([out, out])


def shared_prefix_paths(diffusion_model: torch.nn.Module) -> list[str]:
    """Names (relative to ``diffusion_model``) of the costly layers before the first cross-attention.

    The ResBlocks of the input blocks up to the first transformer, and that transformer's first self-attention.
    Empty if the UNet is not laid out that way (then nothing is patched).
    """
    from comfy.ldm.modules.attention import SpatialTransformer
    from comfy.ldm.modules.diffusionmodules.openaimodel import ResBlock

    paths = []
    for i, block in enumerate(getattr(diffusion_model, "input_blocks", [])):
        for j, layer in enumerate(block):
            if isinstance(layer, ResBlock):
                paths.append(f"input_blocks.{i}.{j}")
            elif isinstance(layer, SpatialTransformer):
                first = layer.transformer_blocks[0] if len(layer.transformer_blocks) else None
                if first is None or not hasattr(first, "attn1"):
                    return []
                return [*paths, f"input_blocks.{i}.{j}.transformer_blocks.0.attn1"]
    return []


def has_shared_cfg_prefix(model) -> bool:
    return any(isinstance(p, SharedHalves) for p in model.object_patches.values())


def with_shared_cfg_prefix(model):
    """A clone of the host MODEL whose layers before the first cross-attention run once for two equal halves.

    A MODEL that already has it is returned as it is. Each patch falls back to the forward it replaces
    (``forward_patches.clone_with_forward_patches``).
    """
    if has_shared_cfg_prefix(model):
        return model
    m, paths = clone_with_forward_patches(model, shared_prefix_paths, lambda module, fallback: SharedHalves(fallback))
    log.debug("Paint by Example: CFG halves share %s", paths)
    return m
