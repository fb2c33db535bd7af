"""The model half of the bad-input matrix: files and folders a user may put into models/paint_by_example/
instead of a Paint-by-Example checkpoint, each with the error it must get.

Shared by the unit tests (``test_bad_inputs.py``: ``pbe_core.weights.checkpoint``) and the host tests
(``host/test_bad_inputs_host.py``: ``PBE_LoadModel`` through ``POST /prompt``), so both check the same cases and the
same messages. Every builder writes into a folder it is given and derives what it needs from the tiny fixture model,
so nothing large is written.
"""

from __future__ import annotations

import collections
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from lightning_pickle import malicious_call, save_malicious_checkpoint, save_with_fakes
from safetensors.torch import save_file

from pbe_core.weights import layouts
from pbe_core.weights.checkpoint import load_checkpoint

#: "the fix" of the loader's messages (regexes): a user reading the error is told what to do
GET_AGAIN = r"download (it|the file) again|get the file again"
PUT_PBE = r"Put a Paint-by-Example checkpoint there"
OWN_LOADERS = r"Load it with ComfyUI's own loaders"


@dataclass(frozen=True)
class BadModel:
    """One case: ``build(folder, fixture_paths, marker)`` writes it as ``folder / name`` and returns that path."""

    name: str  # the file or folder name in models/paint_by_example/
    problem: str  # regex: the error names the problem ...
    fix: str  # ... and the fix
    at_validation: bool  # refused by PBE_LoadModel.validate_inputs (HTTP 400), not only when loading
    build: Callable[[Path, dict, Path], Path]


def _save(path: Path, sd: dict) -> Path:
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def _reference(fixture_paths: dict):
    return load_checkpoint(fixture_paths["original-fp16.safetensors"])


def _text_to_image_like(folder: Path, fixture_paths: dict, name: str, in_channels: int) -> Path:
    """An SD-1.x style checkpoint: a UNet with ``in_channels`` inputs, a VAE and a *text* encoder (no exemplar one)."""
    ref = _reference(fixture_paths)
    unet = dict(ref.unet)
    w = unet["input_blocks.0.0.weight"]
    unet["input_blocks.0.0.weight"] = torch.zeros(w.shape[0], in_channels, *w.shape[2:], dtype=w.dtype)
    sd = layouts.add_prefix(unet, layouts.UNET_PREFIX)
    sd.update(layouts.add_prefix(ref.vae, layouts.VAE_PREFIX))
    sd["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] = torch.zeros(10, 8)
    sd["cond_stage_model.transformer.text_model.final_layer_norm.weight"] = torch.ones(8)
    return _save(folder / name, sd)


def _sd15(folder, fixture_paths, marker):
    return _text_to_image_like(folder, fixture_paths, "v1-5-pruned-emaonly.safetensors", 4)


def _sd_inpainting(folder, fixture_paths, marker):
    return _text_to_image_like(folder, fixture_paths, "sd-v1-5-inpainting.safetensors", 9)


def _sdxl(folder, fixture_paths, marker):
    sd = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
        "model.diffusion_model.label_emb.0.0.weight": torch.zeros(8, 16),
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(10, 8),
        "conditioner.embedders.1.model.token_embedding.weight": torch.zeros(10, 8),
        "first_stage_model.decoder.conv_in.weight": torch.zeros(8, 4, 3, 3),
    }
    return _save(folder / "sd_xl_base_1.0.safetensors", sd)


def _lora(folder, fixture_paths, marker):
    sd = {}
    for i in range(3):
        base = f"lora_unet_down_blocks_0_attentions_{i}_proj_in"
        sd[f"{base}.lora_down.weight"] = torch.zeros(4, 32)
        sd[f"{base}.lora_up.weight"] = torch.zeros(32, 4)
        sd[f"{base}.alpha"] = torch.tensor(4.0)
    return _save(folder / "detail-tweaker-lora.safetensors", sd)


def _random_bytes(folder, fixture_paths, marker):
    p = folder / "random.safetensors"
    p.write_bytes(bytes((i * 7919 + 13) % 251 for i in range(64 * 1024)))  # deterministic noise
    return p


