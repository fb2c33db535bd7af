"""Use torch's SDPA attention for the Paint-by-Example UNet on the CPU, where ComfyUI defaults to its chunked one.

On a CPU, ComfyUI picks its sub-quadratic attention unless started with ``--use-pytorch-cross-attention``
(``comfy/ldm/modules/attention.py``, the ``optimized_attention`` choice at import). For PbE's 4096-token self-attention
at 512² that costs about a third more time per UNet call and a gigabyte more peak memory than torch's
``scaled_dot_product_attention`` (docs/benchmarks.md). The host offers a per-model hook for this,
``transformer_options["optimized_attention_override"]`` (read by ``wrap_attn`` around every attention function), so
the pack sets it on a clone of its own MODEL only: the host's own ``attention_pytorch`` then computes every attention
of this model. Other models are untouched, and nothing changes where the host already uses SDPA, xformers, flash or
sage attention, or on an accelerator. Same maths, different summation order: equal to fp32 rounding (tested).
"""

from __future__ import annotations

import logging

import comfy.ldm.modules.attention as host_attention

log = logging.getLogger(__name__)

#: the host's choices that are slower than torch's SDPA on a CPU
_CHUNKED = ("attention_sub_quad", "attention_split", "attention_basic")


def _sdpa(func, *args, **kwargs):
    """``optimized_attention_override``: compute with the host's SDPA-based ``attention_pytorch`` instead of ``func``."""
    return host_attention.attention_pytorch(*args, **kwargs)


def wants_sdpa(model) -> bool:
    """True when the model runs on the CPU and the host's attention is one of its chunked CPU fallbacks."""
    chosen = getattr(host_attention.optimized_attention, "__name__", "")
    return model.load_device.type == "cpu" and chosen in _CHUNKED


def with_sdpa_on_cpu(model):
    """A clone of the MODEL whose attention is torch's SDPA, when that is faster (see module doc); else ``model``."""
    if not wants_sdpa(model):
        return model
    opts = model.model_options.setdefault("transformer_options", {})
    if "optimized_attention_override" in opts:  # someone chose already: leave it
        return model
    m = model.clone()
    m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = _sdpa
    log.info("Paint by Example: on the CPU the UNet uses torch SDPA attention instead of the host's %s",
             host_attention.optimized_attention.__name__)
    return m
