"""The model being fine-tuned: where its weights start, which parts train, and the file it ends as.

Start (docs/design/training.md):

* **from SD-1.x** (as the paper): the UNet's input conv grows from 4 to 9 input channels, the 5 new ones
  (masked-image latent, keep-mask; :data:`pbe_core.edit.conditioning.UNET_INPUT_ORDER`) zero, so the model starts as
  the SD UNet; the mapper, final LayerNorm, ``proj_out`` and the learned vector are fresh (PyTorch's default init,
  the vector N(0, 1)); the CLIP vision tower comes from a file the user gives; VAE and UNet from the SD file;
* **from any Paint-by-Example checkpoint** :func:`pbe_core.weights.checkpoint.load_checkpoint` reads.

An SD-1.x start is a single file (``.ckpt``/``.safetensors``, LDM names); its UNet is ``model.diffusion_model.*``
(in full training files the non-EMA weights, the usual start for fine-tuning; ``model_ema.*`` is ignored).

Trained: the UNet, mapper, final LN, ``proj_out`` and the learned vector (:class:`TrainablePbE`, the one module the
optimizer and the distributed engine see). Frozen: CLIP and the VAE (:class:`FrozenPbE`).

The UNet runs as diffusers' ``UNet2DConditionModel`` (gradient checkpointing, fused attention), the VAE as
diffusers' ``AutoencoderKL`` and CLIP as transformers' ``CLIPVisionModel``; the weights go in and out through the
pack's key maps (:mod:`pbe_core.weights.layouts`), so the result is written in the original single-file layout.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..exemplar.encoder import ExemplarEncoder, ExemplarHead
from ..weights import layouts
from ..weights.checkpoint import CheckpointError, PbECheckpoint, infer_info, load_checkpoint, read_state_dict
from ..weights.safetensors_writer import write_safetensors

log = logging.getLogger(__name__)

#: SD-1's VAE latent scale
LATENT_SCALE = 0.18215
#: input channels of an SD-1.x UNet and of Paint by Example's
SD_IN_CHANNELS, PBE_IN_CHANNELS = 4, 9


# --- where the weights start -----------------------------------------------------------------------------------------
def expand_input_conv(unet: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SD-1.x UNet (LDM names, 4 input channels) -> 9 input channels, the 5 appended ones zero; other tensors as is."""
    out = dict(unet)
    w = unet["input_blocks.0.0.weight"]
    if w.shape[1] != SD_IN_CHANNELS:
        raise CheckpointError(f"The UNet's input conv takes {w.shape[1]} channels; an SD-1.x UNet takes 4.")
    zeros = w.new_zeros(w.shape[0], PBE_IN_CHANNELS - SD_IN_CHANNELS, *w.shape[2:])
    out["input_blocks.0.0.weight"] = torch.cat([w, zeros], dim=1)
    return out


def load_clip_vision(path: str | Path) -> dict[str, torch.Tensor]:
    """CLIP vision weights from a user's file, as transformers names them (with or without ``vision_model.``, or a
    whole ``CLIPModel`` whose text tower and projections are ignored) -> ``vision_model.*`` names."""
    sd = read_state_dict(path)
    if any(k.startswith("vision_model.") for k in sd):
        sd = {k: v for k, v in sd.items() if k.startswith("vision_model.")}
    else:
        sd = {k: v for k, v in sd.items() if k.startswith(("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm."))}
    if "vision_model.embeddings.patch_embedding.weight" not in layouts.clip_with_vision_model_level(sd):
        raise CheckpointError(
            f"{path} holds no CLIP vision tower (no embeddings.patch_embedding). Give the weights of "
            f"openai/clip-vit-large-patch14 (its model.safetensors, or a CLIPVisionModel's)."
        )
    return layouts.clip_with_vision_model_level(sd)


