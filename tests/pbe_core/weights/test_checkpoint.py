"""Loading every published layout: same tensors, shapes-inferred sizes, key maps checked against diffusers."""

import json
from pathlib import Path

import pbe_fixtures
import pytest
import torch
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

from pbe_core.weights import layouts
from pbe_core.weights.checkpoint import CheckpointError, load_checkpoint


@pytest.fixture(scope="module")
def expected(tiny_modules):
    """What every layout must load to, built without the loader: the original-layout state dict of the diffusers
    modules the fixture files were written from (fixed DDPM buffers and CLIP's position_ids buffer left out, as the
    loader drops them)."""
    sd = pbe_fixtures.original_state_dict(*tiny_modules)
    dropped = set(layouts.SCHEDULE_BUFFERS) | {layouts.CLIP_PREFIX + "vision_model.embeddings.position_ids"}
    return {k: v for k, v in sd.items() if k not in dropped}


@pytest.fixture(scope="module")
def reference(fixture_paths):
    return load_checkpoint(fixture_paths["original-fp32.safetensors"])


def test_key_maps_agree_with_diffusers_converters(tiny_modules):
    """Our diffusers->LDM maps, inverted by diffusers' own LDM->diffusers converters, give back every tensor."""
    unet, vae, encoder = tiny_modules
    sd = pbe_fixtures.original_state_dict(unet, vae, encoder)
    back = convert_ldm_unet_checkpoint(dict(sd), dict(unet.config))
    ref = unet.state_dict()
    assert set(back) == set(ref)
    assert all(torch.equal(back[k], ref[k]) for k in ref)
    vback = convert_ldm_vae_checkpoint(dict(sd), dict(vae.config))
    vref = vae.state_dict()
    assert set(vback) == set(vref)
    assert all(torch.equal(vback[k].reshape(vref[k].shape), vref[k]) for k in vref)


def test_full_size_key_names_agree_with_diffusers_converters():
    """The real architecture's names (meta tensors, no memory): 686 UNet + 248 VAE keys map both ways."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(in_channels=9, out_channels=4, cross_attention_dim=768)
        vae = AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
        )
    ldm_unet = layouts.unet_from_diffusers(unet.state_dict())
    assert ldm_unet["input_blocks.0.0.weight"].shape == (320, 9, 3, 3)
    assert "output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight" in ldm_unet
    assert "output_blocks.2.1.conv.weight" in ldm_unet  # first upsampler: level without attention
    assert "output_blocks.5.2.conv.weight" in ldm_unet
    back = convert_ldm_unet_checkpoint(layouts.add_prefix(ldm_unet, layouts.UNET_PREFIX), dict(unet.config))
    assert set(back) == set(unet.state_dict())
    ldm_vae = layouts.vae_from_diffusers(vae.state_dict())
    assert ldm_vae["encoder.mid.attn_1.q.weight"].shape == (512, 512, 1, 1)
    vback = convert_ldm_vae_checkpoint(layouts.add_prefix(ldm_vae, layouts.VAE_PREFIX), dict(vae.config))
    assert set(vback) == set(vae.state_dict())


def test_original_keys_follow_the_published_layout(fixture_paths):
    """Names and nesting of the published layout (docs/design/checkpoint-layouts.md), read back from the Lightning file itself."""
    from pbe_core.weights.checkpoint import read_state_dict

    sd = read_state_dict(fixture_paths["original.ckpt"])
    assert sd["model.diffusion_model.input_blocks.0.0.weight"].shape[1] == 9
    w = pbe_fixtures.TINY.clip["hidden_size"]
    assert sd["cond_stage_model.mapper.resblocks.0.attn.c_qkv.weight"].shape == (3 * w, w)
    for suffix in ("attn.c_qkv", "attn.c_proj", "ln_1", "mlp.c_fc", "mlp.c_proj", "ln_2"):
        for p in ("weight", "bias"):
            assert f"cond_stage_model.mapper.resblocks.1.{suffix}.{p}" in sd
    assert "cond_stage_model.transformer.vision_model.post_layernorm.weight" in sd
    assert "cond_stage_model.final_ln.weight" in sd and "proj_out.weight" in sd
    assert sd["learnable_vector"].shape == (1, 1, pbe_fixtures.TINY.unet["cross_attention_dim"])
    assert all(b in sd for b in layouts.SCHEDULE_BUFFERS)
    assert "first_stage_model.quant_conv.weight" in sd and "first_stage_model.decoder.up.3.upsample.conv.weight" in sd


@pytest.mark.parametrize("layout", pbe_fixtures.LAYOUTS)
def test_every_layout_loads_to_the_same_tensors(fixture_paths, expected, reference, layout):
    ckpt = load_checkpoint(fixture_paths[layout])
    assert ckpt.info == reference.info
    got = ckpt.original_state_dict()
    assert set(got) == set(expected), set(got) ^ set(expected)
    for k, ref in expected.items():
        if layout in pbe_fixtures.FP32_LAYOUTS:
            assert got[k].dtype == torch.float32 and torch.equal(got[k], ref), k
        else:
            # fp16 / bf16 files: the modules' weights rounded to the file's dtype, exactly
            assert torch.equal(got[k], ref.to(got[k].dtype)), k


def test_a_state_dict_saved_under_another_entry_is_found(fixture_paths, expected, tmp_path):
    """A file re-saved by another tool, e.g. {"epoch": 3, "model": {"weights": sd}}: the loader finds the state dict
    (the dict of tensors holding the original layout's names) instead of asking for an entry name."""
    sd = dict(load_checkpoint(fixture_paths["original.ckpt"]).original_state_dict())
    wrapped = tmp_path / "resaved.ckpt"
    torch.save({"epoch": 3, "model": {"weights": sd}, "extra": {"ema_step": torch.tensor(3)}}, wrapped)
    got = load_checkpoint(wrapped).original_state_dict()
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)


