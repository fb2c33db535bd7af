"""Deterministic Paint-by-Example checkpoints with random weights, written in every published layout.

No real weights exist on this machine and nothing may be downloaded, so the tests build the model's parts with
diffusers' and transformers' own classes (``UNet2DConditionModel``, ``AutoencoderKL``,
``PaintByExampleImageEncoder``), fill every parameter from a seeded generator, and write the *same* weights as:

* ``original.ckpt``          Lightning inference checkpoint (``state_dict`` + bookkeeping), torch zip
* ``original-training.ckpt`` Lightning *training* checkpoint: optimizer state, a callback class and numpy scalars
                             whose modules are not installed when it is read (like the 12.6 GB file on the hub)
* ``original-fp32.safetensors``, ``original-fp16.safetensors``, ``original-bf16.safetensors``
* ``diffusers-hub/``         diffusers folder as on the hub: safetensors, CLIP keys with ``vision_model.``,
                             ``image_encoder: ["paint_by_example", ...]`` in ``model_index.json``
* ``diffusers-bin/``         same with ``.bin`` weights, CLIP keys without ``vision_model.`` (transformers 5)
* ``diffusers-fp16/``        fp16 variant files only (``*.fp16.safetensors``)

The original layout is produced from the diffusers modules by the pack's key maps (``pbe_core.weights.layouts``); the tests
check those maps against diffusers' own LDM-to-diffusers converters, so the fixture cannot silently agree with a
wrong map. ``TINY`` keeps every test fast; ``FULL`` is the real architecture (1.31 B parameters) for benchmarks.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from pbe_core.weights import layouts


@dataclass(frozen=True)
class Spec:
    """Sizes of the three networks (diffusers constructor arguments)."""

    unet: dict = field(default_factory=dict)
    vae: dict = field(default_factory=dict)
    clip: dict = field(default_factory=dict)


TINY = Spec(
    unet=dict(
        block_out_channels=(32, 64, 64, 64),
        layers_per_block=2,
        cross_attention_dim=64,
        attention_head_dim=8,
        sample_size=8,
    ),
    vae=dict(block_out_channels=(32, 32, 64, 64), layers_per_block=1, sample_size=64),
    # heads = hidden // 64 as in every OpenAI CLIP; 9 layers so diffusers builds (9 + 1) // 5 = 2 mapper blocks
    clip=dict(
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=9,
        num_attention_heads=2,
        image_size=224,
        patch_size=32,
        projection_dim=64,
    ),
)

FULL = Spec(
    unet=dict(
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
        sample_size=64,
    ),
    vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512),
    clip=dict(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=24,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        projection_dim=768,
    ),
)

#: log-variance given to the test VAE's posterior: sampling it equals taking its mean to ~1e-13, so the
#: references (which sample) and ComfyUI (which takes the mean) see the same masked-image latent.
VAE_LOGVAR = -60.0


def build_modules(spec: Spec = TINY, seed: int = 0):
    """Return ``(unet, vae, image_encoder)``: diffusers/transformers modules with seeded random weights (fp32)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    try:  # diffusers >= 0.33 keeps it under deprecated/; older releases (transformers-4 era) at the top level
        from diffusers.pipelines.deprecated.paint_by_example.image_encoder import PaintByExampleImageEncoder
    except ImportError:
        from diffusers.pipelines.paint_by_example.image_encoder import PaintByExampleImageEncoder
    from transformers import CLIPVisionConfig

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        in_channels=9,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        **spec.unet,
    )
    nv = len(spec.vae["block_out_channels"])
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * nv,
        up_block_types=("UpDecoderBlock2D",) * nv,
        **spec.vae,
    )
    encoder = PaintByExampleImageEncoder(CLIPVisionConfig(hidden_act="quick_gelu", **spec.clip))
    gen = torch.Generator().manual_seed(seed)
    for module in (unet, vae, encoder):
        _randomise(module, gen)
    with torch.no_grad():
        # second half of quant_conv's output is the posterior log-variance
        z = vae.quant_conv.weight.shape[0] // 2
        vae.quant_conv.weight[z:] = 0
        vae.quant_conv.bias[z:] = VAE_LOGVAR
    for module in (unet, vae, encoder):
        module.eval().requires_grad_(False)
    return unet, vae, encoder


