"""Load any published Paint-by-Example checkpoint into one canonical set of state dicts.

Accepted (docs/design/checkpoint-layouts.md):

* the original single file, LDM naming: the Lightning ``model.ckpt`` (also the 12.6 GB *training* checkpoint with
  optimizer state) or a ``.safetensors`` conversion of it, in fp32, fp16 or bf16;
* a diffusers folder (``unet/``, ``vae/``, ``image_encoder/``): ``.safetensors`` or ``.bin`` weights, fp16 variant
  files, CLIP keys with or without the ``vision_model.`` level (transformers 4 vs 5).

Nothing here executes code from a file: ``.ckpt``/``.bin`` go through :mod:`.safe_torch_load` (a restricted,
lazy unpickler), ``.safetensors`` through safetensors' own reader. The model's sizes are inferred from tensor shapes,
so the real 1.31 B-parameter model and the tiny test model take the same path.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from . import layouts
from .safe_torch_load import CheckpointError, is_torch_zip
from .safe_torch_load import load_state_dict as _load_torch_zip

log = logging.getLogger(__name__)

__all__ = [
    "CONVERTIBLE_PARTS",
    "CheckpointError",
    "ModelInfo",
    "PbECheckpoint",
    "check_fits",
    "dtype_converter",
    "load_checkpoint",
    "mismatch_message",
    "precheck",
    "read_state_dict",
]

#: file suffixes the loader opens (the model folder is registered with exactly these)
CHECKPOINT_EXTENSIONS = (".ckpt", ".safetensors", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class ModelInfo:
    """What the loader inferred from tensor shapes (real model values in comments)."""

    clip_width: int  # 1024
    clip_depth: int  # 24
    clip_heads: int  # 16
    clip_mlp_width: int  # 4096
    clip_patch: int  # 14
    clip_image_size: int  # 224
    mapper_depth: int  # 5
    context_dim: int  # 768: width of the single context token
    unet_in_channels: int  # 9
    unet_model_channels: int  # 320
    unet_context_dim: int  # 768
    vae_channels: int  # 128
    vae_channel_mult: tuple[int, ...]  # (1, 2, 4, 4)
    vae_num_res_blocks: int  # 2
    vae_z_channels: int  # 4
    vae_embed_dim: int  # 4

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class PbECheckpoint:
    """The parts of a Paint-by-Example model in canonical (original-layout) naming, prefixes removed.

    unet      LDM ``UNetModel`` names (``input_blocks.0.0.weight`` is (C, 9, 3, 3))
    vae       LDM ``AutoencoderKL`` names (``encoder.*``, ``decoder.*``, ``quant_conv.*``, ``post_quant_conv.*``)
    clip      transformers ``CLIPVisionModel`` names with the ``vision_model.`` level
    mapper    ``resblocks.{i}.{attn.c_qkv, attn.c_proj, ln_1, mlp.c_fc, mlp.c_proj, ln_2}.{weight,bias}``
    final_ln  ``weight``, ``bias``;  proj_out  ``weight`` (context, width), ``bias``
    uncond    the learned unconditional context, (1, 1, context)

    Tensors keep the file's dtype (fp32, fp16 or bf16); they may be memory-mapped views of the file.
    """

    unet: dict[str, torch.Tensor]
    vae: dict[str, torch.Tensor]
    clip: dict[str, torch.Tensor]
    mapper: dict[str, torch.Tensor]
    final_ln: dict[str, torch.Tensor]
    proj_out: dict[str, torch.Tensor]
    uncond: torch.Tensor
    info: ModelInfo
    layout: str  # human-readable description of what was read
    source: str  # the path

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict of :class:`pbe_core.exemplar.encoder.ExemplarEncoder` (original naming)."""
        sd = layouts.add_prefix(self.clip, "transformer.")
        sd.update(layouts.add_prefix(self.mapper, "mapper."))
        sd.update(layouts.add_prefix(self.final_ln, "final_ln."))
        sd.update(layouts.add_prefix(self.proj_out, "proj_out."))
        sd["learnable_vector"] = self.uncond
        return sd

    def original_state_dict(self) -> dict[str, torch.Tensor]:
        """The whole model in the original single-file naming (without the fixed DDPM schedule buffers)."""
        sd = layouts.add_prefix(self.unet, layouts.UNET_PREFIX)
        sd.update(layouts.add_prefix(self.vae, layouts.VAE_PREFIX))
        sd.update(layouts.add_prefix(self.clip, layouts.CLIP_PREFIX))
        sd.update(layouts.add_prefix(self.mapper, layouts.MAPPER_PREFIX))
        sd.update(layouts.add_prefix(self.final_ln, layouts.FINAL_LN_PREFIX))
        sd.update(layouts.add_prefix(self.proj_out, layouts.PROJ_OUT_PREFIX))
        sd[layouts.UNCOND_KEY] = self.uncond
        return sd

    def parts(self) -> dict[str, dict[str, torch.Tensor]]:
        return {
            "unet": self.unet,
            "vae": self.vae,
            "clip": self.clip,
            "mapper": self.mapper,
            "final_ln": self.final_ln,
            "proj_out": self.proj_out,
            "uncond": {"": self.uncond},
        }


