"""Where fine-tuning starts: SD-1.x with five zero input channels and a fresh exemplar head, or a PbE checkpoint;
the LDM <-> diffusers key maps the training modules load through."""

import pbe_fixtures
import pytest
import torch
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

from pbe_core.train import model as M
from pbe_core.weights import layouts
from pbe_core.weights.checkpoint import CheckpointError, load_checkpoint, read_state_dict


# --- key maps: LDM -> diffusers -------------------------------------------------------------------------------------
def test_unet_to_diffusers_inverts_unet_from_diffusers_and_agrees_with_diffusers(tiny_modules):
    unet = tiny_modules[0]
    sd = unet.state_dict()
    ldm = layouts.unet_from_diffusers(sd)
    back = layouts.unet_to_diffusers(ldm)
    assert set(back) == set(sd) and all(back[k] is sd[k] for k in sd)  # same tensors, no copies
    again = layouts.unet_from_diffusers(back)
    assert set(again) == set(ldm) and all(again[k] is ldm[k] for k in ldm)
    ref = convert_ldm_unet_checkpoint(layouts.add_prefix(ldm, layouts.UNET_PREFIX), dict(unet.config))
    assert set(ref) == set(back) and all(torch.equal(ref[k], back[k]) for k in ref)


def test_vae_to_diffusers_inverts_vae_from_diffusers_and_agrees_with_diffusers(tiny_modules):
    vae = tiny_modules[1]
    sd = vae.state_dict()
    ldm = layouts.vae_from_diffusers(sd)
    back = layouts.vae_to_diffusers(ldm)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) and back[k].shape == sd[k].shape for k in sd)
    ref = convert_ldm_vae_checkpoint(layouts.add_prefix(ldm, layouts.VAE_PREFIX), dict(vae.config))
    assert set(ref) == set(back)
    assert all(torch.equal(ref[k].reshape(back[k].shape), back[k]) for k in ref)


def test_full_size_unet_and_vae_names_map_both_ways():
    """The real SD-1 architecture (meta tensors): every name goes LDM -> diffusers -> LDM unchanged."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(in_channels=9, out_channels=4, cross_attention_dim=768)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2)
    ldm = layouts.unet_from_diffusers(unet.state_dict())
    assert layouts.unet_ldm_structure(ldm) == (4, 2)
    assert set(layouts.unet_to_diffusers(ldm)) == set(unet.state_dict())
    ref = convert_ldm_unet_checkpoint(layouts.add_prefix(ldm, layouts.UNET_PREFIX), dict(unet.config))
    assert set(ref) == set(layouts.unet_to_diffusers(ldm))
    assert set(layouts.vae_to_diffusers(layouts.vae_from_diffusers(vae.state_dict()))) == set(vae.state_dict())
    cfg = M.unet_config(ldm)
    for k in ("block_out_channels", "layers_per_block", "cross_attention_dim", "down_block_types", "up_block_types",
              "in_channels", "out_channels", "use_linear_projection"):
        assert tuple(cfg[k]) == tuple(unet.config[k]) if isinstance(cfg[k], tuple) else cfg[k] == unet.config[k], k


def test_unknown_ldm_keys_are_refused():
    with pytest.raises(KeyError, match="label_emb"):
        layouts.unet_ldm_to_diffusers_names(["input_blocks.0.0.weight", "label_emb.0.0.weight"])
    with pytest.raises(KeyError, match="encoder.foo"):
        layouts.vae_to_diffusers({"encoder.foo.weight": torch.zeros(1)})


# --- start from SD-1.x ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["safetensors", "ckpt"])
def test_init_from_sd1_adds_five_zero_channels_and_keeps_every_other_weight(sd1, fmt):
    src = read_state_dict(sd1[fmt])
    ckpt = M.initial_checkpoint(sd1[fmt], sd1["clip"], mapper_depth=2, seed=0)
    unet_src = layouts.split_prefix(src, layouts.UNET_PREFIX)
    assert set(ckpt.unet) == set(unet_src)
    w = ckpt.unet["input_blocks.0.0.weight"]
    assert w.shape[1] == 9 and unet_src["input_blocks.0.0.weight"].shape[1] == 4
    assert torch.equal(w[:, 4:], torch.zeros_like(w[:, 4:]))
    assert torch.equal(w[:, :4], unet_src["input_blocks.0.0.weight"])
    for k, v in unet_src.items():
        if k != "input_blocks.0.0.weight":
            assert torch.equal(ckpt.unet[k], v), k
    vae_src = layouts.split_prefix(src, layouts.VAE_PREFIX)
    assert set(ckpt.vae) == set(vae_src) and all(torch.equal(ckpt.vae[k], v) for k, v in vae_src.items())
    clip_src = read_state_dict(sd1["clip"])
    assert len(ckpt.clip) == len(clip_src)
    assert all(torch.equal(ckpt.clip["vision_model." + k.removeprefix("vision_model.")], v) for k, v in clip_src.items())
    assert ckpt.info.unet_in_channels == 9 and ckpt.info.mapper_depth == 2
    assert ckpt.info.context_dim == pbe_fixtures.TINY.unet["cross_attention_dim"]
    assert ckpt.uncond.shape == (1, 1, ckpt.info.context_dim) and ckpt.uncond.abs().sum() > 0  # fresh, random
    # the text encoder is not part of the result
    assert not any("text_model" in k for k in ckpt.original_state_dict())


def test_sd1_start_predicts_what_sd1_predicts_whatever_the_new_channels_hold(sd1):
    """Zero new channels: the initial 9-channel UNet is the SD UNet, the paper's reason for this start."""
    sd_unet = pbe_fixtures.build_sd1_modules()[0]
    ckpt = M.init_from_sd1(sd1["safetensors"], sd1["clip"], mapper_depth=2)
    trainable, frozen = M.build_modules(ckpt)
    torch.manual_seed(0)
    x, extra = torch.randn(2, 4, 8, 8), torch.randn(2, 5, 8, 8)
    ctx, t = torch.randn(2, 1, 64), torch.tensor([10, 900])
    with torch.no_grad():
        ref = sd_unet(x, t, encoder_hidden_states=ctx).sample
        got = trainable.unet(torch.cat([x, extra], 1), t, encoder_hidden_states=ctx).sample
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5)