def _randomise(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Fill every parameter from ``gen`` so that no weight keeps a default (1, 0) a wrong key map could hide behind.

    Scales keep activations of the random network of order one.
    """
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=gen)
            if p.ndim == 1 and name.endswith("weight"):  # norm scales
                p.copy_(1.0 + 0.1 * r)
            elif p.ndim == 1:  # biases
                p.copy_(0.05 * r)
            elif name.endswith("class_embedding") or "embedding" in name:
                p.copy_(0.5 * r)
            else:
                fan_in = p[0].numel() if p.ndim > 1 else p.numel()
                p.copy_(r / fan_in**0.5)


# --- the original single-file layout ------------------------------------------------------------------------------
def original_state_dict(unet, vae, encoder) -> OrderedDict:
    """The Lightning ``state_dict`` of the official checkpoint, built from the diffusers modules."""
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    sd.update(layouts.add_prefix(layouts.unet_from_diffusers(unet.state_dict()), layouts.UNET_PREFIX))
    sd.update(layouts.add_prefix(layouts.vae_from_diffusers(vae.state_dict()), layouts.VAE_PREFIX))
    enc = encoder.state_dict()
    clip = layouts.clip_with_vision_model_level(layouts.split_prefix(enc, "model."))
    n_pos = clip["vision_model.embeddings.position_embedding.weight"].shape[0]
    # transformers-4 era files carry this buffer (int64)
    clip["vision_model.embeddings.position_ids"] = torch.arange(n_pos).unsqueeze(0)
    sd.update(layouts.add_prefix(clip, layouts.CLIP_PREFIX))
    sd.update(layouts.add_prefix(layouts.mapper_from_diffusers(layouts.split_prefix(enc, "mapper.")), layouts.MAPPER_PREFIX))
    sd.update(layouts.add_prefix(layouts.split_prefix(enc, "final_layer_norm."), layouts.FINAL_LN_PREFIX))
    sd.update(layouts.add_prefix(layouts.split_prefix(enc, "proj_out."), layouts.PROJ_OUT_PREFIX))
    sd[layouts.UNCOND_KEY] = enc["uncond_vector"]
    sd.update(schedule_buffers())
    return OrderedDict((k, v.detach().clone().contiguous()) for k, v in sd.items())


def schedule_buffers(steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> dict:
    """The 12 DDPM buffers LatentDiffusion registers (values computed as LDM does, in float64 then float32)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    alphas = 1.0 - betas
    ac = torch.cumprod(alphas, 0)
    ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
    post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
    vals = {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": ac.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1 - ac).sqrt(),
        "log_one_minus_alphas_cumprod": (1 - ac).log(),
        "sqrt_recip_alphas_cumprod": (1 / ac).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1 / ac - 1).sqrt(),
        "posterior_variance": post_var,
        "posterior_log_variance_clipped": post_var.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * ac_prev.sqrt() / (1 - ac),
        "posterior_mean_coef2": (1 - ac_prev) * alphas.sqrt() / (1 - ac),
    }
    assert tuple(vals) == layouts.SCHEDULE_BUFFERS
    return {k: v.float() for k, v in vals.items()}


def trainable_keys(sd) -> list[str]:
    """Parameters the paper trains (UNet, mapper, final LN, proj_out, learned vector): they carry optimizer state."""
    prefixes = (layouts.UNET_PREFIX, layouts.MAPPER_PREFIX, layouts.FINAL_LN_PREFIX, layouts.PROJ_OUT_PREFIX)
    return [k for k in sd if k.startswith(prefixes) or k == layouts.UNCOND_KEY]


# --- diffusers folders ---------------------------------------------------------------------------------------------
HUB_MODEL_INDEX = {
    "_class_name": "PaintByExamplePipeline",
    "_diffusers_version": "0.11.0.dev0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "image_encoder": ["paint_by_example", "PaintByExampleImageEncoder"],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.11.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

FEATURE_EXTRACTOR_CONFIG = {
    "crop_size": {"height": 224, "width": 224},
    "do_center_crop": True,
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_processor_type": "CLIPImageProcessor",
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"shortest_edge": 224},
}


