"""The four nodes on a real headless ComfyUI, driven only through its HTTP API, checked against diffusers."""

import json
import os
import re
import time
import urllib.request
from pathlib import Path

import numpy as np
import pbe_fixtures
import pytest
import torch
from comfy_host import PACK_NAME, PromptRejected, execution_error, status_messages
from host_prompts import modular_prompt, one_node_prompt, run_ok, uid
from host_util import BOX, SIZE, fetch_tensor

pytestmark = pytest.mark.host

NODES = ("PBE_LoadModel", "PBE_ExemplarEncode", "PBE_InpaintConditioning", "PBE_Sampler")

#: parity tolerance: max abs difference on 0..1 pixels inside the mask
PARITY_ATOL = 1e-3


# --- the pack is there --------------------------------------------------------------------------------------------------
def test_object_info_lists_the_four_nodes_with_inputs(comfy_server):
    info = comfy_server.object_info()
    for n in NODES:
        assert n in info, n
        assert info[n]["description"]
    assert set(info["PBE_LoadModel"]["input"]["required"]) == {"model_name"}
    assert set(info["PBE_LoadModel"]["input"]["required"]["model_name"][1]["options"]) == set(pbe_fixtures.LAYOUTS)
    req = info["PBE_Sampler"]["input"]["required"]
    for name in ("model", "encoder", "vae", "image", "mask", "exemplar", "seed", "steps", "cfg", "sampler_name",
                 "scheduler", "denoise", "mask_grow", "mask_feather"):
        assert name in req, name
    assert req["steps"][1]["default"] == 50 and req["cfg"][1]["default"] == 5.0
    assert "reference" in req["sampler_name"][1]["options"] and "dpmpp_2m" in req["sampler_name"][1]["options"]
    assert info["PBE_LoadModel"]["output"] == ["MODEL", "PBE_ENCODER", "VAE"]
    assert info["PBE_InpaintConditioning"]["output"] == ["CONDITIONING", "CONDITIONING", "LATENT"]
    # every node of the pack has a description and a tooltip on every input and output
    ours = [n for n in info if n.startswith("PBE_")]
    assert len(ours) >= 10
    for n in ours:
        assert info[n]["description"], n
        for group in ("required", "optional"):
            for name, spec in info[n]["input"].get(group, {}).items():
                assert spec[1].get("tooltip"), (n, name)
        assert all(info[n]["output_tooltips"]), n


def test_log_has_no_import_failure_of_the_pack(comfy_server):
    log = comfy_server.log()
    assert PACK_NAME in log
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line and PACK_NAME in line]
    assert not failed, failed


# --- end to end, every layout -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", pbe_fixtures.LAYOUTS)
def test_every_graph_runs_for_every_layout(comfy_server, images, layout):
    results = {}
    for name, prompt in (
        ("one_node", one_node_prompt(layout, steps=4)),
        ("modular_ksampler", modular_prompt(layout)),
        ("modular_custom_advanced", modular_prompt(layout, custom=True, scheduler="karras")),
    ):
        entry = run_ok(comfy_server, prompt)
        out = fetch_tensor(comfy_server, entry, "save")
        assert out.shape == (1, SIZE, SIZE, 3), name
        assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
        results[name] = out
    # outside the region the one-node result is the source, bit for bit
    src = torch.from_numpy(images["source"]).float() / 255
    region = torch.from_numpy(images["region"]).bool()
    assert torch.equal(results["one_node"][0][~region], src[~region])