# --- reading files ---------------------------------------------------------------------------------------------------
_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024


#: the parts ``load_checkpoint`` can convert to another dtype while reading ("encoder": CLIP, mapper, final
#: LayerNorm, ``proj_out`` and the learned unconditional vector)
CONVERTIBLE_PARTS = ("unet", "vae", "encoder")

Convert = Callable[[str, torch.Tensor], torch.Tensor]


def _known_names(names: list[str]) -> int:
    """How many of ``names`` are Stable-Diffusion / Paint-by-Example original-layout keys (to pick a state dict)."""
    prefixes = (layouts.UNET_PREFIX, layouts.VAE_PREFIX, "cond_stage_model.", layouts.PROJ_OUT_PREFIX)
    return sum(n.startswith(prefixes) for n in names)


def read_state_dict(path: str | os.PathLike, convert: Convert | None = None, key: str | None = None
                    ) -> dict[str, torch.Tensor]:
    """Read the tensors of one checkpoint file without executing anything it contains.

    ``.safetensors`` files are memory-mapped by safetensors; torch zip files (``.ckpt``, ``.bin``, ``.pt``) go
    through the restricted unpickler, which returns the Lightning ``state_dict``, the top-level dict of tensors, or the
    dict of tensors a few levels down that holds the most original-layout names (files re-saved by other tools), and
    never materialises optimizer state; ``key`` (``"entry"`` or ``"entry/sub"``) names that entry instead. A pickle
    that names code (``os.system``, ``builtins.exec``, ...) is refused. Raises :class:`CheckpointError` naming the
    problem and the fix.

    ``convert(name, tensor) -> tensor`` (e.g. a cast to bf16) is applied to each tensor as it is read. A
    ``.safetensors`` file is then read tensor by tensor into memory of its own (safetensors' ``pread`` backend where
    the installed safetensors has one) and each file tensor is dropped once converted, so memory peaks at the
    converted tensors plus one of the file's, not at the file's size plus the converted ones (a memory map keeps every
    page it has read). Torch zip files are converted after reading.
    """
    path = Path(path)
    if _file_kind(path) == "safetensors":
        if key:
            raise CheckpointError(f"{path} is a .safetensors file: it has no entries to choose, so leave out the key.")
        return _read_safetensors(path, convert)
    sd = _load_torch_zip(path, key=key or "auto", refuse_code=True, score=_known_names)
    if convert is not None:
        for k in list(sd):
            sd[k] = convert(k, sd[k])
    return sd


def dtype_converter(dtypes: Mapping[str, torch.dtype], part_of: Callable[[str], str | None]) -> Convert:
    """A ``convert`` for :func:`read_state_dict`: floating-point tensors of a part in ``dtypes`` (``part_of(name)``, one
    of :data:`CONVERTIBLE_PARTS` or None) are cast to its dtype; everything else is returned as it is."""
    unknown = sorted(set(dtypes) - set(CONVERTIBLE_PARTS))
    if unknown:
        raise ValueError(f"dtypes names {unknown}; the parts that can be converted are {', '.join(CONVERTIBLE_PARTS)}.")

    def convert(name: str, t: torch.Tensor) -> torch.Tensor:
        dtype = dtypes.get(part_of(name))
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    return convert


def _part_of_original_key(name: str) -> str | None:
    """Which of :data:`CONVERTIBLE_PARTS` a tensor of the original single-file layout belongs to (None: none)."""
    if name.startswith(layouts.UNET_PREFIX):
        return "unet"
    if name.startswith(layouts.VAE_PREFIX):
        return "vae"
    encoder = (layouts.CLIP_PREFIX, layouts.MAPPER_PREFIX, layouts.FINAL_LN_PREFIX, layouts.PROJ_OUT_PREFIX)
    return "encoder" if name.startswith(encoder) or name == layouts.UNCOND_KEY else None


