"""Paint by Example as a ComfyUI model type, and the host objects built from a loaded checkpoint.

The host knows a 9-channel SD-1 UNet only as SD-inpainting (``supported_models.SD15`` -> ``BaseModel.set_inpaint``),
which feeds ``[noisy, mask, masked image]`` with 1 = region to fill. Paint by Example needs
``[noisy, masked image, keep-mask]`` with 1 = keep. ``PaintByExampleModel`` overrides ``concat_cond`` so every host
sampler, scheduler and model patch (KSampler, KSamplerAdvanced, SamplerCustomAdvanced, ...) sees the right input;
the order and polarity themselves live in ``pbe_core.edit_conditioning``.

Host references (ComfyUI 0.3.64): ``comfy/model_base.py`` ``BaseModel.concat_cond`` / ``extra_conds``,
``comfy/supported_models.py`` ``SD15``, ``comfy/sd.py`` ``load_diffusion_model_state_dict`` (whose steps the UNet
loading below follows) and ``VAE(sd=..., config=...)``.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict

import comfy.latent_formats
import comfy.ldm.models.autoencoder
import comfy.model_base
import comfy.model_detection
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.supported_models
import comfy.utils
import torch

from ..pbe_core import edit_conditioning as ec
from ..pbe_core.checkpoint import CheckpointError, PbECheckpoint, check_fits
from ..pbe_core.exemplar_encoder import ExemplarEncoder
from ..pbe_core.memory_format import conv_weights_to_channels_last_

log = logging.getLogger(__name__)

WEIGHT_DTYPES = {"default": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class PaintByExampleModel(comfy.model_base.BaseModel):
    """SD-1 UNet with Paint by Example's conditioning channels.

    Conditioning entries it reads (set by ``PBE_InpaintConditioning`` / ``PBE_Sampler`` on positive *and* negative):
    ``concat_latent_image``: VAE latent of the masked source, (B, 4, h, w), unscaled (the host's ``VAE.encode``
    output; scaled here by the latent format, x0.18215); ``concat_mask``: the region to replace, (B, H, W) or
    (B, 1, H, W) at pixel or latent size, ComfyUI polarity (1 = replace).
    """

    def concat_cond(self, **kwargs):
        noise = kwargs.get("noise")
        latent = kwargs.get("concat_latent_image")
        mask = kwargs.get("concat_mask")
        if latent is None or mask is None:
            raise ValueError(
                "The Paint-by-Example model got no source image or mask. Connect its positive and negative through "
                "'Paint-by-Example Inpaint Conditioning' (PBE_InpaintConditioning), or use the 'Paint by Example' "
                "sampler node, which does this itself."
            )
        device = kwargs["device"]
        latent = self.process_latent_in(latent.to(device))
        if latent.shape[-2:] != noise.shape[-2:]:
            raise ValueError(
                f"The masked-image latent is {latent.shape[-1] * 8}x{latent.shape[-2] * 8} pixels but the latent being "
                f"sampled is {noise.shape[-1] * 8}x{noise.shape[-2] * 8}. Sample the LATENT that "
                f"PBE_InpaintConditioning outputs (or one of the same size)."
            )
        latent = comfy.utils.resize_to_batch_size(latent, noise.shape[0])
        if mask.ndim == 4:
            mask = mask[:, 0]
        keep = ec.latent_keep_mask(ec.keep_mask(mask.to(device)), tuple(noise.shape[-2:]))
        keep = comfy.utils.resize_to_batch_size(keep, noise.shape[0])
        return ec.concat_channels(latent, keep.to(latent.dtype))


class PaintByExampleConfig(comfy.supported_models.SD15):
    """SD15's settings (latent format, eps, linear betas 0.00085..0.012, 8 heads) with Paint by Example's model."""

    unet_config = {}  # never matched automatically; built only by this pack's loader

    def get_model(self, state_dict, prefix="", device=None):
        return PaintByExampleModel(self, model_type=self.model_type(state_dict, prefix), device=device)


def build_model_patcher(ckpt: PbECheckpoint, weight_dtype: torch.dtype | None) -> comfy.model_patcher.ModelPatcher:
    """The UNet as a host MODEL, following ``comfy.sd.load_diffusion_model_state_dict``'s steps."""
    sd = dict(ckpt.unet)
    try:
        unet_config = comfy.model_detection.detect_unet_config(sd, "")
    except Exception as e:  # the host's detection indexes keys freely: a damaged file fails anywhere in it
        raise CheckpointError(
            f"{ckpt.source}: ComfyUI could not read the UNet's architecture from its tensors ({type(e).__name__}: "
            f"{e}). The file is damaged or not Paint by Example; download it again."
        ) from e
    if unet_config is None or unet_config.get("in_channels") != 9:
        raise CheckpointError(
            f"{ckpt.source}: ComfyUI did not recognise the UNet as SD-1 with 9 input channels. The file is damaged or "
            f"not Paint by Example; download it again."
        )
    config = PaintByExampleConfig(unet_config)
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    params = comfy.utils.calculate_parameters(sd)
    if weight_dtype is None:
        weight_dtype = comfy.model_management.unet_dtype(
            model_params=params, supported_dtypes=list(config.supported_inference_dtypes), weight_dtype=comfy.utils.weight_dtype(sd)
        )
    manual_cast = comfy.model_management.unet_manual_cast(weight_dtype, load_device, config.supported_inference_dtypes)
    config.set_inference_dtype(weight_dtype, manual_cast)
    model = config.get_model(sd, "")
    # the host only warns about missing UNet weights (and leaves them uninitialised): refuse such a file instead
    check_fits(model.diffusion_model.state_dict(), sd, "UNet", ckpt.source)
    # Instead of BaseModel.load_model_weights (which copies every tensor into the freshly allocated weights), the
    # checkpoint's tensors become the weights: the fresh ones are never touched, so they never take memory.
    adopt_weights(model.diffusion_model, config.process_unet_state_dict(sd), ckpt.source, "UNet")
    model = model.to(offload_device)
    return comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)