def test_modular_graph_with_the_source_latent_keeps_the_unmasked_latent(comfy_server, images):
    """latent="source": KSampler honours the LATENT's noise_mask, latent cells away from the region keep the source's
    values (the explicit choice for partial denoise; the default samples everything from noise, as the paper)."""
    p = modular_prompt("original.ckpt", latent="source")
    p["save_in"] = {"class_type": "PBETest_SaveTensor", "inputs": {"value": ["cond", 2], "filename": f"{uid()}.st"}}
    p["save_out"] = {"class_type": "PBETest_SaveTensor", "inputs": {"value": ["sample", 0], "filename": f"{uid()}.st"}}
    entry = run_ok(comfy_server, p)
    before, after = fetch_tensor(comfy_server, entry, "save_in"), fetch_tensor(comfy_server, entry, "save_out")
    y0, y1, x0, x1 = (v // 8 for v in BOX)
    keep = torch.ones(before.shape[-2:], dtype=torch.bool)
    keep[y0:y1, x0:x1] = False
    assert torch.allclose(after[..., keep], before[..., keep], atol=1e-5)
    assert not torch.allclose(after[..., ~keep], before[..., ~keep], atol=1e-2)


# --- what the UNet really receives ------------------------------------------------------------------------------------
def test_unet_input_channels_are_pbe_order_and_polarity(comfy_server, images, tiny_modules, tmp_path):
    from safetensors.torch import load_file

    capture = tmp_path / "unet_in.safetensors"
    run_ok(comfy_server, modular_prompt("original.ckpt", steps=2, capture=str(capture)))
    calls = load_file(str(capture))
    xs = [calls[k] for k in sorted(calls) if k.endswith(".x")]
    contexts = [calls[k] for k in sorted(calls) if k.endswith(".context")]
    assert xs and all(x.shape[1] == 9 for x in xs)

    # expected masked-image latent from diffusers' AutoencoderKL (the oracle), posterior mean, x 0.18215
    _, vae, encoder = tiny_modules
    src = torch.from_numpy(images["source"]).float().div(255).permute(2, 0, 1)[None] * 2 - 1
    keep = 1 - torch.from_numpy(images["region"])[None, None]
    with torch.no_grad():
        masked_latent = vae.encode(src * keep).latent_dist.mean * vae.config.scaling_factor
    keep_latent = torch.nn.functional.interpolate(keep, size=masked_latent.shape[-2:], mode="bilinear")
    for x, ctx in zip(xs, contexts, strict=True):
        assert x.shape[0] == 2  # positive and negative batched in one call: both rows are checked
        for row in range(x.shape[0]):
            assert torch.allclose(x[row, 4:8], masked_latent[0], atol=1e-4, rtol=1e-4)
            assert torch.equal(x[row, 8], keep_latent[0, 0])
        # one row is the learned unconditional vector, the other the exemplar token
        uncond = encoder.uncond_vector[0]
        assert ctx.shape[1] == 1
        assert any(torch.allclose(ctx[r], uncond, atol=1e-6) for r in range(2))
        assert not all(torch.allclose(ctx[r], uncond, atol=1e-6) for r in range(2))


# --- parity with diffusers --------------------------------------------------------------------------------------------
def _diffusers_pipeline(tiny_modules, scheduler):
    from diffusers import PaintByExamplePipeline
    from transformers import CLIPImageProcessor

    unet, vae, encoder = tiny_modules
    fe = CLIPImageProcessor(**{k: v for k, v in pbe_fixtures.FEATURE_EXTRACTOR_CONFIG.items() if "type" not in k})
    return PaintByExamplePipeline(
        vae=vae, image_encoder=encoder, unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=fe
    )


def _diffusers_edit(pipe, images, seed, steps, exemplar_key="exemplar"):
    from PIL import Image

    h = w = SIZE
    noise = torch.randn((1, 4, h // 8, w // 8), generator=torch.Generator().manual_seed(seed))  # ComfyUI's noise
    mask = Image.fromarray((images["region"] * 255).astype(np.uint8))
    out = pipe(
        example_image=Image.fromarray(images[exemplar_key]), image=Image.fromarray(images["source"]), mask_image=mask,
        num_inference_steps=steps, guidance_scale=5.0, latents=noise, output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    return torch.from_numpy(out.images[0])


def test_reference_sampler_matches_diffusers_pipeline(comfy_server, images, tiny_modules):
    """PBE_Sampler 'reference' vs PaintByExamplePipeline + PNDM(skip_prk_steps), 10 steps, cfg 5, fp32."""
    from diffusers import PNDMScheduler

    steps, seed = 10, 1234
    entry = run_ok(comfy_server, one_node_prompt("original.ckpt", steps=steps, seed=seed))
    ours = fetch_tensor(comfy_server, entry, "save")[0]
    sched = PNDMScheduler(**{k: v for k, v in pbe_fixtures.SCHEDULER_CONFIG.items() if not k.startswith("_")})
    expected = _diffusers_edit(_diffusers_pipeline(tiny_modules, sched), images, seed, steps)
    region = torch.from_numpy(images["region"]).bool()
    diff = (ours[region] - expected[region]).abs()
    print(f"reference vs diffusers PNDM: max abs {diff.max():.2e}, mean {diff.mean():.2e} (inside the mask)")  # noqa: T201
    assert diff.max() <= PARITY_ATOL
    # and it is not trivially close: another seed differs by far more than the tolerance
    other = _diffusers_edit(_diffusers_pipeline(tiny_modules, sched), images, seed + 1, steps)
    assert (other[region] - expected[region]).abs().max() > 100 * PARITY_ATOL


#: parity with diffusers' DDIM where the pack controls the start noise (PBE_Sampler, PBE_SamplerSelect), and where the
#: host does (KSampler: it starts ddim_uniform's first step, timestep 901, from sigma * noise, 0.5 % too little)
DDIM_ATOL, KSAMPLER_DDIM_ATOL = 5e-4, 1e-2


def _diffusers_ddim(tiny_modules, images, seed, steps):
    """PaintByExamplePipeline with DDIMScheduler(set_alpha_to_one=True) (the last step ends at a clean sample, as the
    host's ddim_uniform schedule does), eta 0, on the same weights, inputs and noise."""
    from diffusers import DDIMScheduler

    cfg = {k: v for k, v in pbe_fixtures.SCHEDULER_CONFIG.items() if not k.startswith("_") and k != "skip_prk_steps"}
    sched = DDIMScheduler(**{**cfg, "set_alpha_to_one": True}, clip_sample=False)
    return _diffusers_edit(_diffusers_pipeline(tiny_modules, sched), images, seed, steps)


def _inside(ours, expected, images):
    region = torch.from_numpy(images["region"]).bool()
    return (ours[region] - expected[region]).abs()


def test_one_node_sampler_with_a_host_sampler_matches_diffusers_ddim(comfy_server, images, tiny_modules):
    """PBE_Sampler with the host's ddim + ddim_uniform at denoise 1 starts from unit-variance noise, as diffusers'."""
    steps, seed = 10, 99
    entry = run_ok(comfy_server, one_node_prompt("original.ckpt", steps=steps, seed=seed, sampler="ddim",
                                                 scheduler="ddim_uniform"))  # fmt: skip
    diff = _inside(fetch_tensor(comfy_server, entry, "save")[0], _diffusers_ddim(tiny_modules, images, seed, steps), images)
    print(f"PBE_Sampler ddim+ddim_uniform vs diffusers DDIM: max abs {diff.max():.2e}, mean {diff.mean():.2e}")  # noqa: T201
    assert diff.max() <= DDIM_ATOL


def _modular_ddim(steps, seed, custom):
    p = modular_prompt("original.ckpt", steps=steps)
    if custom:  # SamplerCustomAdvanced with the pack's sampler, which says "full denoise" itself
        for k in ("sample",):
            del p[k]
        p.update({
            "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": seed}},
            "guider": {"class_type": "CFGGuider", "inputs": {"model": ["load", 0], "positive": ["cond", 0], "negative": ["cond", 1], "cfg": 5.0}},
            "ksel": {"class_type": "PBE_SamplerSelect", "inputs": {"sampler_name": "ddim"}},
            "sched": {"class_type": "BasicScheduler", "inputs": {"model": ["load", 0], "scheduler": "ddim_uniform", "steps": steps, "denoise": 1.0}},
            "sample": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["ksel", 0], "sigmas": ["sched", 0], "latent_image": ["cond", 2]}},
        })  # fmt: skip
    else:
        p["sample"]["inputs"].update(seed=seed, sampler_name="ddim", scheduler="ddim_uniform")
    return p