def _file_kind(path: Path) -> str:
    """"safetensors" or "torch zip", from the file's first bytes; else :class:`CheckpointError` saying what it is."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(1024)
    except PermissionError as e:
        raise CheckpointError(
            f"Cannot read {path}: permission denied. Give the user running ComfyUI read access to it "
            f"(e.g. chmod a+r) or move it into models/paint_by_example/."
        ) from e
    except OSError as e:
        raise CheckpointError(f"Cannot read {path}: {e.strerror or e}.") from e
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): the download or copy did not finish; get the file again.")
    if _looks_like_safetensors(head, size):
        n = int.from_bytes(head[:8], "little")
        if n > _SAFETENSORS_MAX_HEADER or n + 8 > size:
            raise CheckpointError(
                f"{path} is not a valid .safetensors file: its header claims {n} bytes but the file has {size}. "
                f"The file is truncated or corrupt; download it again."
            )
        return "safetensors"
    if is_torch_zip(path):
        return "torch zip"
    raise CheckpointError(_not_a_checkpoint_message(path, head))


def precheck(path: str | os.PathLike) -> None:
    """Cheap checks before loading, for a node's input validation: reads directory entries and at most a few KB.

    Refuses (:class:`CheckpointError`) what can be told without reading tensors: a missing or unreadable file or
    folder, an empty file, one that is neither .safetensors nor a PyTorch zip (an HTML page, a Git LFS pointer,
    random bytes, a legacy pickle), a safetensors header larger than the file, a folder that is not a diffusers
    folder or lacks a component. Passing it does not mean the file loads: :func:`load_checkpoint` checks the rest.
    """
    p = Path(path)
    if p.is_dir():
        _check_folder(p)
        for name in _COMPONENT_STEMS:
            _component_file(p, name)
        return
    if not p.exists():
        raise CheckpointError(f"{p} does not exist; check the path.")
    _file_kind(p)


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < n


def _read_safetensors(path: Path, convert: Convert | None = None) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError, safe_open

    try:
        out = {}
        with _open_safetensors(safe_open, path, own_memory=convert is not None) as f:
            for k in f.keys():
                out[k] = f.get_tensor(k) if convert is None else convert(k, f.get_tensor(k))
        return out
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{path} is not a valid .safetensors file ({e}). It is truncated or corrupt; download it again."
        ) from e


def _open_safetensors(safe_open, path: Path, own_memory: bool):
    """``safe_open`` on ``path``; ``own_memory``: every tensor read into memory of its own (``backend="pread"``,
    safetensors 0.8 and later), else (or with an older safetensors) views of one memory map of the file."""
    if own_memory:
        try:
            return safe_open(str(path), framework="pt", backend="pread")
        except TypeError:  # a safetensors without backends: the memory map, converted tensor by tensor all the same
            log.debug("safetensors has no pread backend; reading %s through its memory map", path)
    return safe_open(str(path), framework="pt")


def _not_a_checkpoint_message(path: Path, head: bytes) -> str:
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        what = "an HTML page (usually a failed download: an error or login page saved under the model's name)"
    elif text.startswith((b"{", b"[")):
        what = "a JSON file"
    elif head.startswith(b"version https://git-lfs"):
        what = "a Git LFS pointer (the repository was cloned without LFS)"
    elif head[:2] == b"\x80\x02" or head[:1] == b"\x80":
        what = "a raw pickle in the legacy (pre-1.6) torch format, which is not read for safety"
    else:
        what = "not a checkpoint format this loader knows (.safetensors or a PyTorch zip .ckpt/.bin)"
    return (
        f"{path} is {what}. Put a Paint-by-Example checkpoint there: the original model.ckpt, a .safetensors "
        f"conversion of it, or a diffusers folder (Fantasy-Studio/Paint-by-Example)."
    )


# --- recognising what a state dict is --------------------------------------------------------------------------------
_LORA_PATTERNS = ("lora_unet_", "lora_te", ".lora_down.", ".lora_up.", ".lora_A.", ".lora_B.", ".alpha", "lora.")


def _refuse_foreign(sd: Mapping[str, torch.Tensor], path: str) -> None:
    """Raise a specific error for the well-known checkpoints that are not Paint by Example."""
    keys = list(sd)
    fix = "Load it with ComfyUI's own loaders; for Paint by Example put model.ckpt (Fantasy-Studio/Paint-by-Example) here."
    if any(any(p in k for p in _LORA_PATTERNS) for k in keys[:2000]) and not any(
        k.startswith(layouts.UNET_PREFIX) for k in keys
    ):
        raise CheckpointError(f"{path} is a LoRA (keys like {keys[0]!r}), not a full Paint-by-Example model. {fix}")
    if any(k.startswith(("conditioner.embedders.", "model.diffusion_model.label_emb.")) for k in keys):
        raise CheckpointError(f"{path} is an SDXL checkpoint, not Paint by Example (SD-1 based). {fix}")
    unet_in = sd.get(layouts.UNET_PREFIX + "input_blocks.0.0.weight")
    has_text_clip = any(k.startswith("cond_stage_model.transformer.text_model.") for k in keys) or any(
        k.startswith("cond_stage_model.transformer.embeddings.token_embedding") for k in keys
    )
    has_mapper = any(k.startswith(layouts.MAPPER_PREFIX) for k in keys)
    if unet_in is not None and has_text_clip and not has_mapper:
        kind = "a Stable Diffusion inpainting" if unet_in.shape[1] == 9 else "a Stable Diffusion 1.x"
        raise CheckpointError(
            f"{path} is {kind} checkpoint (text encoder, no exemplar image encoder), not Paint by Example. {fix}"
        )
    if any(k.startswith("cond_stage_model.model.") for k in keys) and not has_mapper:
        raise CheckpointError(f"{path} is a Stable Diffusion 2.x checkpoint, not Paint by Example. {fix}")


def _from_original(sd: Mapping[str, torch.Tensor], path: str, layout: str) -> PbECheckpoint:
    _refuse_foreign(sd, path)
    parts = {
        "unet": layouts.split_prefix(sd, layouts.UNET_PREFIX),
        "vae": layouts.split_prefix(sd, layouts.VAE_PREFIX),
        "clip": layouts.clip_with_vision_model_level(layouts.split_prefix(sd, layouts.CLIP_PREFIX)),
        "mapper": layouts.split_prefix(sd, layouts.MAPPER_PREFIX),
        "final_ln": layouts.split_prefix(sd, layouts.FINAL_LN_PREFIX),
        "proj_out": layouts.split_prefix(sd, layouts.PROJ_OUT_PREFIX),
    }
    missing = [name for name, part in parts.items() if not part]
    if layouts.UNCOND_KEY not in sd:
        missing.append(layouts.UNCOND_KEY)
    if missing:
        if not parts["unet"] and any(k.startswith(("down_blocks.", "conv_in.")) for k in sd):
            raise CheckpointError(
                f"{path} holds a single diffusers component (keys like {next(iter(sd))!r}), not a whole model. "
                f"Select the diffusers folder itself (the one with model_index.json, unet/, vae/, image_encoder/)."
            )
        raise CheckpointError(
            f"{path} is not a Paint-by-Example checkpoint: it lacks {', '.join(missing)} "
            f"(expected keys under {layouts.UNET_PREFIX}, {layouts.VAE_PREFIX}, {layouts.CLIP_PREFIX}, "
            f"{layouts.MAPPER_PREFIX}, {layouts.FINAL_LN_PREFIX}, {layouts.PROJ_OUT_PREFIX} and {layouts.UNCOND_KEY}). "
            f"Use the original model.ckpt, a .safetensors conversion of it, or the diffusers folder."
        )
    return _assemble(parts, sd[layouts.UNCOND_KEY], path, layout, clip_heads=None)


def _assemble(parts: dict, uncond: torch.Tensor, path: str, layout: str, clip_heads: int | None) -> PbECheckpoint:
    info = infer_info(parts, uncond, path, clip_heads)
    return PbECheckpoint(
        unet=parts["unet"],
        vae=parts["vae"],
        clip=parts["clip"],
        mapper=parts["mapper"],
        final_ln=parts["final_ln"],
        proj_out=parts["proj_out"],
        uncond=uncond,
        info=info,
        layout=layout,
        source=str(path),
    )


def _shape(part: Mapping[str, torch.Tensor], key: str, what: str, path: str, ndim: int | None = None) -> torch.Size:
    if key not in part:
        raise CheckpointError(f"{path}: the {what} lacks the tensor {key!r}; the file is incomplete or not Paint by Example.")
    shape = part[key].shape
    if ndim is not None and len(shape) != ndim:
        raise CheckpointError(
            f"{path}: the {what} tensor {key!r} has shape {tuple(shape)}; a {ndim}-dimensional weight was expected. "
            f"{_DAMAGED}"
        )
    return shape


_DAMAGED = "The file is damaged or mixes parts of different models; download it again (or convert it again)."


_PART_NAMES = {"unet": "UNet", "vae": "VAE", "clip": "CLIP vision tower", "final_ln": "final LayerNorm"}


def _check_floating(parts: dict, uncond: torch.Tensor, path: str) -> None:
    """Every weight of the model is a floating-point tensor; an integer or bool one means a damaged file."""
    for name, part in {**parts, "learned vector": {"learnable_vector": uncond}}.items():
        for k, v in part.items():
            if not v.is_floating_point():
                what = _PART_NAMES.get(name, name)
                raise CheckpointError(f"{path}: the {what} tensor {k!r} holds {v.dtype}, not floating-point weights. {_DAMAGED}")


def check_fits(
    expected: Mapping[str, torch.Tensor | torch.Size | tuple[int, ...]],
    got: Mapping[str, torch.Tensor],
    what: str,
    path: str,
) -> None:
    """Raise :class:`CheckpointError` unless ``got`` has exactly the tensors ``expected`` names, in its shapes.

    ``expected``: the state dict (or the shapes) of the network built from the inferred sizes; ``got``: the file's
    tensors for it. A missing tensor would leave a weight uninitialised (garbage or black images), a surplus one
    means a renamed or foreign tensor, a different shape a damaged file: all three are refused, naming examples.
    """

    def shape(v):
        return tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v)

    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    wrong = [(k, shape(got[k]), shape(expected[k])) for k in expected if k in got and shape(got[k]) != shape(expected[k])]
    if missing or unexpected or wrong:
        raise CheckpointError(mismatch_message(missing, unexpected, wrong, what, path))


def mismatch_message(missing, unexpected, wrong, what: str, path: str) -> str:
    """The refusal of a part whose tensors do not fit its network: ``missing`` and ``unexpected`` keys, ``wrong``
    ``(key, shape in the file, shape expected)``; examples of each, and what to do."""
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing (e.g. {', '.join(repr(k) for k in missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} it does not use (e.g. {', '.join(repr(k) for k in unexpected[:3])})")
    if wrong:
        problems.append(
            f"{len(wrong)} of the wrong shape (e.g. {', '.join(f'{k!r} is {g}, expected {e}' for k, g, e in wrong[:3])})"
        )
    return f"{path}: the {what} does not match the architecture its own tensors describe: {'; '.join(problems)}. {_DAMAGED}"


def _depth(part: Mapping[str, torch.Tensor], prefix: str, what: str, path: str) -> int:
    """Number of numbered blocks ``{prefix}{i}.``; the numbers must run 0, 1, ..., n-1 (a gap or a stray huge index
    would otherwise build a network of the wrong depth, or try to build billions of blocks)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in part if (m := pattern.match(k))}
    n = len(found)
    if found != set(range(n)):
        gaps = sorted(set(range(max(found) + 1)) - found) if max(found) < 10_000 else []
        detail = f"block(s) {gaps[:5]} are missing" if gaps else f"it has a block numbered {max(found)}"
        raise CheckpointError(f"{path}: the {what} blocks {prefix}N are not numbered 0..{n - 1}: {detail}. {_DAMAGED}")
    return n