def vae_channels_last_on_cpu(ckpt: PbECheckpoint, device: torch.device) -> None:
    """Where the VAE runs on the CPU, re-order its convolution kernels channels-last, in place.

    oneDNN then runs the VAE's convolutions on channels-last activations, which is faster on the CPU
    (docs/benchmarks.md, "Channels-last convolution kernels"; the UNet gained nothing consistent that way and stays as
    loaded). The bytes move inside the checkpoint's own memory (``pbe_core.memory_format``), so memory does not grow;
    on an accelerator nothing changes (not measured there).
    """
    if torch.device(device).type != "cpu":
        return
    others = [t for d in (ckpt.unet, ckpt.clip, ckpt.mapper, ckpt.final_ln, ckpt.proj_out) for t in d.values()]
    done = conv_weights_to_channels_last_(ckpt.vae, also_in_memory=others)
    log.debug("%s: %d VAE convolution kernels re-ordered channels-last", ckpt.source, len(done))


def adopt_weights(module: torch.nn.Module, sd: dict[str, torch.Tensor], source: str, what: str) -> None:
    """Make ``sd``'s tensors the weights of ``module`` (cast to each weight's dtype and device where they differ).

    The one copy of the weights in memory is the checkpoint's: for an fp32 ``.safetensors`` file on the CPU these
    are views of the file's private, copy-on-write memory map (writes never reach the file), so peak memory while
    loading is about the file's size instead of twice it. Every weight of ``module`` must be in ``sd`` and vice
    versa (the loader has already checked the architecture); a mismatch raises with the names.
    """
    own = module.state_dict(keep_vars=True)
    missing = sorted(k for k in own if k not in sd)
    unexpected = sorted(k for k in sd if k not in own)
    if missing or unexpected:
        raise ValueError(
            f"{source}: the {what} weights do not fit the model ComfyUI built from their shapes: missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}. The file is not a complete Paint-by-Example checkpoint."
        )
    adopted = {k: v.to(device=own[k].device, dtype=own[k].dtype) for k, v in sd.items()}
    module.load_state_dict(adopted, strict=True, assign=True)


