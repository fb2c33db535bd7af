"""Key names of the Paint-by-Example checkpoint layouts, and the maps between them.

Two layouts exist in the wild (docs/design/checkpoint-layouts.md):

* the **original** single file (LDM naming), the pack's canonical naming::

      model.diffusion_model.*            UNet     (input_blocks.N / middle_block / output_blocks.N / time_embed / out)
      first_stage_model.*                VAE      (encoder / decoder / quant_conv / post_quant_conv)
      cond_stage_model.transformer.*     CLIP     (transformers CLIPVisionModel naming, "vision_model." level)
      cond_stage_model.mapper.resblocks.{i}.{attn.c_qkv, attn.c_proj, ln_1, mlp.c_fc, mlp.c_proj, ln_2}
      cond_stage_model.final_ln.*, proj_out.*, learnable_vector

* the **diffusers** folder (``unet/``, ``vae/``, ``image_encoder/``), whose names are mapped here onto the
  original ones.

The maps are written for this project from the two published naming schemes (they are facts about file
formats); their correctness is tested against diffusers' own LDM-to-diffusers converters
(``diffusers.loaders.single_file_utils``), which nobody here wrote.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch

# --- prefixes of the original single-file layout -------------------------------------------------------------------
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
MAPPER_PREFIX = "cond_stage_model.mapper."
FINAL_LN_PREFIX = "cond_stage_model.final_ln."
PROJ_OUT_PREFIX = "proj_out."
UNCOND_KEY = "learnable_vector"

#: The DDPM schedule buffers a Lightning LatentDiffusion module keeps next to its weights. They are fixed by the
#: schedule (linear betas 0.00085..0.012, 1000 steps) and carry no learned information.
SCHEDULE_BUFFERS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


def split_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Return the entries of ``state_dict`` under ``prefix``, with the prefix removed."""
    n = len(prefix)
    return {k[n:]: v for k, v in state_dict.items() if k.startswith(prefix)}


def add_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state_dict.items()}


# --- CLIP vision: transformers 4 ("vision_model." level) vs transformers 5 (none) ---------------------------------
def clip_with_vision_model_level(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Normalise a CLIPVisionModel state dict to the transformers-4 naming (``vision_model.`` level).

    transformers 5 saves ``CLIPVisionModel`` without that level, transformers 4 with it; both occur in files
    users have. The ``embeddings.position_ids`` buffer some older files carry is dropped: it is ``arange(n)``
    and recent transformers do not persist it.
    """
    out = {}
    for k, v in state_dict.items():
        key = k if k.startswith("vision_model.") else "vision_model." + k
        if key.endswith("embeddings.position_ids"):
            continue
        out[key] = v
    return out


# --- the exemplar mapper: original (GLIDE-style) names vs diffusers BasicTransformerBlock names ---------------------
_MAPPER_RENAMES = (
    # (original suffix, diffusers suffix)
    ("attn.c_proj", "attn1.to_out.0"),
    ("ln_1", "norm1"),
    ("ln_2", "norm3"),
    ("mlp.c_fc", "ff.net.0.proj"),
    ("mlp.c_proj", "ff.net.2"),
)


def mapper_from_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``blocks.{i}.*`` (diffusers) -> ``resblocks.{i}.*`` (original). q, k, v are stacked into ``c_qkv`` (dim 0)."""
    out: dict[str, torch.Tensor] = {}
    depth = mapper_depth(state_dict, "blocks.")
    for i in range(depth):
        src, dst = f"blocks.{i}.", f"resblocks.{i}."
        for p in ("weight", "bias"):
            out[f"{dst}attn.c_qkv.{p}"] = torch.cat(
                [state_dict[f"{src}attn1.to_{x}.{p}"] for x in ("q", "k", "v")], dim=0
            )
            for orig, diff in _MAPPER_RENAMES:
                out[f"{dst}{orig}.{p}"] = state_dict[f"{src}{diff}.{p}"]
    return out


def mapper_to_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`mapper_from_diffusers`: ``c_qkv`` is split in thirds into ``to_q``, ``to_k``, ``to_v``."""
    out: dict[str, torch.Tensor] = {}
    for i in range(mapper_depth(state_dict, "resblocks.")):
        src, dst = f"resblocks.{i}.", f"blocks.{i}."
        for p in ("weight", "bias"):
            q, k, v = state_dict[f"{src}attn.c_qkv.{p}"].chunk(3, dim=0)
            out[f"{dst}attn1.to_q.{p}"], out[f"{dst}attn1.to_k.{p}"], out[f"{dst}attn1.to_v.{p}"] = q, k, v
            for orig, diff in _MAPPER_RENAMES:
                out[f"{dst}{diff}.{p}"] = state_dict[f"{src}{orig}.{p}"]
    return out


def mapper_depth(state_dict: Mapping[str, torch.Tensor], prefix: str = "resblocks.") -> int:
    """Number of mapper blocks: one past the largest ``{prefix}{i}.`` index (0 if there are none)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    idx = [int(m.group(1)) for k in state_dict if (m := pattern.match(k))]
    return max(idx) + 1 if idx else 0


# --- UNet: diffusers UNet2DConditionModel names -> LDM openaimodel names ------------------------------------------
_RESNET_RENAMES = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
)


