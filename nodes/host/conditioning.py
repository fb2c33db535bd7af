"""An edit window as the host sees it: the masked source and the mask on both conditionings, and the LATENT.

The model's own conventions (channel order, keep-mask polarity, the grey hole) are ``pbe_core.edit.conditioning``'s;
here they become CONDITIONING entries that ``PaintByExampleModel.concat_cond`` reads (``concat_latent_image``,
``concat_mask``), set on the positive *and* the negative (ComfyUI 0.3.64 ``comfy/model_base.py``
``BaseModel.extra_conds``: a negative without them would get the host's default mask and image).
"""

from __future__ import annotations

import node_helpers
import torch

from ...pbe_core.edit import conditioning as ec
from ...pbe_core.edit.plan import EditWindow

#: what the LATENT to sample starts from
LATENTS = ("empty", "source")


def window_conditioning(positive, negative, vae, window: EditWindow, latent: str = "empty"):
    """``(positive, negative, LATENT)`` for sampling ``window``.

    ``latent``: ``"empty"`` (zeros, no noise mask: the whole latent is sampled from noise, as the paper does; the
    paste-back restores everything outside the mask) or ``"source"`` (the window's own latent with
    ``noise_mask`` = the region, so the host's samplers keep the unmasked source at every step; for denoise < 1).
    """
    masked_latent = encode_channels_first(vae, ec.masked_source(window.image, ec.keep_mask(window.region)))
    entries = {"concat_latent_image": masked_latent, "concat_mask": window.region}
    pos, neg = (node_helpers.conditioning_set_values(c, entries) for c in (positive, negative))
    if latent == "source":
        return pos, neg, {"samples": encode_channels_first(vae, window.image), "noise_mask": window.region.unsqueeze(1)}
    return pos, neg, {"samples": torch.zeros_like(masked_latent)}


def encode_channels_first(vae, pixels: torch.Tensor) -> torch.Tensor:
    """``vae.encode(pixels)`` for a (B, H, W, C) image, with the encoder computing on plain channels-first tensors.

    The host's ``VAE.encode`` (ComfyUI's ``comfy/sd.py``, 0.3.64 and the 0.38-era files alike) turns the image into
    (B, C, H, W) with ``movedim``, a view: a contiguous IMAGE becomes a channels-last tensor, and on the CPU oneDNN
    then runs the encoder's convolutions and group norms channels-last, summing in another order. That moved the
    masked-image latent every UNet call sees by several times the fp32 noise floor from the references (which encode
    a contiguous channels-first tensor); ``tests/host/test_conditioning_host.py`` measures it. Handing the host an
    image whose channels-first view is contiguous gives its ``movedim`` a contiguous result, so the same host call
    computes what the references compute. Costs one copy of the image.
    """
    return vae.encode(pixels.movedim(-1, 1).contiguous().movedim(1, -1))