def test_clip_file_naming_of_transformers_4_and_5_gives_the_same_start(sd1):
    a = M.init_from_sd1(sd1["safetensors"], sd1["clip"], mapper_depth=2)
    b = M.init_from_sd1(sd1["safetensors"], sd1["clip_tf4"], mapper_depth=2)
    assert set(a.clip) == set(b.clip) and all(torch.equal(a.clip[k], b.clip[k]) for k in a.clip)
    assert all(torch.equal(a.mapper[k], b.mapper[k]) for k in a.mapper)  # same seed, same fresh head


def test_sd1_start_refusals_say_what_to_do(sd1, tmp_path, fixture_paths):
    with pytest.raises(CheckpointError, match="clip_weights"):
        M.initial_checkpoint(sd1["safetensors"], "")
    with pytest.raises(CheckpointError, match="no CLIP vision tower"):
        M.initial_checkpoint(sd1["safetensors"], sd1["safetensors"])
    from safetensors.torch import save_file

    sd = dict(read_state_dict(sd1["safetensors"]))
    sd["cond_stage_model.model.token_embedding.weight"] = torch.zeros(2, 2)
    save_file(sd, str(tmp_path / "sd2.safetensors"))
    with pytest.raises(CheckpointError, match="2.x"):
        M.initial_checkpoint(tmp_path / "sd2.safetensors", sd1["clip"])


# --- start from Paint by Example --------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["original-fp16.safetensors", "diffusers-hub"])
def test_pbe_start_builds_modules_that_export_the_same_tensors(fixture_paths, layout):
    ckpt = M.initial_checkpoint(fixture_paths[layout])
    ref = load_checkpoint(fixture_paths[layout])
    trainable, frozen = M.build_modules(ckpt)
    assert all(p.requires_grad for p in trainable.parameters())
    assert not any(p.requires_grad for p in frozen.parameters())
    sd = M.original_state_dict(trainable, ckpt)
    want = ref.original_state_dict()
    assert set(sd) == set(want)
    for k, v in want.items():
        assert torch.equal(sd[k].float(), v.float()), k