def _count(keys: Iterable[str], pattern: str) -> int:
    rx = re.compile(pattern)
    idx = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    return max(idx) + 1 if idx else 0


def unet_diffusers_to_ldm_names(keys: Iterable[str]) -> dict[str, str]:
    """Map every key of a diffusers ``UNet2DConditionModel`` (SD-1 family) to its LDM ``UNetModel`` name.

    The structure (number of levels, res blocks per level, which levels carry attention) is read from the keys
    themselves, so the full-size and the tiny test UNet go through the same code. Keys that have no LDM
    counterpart raise ``KeyError``: silently dropping weights would give a model that loads but paints noise.
    """
    keys = list(keys)
    levels = _count(keys, r"down_blocks\.(\d+)\.")
    per_level = _count([k for k in keys if k.startswith("down_blocks.0.")], r"down_blocks\.0\.resnets\.(\d+)\.")
    names: dict[str, str] = {}

    def resnet(src: str, dst: str, rest: str) -> str:
        for a, b in _RESNET_RENAMES:
            if rest.startswith(a + "."):
                return dst + b + rest[len(a) :]
        raise KeyError(src + rest)

    for k in keys:
        m = None
        if k.startswith("time_embedding.linear_1."):
            names[k] = "time_embed.0." + k.rsplit(".", 1)[1]
        elif k.startswith("time_embedding.linear_2."):
            names[k] = "time_embed.2." + k.rsplit(".", 1)[1]
        elif k.startswith("conv_in."):
            names[k] = "input_blocks.0.0." + k[len("conv_in.") :]
        elif k.startswith("conv_norm_out."):
            names[k] = "out.0." + k[len("conv_norm_out.") :]
        elif k.startswith("conv_out."):
            names[k] = "out.2." + k[len("conv_out.") :]
        elif m := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k):
            i, j, rest = int(m[1]), int(m[2]), m[3]
            n = 1 + i * (per_level + 1) + j
            names[k] = resnet(k[: -len(rest)], f"input_blocks.{n}.0.", rest)
        elif m := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", k):
            i, j, rest = int(m[1]), int(m[2]), m[3]
            names[k] = f"input_blocks.{1 + i * (per_level + 1) + j}.1.{rest}"
        elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", k):
            i, rest = int(m[1]), m[2]
            names[k] = f"input_blocks.{1 + i * (per_level + 1) + per_level}.0.op.{rest}"
        elif m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", k):
            j, rest = int(m[1]), m[2]
            names[k] = resnet(k[: -len(rest)], f"middle_block.{2 * j}.", rest)
        elif m := re.match(r"mid_block\.attentions\.0\.(.*)", k):
            names[k] = "middle_block.1." + m[1]
        elif m := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k):
            i, j, rest = int(m[1]), int(m[2]), m[3]
            names[k] = resnet(k[: -len(rest)], f"output_blocks.{i * (per_level + 1) + j}.0.", rest)
        elif m := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", k):
            i, j, rest = int(m[1]), int(m[2]), m[3]
            names[k] = f"output_blocks.{i * (per_level + 1) + j}.1.{rest}"
        elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", k):
            i, rest = int(m[1]), m[2]
            n = i * (per_level + 1) + per_level
            has_attn = any(x.startswith(f"up_blocks.{i}.attentions.") for x in keys)
            names[k] = f"output_blocks.{n}.{2 if has_attn else 1}.conv.{rest}"
        else:
            raise KeyError(f"diffusers UNet key {k!r} has no LDM counterpart (is this an SD-1 UNet?)")
    if levels == 0:
        raise KeyError("no 'down_blocks.*' keys: this is not a diffusers UNet2DConditionModel state dict")
    return names


