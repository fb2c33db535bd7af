"""Paint by Example as a ComfyUI model type, and the host objects built from a loaded checkpoint.

The host knows a 9-channel SD-1 UNet only as SD-inpainting (``supported_models.SD15`` -> ``BaseModel.set_inpaint``),
which feeds ``[noisy, mask, masked image]`` with 1 = region to fill. Paint by Example needs
``[noisy, masked image, keep-mask]`` with 1 = keep. ``PaintByExampleModel`` overrides ``concat_cond`` so every host
sampler, scheduler and model patch (KSampler, KSamplerAdvanced, SamplerCustomAdvanced, ...) sees the right input;
the order and polarity themselves live in ``pbe_core.edit.conditioning``.

Host references (ComfyUI 0.3.64): ``comfy/model_base.py`` ``BaseModel.concat_cond`` / ``extra_conds``,
``comfy/supported_models.py`` ``SD15``, ``comfy/sd.py`` ``load_diffusion_model_state_dict`` (whose steps the UNet
loading below follows) and ``VAE(sd=..., config=..., dtype=...)``; for the precision, ``comfy/model_management.py``
``unet_dtype`` / ``unet_manual_cast`` / ``should_use_bf16`` / ``vae_dtype``, read against 0.38 too (the same there).
"""

from __future__ import annotations

import inspect
import logging

import comfy.cli_args
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

from ...pbe_core.edit import conditioning as ec
from ...pbe_core.weights.checkpoint import CheckpointError, PbECheckpoint
from ...pbe_core.weights.cpu_precision import cpu_computes_natively
from ...pbe_core.weights.memory_format import conv_weights_to_channels_last_, is_conv_kernel
from ...pbe_core.weights.module_loading import declared_shapes, load_checked
from .encoder import PbEEncoder, encoder_dtype
from .model_sampling_check import check_model_sampling
from .patchers import wrap_in_patcher

log = logging.getLogger(__name__)