@pytest.mark.parametrize("custom, atol", [(False, KSAMPLER_DDIM_ATOL), (True, DDIM_ATOL)])
def test_modular_graph_samples_what_the_paper_samples(comfy_server, images, tiny_modules, custom, atol):
    """Exemplar Encode -> Inpaint Conditioning -> KSampler (ddim, ddim_uniform, 10 steps, cfg 5, denoise 1) -> VAE
    Decode, against diffusers' DDIM on the same weights and noise, inside the mask; and with SamplerCustomAdvanced +
    PBE_SamplerSelect, where the pack controls the start noise."""
    steps, seed = 10, 99
    entry = run_ok(comfy_server, _modular_ddim(steps, seed, custom))
    diff = _inside(fetch_tensor(comfy_server, entry, "save")[0], _diffusers_ddim(tiny_modules, images, seed, steps), images)
    print(f"modular ({'SamplerCustomAdvanced + PBE_SamplerSelect' if custom else 'KSampler'}) vs diffusers DDIM: "  # noqa: T201
          f"max abs {diff.max():.2e}, mean {diff.mean():.2e}")
    assert diff.max() <= atol


def test_modular_graph_with_the_reference_scheduler_is_the_official_sampler(comfy_server, images, tiny_modules):
    """SamplerCustomAdvanced + PBE_SamplerSelect('reference') + PBE_ReferenceScheduler: the official PLMS in a
    modular graph (the whole decoded frame, as the official script saves it), against diffusers' PNDM."""
    from diffusers import PNDMScheduler

    steps, seed = 10, 1234
    p = _modular_ddim(steps, seed, custom=True)
    p["ksel"]["inputs"]["sampler_name"] = "reference"
    p["sched"] = {"class_type": "PBE_ReferenceScheduler", "inputs": {"model": ["load", 0], "steps": steps, "denoise": 1.0}}
    ours = fetch_tensor(comfy_server, run_ok(comfy_server, p), "save")[0]
    sched = PNDMScheduler(**{k: v for k, v in pbe_fixtures.SCHEDULER_CONFIG.items() if not k.startswith("_")})
    diff = _inside(ours, _diffusers_edit(_diffusers_pipeline(tiny_modules, sched), images, seed, steps), images)
    print(f"modular reference vs diffusers PNDM: max abs {diff.max():.2e}, mean {diff.mean():.2e}")  # noqa: T201
    assert diff.max() <= PARITY_ATOL