def write_diffusers_folder(
    root: Path, unet, vae, encoder, *, fmt: str = "safetensors", vision_model_level: bool = True, variant: str | None = None
) -> Path:
    """Write a diffusers Paint-by-Example folder the way ``save_pretrained`` / the hub lay it out.

    ``fmt``: "safetensors" or "bin"; ``variant``: e.g. "fp16" writes only ``*.fp16.*`` weight files in half precision;
    ``vision_model_level``: CLIP keys as transformers 4 (``model.vision_model.*``) or 5 (``model.*``) save them.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps(HUB_MODEL_INDEX, indent=2))
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2))
    (root / "feature_extractor").mkdir(exist_ok=True)
    (root / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps(FEATURE_EXTRACTOR_CONFIG, indent=2))
    dtype = torch.float16 if variant == "fp16" else torch.float32
    for name, module, stem in (
        ("unet", unet, "diffusion_pytorch_model"),
        ("vae", vae, "diffusion_pytorch_model"),
        ("image_encoder", encoder, "model" if fmt == "safetensors" else "pytorch_model"),
    ):
        d = root / name
        d.mkdir(exist_ok=True)
        if name == "image_encoder":  # transformers' and diffusers' own config writers
            module.config.architectures = ["PaintByExampleImageEncoder"]
            module.config.to_json_file(d / "config.json")
        else:
            module.save_config(d)
        sd = {k: v.detach().to(dtype).contiguous() for k, v in module.state_dict().items()}
        if name == "image_encoder":  # transformers 4 nests CLIP under "vision_model.", 5 does not: write either
            sd = {_clip_key(k, vision_model_level): v for k, v in sd.items()}
        ext = "safetensors" if fmt == "safetensors" else "bin"
        fname = f"{stem}.{variant}.{ext}" if variant else f"{stem}.{ext}"
        if fmt == "safetensors":
            save_file(sd, str(d / fname), metadata={"format": "pt"})
        else:
            torch.save(sd, d / fname)
    return root


def _clip_key(key: str, vision_model_level: bool) -> str:
    if not key.startswith("model."):
        return key
    rest = key[len("model.") :]
    rest = rest[len("vision_model.") :] if rest.startswith("vision_model.") else rest
    return "model." + ("vision_model." if vision_model_level else "") + rest


# --- everything ------------------------------------------------------------------------------------------------------
LAYOUTS = (
    "original.ckpt",
    "original-training.ckpt",
    "original-fp32.safetensors",
    "original-fp16.safetensors",
    "original-bf16.safetensors",
    "diffusers-hub",
    "diffusers-bin",
    "diffusers-fp16",
)

#: layouts that hold exactly the fp32 weights (the others are rounded to fp16 / bf16)
FP32_LAYOUTS = ("original.ckpt", "original-training.ckpt", "original-fp32.safetensors", "diffusers-hub", "diffusers-bin")


def write_all_layouts(root: Path, spec: Spec = TINY, seed: int = 0) -> dict[str, Path]:
    """Write every layout of the same random model under ``root``; return ``{layout name: path}``.

    Idempotent: a ``.complete`` marker records the spec and seed, and a finished folder is reused.
    """
    from lightning_pickle import save_lightning_checkpoint

    root = Path(root)
    stamp = json.dumps({"spec": repr(spec), "seed": seed, "version": 1})
    marker = root / ".complete"
    paths = {name: root / name for name in LAYOUTS}
    if marker.is_file() and marker.read_text() == stamp:
        return paths
    root.mkdir(parents=True, exist_ok=True)
    unet, vae, encoder = build_modules(spec, seed)
    sd = original_state_dict(unet, vae, encoder)
    save_lightning_checkpoint(paths["original.ckpt"], sd, training=False)
    save_lightning_checkpoint(paths["original-training.ckpt"], sd, optimizer_param_names=trainable_keys(sd), training=True)
    for dt, name in ((torch.float32, "fp32"), (torch.float16, "fp16"), (torch.bfloat16, "bf16")):
        # integer buffers (position_ids) keep their dtype, as real conversions do
        cast = {k: (v.to(dt) if v.is_floating_point() else v) for k, v in sd.items()}
        save_file(cast, str(paths[f"original-{name}.safetensors"]))
    write_diffusers_folder(paths["diffusers-hub"], unet, vae, encoder, fmt="safetensors", vision_model_level=True)
    write_diffusers_folder(paths["diffusers-bin"], unet, vae, encoder, fmt="bin", vision_model_level=False)
    write_diffusers_folder(paths["diffusers-fp16"], unet, vae, encoder, fmt="safetensors", variant="fp16")
    marker.write_text(stamp)
    return paths


def fixture_root() -> Path:
    """Where the tests keep the tiny fixtures (git-ignored); override with ``PBE_FIXTURE_DIR``."""
    return Path(os.environ.get("PBE_FIXTURE_DIR", Path(__file__).resolve().parents[1] / ".fixtures"))


# --- Stable Diffusion 1.x (for fine-tuning from SD) and a CLIP vision file ---------------------------------------------
#: sizes of the text-encoder stub an SD-1.x checkpoint carries (its width must be the UNet's context width)
TINY_TEXT = dict(intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, vocab_size=1000, max_position_embeddings=77)


def build_sd1_modules(spec: Spec = TINY, seed: int = 1):
    """``(unet, vae, text_encoder)`` of a tiny SD-1.x model: the same sizes as ``spec`` but a 4-channel UNet."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        **spec.unet,
    )
    nv = len(spec.vae["block_out_channels"])
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * nv,
        up_block_types=("UpDecoderBlock2D",) * nv,
        **spec.vae,
    )
    text = CLIPTextModel(
        CLIPTextConfig(hidden_size=spec.unet["cross_attention_dim"], bos_token_id=0, eos_token_id=2, pad_token_id=1,
                       **TINY_TEXT)
    )
    gen = torch.Generator().manual_seed(seed)
    for module in (unet, vae, text):
        _randomise(module, gen)
        module.eval().requires_grad_(False)
    return unet, vae, text