def _truncated(folder, fixture_paths, marker):
    """An interrupted download: the header is whole, half the tensor data is missing."""
    data = fixture_paths["original-fp16.safetensors"].read_bytes()
    p = folder / "truncated.safetensors"
    p.write_bytes(data[: len(data) // 2])
    return p


def _huge_header(folder, fixture_paths, marker):
    p = folder / "huge-header.safetensors"
    p.write_bytes((2**40).to_bytes(8, "little") + b'{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}')
    return p


def _html(folder, fixture_paths, marker):
    p = folder / "model.ckpt"
    p.write_text(
        "<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
        "<body><h1>Not Found</h1><p>The requested URL was not found on this server.</p></body></html>\n"
    )
    return p


def _malicious(folder, fixture_paths, marker):
    """A complete, working Paint-by-Example model whose pickle also runs code under plain ``torch.load``."""
    ref = _reference(fixture_paths)
    p = folder / "trojan.ckpt"
    ckpt = {"epoch": 1, "state_dict": collections.OrderedDict(ref.original_state_dict())}
    ckpt["hyper_parameters"] = malicious_call(marker, "system")
    save_with_fakes(p, ckpt)
    return p


def _malicious_plain(folder, fixture_paths, marker):
    """The pickle test fixture of ``lightning_pickle``: code in a tensor's rebuild arguments."""
    p = folder / "evil.ckpt"
    save_malicious_checkpoint(p, marker, where="tensor", via="exec")
    return p


def _diffusers_missing_vae(folder, fixture_paths, marker):
    p = folder / "pbe-diffusers-novae"
    shutil.copytree(fixture_paths["diffusers-hub"], p)
    shutil.rmtree(p / "vae")
    return p


def _four_channel_unet(folder, fixture_paths, marker):
    """A whole Paint-by-Example file whose UNet takes 4 input channels (an SD-1 UNet grafted in)."""
    sd = _reference(fixture_paths).original_state_dict()
    w = sd["model.diffusion_model.input_blocks.0.0.weight"]
    sd["model.diffusion_model.input_blocks.0.0.weight"] = w[:, :4].clone()
    return _save(folder / "pbe-4channel-unet.safetensors", sd)


def _unreadable_folder(folder, fixture_paths, marker):
    """A diffusers folder the user running ComfyUI may not read (mode 000). Root reads it anyway: see
    ``unprivileged.py`` for how the tests take that power away."""
    p = folder / "pbe-no-permission"
    shutil.copytree(fixture_paths["diffusers-fp16"], p)
    p.chmod(0)
    return p


MATRIX = [
    BadModel("sd15", r"is a Stable Diffusion 1\.x checkpoint .*not Paint by Example", OWN_LOADERS, False, _sd15),
    BadModel("sd_inpainting", r"is a Stable Diffusion inpainting checkpoint", OWN_LOADERS, False, _sd_inpainting),
    BadModel("sdxl", r"is an SDXL checkpoint, not Paint by Example", OWN_LOADERS, False, _sdxl),
    BadModel("lora", r"is a LoRA \(keys like", OWN_LOADERS, False, _lora),
    BadModel("random_bytes", r"is not a checkpoint format this loader knows", PUT_PBE, True, _random_bytes),
    BadModel("truncated_safetensors", r"is not a valid \.safetensors file .*truncated or corrupt", GET_AGAIN, False,
             _truncated),
    BadModel("huge_header", r"its header claims 1099511627776 bytes but the file has", GET_AGAIN, True, _huge_header),
    BadModel("html_as_ckpt", r"is an HTML page \(usually a failed download", PUT_PBE, True, _html),
    BadModel("malicious_pickle", r"is unsafe: its pickle names os\.system.*Nothing in it was run",
             r"Delete the file and get the model from a source you trust", False, _malicious),
    BadModel("malicious_tensor_hooks", r"is unsafe: its pickle names builtins\.exec", r"Delete the file", False,
             _malicious_plain),
    BadModel("diffusers_missing_vae", r"has no 'vae/' sub-folder", r"Download the missing 'vae' component", True,
             _diffusers_missing_vae),
    BadModel("unet_4_channels", r"the UNet takes 4 input channels; Paint by Example's takes 9",
             r"load it with ComfyUI's own loaders", False, _four_channel_unet),
    BadModel("unreadable_folder", r"Cannot read the folder .*permission denied", r"Give the user running ComfyUI read access",
             True, _unreadable_folder),
]  # fmt: skip

BY_NAME = {case.name: case for case in MATRIX}


def remove(path: Path) -> None:
    """Delete what a builder wrote (restoring permissions first)."""
    if path.is_dir() and not path.is_symlink():
        path.chmod(0o755)  # the builders make at most the top folder unreadable
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