def infer_info(parts: dict, uncond: torch.Tensor, path: str, clip_heads: int | None = None) -> ModelInfo:
    """Read every size from tensor shapes; check the parts fit together. Raises :class:`CheckpointError`."""
    unet, vae, clip, mapper = parts["unet"], parts["vae"], parts["clip"], parts["mapper"]
    _check_floating(parts, uncond, path)
    w_in = _shape(unet, "input_blocks.0.0.weight", "UNet", path)
    if len(w_in) != 4 or w_in[1] != 9:
        raise CheckpointError(
            f"{path}: the UNet takes {w_in[1] if len(w_in) > 1 else '?'} input channels; Paint by Example's takes 9 "
            f"(4 noisy latent + 4 masked-image latent + 1 mask). This is a different model (SD-1.x has 4, "
            f"instruct-pix2pix 8); load it with ComfyUI's own loaders."
        )
    ctx_keys = [k for k in unet if k.endswith("attn2.to_k.weight")]
    if not ctx_keys:
        raise CheckpointError(f"{path}: the UNet has no cross-attention (attn2) layers; it is not an SD-1 UNet.")
    unet_ctx = _shape(unet, ctx_keys[0], "UNet", path, ndim=2)[1]

    pe = _shape(clip, "vision_model.embeddings.patch_embedding.weight", "CLIP vision tower", path, ndim=4)
    pos = _shape(clip, "vision_model.embeddings.position_embedding.weight", "CLIP vision tower", path, ndim=2)
    fc1 = _shape(clip, "vision_model.encoder.layers.0.mlp.fc1.weight", "CLIP vision tower", path, ndim=2)
    width, patch = pe[0], pe[2]
    grid = round(max(pos[0] - 1, 0) ** 0.5)
    if grid < 1 or grid * grid != pos[0] - 1 or patch < 1:
        raise CheckpointError(
            f"{path}: CLIP has {pos[0]} position embeddings and {patch}-pixel patches, not a square grid of patches "
            f"plus a class token. {_DAMAGED}"
        )
    depth = _depth(clip, "vision_model.encoder.layers.", "CLIP vision tower", path)
    # Every OpenAI CLIP ViT uses 64-wide heads (ViT-L/14: 1024 / 64 = 16); the single file does not store the count.
    heads = clip_heads or max(1, width // 64)
    if clip_heads and clip_heads != width // 64:
        log.warning(
            "%s: config.json gives the %d-wide CLIP %d attention heads; every OpenAI CLIP has width / 64 = %d. Using %d.",
            path, width, clip_heads, width // 64, clip_heads,
        )  # fmt: skip
    if heads < 1 or width % heads:
        raise CheckpointError(
            f"{path}: a CLIP width of {width} cannot be split into {heads} attention heads; fix num_attention_heads "
            f"in image_encoder/config.json (ViT-L/14: 16) or download the folder again."
        )
    mdepth = _depth(mapper, "resblocks.", "mapper", path)
    if mdepth == 0:
        raise CheckpointError(f"{path}: the exemplar mapper has no blocks (cond_stage_model.mapper.resblocks.*).")
    qkv = _shape(mapper, "resblocks.0.attn.c_qkv.weight", "mapper", path, ndim=2)
    if qkv != (3 * width, width):
        raise CheckpointError(f"{path}: mapper c_qkv is {tuple(qkv)}, expected ({3 * width}, {width}) for CLIP width {width}.")
    proj = _shape(parts["proj_out"], "weight", "proj_out", path, ndim=2)
    ctx = proj[0]
    if proj[1] != width or tuple(uncond.shape) != (1, 1, ctx):
        raise CheckpointError(
            f"{path}: proj_out is {tuple(proj)} and the learned vector {tuple(uncond.shape)}; expected ({ctx}, {width}) "
            f"and (1, 1, {ctx}). The file mixes parts of different models."
        )
    if ctx != unet_ctx:
        raise CheckpointError(
            f"{path}: the exemplar encoder gives {ctx}-wide context but the UNet's cross-attention takes {unet_ctx}."
        )
    ch = _shape(vae, "encoder.conv_in.weight", "VAE", path, ndim=4)[0]
    levels = _depth(vae, "encoder.down.", "VAE encoder", path)
    if levels < 1 or ch < 1:
        raise CheckpointError(f"{path}: the VAE encoder has no down-sampling levels (encoder.down.*). {_DAMAGED}")
    mult = tuple(_shape(vae, f"encoder.down.{i}.block.0.conv2.weight", "VAE", path, ndim=4)[0] // ch for i in range(levels))
    if 0 in mult:
        raise CheckpointError(f"{path}: the VAE's channel counts ({ch} and {mult}) do not fit together. {_DAMAGED}")
    nres = _depth(vae, "encoder.down.0.block.", "VAE encoder", path)
    z = _shape(vae, "decoder.conv_in.weight", "VAE", path, ndim=4)[1]
    embed = _shape(vae, "post_quant_conv.weight", "VAE", path, ndim=4)[1]
    return ModelInfo(
        clip_width=width,
        clip_depth=depth,
        clip_heads=heads,
        clip_mlp_width=fc1[0],
        clip_patch=patch,
        clip_image_size=grid * patch,
        mapper_depth=mdepth,
        context_dim=ctx,
        unet_in_channels=w_in[1],
        unet_model_channels=w_in[0],
        unet_context_dim=unet_ctx,
        vae_channels=ch,
        vae_channel_mult=mult,
        vae_num_res_blocks=nres,
        vae_z_channels=z,
        vae_embed_dim=embed,
    )


# --- diffusers folders -------------------------------------------------------------------------------------------------
_COMPONENT_STEMS = {
    "unet": ("diffusion_pytorch_model",),
    "vae": ("diffusion_pytorch_model",),
    "image_encoder": ("model", "pytorch_model"),
}


def _component_file(folder: Path, name: str) -> Path:
    """The weight file (or shard index) of one component of a diffusers folder; CheckpointError if there is none."""
    d = folder / name
    if not d.is_dir():
        raise CheckpointError(
            f"The diffusers folder {folder} has no '{name}/' sub-folder; a Paint-by-Example folder needs unet/, vae/ "
            f"and image_encoder/. Download the missing '{name}' component (keep the folder structure)."
        )
    if not os.access(d, os.R_OK | os.X_OK):
        raise CheckpointError(
            f"Cannot read the folder {d}: permission denied. Give the user running ComfyUI read access to it."
        )
    candidates = []
    for stem in _COMPONENT_STEMS[name]:
        for ext in ("safetensors", "bin"):
            candidates += [d / f"{stem}.{ext}"]
            candidates += sorted(d.glob(f"{stem}.*.{ext}"))  # variants: fp16, ...
    for c in candidates:
        if c.is_file():
            return c
    index = sorted(d.glob("*.index.json"))
    if index:
        return index[0]
    raise CheckpointError(
        f"The diffusers folder {folder} has a '{name}/' sub-folder but no weights in it "
        f"(looked for {', '.join(sorted({c.name for c in candidates}))}). Download the missing weight file."
    )


def _component_weights(folder: Path, name: str, convert: Convert | None = None) -> tuple[dict[str, torch.Tensor], str]:
    f = _component_file(folder, name)
    return (_read_sharded(f, convert) if f.name.endswith(".index.json") else read_state_dict(f, convert)), f.name


def _read_sharded(index_file: Path, convert: Convert | None = None) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index_file.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
        if not all(type(v) is str for v in shards):
            raise TypeError("shard names must be strings")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index_file} is not a valid shard index ({e}); download it again.") from e
    out: dict[str, torch.Tensor] = {}
    for shard in shards:
        if "/" in shard or "\\" in shard or shard.startswith("."):
            raise CheckpointError(f"{index_file} names a shard outside its folder: {shard!r}.")
        out.update(read_state_dict(index_file.parent / shard, convert))
    return out


def _config_heads(cfg: Path) -> int | None:
    """``num_attention_heads`` from the image encoder's config.json, or None (then inferred from the width)."""
    if not cfg.is_file():
        return None
    try:
        value = json.loads(cfg.read_text()).get("num_attention_heads")
    except (OSError, ValueError, AttributeError):
        log.warning("Could not read %s; inferring the CLIP head count from its width.", cfg)
        return None
    if type(value) is int and value >= 1:
        return value
    if value is not None:
        log.warning("%s: num_attention_heads is %r, not a positive whole number; inferring it from the width.", cfg, value)
    return None


def _convert(convert, state_dict: dict, path: Path) -> dict[str, torch.Tensor]:
    """A ``layouts`` map from diffusers to original names; its failures on a damaged file become CheckpointError."""
    try:
        return convert(state_dict)
    except (KeyError, ValueError, RuntimeError, IndexError, TypeError) as e:
        detail = e.args[0] if isinstance(e, KeyError) and e.args else f"{type(e).__name__}: {e}"
        raise CheckpointError(f"{path}: {detail}. {_DAMAGED}") from e


def _load_diffusers_folder(folder: Path, dtypes: Mapping[str, torch.dtype]) -> PbECheckpoint:
    # model_index.json's class names are not trusted (docs/design/checkpoint-layouts.md): read the components themselves.
    def convert(part: str) -> Convert | None:
        return dtype_converter(dtypes, lambda name: part) if dtypes.get(part) is not None else None

    unet_sd, unet_file = _component_weights(folder, "unet", convert("unet"))
    vae_sd, vae_file = _component_weights(folder, "vae", convert("vae"))
    enc_sd, enc_file = _component_weights(folder, "image_encoder", convert("encoder"))
    unet = _convert(layouts.unet_from_diffusers, unet_sd, folder / "unet" / unet_file)
    vae = _convert(layouts.vae_from_diffusers, vae_sd, folder / "vae" / vae_file)
    if "uncond_vector" not in enc_sd or not any(k.startswith("mapper.") for k in enc_sd):
        raise CheckpointError(
            f"{folder}/image_encoder/{enc_file} is not a Paint-by-Example image encoder (no mapper / uncond_vector). "
            f"A plain CLIP vision model cannot condition this UNet; use the Paint-by-Example folder's image_encoder."
        )
    enc_path = folder / "image_encoder" / enc_file
    heads = _config_heads(folder / "image_encoder" / "config.json")
    parts = {
        "unet": unet,
        "vae": vae,
        "clip": layouts.clip_with_vision_model_level(layouts.split_prefix(enc_sd, "model.")),
        "mapper": _convert(layouts.mapper_from_diffusers, layouts.split_prefix(enc_sd, "mapper."), enc_path),
        "final_ln": layouts.split_prefix(enc_sd, "final_layer_norm."),
        "proj_out": layouts.split_prefix(enc_sd, "proj_out."),
    }
    layout = f"diffusers folder (unet/{unet_file}, vae/{vae_file}, image_encoder/{enc_file})"
    return _assemble(parts, enc_sd["uncond_vector"], str(folder), layout, clip_heads=heads)


def _check_folder(p: Path) -> None:
    if not os.access(p, os.R_OK | os.X_OK):
        raise CheckpointError(
            f"Cannot read the folder {p}: permission denied. Give the user running ComfyUI read access to it "
            f"(e.g. chmod -R a+rX on the folder)."
        )
    if not (p / "unet").is_dir() and not (p / "model_index.json").is_file():
        raise CheckpointError(
            f"{p} is a folder but not a diffusers Paint-by-Example folder (no model_index.json, no unet/). "
            f"Select the folder that contains unet/, vae/ and image_encoder/, or a single .ckpt/.safetensors file."
        )


# --- entry point ---------------------------------------------------------------------------------------------------
def load_checkpoint(path: str | os.PathLike, dtypes: Mapping[str, torch.dtype] | None = None,
                    key: str | None = None) -> PbECheckpoint:
    """Load a Paint-by-Example model from a file or a diffusers folder.

    Returns a :class:`PbECheckpoint` in canonical naming with :class:`ModelInfo` inferred from shapes. Raises
    :class:`CheckpointError` (a ``ValueError``) with a message that names the problem and the fix for anything that
    is not a complete Paint-by-Example model.

    ``dtypes``: ``{part: dtype}`` for parts (:data:`CONVERTIBLE_PARTS`) whose floating-point tensors are to be cast
    while reading (see :func:`read_state_dict`: for ``.safetensors`` files memory then stays near the converted
    model's size, e.g. 2.6 GB for the whole model in bf16 from a 5.2 GB fp32 file); other parts keep the file's dtype.
    ``key``: the entry of a torch file that holds the state dict, when it cannot be told (see :func:`read_state_dict`).
    """
    dtypes = dict(dtypes or {})
    convert = dtype_converter(dtypes, _part_of_original_key) if dtypes else None
    p = Path(path)
    if p.is_dir():
        _check_folder(p)
        return _load_diffusers_folder(p, dtypes)
    if not p.exists():
        raise CheckpointError(f"{p} does not exist; check the path.")
    unet_file_dtypes: set[str] = set()  # for the description: the file's, not the converted dtype

    def recording(name: str, t: torch.Tensor) -> torch.Tensor:
        if name.startswith(layouts.UNET_PREFIX):
            unet_file_dtypes.add(str(t.dtype).replace("torch.", ""))
        return t if convert is None else convert(name, t)

    sd = read_state_dict(p, recording if convert is not None else None, key)
    kind = "Lightning checkpoint" if p.suffix in (".ckpt", ".pt", ".pth") else p.suffix.lstrip(".")
    if convert is None:
        unet_file_dtypes = {str(v.dtype).replace("torch.", "") for k, v in sd.items() if k.startswith(layouts.UNET_PREFIX)}
    if any(re.match(r"(down_blocks|up_blocks|mid_block)\.", k) for k in list(sd)[:50]) and not any(
        k.startswith(layouts.UNET_PREFIX) for k in sd
    ):
        raise CheckpointError(
            f"{p} holds a single diffusers component (keys like {next(iter(sd))!r}), not a whole model. "
            f"Select the diffusers folder itself (the one with model_index.json, unet/, vae/, image_encoder/)."
        )
    return _from_original(sd, str(p), f"original single file ({kind}, {'/'.join(sorted(unet_file_dtypes)) or '?'})")