# --- behaviour ---------------------------------------------------------------------------------------------------------
def test_two_exemplars_give_two_different_results(comfy_server, images):
    p = one_node_prompt("original-fp32.safetensors", steps=4, exemplar_link=("batch", 0))
    p["ex2"] = {"class_type": "LoadImage", "inputs": {"image": "exemplar2.png"}}
    p["batch"] = {"class_type": "ImageBatch", "inputs": {"image1": ["ex", 0], "image2": ["ex2", 0]}}
    out = fetch_tensor(comfy_server, run_ok(comfy_server, p), "save")
    assert out.shape == (2, SIZE, SIZE, 3)
    region = torch.from_numpy(images["region"]).bool()
    assert (out[0][region] - out[1][region]).abs().mean() > 1e-3
    src = torch.from_numpy(images["source"]).float() / 255
    assert torch.equal(out[0][~region], src[~region]) and torch.equal(out[1][~region], src[~region])


def test_feathered_paste_back_leaves_everything_outside_untouched(comfy_server, images):
    grow, feather = 4, 6
    out = fetch_tensor(comfy_server, run_ok(comfy_server, one_node_prompt("original.ckpt", steps=3, grow=grow, feather=feather)), "save")[0]
    src = torch.from_numpy(images["source"]).float() / 255
    y0, y1, x0, x1 = BOX
    reach = grow + feather + 1
    outside = torch.ones(SIZE, SIZE, dtype=torch.bool)
    outside[max(y0 - reach, 0):y1 + reach, max(x0 - reach, 0):x1 + reach] = False
    assert torch.equal(out[outside], src[outside])
    assert not torch.equal(out[y0:y1, x0:x1], src[y0:y1, x0:x1])