def build_vae(ckpt: PbECheckpoint) -> comfy.sd.VAE:
    """The host VAE, its architecture given explicitly from the inferred sizes (the tiny test VAE included)."""
    info = ckpt.info
    ddconfig = {
        "double_z": True,
        "z_channels": info.vae_z_channels,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": info.vae_channels,
        "ch_mult": list(info.vae_channel_mult),
        "num_res_blocks": info.vae_num_res_blocks,
        "attn_resolutions": [],
        "dropout": 0.0,
    }
    config = {"params": {"embed_dim": info.vae_embed_dim, "ddconfig": ddconfig}}
    with torch.device("meta"):  # shapes only: the host only warns about missing VAE weights
        expected = comfy.ldm.models.autoencoder.AutoencoderKL(**config["params"]).state_dict()
    check_fits(expected, ckpt.vae, "VAE", ckpt.source)
    vae = comfy.sd.VAE(sd=dict(ckpt.vae), config=config)
    vae_channels_last_on_cpu(ckpt, vae.device)
    # the host copied the weights in; share the checkpoint's instead so that one copy stays in memory
    adopt_weights(vae.first_stage_model, dict(ckpt.vae), ckpt.source, "VAE")
    factor = 2 ** (len(info.vae_channel_mult) - 1)
    vae.downscale_ratio = vae.upscale_ratio = factor
    return vae


#: exemplar encodings each PBE_ENCODER remembers (a few KB each: one 768-wide token per exemplar)
ENCODE_CACHE_SIZE = 8


def _pixels_key(pixels: torch.Tensor) -> tuple:
    """Exact identity of a batch of preprocessed exemplar pixels: shape, dtype and a digest of the values."""
    data = pixels.detach().to("cpu").contiguous()
    digest = hashlib.blake2b(data.view(torch.uint8).numpy().tobytes(), digest_size=32).hexdigest()
    return tuple(data.shape), str(data.dtype), digest


class PbEEncoder:
    """The ``PBE_ENCODER`` value: the exemplar encoder, placed and offloaded by the host's model management."""

    def __init__(self, ckpt: PbECheckpoint, weight_dtype: torch.dtype | None):
        self.info = ckpt.info
        self.source = ckpt.source
        self.load_device = comfy.model_management.text_encoder_device()
        offload_device = comfy.model_management.text_encoder_offload_device()
        if weight_dtype is None:
            # fp32 on the CPU (fp16 there is slow and inexact); the host's text-encoder dtype on an accelerator
            cpu = self.load_device.type == "cpu"
            weight_dtype = torch.float32 if cpu else comfy.model_management.text_encoder_dtype(self.load_device)
        self.dtype = weight_dtype
        self.model = ExemplarEncoder.from_checkpoint(ckpt, dtype=weight_dtype).to(offload_device)
        self.patcher = comfy.model_patcher.ModelPatcher(self.model, load_device=self.load_device, offload_device=offload_device)
        # encodings of recent exemplars: lives and dies with this encoder (weights never change under it)
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """CLIP-normalised pixels (B, 3, S, S) -> context (B, 1, C) float32 on the intermediate device.

        Remembers the last few results (keyed on the exact pixel values): the one-node sampler runs again when only
        the seed changes, and the exemplar is then not encoded again (the modular graph gets the same from the
        host's own cache of PBE_ExemplarEncode's output).
        """
        key = _pixels_key(pixels)
        out = self._cache.get(key)
        if out is None:
            log.info("Paint by Example: encoding %d exemplar(s)", pixels.shape[0])
            comfy.model_management.load_model_gpu(self.patcher)
            out = self.model(pixels.to(self.load_device, self.dtype)).float()
            out = out.to(comfy.model_management.intermediate_device())
            self._cache[key] = out
            while len(self._cache) > ENCODE_CACHE_SIZE:
                self._cache.popitem(last=False)
        else:
            log.debug("Paint by Example: %d exemplar(s) already encoded", pixels.shape[0])
            self._cache.move_to_end(key)
        return out.clone()

    @torch.no_grad()
    def unconditional(self, batch: int) -> torch.Tensor:
        """The learned unconditional context, (batch, 1, C) float32."""
        return self.model.unconditional(batch).float().to(comfy.model_management.intermediate_device()).clone()


def build_all(ckpt: PbECheckpoint, weight_dtype: str = "default"):
    """(MODEL, PBE_ENCODER, VAE) from a loaded checkpoint."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype {weight_dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}.")
    dtype = WEIGHT_DTYPES[weight_dtype]
    # The VAE first: the host copies its weights before they are shared (adopt_weights), and that transient copy
    # is smallest while little else of the file has been read.
    vae = build_vae(ckpt)
    model = build_model_patcher(ckpt, dtype)
    encoder = PbEEncoder(ckpt, dtype)
    return model, encoder, vae