def is_sd1(sd: Mapping[str, torch.Tensor]) -> bool:
    """An SD-1.x single file: an LDM UNet with 4 input channels and no exemplar mapper."""
    w = sd.get(layouts.UNET_PREFIX + "input_blocks.0.0.weight")
    has_mapper = any(k.startswith(layouts.MAPPER_PREFIX) for k in sd)
    return w is not None and w.ndim == 4 and w.shape[1] == SD_IN_CHANNELS and not has_mapper


def init_from_sd1(path: str | Path, clip_weights: str | Path, mapper_depth: int = 5, seed: int = 0) -> PbECheckpoint:
    """A Paint-by-Example model that starts as the SD-1.x file at ``path`` (see the module docstring)."""
    sd = read_state_dict(path)
    if any(k.startswith("cond_stage_model.model.") for k in sd):
        raise CheckpointError(f"{path} is a Stable Diffusion 2.x checkpoint; Paint by Example starts from SD-1.x.")
    if not is_sd1(sd):
        raise CheckpointError(f"{path} is not an SD-1.x checkpoint (no 4-channel UNet under {layouts.UNET_PREFIX}).")
    if not clip_weights:
        raise CheckpointError(
            "Starting from SD-1.x needs the CLIP ViT-L/14 vision weights: set clip_weights to a file of "
            "openai/clip-vit-large-patch14 (model.safetensors)."
        )
    unet = expand_input_conv(layouts.split_prefix(sd, layouts.UNET_PREFIX))
    clip = load_clip_vision(clip_weights)
    width = clip["vision_model.embeddings.patch_embedding.weight"].shape[0]
    context = next(v.shape[1] for k, v in unet.items() if k.endswith("attn2.to_k.weight"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = ExemplarHead(width, mapper_depth, context)
    hsd = head.state_dict()
    parts = {
        "unet": unet,
        "vae": layouts.split_prefix(sd, layouts.VAE_PREFIX),
        "clip": clip,
        "mapper": layouts.split_prefix(hsd, "mapper."),
        "final_ln": layouts.split_prefix(hsd, "final_ln."),
        "proj_out": layouts.split_prefix(hsd, "proj_out."),
    }
    info = infer_info(parts, hsd["learnable_vector"], str(path))
    log.info("Starting from SD-1.x %s (UNet input conv 4 -> 9 channels, fresh exemplar mapper) and CLIP %s.",
             path, clip_weights)
    return PbECheckpoint(**parts, uncond=hsd["learnable_vector"], info=info,
                         layout="SD-1.x start (UNet + VAE) with CLIP vision weights", source=str(path))


def initial_checkpoint(init_from: str | Path, clip_weights: str | Path = "", mapper_depth: int = 5,
                       seed: int = 0) -> PbECheckpoint:
    """The model to start from: SD-1.x (paper's start) or a Paint-by-Example checkpoint, told apart by the UNet."""
    p = Path(init_from)
    if p.is_file() and is_sd1(read_state_dict(p)):
        return init_from_sd1(p, clip_weights, mapper_depth, seed)
    return load_checkpoint(p)


# --- the modules ----------------------------------------------------------------------------------------------------
class TrainablePbE(nn.Module):
    """Everything that trains: the UNet (diffusers) and the exemplar head.

    ``forward(unet_in, timesteps, pooled, drop)``: unet_in (B, 9, h, w) in ``UNET_INPUT_ORDER``; timesteps (B,) int64
    in [0, 1000); pooled (B, W) CLIP class tokens; drop (B,) bool, True = condition on the learned vector instead.
    Returns the predicted noise (B, 4, h, w). Both branches stay in the graph, so every parameter gets a gradient
    each step (distributed engines need that).
    """

    def __init__(self, unet: nn.Module, head: ExemplarHead):
        super().__init__()
        self.unet = unet
        self.head = head

    def forward(self, unet_in, timesteps, pooled, drop):
        cond = self.head(pooled.to(self.head.proj_out.weight.dtype))
        uncond = self.head.learnable_vector.expand_as(cond)
        context = torch.where(drop[:, None, None], uncond, cond)
        return self.unet(unet_in, timesteps, encoder_hidden_states=context).sample


class FrozenPbE(nn.Module):
    """CLIP vision tower and VAE, never trained."""

    def __init__(self, clip: nn.Module, vae: nn.Module):
        super().__init__()
        self.clip = clip.eval().requires_grad_(False)
        self.vae = vae.eval().requires_grad_(False)

    @torch.no_grad()
    def pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised exemplars (B, 3, E, E) -> pooled class tokens (B, W) (post-layernorm, before projection)."""
        p = next(self.clip.parameters())
        return self.clip(pixel_values=pixels.to(p.device, p.dtype)).pooler_output

    @torch.no_grad()
    def latents(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> scaled latents (B, 4, H/8, W/8), float32: a sample of the VAE posterior
        (as the references train), times 0.18215."""
        p = next(self.vae.parameters())
        dist = self.vae.encode(images.to(p.device, p.dtype)).latent_dist
        return dist.sample(generator=generator).float() * LATENT_SCALE


def unet_config(unet: Mapping[str, torch.Tensor], heads: int = 8) -> dict:
    """diffusers ``UNet2DConditionModel`` arguments for an SD-1-family LDM UNet state dict (sizes from shapes)."""
    levels, per_level = layouts.unet_ldm_structure(unet)
    stride = per_level + 1
    keys = list(unet)
    w_in = unet["input_blocks.0.0.weight"]
    down_attn = [any(k.startswith(f"input_blocks.{1 + i * stride}.1.") for k in keys) for i in range(levels)]
    up_attn = [any(k.startswith(f"output_blocks.{i * stride}.1.") for k in keys) for i in range(levels)]
    proj_in = next(v for k, v in unet.items() if k.endswith(".proj_in.weight"))
    depth = layouts.mapper_depth(unet, "input_blocks.1.1.transformer_blocks.")
    return dict(
        sample_size=64,
        in_channels=w_in.shape[1],
        out_channels=unet["out.2.weight"].shape[0],
        block_out_channels=tuple(unet[f"input_blocks.{1 + i * stride}.0.out_layers.3.weight"].shape[0] for i in range(levels)),
        layers_per_block=per_level,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in down_attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attn),
        cross_attention_dim=next(v.shape[1] for k, v in unet.items() if k.endswith("attn2.to_k.weight")),
        attention_head_dim=heads,  # diffusers' SD-1 configs use this name for the number of heads
        use_linear_projection=proj_in.ndim == 2,
        transformer_layers_per_block=max(depth, 1),
    )


def vae_config(ckpt: PbECheckpoint) -> dict:
    """diffusers ``AutoencoderKL`` arguments for the checkpoint's VAE."""
    info = ckpt.info
    n = len(info.vae_channel_mult)
    return dict(
        in_channels=3,
        out_channels=3,
        latent_channels=info.vae_z_channels,
        block_out_channels=tuple(info.vae_channels * m for m in info.vae_channel_mult),
        layers_per_block=info.vae_num_res_blocks,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        scaling_factor=LATENT_SCALE,
    )


def _float32(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}


def build_modules(ckpt: PbECheckpoint, unet_heads: int = 8) -> tuple[TrainablePbE, FrozenPbE]:
    """The training modules, fp32 on CPU, loaded strictly from ``ckpt`` (every tensor used, every weight set)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet = UNet2DConditionModel(**unet_config(ckpt.unet, unet_heads))
    unet.load_state_dict(_float32(layouts.unet_to_diffusers(ckpt.unet)), strict=True)
    vae = AutoencoderKL(**vae_config(ckpt))
    vae.load_state_dict(_float32(layouts.vae_to_diffusers(ckpt.vae)), strict=True)
    clip = ExemplarEncoder.from_checkpoint(ckpt, torch.float32).transformer
    info = ckpt.info
    head = ExemplarHead(info.clip_width, info.mapper_depth, info.context_dim)
    hsd = layouts.add_prefix(ckpt.mapper, "mapper.")
    hsd.update(layouts.add_prefix(ckpt.final_ln, "final_ln."))
    hsd.update(layouts.add_prefix(ckpt.proj_out, "proj_out."))
    hsd["learnable_vector"] = ckpt.uncond
    head.load_state_dict(_float32(hsd), strict=True)
    return TrainablePbE(unet.train(), head.train()), FrozenPbE(clip, vae)


# --- the loss -------------------------------------------------------------------------------------------------------
def eps_loss(trainable: nn.Module, frozen: FrozenPbE, batch: Mapping[str, torch.Tensor], alphas_cumprod: torch.Tensor,
             generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """The paper's objective: L2 between the true and the predicted noise on the 4 latent channels.

    The target latent and the masked source (hole = 0 in [-1, 1]) are VAE-encoded; the keep-mask goes to latent size
    bilinearly (:func:`pbe_core.edit.conditioning.latent_keep_mask`); timesteps are uniform over the 1000 training
    steps; noise, timesteps and the VAE posterior samples come from ``generator`` (CPU), so a step is reproducible.
    """
    from ..edit import conditioning as ec

    image, keep = batch["image"].to(device), batch["keep"].to(device)
    b = image.shape[0]
    z = frozen.latents(torch.cat([image, image * keep]), generator)
    z0, masked = z[:b], z[b:]
    t = torch.randint(0, alphas_cumprod.shape[0], (b,), generator=generator)
    noise = torch.randn(z0.shape, generator=generator).to(device)
    a = alphas_cumprod[t].to(device, torch.float32).view(b, 1, 1, 1)
    noisy = a.sqrt() * z0 + (1 - a).sqrt() * noise
    unet_in = ec.unet_input(noisy, masked, ec.latent_keep_mask(keep, tuple(z0.shape[-2:])))
    pooled = frozen.pooled(batch["exemplar"])
    eps = trainable(unet_in, t.to(device), pooled, batch["drop"].to(device))
    return F.mse_loss(eps.float(), noise)


# --- the result -----------------------------------------------------------------------------------------------------
def original_state_dict(trainable: TrainablePbE, ckpt: PbECheckpoint) -> dict[str, torch.Tensor]:
    """The fine-tuned model in the original single-file naming: trained UNet and head, frozen VAE and CLIP."""
    head = trainable.head.state_dict()
    sd = layouts.add_prefix(layouts.unet_from_diffusers(trainable.unet.state_dict()), layouts.UNET_PREFIX)
    sd.update(layouts.add_prefix(ckpt.vae, layouts.VAE_PREFIX))
    sd.update(layouts.add_prefix(ckpt.clip, layouts.CLIP_PREFIX))
    sd.update(layouts.add_prefix(layouts.split_prefix(head, "mapper."), layouts.MAPPER_PREFIX))
    sd.update(layouts.add_prefix(layouts.split_prefix(head, "final_ln."), layouts.FINAL_LN_PREFIX))
    sd.update(layouts.add_prefix(layouts.split_prefix(head, "proj_out."), layouts.PROJ_OUT_PREFIX))
    sd[layouts.UNCOND_KEY] = head["learnable_vector"]
    return {k: v.detach() for k, v in sd.items()}


def export(trainable: TrainablePbE, ckpt: PbECheckpoint, path: str | Path, dtype: torch.dtype = torch.float32,
           metadata: dict[str, str] | None = None) -> Path:
    """Write the fine-tuned model as one original-layout ``.safetensors`` the pack's loader and nodes read."""
    path = Path(path)
    write_safetensors(original_state_dict(trainable, ckpt), path, dtype, {"format": "pt", **(metadata or {})})
    return path