def unet_from_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``UNet2DConditionModel`` state dict -> LDM ``UNetModel`` state dict (same tensors, no copies)."""
    names = unet_diffusers_to_ldm_names(state_dict.keys())
    return {names[k]: v for k, v in state_dict.items()}


# --- VAE: diffusers AutoencoderKL names -> LDM AutoencoderKL names -------------------------------------------------
_VAE_RESNET_RENAMES = (("conv_shortcut", "nin_shortcut"),)
_VAE_ATTN_RENAMES = (
    ("group_norm", "norm"),
    ("to_q", "q"),
    ("to_k", "k"),
    ("to_v", "v"),
    ("to_out.0", "proj_out"),
    # very old diffusers folders (< 0.14) used these names
    ("query", "q"),
    ("key", "k"),
    ("value", "v"),
    ("proj_attn", "proj_out"),
)


def vae_from_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKL`` state dict -> LDM ``AutoencoderKL`` state dict.

    The mid-block attention projections are ``Linear`` (C, C) in diffusers and 1x1 ``Conv2d`` (C, C, 1, 1) in
    LDM; they are reshaped (a view, no copy).
    """
    keys = list(state_dict)
    up_levels = _count(keys, r"decoder\.up_blocks\.(\d+)\.")
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        new = None
        if m := re.match(r"(encoder|decoder)\.(conv_in|conv_out)\.(.*)", k):
            new = k
        elif m := re.match(r"(encoder|decoder)\.conv_norm_out\.(.*)", k):
            new = f"{m[1]}.norm_out.{m[2]}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k):
            new = f"encoder.down.{m[1]}.block.{m[2]}.{_rename(m[3], _VAE_RESNET_RENAMES)}"
        elif m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", k):
            new = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k):
            new = f"decoder.up.{up_levels - 1 - int(m[1])}.block.{m[2]}.{_rename(m[3], _VAE_RESNET_RENAMES)}"
        elif m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", k):
            new = f"decoder.up.{up_levels - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", k):
            new = f"{m[1]}.mid.block_{int(m[2]) + 1}.{_rename(m[3], _VAE_RESNET_RENAMES)}"
        elif m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", k):
            new = f"{m[1]}.mid.attn_1.{_rename(m[2], _VAE_ATTN_RENAMES)}"
            if v.ndim == 2:
                v = v.reshape(*v.shape, 1, 1)
        elif k.startswith(("quant_conv.", "post_quant_conv.")):
            new = k
        if new is None:
            raise KeyError(f"diffusers VAE key {k!r} has no LDM counterpart (is this an SD-1 AutoencoderKL?)")
        out[new] = v
    return out


def _rename(rest: str, renames: tuple[tuple[str, str], ...]) -> str:
    for a, b in renames:
        if rest.startswith(a + "."):
            return b + rest[len(a) :]
    return rest


