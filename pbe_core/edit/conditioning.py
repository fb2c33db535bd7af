"""The edit conditioning: how Paint by Example sees the source image and the mask.

This module is the one place that states PbE's two conventions that differ from Stable Diffusion inpainting and
from ComfyUI (docs/design/model.md):

* **UNet input order** ``[noisy latent (4), masked-image latent (4), keep-mask (1)]`` (SD-inpainting and ComfyUI's
  built-in inpaint path use ``[noisy, mask, masked image]``);
* **mask polarity** of the mask channel: **1 = keep, 0 = region to fill** (ComfyUI's MASK type and SD-inpainting use
  1 = region to fill).

Inputs here use ComfyUI's conventions: IMAGE (B, H, W, C) float in [0, 1]; MASK (B, H, W) float in [0, 1] with
1 = region to replace. A mask value >= 0.5 counts as "replace" (the references binarise ``1 - L/255`` at 0.5, so an
8-bit pixel >= 128 is repainted).

Mask at latent size: the official code resizes the 0/1 pixel mask bilinearly without antialiasing (edge cells get
0.25 / 0.5 / 0.75), diffusers takes the nearest pixel, ComfyUI rounds. We follow the official code: it is what the
released weights were trained and evaluated with. For a box on the 8-pixel grid all three agree exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: the order of the UNet's 9 input channels, by name (the one place it is stated)
UNET_INPUT_ORDER = ("noisy_latent", "masked_image_latent", "keep_mask")


def region_mask(mask: torch.Tensor) -> torch.Tensor:
    """Binarise a ComfyUI MASK (B, H, W), 1 = replace, to exactly 0/1 (>= 0.5 -> 1). Returns (B, 1, H, W) float32."""
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3:
        raise ValueError(f"Mask has shape {tuple(mask.shape)}; expected a ComfyUI MASK (batch, height, width).")
    return (mask.float() >= 0.5).float().unsqueeze(1)


def keep_mask(mask: torch.Tensor) -> torch.Tensor:
    """PbE's keep-mask from a ComfyUI MASK: (B, H, W) 1 = replace -> (B, 1, H, W) 1 = keep, exactly 0/1."""
    return 1.0 - region_mask(mask)


def masked_source(image: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The source with the region to fill set to mid-grey, for the VAE.

    image (B, H, W, C) in [0, 1]; keep (B or 1, 1, H, W) 0/1. Returns (B, H, W, 3) in [0, 1]. The references compute
    ``(2 * image - 1) * keep`` in [-1, 1]; mapped back to [0, 1] (the range ComfyUI's VAE takes) the hole is 0.5.
    """
    rgb = image[..., :3].float()
    k = keep.movedim(1, -1).to(rgb)
    return (rgb - 0.5) * k + 0.5


def latent_keep_mask(keep: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Resize the pixel keep-mask (B, 1, H, W) to latent size (B, 1, h, w): bilinear, no antialias (official)."""
    if tuple(keep.shape[-2:]) == tuple(latent_hw):
        return keep
    return F.interpolate(keep.float(), size=tuple(latent_hw), mode="bilinear", align_corners=False, antialias=False)


def concat_channels(masked_image_latent: torch.Tensor, latent_keep: torch.Tensor) -> torch.Tensor:
    """The 5 channels appended to the noisy latent: [masked-image latent (4, scaled by the VAE factor), keep-mask (1)].

    Together with the noisy latent in front this is ``UNET_INPUT_ORDER``.
    """
    if masked_image_latent.shape[-2:] != latent_keep.shape[-2:]:
        raise ValueError(
            f"Masked-image latent is {tuple(masked_image_latent.shape[-2:])} but the keep-mask is "
            f"{tuple(latent_keep.shape[-2:])} (latent height, width)."
        )
    return torch.cat([masked_image_latent, latent_keep.to(masked_image_latent)], dim=1)


def unet_input(noisy_latent: torch.Tensor, masked_image_latent: torch.Tensor, latent_keep: torch.Tensor) -> torch.Tensor:
    """The UNet's full 9-channel input in ``UNET_INPUT_ORDER``: (B, 4 + 4 + 1, h, w)."""
    return torch.cat([noisy_latent, concat_channels(masked_image_latent, latent_keep)], dim=1)


def pad_to_multiple(image: torch.Tensor, mask: torch.Tensor, multiple: int = 8):
    """Pad image (B, H, W, C) and mask (B, H, W) on the bottom/right to multiples of ``multiple`` (the VAE factor).

    The image is padded by edge replication, the mask with 0 (keep), so the padding is context the model does not
    repaint. Returns (image, mask, (H, W)): crop results back with ``[:, :H, :W]``.
    """
    h, w = image.shape[1:3]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return image, mask, (h, w)
    img = F.pad(image.movedim(-1, 1), (0, pw, 0, ph), mode="replicate").movedim(1, -1)
    msk = F.pad(mask, (0, pw, 0, ph), mode="constant", value=0.0)
    return img, msk, (h, w)
