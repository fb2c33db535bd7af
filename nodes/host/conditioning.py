"""An edit window as the host sees it: the masked source and the mask on both conditionings, and the LATENT.

The model's own conventions (channel order, keep-mask polarity, the grey hole) are ``pbe_core.edit_conditioning``'s;
here they become CONDITIONING entries that ``PaintByExampleModel.concat_cond`` reads (``concat_latent_image``,
``concat_mask``), set on the positive *and* the negative (ComfyUI 0.3.64 ``comfy/model_base.py``
``BaseModel.extra_conds``: a negative without them would get the host's default mask and image).
"""

from __future__ import annotations

import node_helpers
import torch

from ...pbe_core import edit_conditioning as ec
from ...pbe_core.edit import EditWindow

#: what the LATENT to sample starts from
LATENTS = ("empty", "source")


def window_conditioning(positive, negative, vae, window: EditWindow, latent: str = "empty"):
    """``(positive, negative, LATENT)`` for sampling ``window``.

    ``latent``: ``"empty"`` (zeros, no noise mask: the whole latent is sampled from noise, as the paper does; the
    paste-back restores everything outside the mask) or ``"source"`` (the window's own latent with
    ``noise_mask`` = the region, so the host's samplers keep the unmasked source at every step; for denoise < 1).
    """
    masked_latent = vae.encode(ec.masked_source(window.image, ec.keep_mask(window.region)))
    entries = {"concat_latent_image": masked_latent, "concat_mask": window.region}
    pos, neg = (node_helpers.conditioning_set_values(c, entries) for c in (positive, negative))
    if latent == "source":
        return pos, neg, {"samples": vae.encode(window.image), "noise_mask": window.region.unsqueeze(1)}
    return pos, neg, {"samples": torch.zeros_like(masked_latent)}