def test_interrupt_ends_the_prompt_and_the_next_one_succeeds(comfy_server, images):
    slow = one_node_prompt("original.ckpt", steps=999, save=f"{uid()}.st")
    pid = comfy_server.queue(slow)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until it is running
        running = comfy_server.queue_state()["queue_running"]
        if running and running[0][1] == pid:
            break
        time.sleep(0.2)
    time.sleep(2.0)
    comfy_server.interrupt()
    entry = comfy_server.wait(pid, timeout=300)
    assert "execution_interrupted" in status_messages(entry)
    run_ok(comfy_server, one_node_prompt("original.ckpt", steps=2))


def test_validation_error_names_the_problem(comfy_server, images):
    p = one_node_prompt("original.ckpt")
    p["load"]["inputs"]["model_name"] = "missing.safetensors"
    with pytest.raises(PromptRejected) as e:
        comfy_server.queue(p)
    assert "missing.safetensors" in str(e.value.body)


def test_large_photo_goes_through_crop_and_stitch(comfy_server, images):
    """A 3000x2000 photo with a small mask: edited in a window at the working size, output the input's size, every
    pixel outside the feathered region unchanged."""
    from host_util import assert_edited_only_near, upload_photo_with_box

    box = (1200, 1320, 2100, 2260)  # 160x120 region: 0.3% of the photo
    photo = upload_photo_with_box(comfy_server, "big.png", 2000, 3000, box)
    p = one_node_prompt("original-fp16.safetensors", steps=3, feather=8, working_size=512)
    p["src"]["inputs"]["image"] = "big.png"
    out = fetch_tensor(comfy_server, run_ok(comfy_server, p), "save")[0]
    assert_edited_only_near(out, photo, box, reach=9)
    assert "editing the" in comfy_server.log()


def test_models_folder_with_links_to_itself_does_not_hang_the_server(comfy_server):
    """Two links in models/paint_by_example that point at that folder: /object_info (which lists the loader's models
    each time) answers at once, with the same choices, and prompts validate as before."""
    folder = comfy_server.models_dir / "paint_by_example"

    def choices():
        url = f"{comfy_server.base}/object_info/PBE_LoadModel"
        with urllib.request.urlopen(url, timeout=60) as r:  # noqa: S310 - the test's loopback server
            return json.loads(r.read())["PBE_LoadModel"]["input"]["required"]["model_name"]

    before = choices()
    links = [folder / "loop_a", folder / "loop_b"]
    for link in links:
        os.symlink(folder, link, target_is_directory=True)
    try:
        start = time.monotonic()
        assert choices() == before
        assert time.monotonic() - start < 30
        entry = comfy_server.run(one_node_prompt("original.ckpt", steps=1), timeout=600)
        assert execution_error(entry) is None
    finally:
        for link in links:
            link.unlink()


def test_the_host_satisfies_the_packs_requires_comfyui():
    """pyproject.toml's [tool.comfy] requires-comfyui names a version the host suite really runs against."""
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    needed = re.search(r'^requires-comfyui = ">=(\d+)\.(\d+)\.(\d+)"', text, re.M).groups()
    version = (Path(os.environ["COMFYUI_PATH"]) / "comfyui_version.py").read_text()
    running = re.search(r'__version__ = "(\d+)\.(\d+)\.(\d+)"', version).groups()
    assert tuple(map(int, running)) >= tuple(map(int, needed)), (running, needed)