def sd1_state_dict(unet, vae, text) -> OrderedDict:
    """An SD-1.x single-file state dict (LDM naming): 4-channel UNet, VAE, text encoder, schedule buffers."""
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    sd.update(layouts.add_prefix(layouts.unet_from_diffusers(unet.state_dict()), layouts.UNET_PREFIX))
    sd.update(layouts.add_prefix(layouts.vae_from_diffusers(vae.state_dict()), layouts.VAE_PREFIX))
    tsd = text.state_dict()
    sd.update({"cond_stage_model.transformer.text_model." + k.removeprefix("text_model."): v for k, v in tsd.items()})
    sd.update(schedule_buffers())
    return OrderedDict((k, v.detach().clone().contiguous()) for k, v in sd.items())


def write_sd1_checkpoint(path: Path, spec: Spec = TINY, seed: int = 1) -> Path:
    """Write a tiny SD-1.x checkpoint: ``.safetensors``, or a Lightning ``.ckpt`` for any other suffix."""
    from lightning_pickle import save_lightning_checkpoint

    path = Path(path)
    sd = sd1_state_dict(*build_sd1_modules(spec, seed))
    if path.suffix == ".safetensors":
        save_file(dict(sd), str(path))
    else:
        save_lightning_checkpoint(path, sd, training=False)
    return path


def build_clip_vision(spec: Spec = TINY, seed: int = 2):
    """A transformers ``CLIPVisionModel`` of ``spec``'s CLIP sizes with seeded random weights."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    model = CLIPVisionModel(CLIPVisionConfig(hidden_act="quick_gelu", **spec.clip))
    _randomise(model, torch.Generator().manual_seed(seed))
    return model.eval().requires_grad_(False)


def write_clip_vision(path: Path, spec: Spec = TINY, seed: int = 2, vision_model_level: bool = False) -> Path:
    """Write the CLIP vision weights a user gives for an SD-1.x start, in transformers naming (.safetensors).

    ``vision_model_level``: keys as transformers 4 saves them (``vision_model.*``) instead of transformers 5 (none).
    """
    sd = build_clip_vision(spec, seed).state_dict()  # transformers 4 or 5: either naming, made explicit here
    sd = {("vision_model." if vision_model_level else "") + k.removeprefix("vision_model."): v for k, v in sd.items()}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return Path(path)