def test_two_candidate_state_dicts_name_the_converter_command(fixture_paths, tmp_path):
    from pbe_core.convert import convert

    sd = dict(load_checkpoint(fixture_paths["original.ckpt"]).original_state_dict())
    two = tmp_path / "two.ckpt"
    torch.save({"model": sd, "model_ema": {k: v.clone() for k, v in sd.items()}}, two)
    with pytest.raises(CheckpointError, match=r"several state dicts .*'model' and 'model_ema'.*"
                                              r"python -m pbe_core\.convert .*two\.ckpt model\.safetensors --key model"):
        load_checkpoint(two)
    out = convert(two, tmp_path / "model.safetensors", key="model_ema")
    assert set(load_checkpoint(out).original_state_dict()) == set(sd)


ENCODER_PARTS = ("clip", "mapper", "final_ln", "proj_out", "uncond")


@pytest.mark.parametrize("layout", ["original-fp32.safetensors", "original.ckpt", "diffusers-hub", "diffusers-bin"])
def test_parts_are_converted_while_reading(fixture_paths, reference, layout):
    """``dtypes``: the UNet and encoder read as bf16, the VAE as fp16, each tensor the file's value cast (exactly what
    ``Tensor.to`` gives); integer buffers keep their dtype; the description still names the file's dtype."""
    ckpt = load_checkpoint(fixture_paths[layout], {"unet": torch.bfloat16, "encoder": torch.bfloat16, "vae": torch.float16})
    assert ckpt.info == reference.info
    want = {"unet": torch.bfloat16, "vae": torch.float16, **dict.fromkeys(ENCODER_PARTS, torch.bfloat16)}
    for name, part in reference.parts().items():
        for k, ref in part.items():
            got = ckpt.parts()[name][k]
            dtype = want[name] if ref.is_floating_point() else ref.dtype
            assert got.dtype == dtype and torch.equal(got, ref.to(dtype)), (name, k)
    if layout.startswith("original-"):
        assert "float32" in ckpt.layout