WEIGHT_DTYPES = {"default": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class PaintByExampleModel(comfy.model_base.BaseModel):
    """SD-1 UNet with Paint by Example's conditioning channels.

    Conditioning entries it reads (set by ``PBE_InpaintConditioning`` / ``PBE_Sampler`` on positive *and* negative):
    ``concat_latent_image``: VAE latent of the masked source, (B, 4, h, w), unscaled (the host's ``VAE.encode``
    output; scaled here by the latent format, x0.18215); ``concat_mask``: the region to replace, (B, H, W) or
    (B, 1, H, W) at pixel or latent size, ComfyUI polarity (1 = replace).
    """

    #: set by :func:`build_model_patcher`: the checkpoint's path and inferred sizes, to name it in errors
    pbe_source: str = "?"
    pbe_context_dim: int | None = None

    def extra_conds(self, **kwargs):
        check_model_sampling(self.model_sampling)  # a ModelSampling node's object while the host samples
        context = kwargs.get("cross_attn")
        if context is not None and self.pbe_context_dim is not None and context.shape[-1] != self.pbe_context_dim:
            raise ValueError(
                f"The exemplar conditioning is {context.shape[-1]} wide, but the Paint-by-Example model (from "
                f"{self.pbe_source}) takes {self.pbe_context_dim}-wide exemplar tokens: the exemplar was encoded by "
                f"the PBE_ENCODER of another checkpoint. Connect MODEL, PBE_ENCODER and VAE from the same 'Load "
                f"Paint-by-Example Model' node."
            )
        return super().extra_conds(**kwargs)

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
    manual_cast = native_half_on_cpu(weight_dtype, load_device, manual_cast)
    set_inference_dtype(config, weight_dtype, manual_cast, load_device)
    model = config.get_model(sd, "")
    model.pbe_source, model.pbe_context_dim = ckpt.source, ckpt.info.unet_context_dim
    channels_last = unet_channels_last_on_cpu(ckpt, load_device, manual_cast or weight_dtype)
    # As the host's BaseModel.load_model_weights: the config's key processing, then the UNet's load_state_dict; but
    # with assign (the checkpoint's tensors become the weights: one copy in memory) and its report read, not only
    # logged (the host only warns about missing UNet weights and leaves them uninitialised; refused here).
    unet_sd = config.process_unet_state_dict(sd)
    return wrap_in_patcher(
        model, load_device, offload_device,
        lambda: adopt_weights(model.diffusion_model, unet_sd, ckpt.source, "UNet", weight_dtype, channels_last),
    )  # fmt: skip


def set_inference_dtype(config, weight_dtype, manual_cast, load_device) -> None:
    """The model config's inference dtype, as the host's own loaders set it: ComfyUI 0.38's
    ``supported_models_base.BASE.set_inference_dtype(dtype, manual_cast_dtype, device=None)`` takes the load device
    too (``comfy/sd.py`` passes it); 0.3.64's takes the two dtypes only."""
    params = inspect.signature(config.set_inference_dtype).parameters
    if "device" in params:
        config.set_inference_dtype(weight_dtype, manual_cast, device=load_device)
    else:
        config.set_inference_dtype(weight_dtype, manual_cast)


def native_half_on_cpu(weight_dtype: torch.dtype, device: torch.device, host_manual_cast: torch.dtype | None):
    """The UNet's manual-cast dtype (the model config's inference dtype; None = compute in the weights' dtype).

    The host's choice (``host_manual_cast``, from ``comfy.model_management.unet_manual_cast``), except for half-precision
    weights on a CPU that computes that precision natively (``pbe_core.weights.cpu_precision``: bf16 with AMX-BF16): None
    there, so the host builds the UNet with plain bf16 layers (``comfy.ops.pick_operations`` gives
    ``disable_weight_init`` when no cast is needed, in 0.3.64 and 0.38 alike). The host never computes bf16 on a CPU: ``should_use_bf16`` is
    False for a CPU device (ComfyUI 0.3.64 and 0.38 alike: "bf16 works on CPU but is extremely slow", true without
    AMX-BF16), so bf16 weights would be cast to fp32 layer by layer at every call: measured 0.95-1.3x the fp32 time
    of a UNet call, against 0.2-0.45x computed in bf16 (docs/benchmarks.md, "Whole UNet calls per precision").
    """
    if torch.device(device).type == "cpu" and weight_dtype != torch.float32 and cpu_computes_natively(weight_dtype):
        return None
    return host_manual_cast


def vae_channels_last_on_cpu(ckpt: PbECheckpoint, device: torch.device, dtype: torch.dtype | None = None) -> bool:
    """Where the VAE runs on the CPU, lay its convolution kernels out channels-last; True if it does. Only asked for
    (``build_vae``) with bf16, which already changes the numbers, or when the user opted in for fp32: there the other
    summation order of those kernels moved the masked-image latent by 8.7e-4 where a thread-count change moves it by
    3.4e-5 (torch 2.13), beyond the fp32 noise floor the defaults stay within (``tests/host/test_inprocess_host.py``).

    oneDNN then runs the VAE's convolutions on channels-last activations, which is faster on the CPU in fp32 and in
    bf16 (docs/benchmarks.md, "Channels-last convolution kernels" and "Channels-last in bf16"). Kernels already in the VAE's
    ``dtype`` (None: all of them) are re-ordered here, in place inside the checkpoint's own memory
    (``pbe_core.weights.memory_format``), so memory does not grow; ``adopt_weights`` casts the others straight into
    channels-last order (a cast copies anyway). On an accelerator nothing changes (not measured there).
    """
    if torch.device(device).type != "cpu":
        return False
    done = _kernels_channels_last_in_place(ckpt, "vae", dtype)
    log.debug("%s: %d VAE convolution kernels re-ordered channels-last", ckpt.source, len(done))
    return True


def unet_channels_last_on_cpu(ckpt: PbECheckpoint, device: torch.device, compute_dtype: torch.dtype) -> bool:
    """Where the UNet computes in bf16 on the CPU, lay its convolution kernels out channels-last; True if it does.

    Measured with AMX-BF16 (docs/benchmarks.md, "Channels-last in bf16"): a bf16 UNet call with channels-last kernels
    took 0.82-0.92x the NCHW time (oneDNN's bf16 convolutions prefer NHWC, and the transformer blocks' reshapes
    between image and token layout become views instead of copies). Kernels already bf16 in the file are re-ordered
    in place, the others are cast straight into channels-last order (``adopt_weights``), so this costs no extra
    memory. In fp32 the UNet stays as the file has it: there the gain was small and re-ordering 3.4 GB of kernels in
    place cost seconds.
    """
    if torch.device(device).type != "cpu" or compute_dtype != torch.bfloat16:
        return False
    done = _kernels_channels_last_in_place(ckpt, "unet", compute_dtype)
    log.debug("%s: %d UNet convolution kernels re-ordered channels-last in place", ckpt.source, len(done))
    return True


def _kernels_channels_last_in_place(ckpt: PbECheckpoint, part: str, dtype: torch.dtype | None) -> list[str]:
    """Re-order in place the convolution kernels of ``ckpt``'s ``part`` that are ``dtype`` (None: any); their names."""
    parts = ckpt.parts()
    same = {k: t for k, t in parts[part].items() if dtype is None or t.dtype == dtype}
    # a kernel whose bytes another tensor of the file also views is left alone (pbe_core.weights.memory_format)
    others = [t for name, d in parts.items() for k, t in d.items() if name != part or k not in same]
    return conv_weights_to_channels_last_(same, also_in_memory=others)


def adopt_weights(
    module: torch.nn.Module,
    sd: dict[str, torch.Tensor],
    source: str,
    what: str,
    dtype: torch.dtype,
    channels_last: bool = False,
) -> None:
    """Make ``sd``'s tensors the weights of ``module``, floating-point ones cast to ``dtype`` where they differ
    (``pbe_core.weights.module_loading.load_checked``: through the layers' own ``load_state_dict`` with ``assign``; a tensor of
    another shape than its layer declares, a weight loading reports missing, or a tensor it reports unused raise
    :class:`CheckpointError` naming them).

    ``dtype``: the dtype the host built the network in (the model config's inference dtype, the VAE's
    ``vae_dtype``): a given number, never read from the network's own weights, which a newer host leaves unset until
    loading. ``channels_last``: a convolution kernel that is cast is written in channels-last order (no extra copy:
    the cast copies anyway); kernels that need no cast keep their layout (``vae_channels_last_on_cpu`` and
    ``unet_channels_last_on_cpu`` re-order those in place).

    The one copy of the weights in memory is the checkpoint's: for an fp32 ``.safetensors`` file on the CPU these
    are views of the file's private, copy-on-write memory map (writes never reach the file), so peak memory while
    loading is about the file's size instead of twice it.
    """

    def prepare(key: str, v: torch.Tensor) -> torch.Tensor:
        if not v.is_floating_point() or v.dtype == dtype:
            return v
        if channels_last and is_conv_kernel(v):
            return v.to(dtype=dtype, memory_format=torch.channels_last)
        return v.to(dtype=dtype)

    load_checked(module, sd, what, source, prepare)


#: ComfyUI's command-line options that fix the VAE's precision (``comfy/cli_args.py``; read by
#: ``comfy.model_management.vae_dtype`` in 0.3.64 and 0.38 alike)
HOST_VAE_PRECISION_FLAGS = ("fp16_vae", "bf16_vae", "fp32_vae")


def vae_dtype_on_cpu(weight_dtype: torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """The ``dtype`` to give the host VAE: bf16 when bf16 was chosen and the VAE runs on a CPU that computes bf16
    natively, unless ComfyUI was started with a VAE precision (``--fp32-vae``, ``--bf16-vae``, ``--fp16-vae``: those
    win); None otherwise, which leaves the choice to the host (``comfy.model_management.vae_dtype``: fp32 on a CPU).

    Measured on a CPU with AMX-BF16 (docs/benchmarks.md, "Headline", and a probe): the bf16 VAE encoded and decoded
    512^2 in 0.2-0.3x the fp32 time (channels-last: 0.36-0.42x its own NCHW time); its decoder alone came within
    4e-3 on average (about 1 grey level) and 3.8e-2 at most of the fp32 one on 0..1 pixels (random full-size weights). The host itself never picks bf16 for a CPU
    VAE (``should_use_bf16`` is False for a CPU device), hence this choice here.
    """
    if weight_dtype != torch.bfloat16 or torch.device(device).type != "cpu":
        return None
    if any(getattr(comfy.cli_args.args, flag, False) for flag in HOST_VAE_PRECISION_FLAGS):
        return None
    return torch.bfloat16 if cpu_computes_natively(torch.bfloat16) else None


def build_vae(ckpt: PbECheckpoint, dtype: torch.dtype | None = None, channels_last: bool = False) -> comfy.sd.VAE:
    """The host VAE, its architecture given explicitly from the inferred sizes (the tiny test VAE included).

    ``dtype``: the host VAE's own ``dtype`` option (None: the host chooses, ``comfy.model_management.vae_dtype``).
    ``channels_last``: channels-last kernels on the CPU in fp32 too (opt-in); a bf16 VAE always gets them.
    """
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
    # the host's VAE copies the state dict in with load_state_dict(strict=False), which raises on a tensor of another
    # shape: such tensors (against the sizes the layers declare, on a shapes-only build) are held back here and
    # named with what loading reports below
    with torch.device("meta"):
        declared = declared_shapes(comfy.ldm.models.autoencoder.AutoencoderKL(**config["params"]))
    sd = {k: v for k, v in ckpt.vae.items() if k not in declared or tuple(v.shape) == declared[k]}
    vae = comfy.sd.VAE(sd=dict(sd), config=config, dtype=dtype)
    wanted = channels_last or vae.vae_dtype == torch.bfloat16
    channels_last = wanted and vae_channels_last_on_cpu(ckpt, vae.device, vae.vae_dtype)
    # the host copied the weights in; share the checkpoint's instead so that one copy stays in memory. Loading
    # reports missing and unused tensors; the misshapen ones are named with them.
    adopt_weights(vae.first_stage_model, dict(ckpt.vae), ckpt.source, "VAE", vae.vae_dtype, channels_last)
    factor = 2 ** (len(info.vae_channel_mult) - 1)
    vae.downscale_ratio = vae.upscale_ratio = factor
    return vae


def read_dtypes(weight_dtype: str) -> dict[str, torch.dtype]:
    """The dtypes ``build_all(ckpt, weight_dtype)`` will give each part, for ``load_checkpoint(path, dtypes)`` to cast
    to while reading (so a bf16 model from an fp32 file never holds the file and the bf16 copy in memory at once).

    Only what is already known before reading: nothing for "default" (the host then chooses from the file's dtype),
    else the UNet's (the choice), the exemplar encoder's (``encoder_dtype``) and the VAE's where the pack picks it
    (``vae_dtype_on_cpu``; otherwise the host VAE casts it when it is built). Only half-precision targets: reading to
    convert gives every tensor memory of its own, so an fp32 target keeps the lazy memory map of an fp32 file (the
    default path's behaviour) and is cast, where needed, when the models are built.
    """
    dtype = WEIGHT_DTYPES[weight_dtype]
    if dtype is None:
        return {}
    out = {"unet": dtype, "encoder": encoder_dtype(dtype, comfy.model_management.text_encoder_device()),
           "vae": vae_dtype_on_cpu(dtype, comfy.model_management.vae_device())}
    return {part: d for part, d in out.items() if d in (torch.bfloat16, torch.float16)}


def check_same_checkpoint(model, encoder, vae) -> None:
    """Refuse a MODEL, PBE_ENCODER and VAE that do not fit together (from different 'Load Paint-by-Example Model'
    nodes with different checkpoints), naming both files, before anything runs."""
    base = model.model
    width = getattr(base, "pbe_context_dim", None)
    if not isinstance(base, PaintByExampleModel):
        raise ValueError(
            "The MODEL is not a Paint-by-Example model (it came from another loader). Connect the MODEL output of "
            "'Load Paint-by-Example Model'."
        )
    if width is not None and encoder.info.context_dim != width:
        raise ValueError(
            f"The PBE_ENCODER (from {encoder.source}) makes {encoder.info.context_dim}-wide exemplar tokens, but the "
            f"MODEL (from {base.pbe_source}) takes {width}-wide ones: they come from different checkpoints. Connect "
            f"MODEL, PBE_ENCODER and VAE from the same 'Load Paint-by-Example Model' node."
        )
    channels = getattr(getattr(vae, "first_stage_model", None), "embed_dim", None)
    in_channels = base.model_config.unet_config.get("in_channels")
    if channels is not None and in_channels is not None and 2 * channels + 1 != in_channels:
        raise ValueError(
            f"The VAE (from {getattr(vae, 'pbe_source', 'another loader')}) has {channels} latent channels, but the "
            f"MODEL (from {base.pbe_source}) takes {in_channels} input channels (2 x 4 + 1 for Paint by Example). "
            f"Connect the VAE of the same 'Load Paint-by-Example Model' node."
        )


def build_all(ckpt: PbECheckpoint, weight_dtype: str = "default", channels_last_vae: bool = False):
    """(MODEL, PBE_ENCODER, VAE) from a loaded checkpoint. ``channels_last_vae``: see :func:`build_vae` (opt-in in
    fp32: it moves results beyond the fp32 noise floor)."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype {weight_dtype!r} is not one of {', '.join(WEIGHT_DTYPES)}.")
    dtype = WEIGHT_DTYPES[weight_dtype]
    # The VAE first: the host copies its weights before they are shared (adopt_weights), and that transient copy
    # is smallest while little else of the file has been read.
    vae = build_vae(ckpt, vae_dtype_on_cpu(dtype, comfy.model_management.vae_device()), channels_last_vae)
    model = build_model_patcher(ckpt, dtype)
    encoder = PbEEncoder(ckpt, dtype)
    return model, encoder, vae
