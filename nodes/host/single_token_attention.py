"""Single-token cross-attention: Paint by Example's context is one token, so cross-attention is two small matmuls.

Every cross-attention (``attn2``) of the UNet attends from the image tokens to Paint by Example's context, which is a
*single* token (B, 1, 768) (docs/design/model.md). With one key the softmax is exactly 1 at every query, so the
output at every position is the same row, ``to_out(to_v(context))``: it depends on the exemplar (or the learned
unconditional vector), never on the image or the timestep. The normal path still projects every image token through
``to_q``, runs the attention kernel and projects every token through ``to_out``; this path computes the one row per
batch item and broadcasts it, which saves ``2 * N * C^2`` multiply-adds per block (N image tokens, C channels) and the
kernel's reshapes.

It is applied the host's way (ComfyUI 0.3.64 ``comfy/model_patcher.py`` ``ModelPatcher.add_object_patch``): on a clone
of the MODEL, each ``diffusion_model.<...>.attn2.forward`` is replaced by a :class:`SingleTokenCrossAttention` while the
host has the model patched, and restored afterwards. No host function is touched. The object keeps the forward it
replaces and hands every call it cannot answer exactly to it:

* a context (or value) that is not exactly one token per batch item, e.g. after another pack's ``attn2_patch``
  appended tokens, or a batch that does not match the image tokens';
* an attention mask (a masked-out single key would not give a softmax of 1);
* no context at all (self-attention use).

An ``attn2`` *replace* patch (``transformer_options["patches_replace"]["attn2"]``, as IP-Adapter-style packs add) makes
the host's ``BasicTransformerBlock.forward`` call ``to_q``/``to_k``/``to_v``/``to_out`` itself and never the module's
``forward`` (``comfy/ldm/modules/attention.py``), so such blocks take the normal path without any check here. An
``attn2_output_patch`` sees an ordinary (materialised) tensor.
"""

from __future__ import annotations

import logging

import torch

from .forward_patches import clone_with_forward_patches

log = logging.getLogger(__name__)

class SingleTokenCrossAttention:
    """Drop-in ``forward`` of one host ``CrossAttention`` (``attn2``) for a one-token context.

    ``module``: the ``CrossAttention`` whose ``to_v`` / ``to_out`` are used (through the modules, so the host's weight
    casting, LoRA patches and low-VRAM streaming still apply); ``fallback``: the forward it replaces (the module's own,
    or another object patch), called for anything this path does not cover.
    """

    def __init__(self, module: torch.nn.Module, fallback):
        self.module = module
        self.fallback = fallback

    def covers(self, x, context, value, mask) -> bool:
        """True if the output is exactly ``to_out(to_v(value or context))`` broadcast over ``x``'s tokens."""
        if context is None or mask is not None or x.ndim != 3 or context.ndim != 3:
            return False
        if context.shape[1] != 1 or context.shape[0] != x.shape[0]:
            return False
        return value is None or (value.ndim == 3 and value.shape[1] == 1 and value.shape[0] == x.shape[0])

    def __call__(self, x, context=None, value=None, mask=None, transformer_options={}):  # noqa: B006 - host signature
        if not self.covers(x, context, value, mask):
            return self.fallback(x, context=context, value=value, mask=mask, transformer_options=transformer_options)
        row = self.module.to_out(self.module.to_v(context if value is None else value))  # (B, 1, C)
        out = row.to(x.dtype).expand(-1, x.shape[1], -1)  # the block adds it to x out of place: a view is enough
        if (transformer_options or {}).get("patches", {}).get("attn2_output_patch"):
            out = out.contiguous()  # another pack's output patch gets an ordinary tensor it may write into
        return out


def cross_attention_paths(diffusion_model: torch.nn.Module) -> list[str]:
    """Names (relative to ``diffusion_model``) of the cross-attention modules whose context is the PbE token.

    They are the ``attn2`` of every transformer block that has one (SD-1 UNet: 16).
    """
    paths = []
    for name, module in diffusion_model.named_modules():
        if name.endswith(".attn2") and hasattr(module, "to_v") and hasattr(module, "to_out"):
            paths.append(name)
    return paths


def has_single_token_attention(model) -> bool:
    """True if the MODEL (or the clone it was made from) already carries the fast path."""
    return any(isinstance(p, SingleTokenCrossAttention) for p in model.object_patches.values())


def with_single_token_attention(model):
    """A clone of the host MODEL (``ModelPatcher``) whose cross-attention takes the single-token fast path.

    A MODEL that already has it is returned as it is. Each patch falls back to the forward it replaces
    (``forward_patches.clone_with_forward_patches``).
    """
    if has_single_token_attention(model):
        return model
    m, paths = clone_with_forward_patches(model, cross_attention_paths, SingleTokenCrossAttention)
    log.debug("Paint by Example: single-token cross-attention on %d blocks", len(paths))
    return m