def test_converting_some_parts_leaves_the_others_as_the_file_has_them(fixture_paths, reference):
    ckpt = load_checkpoint(fixture_paths["original-fp32.safetensors"], {"unet": torch.bfloat16})
    assert {t.dtype for t in ckpt.unet.values()} == {torch.bfloat16}
    for name in ("vae", *ENCODER_PARTS):
        for k, ref in reference.parts()[name].items():
            assert torch.equal(ckpt.parts()[name][k], ref), (name, k)
    with pytest.raises(ValueError, match="text_encoder"):
        load_checkpoint(fixture_paths["original-fp32.safetensors"], {"text_encoder": torch.bfloat16})


def test_inferred_sizes(reference):
    info = reference.info
    t = pbe_fixtures.TINY
    assert info.clip_width == t.clip["hidden_size"]
    assert info.clip_depth == t.clip["num_hidden_layers"]
    assert info.clip_heads == t.clip["num_attention_heads"]
    assert info.clip_patch == t.clip["patch_size"] and info.clip_image_size == t.clip["image_size"]
    assert info.mapper_depth == (t.clip["num_hidden_layers"] + 1) // 5  # what diffusers builds for this CLIP
    assert info.context_dim == info.unet_context_dim == t.unet["cross_attention_dim"]
    assert info.unet_in_channels == 9 and info.unet_model_channels == t.unet["block_out_channels"][0]
    assert info.vae_channels == 32 and info.vae_channel_mult == (1, 1, 2, 2) and info.vae_num_res_blocks == 1
    assert info.vae_z_channels == 4 and info.vae_embed_dim == 4


def test_training_checkpoint_reports_what_it_is(fixture_paths):
    ckpt = load_checkpoint(fixture_paths["original-training.ckpt"])
    assert "Lightning" in ckpt.layout


# --- refusals ---------------------------------------------------------------------------------------------------------
def _save(tmp_path, name, sd):
    from safetensors.torch import save_file

    p = tmp_path / name
    save_file({k: v.contiguous() for k, v in sd.items()}, str(p))
    return p


def _sd15_like(reference, in_channels):
    """An SD-1.x-style checkpoint: the UNet with a text encoder instead of the exemplar encoder."""
    unet = dict(reference.unet)
    w = unet["input_blocks.0.0.weight"]
    unet["input_blocks.0.0.weight"] = torch.zeros(w.shape[0], in_channels, *w.shape[2:])
    sd = layouts.add_prefix(unet, layouts.UNET_PREFIX)
    sd.update(layouts.add_prefix(reference.vae, layouts.VAE_PREFIX))
    sd["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] = torch.zeros(10, 8)
    return sd


def test_refuses_sd15(tmp_path, reference):
    p = _save(tmp_path, "v1-5.safetensors", _sd15_like(reference, 4))
    with pytest.raises(CheckpointError, match=r"Stable Diffusion 1\.x checkpoint .*not Paint by Example"):
        load_checkpoint(p)


def test_refuses_sd_inpainting(tmp_path, reference):
    p = _save(tmp_path, "sd-inpainting.safetensors", _sd15_like(reference, 9))
    with pytest.raises(CheckpointError, match="Stable Diffusion inpainting checkpoint"):
        load_checkpoint(p)


def test_refuses_sdxl(tmp_path):
    sd = {
        "model.diffusion_model.label_emb.0.0.weight": torch.zeros(4, 4),
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(4, 4),
    }
    with pytest.raises(CheckpointError, match="SDXL"):
        load_checkpoint(_save(tmp_path, "sdxl.safetensors", sd))


def test_refuses_lora(tmp_path):
    sd = {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(32, 4),
        "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0),
    }
    with pytest.raises(CheckpointError, match="LoRA"):
        load_checkpoint(_save(tmp_path, "lora.safetensors", sd))


def test_refuses_wrong_unet_input_channels(tmp_path, reference):
    sd = reference.original_state_dict()
    w = sd["model.diffusion_model.input_blocks.0.0.weight"]
    sd["model.diffusion_model.input_blocks.0.0.weight"] = w[:, :4].clone()
    with pytest.raises(CheckpointError, match="takes 4 input channels; Paint by Example's takes 9"):
        load_checkpoint(_save(tmp_path, "four.safetensors", sd))


def test_refuses_missing_encoder_parts(tmp_path, reference):
    sd = {k: v for k, v in reference.original_state_dict().items() if not k.startswith("cond_stage_model.mapper.")}
    with pytest.raises(CheckpointError, match="lacks mapper"):
        load_checkpoint(_save(tmp_path, "nomapper.safetensors", sd))


def test_refuses_truncated_safetensors(tmp_path, fixture_paths):
    data = fixture_paths["original-fp16.safetensors"].read_bytes()
    for cut in (4, 100, len(data) // 2, len(data) - 1):
        p = tmp_path / f"cut{cut}.safetensors"
        p.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupt|not a checkpoint format"):
            load_checkpoint(p)


def test_refuses_safetensors_header_claiming_huge_size(tmp_path):
    p = tmp_path / "huge.safetensors"
    p.write_bytes((2**40).to_bytes(8, "little") + b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}')
    with pytest.raises(CheckpointError, match="header claims"):
        load_checkpoint(p)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "HTML page"),
        (bytes(range(256)) * 64, "not a checkpoint format"),
        (b"", "empty"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "Git LFS pointer"),
    ],
)
def test_refuses_non_checkpoints(tmp_path, content, message):
    p = tmp_path / "model.ckpt"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(p)