# --- the inverse maps: LDM names -> diffusers names (used by training, which runs diffusers' modules) ----------------
# Written from the two naming schemes, like the maps above; tests check them both ways against diffusers' own
# converters (``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``, Apache-2.0), whose code is not used here.
def unet_ldm_structure(keys: Iterable[str]) -> tuple[int, int]:
    """``(levels, res blocks per level)`` of an LDM ``UNetModel`` state dict, read from its key names.

    ``input_blocks.0`` is the input conv; each level then has ``per_level`` res blocks and (except the last level) a
    downsampler, so the first downsampler is ``input_blocks.{per_level + 1}.0.op``.
    """
    keys = list(keys)
    n_in = _count(keys, r"input_blocks\.(\d+)\.")
    if n_in == 0:
        raise KeyError("no 'input_blocks.*' keys: this is not an LDM UNetModel state dict")
    ops = sorted({int(m[1]) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.", k))})
    per_level = ops[0] - 1 if ops else n_in - 1
    return n_in // (per_level + 1), per_level


def unet_ldm_to_diffusers_names(keys: Iterable[str]) -> dict[str, str]:
    """Inverse of :func:`unet_diffusers_to_ldm_names`: every LDM ``UNetModel`` key -> its diffusers name.

    The structure is read from the keys (:func:`unet_ldm_structure`). Unknown keys raise ``KeyError``.
    """
    keys = list(keys)
    _, per_level = unet_ldm_structure(keys)
    stride = per_level + 1
    back = {b: a for a, b in _RESNET_RENAMES}

    def resnet(key: str, dst: str, rest: str) -> str:
        for a, b in back.items():
            if rest.startswith(a + "."):
                return dst + b + rest[len(a) :]
        raise KeyError(f"LDM UNet key {key!r} has no diffusers counterpart")

    names: dict[str, str] = {}
    for k in keys:
        if k.startswith("time_embed.0."):
            names[k] = "time_embedding.linear_1." + k[len("time_embed.0.") :]
        elif k.startswith("time_embed.2."):
            names[k] = "time_embedding.linear_2." + k[len("time_embed.2.") :]
        elif k.startswith("input_blocks.0.0."):
            names[k] = "conv_in." + k[len("input_blocks.0.0.") :]
        elif k.startswith("out.0."):
            names[k] = "conv_norm_out." + k[len("out.0.") :]
        elif k.startswith("out.2."):
            names[k] = "conv_out." + k[len("out.2.") :]
        elif m := re.match(r"input_blocks\.(\d+)\.0\.op\.(.*)", k):
            names[k] = f"down_blocks.{(int(m[1]) - 1) // stride}.downsamplers.0.conv.{m[2]}"
        elif m := re.match(r"input_blocks\.(\d+)\.([01])\.(.*)", k):
            i, j = divmod(int(m[1]) - 1, stride)
            if m[2] == "0":
                names[k] = resnet(k, f"down_blocks.{i}.resnets.{j}.", m[3])
            else:
                names[k] = f"down_blocks.{i}.attentions.{j}.{m[3]}"
        elif m := re.match(r"middle_block\.([02])\.(.*)", k):
            names[k] = resnet(k, f"mid_block.resnets.{int(m[1]) // 2}.", m[2])
        elif m := re.match(r"middle_block\.1\.(.*)", k):
            names[k] = "mid_block.attentions.0." + m[1]
        elif m := re.match(r"output_blocks\.(\d+)\.([12])\.conv\.(.*)", k):
            names[k] = f"up_blocks.{int(m[1]) // stride}.upsamplers.0.conv.{m[3]}"
        elif m := re.match(r"output_blocks\.(\d+)\.([01])\.(.*)", k):
            i, j = divmod(int(m[1]), stride)
            if m[2] == "0":
                names[k] = resnet(k, f"up_blocks.{i}.resnets.{j}.", m[3])
            else:
                names[k] = f"up_blocks.{i}.attentions.{j}.{m[3]}"
        else:
            raise KeyError(f"LDM UNet key {k!r} has no diffusers counterpart (is this an SD-1 UNet?)")
    return names


def unet_to_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LDM ``UNetModel`` state dict -> diffusers ``UNet2DConditionModel`` state dict (same tensors, no copies)."""
    names = unet_ldm_to_diffusers_names(state_dict.keys())
    return {names[k]: v for k, v in state_dict.items()}


def vae_to_diffusers(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`vae_from_diffusers`: LDM ``AutoencoderKL`` -> diffusers ``AutoencoderKL`` state dict.

    The mid-block attention projections go back from 1x1 ``Conv2d`` (C, C, 1, 1) to ``Linear`` (C, C) (a view).
    """
    keys = list(state_dict)
    up_levels = _count(keys, r"decoder\.up\.(\d+)\.")
    resnet_back = tuple((b, a) for a, b in _VAE_RESNET_RENAMES)
    attn_back = (("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0"))
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        new = None
        if re.match(r"(encoder|decoder)\.(conv_in|conv_out)\.", k) or k.startswith(("quant_conv.", "post_quant_conv.")):
            new = k
        elif m := re.match(r"(encoder|decoder)\.norm_out\.(.*)", k):
            new = f"{m[1]}.conv_norm_out.{m[2]}"
        elif m := re.match(r"encoder\.down\.(\d+)\.block\.(\d+)\.(.*)", k):
            new = f"encoder.down_blocks.{m[1]}.resnets.{m[2]}.{_rename(m[3], resnet_back)}"
        elif m := re.match(r"encoder\.down\.(\d+)\.downsample\.conv\.(.*)", k):
            new = f"encoder.down_blocks.{m[1]}.downsamplers.0.conv.{m[2]}"
        elif m := re.match(r"decoder\.up\.(\d+)\.block\.(\d+)\.(.*)", k):
            new = f"decoder.up_blocks.{up_levels - 1 - int(m[1])}.resnets.{m[2]}.{_rename(m[3], resnet_back)}"
        elif m := re.match(r"decoder\.up\.(\d+)\.upsample\.conv\.(.*)", k):
            new = f"decoder.up_blocks.{up_levels - 1 - int(m[1])}.upsamplers.0.conv.{m[2]}"
        elif m := re.match(r"(encoder|decoder)\.mid\.block_(\d+)\.(.*)", k):
            new = f"{m[1]}.mid_block.resnets.{int(m[2]) - 1}.{_rename(m[3], resnet_back)}"
        elif m := re.match(r"(encoder|decoder)\.mid\.attn_1\.(.*)", k):
            new = f"{m[1]}.mid_block.attentions.0.{_rename(m[2], attn_back)}"
            if v.ndim == 4:
                v = v.reshape(v.shape[0], v.shape[1])
        if new is None:
            raise KeyError(f"LDM VAE key {k!r} has no diffusers counterpart (is this an SD-1 AutoencoderKL?)")
        out[new] = v
    return out