@pytest.mark.parametrize("component", ["unet", "vae", "image_encoder"])
def test_refuses_diffusers_folder_missing_a_component(tmp_path, fixture_paths, component):
    import shutil

    folder = tmp_path / "pbe"
    shutil.copytree(fixture_paths["diffusers-hub"], folder)
    shutil.rmtree(folder / component)
    with pytest.raises(CheckpointError, match=f"no '{component}/' sub-folder"):
        load_checkpoint(folder)


def test_refuses_diffusers_component_without_weights(tmp_path, fixture_paths):
    import shutil

    folder = tmp_path / "pbe"
    shutil.copytree(fixture_paths["diffusers-hub"], folder)
    for f in (folder / "vae").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(CheckpointError, match="'vae/' sub-folder but no weights"):
        load_checkpoint(folder)


def test_ignores_model_index_class_names(tmp_path, fixture_paths):
    """diffusers' save_pretrained writes ["diffusers", ...], the hub ["paint_by_example", ...]: both load."""
    import shutil

    folder = tmp_path / "pbe"
    shutil.copytree(fixture_paths["diffusers-hub"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["image_encoder"] = ["diffusers", "PaintByExampleImageEncoder"]
    (folder / "model_index.json").write_text(json.dumps(index))
    assert load_checkpoint(folder).info.mapper_depth == 2


def test_refuses_unreadable_folder(tmp_path, fixture_paths):
    """A diffusers folder the user may not read, opened by a process that obeys file permissions (as root: without
    CAP_DAC_OVERRIDE, tests/support/unprivileged.py), is refused as 'permission denied'."""
    import shutil
    import subprocess
    import sys

    import unprivileged

    reason = unprivileged.unavailable_reason()
    if reason:
        pytest.skip(reason)
    tmp_path.chmod(0o755)
    folder = tmp_path / "pbe"
    shutil.copytree(fixture_paths["diffusers-hub"], folder)
    folder.chmod(0)
    code = (
        "import sys; from pbe_core.weights.checkpoint import CheckpointError, load_checkpoint\n"
        "try:\n    load_checkpoint(sys.argv[1])\nexcept CheckpointError as e:\n    sys.stdout.write(str(e))"
    )
    try:
        r = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=300,
                           cwd=Path(__file__).resolve().parents[3], **unprivileged.popen_kwargs())
    finally:
        folder.chmod(0o755)
    assert r.returncode == 0, r.stderr
    assert "permission denied" in r.stdout, r.stdout
