"""The pack's nodes with a real ComfyUI imported in-process: the single-token fast path, exemplar caching, weight
sharing at load. Needs COMFYUI_PATH and a Python with ComfyUI's requirements (like the HTTP host tests).

On a machine whose torch finds a CUDA GPU (or with ``PBE_HOST_DEVICE=cuda``) they run with ComfyUI on the GPU
(benchmarks/gpu_check.sh does so too): the tensors a test feeds a
module go to the model's device, TF32 is turned off so that fp32 is fp32 (the tolerances are fp32's), and the tests of
CPU-only behaviour (CPU attention, the CPU channels-last VAE, partial loading onto the CPU, the CPU thread-count
noise floor) skip, saying so (``tests/conftest.py`` allows exactly that skip); gpu_check.sh leaves them out.
"""

import pytest
import torch
from comfy_inprocess import host_device

pytestmark = pytest.mark.host

ON_CUDA = host_device() == "cuda"
cpu_only = pytest.mark.skipif(ON_CUDA, reason="CPU-only behaviour, and ComfyUI runs on the GPU here (PBE_HOST_DEVICE=cpu "
                              "runs it on the CPU)")

#: fp32 noise floor for the same maths in a different order (docs/design/model.md: ~4e-5 relative at most)
REL = 2e-5


def close(a, b, rel=REL):
    """Equal to fp32 tolerance: max abs difference within ``rel`` of the larger magnitude (random tiny weights give
    latents of order 50, so a fixed absolute tolerance would mean nothing)."""
    scale = max(float(a.abs().max()), float(b.abs().max()), 1.0)
    return float((a - b).abs().max()) <= rel * scale


@pytest.fixture(scope="module")
def tiny(host, fixture_paths):
    ckpt = host.checkpoint.load_checkpoint(fixture_paths["original-fp32.safetensors"])
    return host.model_type.build_all(ckpt)


def _inputs(size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, size, size, 3, generator=g)
    mask = torch.zeros(1, size, size)
    mask[:, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    exemplar = torch.rand(1, 96, 80, 3, generator=g)
    return image, mask, exemplar


def _unet(host, model, seed=0):
    """One UNet evaluation of ``model`` (its patches applied by the host), batch 2 with a one-token context."""
    host.model_management.load_models_gpu([model])
    g = torch.Generator().manual_seed(seed)
    dm = model.model.diffusion_model
    x = torch.randn(2, 9, 8, 8, generator=g).to(host.device)
    ctx = torch.randn(2, 1, _context_width(dm), generator=g).to(host.device)
    options = dict(model.model_options["transformer_options"])
    with torch.inference_mode():
        return dm(x, torch.tensor([500.0, 20.0], device=host.device), context=ctx, transformer_options=options).float()


def _record_fallbacks(model, patch_type, what=lambda *args, **kwargs: 1):
    """A list that gets ``what(*args, **kwargs)`` each time a ``patch_type`` patch of ``model`` calls its fallback."""
    seen = []
    for patch in model.object_patches.values():
        if isinstance(patch, patch_type):
            inner = patch.fallback

            def recorded(*args, _inner=inner, **kwargs):
                seen.append(what(*args, **kwargs))
                return _inner(*args, **kwargs)

            patch.fallback = recorded
    return seen


def _count_fallbacks(host, model):
    return _record_fallbacks(model, host.sta.SingleTokenCrossAttention)


def _context_width(dm):
    return dm.input_blocks[1][1].transformer_blocks[0].attn2.to_k.in_features


# --- single-token fast path ------------------------------------------------------------------------------------------
def test_fast_path_patches_every_cross_attention_on_a_clone(host, tiny):
    model, _, _ = tiny
    fast = host.sta.with_single_token_attention(model)
    assert fast is not model and not model.object_patches  # the loader's MODEL itself is untouched
    keys = [k for k, v in fast.object_patches.items() if isinstance(v, host.sta.SingleTokenCrossAttention)]
    n_attn2 = sum(1 for name, _ in model.model.diffusion_model.named_modules() if name.endswith(".attn2"))
    assert len(keys) == n_attn2 > 0 and all(k.endswith(".attn2.forward") for k in keys)
    assert host.sta.with_single_token_attention(fast) is fast  # applying it again changes nothing


def test_fast_path_is_exact_and_taken(host, tiny):
    model, _, _ = tiny
    fast = host.sta.with_single_token_attention(model)
    fallbacks = _count_fallbacks(host, fast)
    plain_out, fast_out = _unet(host, model), _unet(host, fast)
    assert not fallbacks  # every cross-attention took the fast path
    assert close(fast_out, plain_out), (fast_out - plain_out).abs().max()
    assert torch.equal(_unet(host, model), plain_out)  # unpatched again: the normal path, bit for bit


def test_fast_path_whole_edit_matches(host, tiny):
    model, encoder, vae = tiny
    fast = host.sta.with_single_token_attention(model)
    image, mask, exemplar = _inputs()
    results = []
    for m in (model, fast):
        with torch.inference_mode():
            out = host.sampler.Sampler.execute(
                m, encoder, vae, image, mask, exemplar, 7, 3, 5.0, "reference", "normal", 1.0, 0, 4, working_size=0
            ).args
        results.append(out)
    (img_a, lat_a), (img_b, lat_b) = results
    assert close(lat_a["samples"], lat_b["samples"]), (lat_a["samples"] - lat_b["samples"]).abs().max()
    assert close(img_a, img_b), (img_a - img_b).abs().max()


def test_fast_path_steps_aside_for_other_packs_attn2_patches(host, tiny):
    """An attn2 replace patch (IP-Adapter style) and an attn2_patch that adds context tokens: same result as without
    the fast path, and the fast path still serves the blocks the patches leave alone."""
    from comfy.ldm.modules.attention import optimized_attention

    model, _, _ = tiny

    def replace(q, k, v, extra):
        return 0.5 * optimized_attention(q, k, v, extra["n_heads"])

    def two_tokens(n, context, value, extra):
        if extra["block"][0] != "output":
            return n, context, value
        return n, torch.cat([context, 0.5 * context], 1), torch.cat([value, 0.5 * value], 1)

    def with_patches(m):
        m = m.clone()
        m.set_model_attn2_replace(replace, "input", 1)
        m.set_model_attn2_patch(two_tokens)
        return m

    plain = with_patches(model)
    fast = with_patches(host.sta.with_single_token_attention(model))
    fallbacks = _count_fallbacks(host, fast)
    reference, out = _unet(host, plain), _unet(host, fast)
    assert close(out, reference), (out - reference).abs().max()
    assert not torch.allclose(reference, _unet(host, model), atol=1e-3)  # the patches did change the output
    n_output = sum(1 for k in fast.object_patches if k.startswith("diffusion_model.output_blocks") and "attn2" in k)
    assert len(fallbacks) == n_output  # only the two-token blocks fell back (one call each)


def test_fast_path_falls_back_for_a_mask_or_a_long_context(host, tiny):
    model, _, _ = tiny
    attn = model.model.diffusion_model.input_blocks[1][1].transformer_blocks[0].attn2
    fallback_calls = []

    def fallback(*args, **kwargs):
        fallback_calls.append(1)
        return attn.__class__.forward(attn, *args, **kwargs)

    patch = host.sta.SingleTokenCrossAttention(attn, fallback)
    dev = attn.to_q.weight.device  # the GPU once an earlier test loaded the model there
    x = torch.randn(2, 16, attn.to_q.in_features, device=dev)
    one = torch.randn(2, 1, attn.to_k.in_features, device=dev)
    three = torch.randn(2, 3, attn.to_k.in_features, device=dev)
    with torch.inference_mode():
        assert close(patch(x, context=one), attn(x, context=one))
        assert not fallback_calls
        assert torch.equal(patch(x, context=three), attn(x, context=three))
    assert len(fallback_calls) == 1
    assert not patch.covers(x, one, None, torch.zeros(2, 16, 1, device=dev))  # a mask
    assert not patch.covers(x, None, None, None)  # no context: self-attention
    assert not patch.covers(x, one, three, None)  # values that are not one token
    assert not patch.covers(x, one[:1], None, None)  # a context batch that is not the image tokens' batch


def test_load_model_applies_the_fast_path_by_default_with_an_off_switch(host, fixture_paths, monkeypatch):
    import folder_paths

    schema = host.loader.LoadModel.define_schema()
    names = [i.id for i in schema.inputs]
    assert names[:3] == ["model_name", "weight_dtype", "single_token_attention"]  # saved workflows store this order
    fast = schema.inputs[2]
    assert fast.optional and fast.default is True
    folder = str(next(iter(fixture_paths.values())).parent)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "paint_by_example", ([folder], {".safetensors"}))
    on = host.loader.LoadModel.execute("original-fp32.safetensors").args[0]
    off = host.loader.LoadModel.execute("original-fp32.safetensors", "default", False).args[0]
    assert host.sta.has_single_token_attention(on)
    assert not host.sta.has_single_token_attention(off)


def test_former_cpu_channels_last_vae_switch_is_accepted_and_ignored(host, fixture_paths, monkeypatch, caplog):
    """The loader's schema no longer has the expert switch; execute still takes it (saved prompts, direct callers),
    says at debug level that it is ignored, and builds the fp32 VAE with the file's NCHW kernels either way."""
    import logging

    import folder_paths

    assert [i.id for i in host.loader.LoadModel.define_schema().inputs] == [
        "model_name", "weight_dtype", "single_token_attention"]
    folder = str(next(iter(fixture_paths.values())).parent)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "paint_by_example", ([folder], {".safetensors"}))
    with caplog.at_level(logging.DEBUG, logger=host.loader.log.name), torch.inference_mode():
        vae = host.loader.LoadModel.execute("original-fp32.safetensors", cpu_channels_last_vae=True).args[2]
    assert "cpu_channels_last_vae=True is ignored" in caplog.text
    assert all(p.is_contiguous() for p in _kernels(vae.first_stage_model).values())


# --- attention on the CPU ---------------------------------------------------------------------------------------------
@cpu_only
def test_cpu_attention_is_sdpa_and_exact(host, tiny, fixture_paths, monkeypatch):
    import comfy.ldm.modules.attention as attention

    model, _, _ = tiny
    assert attention.optimized_attention.__name__ == "attention_sub_quad"  # the host's CPU default here
    sdpa = host.attention_choice.with_sdpa_on_cpu(model)
    assert sdpa is not model and "optimized_attention_override" not in model.model_options["transformer_options"]
    calls = []
    real = attention.attention_pytorch

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(attention, "attention_pytorch", counting)
    plain_out = _unet(host, model)
    assert not calls
    sdpa_out = _unet(host, sdpa)
    assert calls  # every attention of the patched model went through torch's SDPA
    assert close(sdpa_out, plain_out), (sdpa_out - plain_out).abs().max()
    import folder_paths

    folder = str(next(iter(fixture_paths.values())).parent)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "paint_by_example", ([folder], {".safetensors"}))
    loaded = host.loader.LoadModel.execute("original-fp32.safetensors").args[0]
    assert loaded.model_options["transformer_options"]["optimized_attention_override"] is host.attention_choice._sdpa
    assert host.sta.has_single_token_attention(loaded)  # both: the fast path and SDPA


# --- exemplar encoded once ---------------------------------------------------------------------------------------------
def test_exemplar_is_encoded_once_across_seeds(host, tiny):
    model, encoder, vae = tiny
    calls = []
    handle = encoder.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        encoder._cache.clear()
        image, mask, exemplar = _inputs()
        outs = []
        for seed in (1, 2, 3):
            with torch.inference_mode():
                outs.append(host.sampler.Sampler.execute(
                    model, encoder, vae, image, mask, exemplar, seed, 2, 5.0, "reference", "normal", 1.0, 0, 0,
                    working_size=0,
                ).args[0])
        assert len(calls) == 1
        assert not torch.equal(outs[0], outs[1])  # the seed did change the edit
        # another exemplar, or the same one preprocessed differently, is encoded
        with torch.inference_mode():
            cond_a, _ = host.encoder.encode_exemplars(encoder, exemplar.flip(1))
            cond_b, _ = host.encoder.encode_exemplars(encoder, exemplar, None, "center_crop")
            cond_c, _ = host.encoder.encode_exemplars(encoder, exemplar, None, "center_crop")
        assert len(calls) == 3 and torch.equal(cond_b, cond_c) and not torch.equal(cond_a, cond_b)
        # bounded
        for i in range(host.encoder.ENCODE_CACHE_SIZE + 4):
            with torch.inference_mode():
                host.encoder.encode_exemplars(encoder, torch.full((1, 32, 32, 3), i / 20.0))
        assert len(encoder._cache) == host.encoder.ENCODE_CACHE_SIZE
    finally:
        handle.remove()


def test_cached_encoding_equals_a_fresh_one(host, tiny):
    _, encoder, _ = tiny
    _, _, exemplar = _inputs(seed=5)
    encoder._cache.clear()
    with torch.inference_mode():
        first, _ = host.encoder.encode_exemplars(encoder, exemplar)
        first.add_(1.0)  # a caller writing into its result must not change what the cache gives the next one
        again, _ = host.encoder.encode_exemplars(encoder, exemplar)
        encoder._cache.clear()
        fresh, _ = host.encoder.encode_exemplars(encoder, exemplar)
    assert torch.equal(again, fresh)


# --- weights shared with the checkpoint, not copied ----------------------------------------------------------------
def test_loaded_weights_are_the_checkpoint_tensors(host, fixture_paths):
    ckpt = host.checkpoint.load_checkpoint(fixture_paths["original-fp32.safetensors"])
    model, encoder, vae = host.model_type.build_all(ckpt)
    unet_params = model.model.diffusion_model.state_dict()
    for k in ("input_blocks.0.0.weight", "out.2.weight", "middle_block.1.proj_in.weight"):
        assert unet_params[k].data_ptr() == ckpt.unet[k].data_ptr()
    vae_params = vae.first_stage_model.state_dict()
    assert vae_params["decoder.conv_out.weight"].data_ptr() == ckpt.vae["decoder.conv_out.weight"].data_ptr()
    assert encoder.model.proj_out.weight.data_ptr() == ckpt.proj_out["weight"].data_ptr()
    assert not any(p.is_meta for p in encoder.model.parameters()) and not any(b.is_meta for b in encoder.model.buffers())


def test_half_precision_file_is_cast_to_the_model_dtype(host, fixture_paths):
    ckpt = host.checkpoint.load_checkpoint(fixture_paths["original-fp16.safetensors"])
    model, encoder, vae = host.model_type.build_all(ckpt, "fp32")
    assert {p.dtype for p in model.model.diffusion_model.parameters()} == {torch.float32}
    assert {p.dtype for p in encoder.model.parameters()} == {torch.float32}
    k = "input_blocks.0.0.weight"
    assert torch.equal(model.model.diffusion_model.state_dict()[k], ckpt.unet[k].float())
    image, mask, exemplar = _inputs()
    with torch.inference_mode():
        out = host.sampler.Sampler.execute(
            model, encoder, vae, image, mask, exemplar, 0, 2, 5.0, "reference", "normal", 1.0, 0, 0, working_size=0
        ).args[0]
    assert torch.isfinite(out).all() and out.shape == image.shape


# --- VAE convolution kernels channels-last on the CPU, in place -------------------------------------------------------
def _kernels(module):
    return {k: p for k, p in module.state_dict().items() if p.dim() == 4 and p.shape[2] * p.shape[3] > 1}


@cpu_only
def test_opt_in_channels_last_vae_is_in_place_with_the_same_results(host, fixture_paths):
    """Reference: the same VAE with every kernel copied back to NCHW (``Module.to(memory_format=...)``), run by the
    host. The re-ordering only moves values, so the kernels are equal; outputs agree to fp32 rounding (REL)."""
    ckpt = host.checkpoint.load_checkpoint(fixture_paths["original-fp32.safetensors"])
    with torch.inference_mode():  # as ComfyUI's executor runs the loader
        assert all(p.is_contiguous() for p in _kernels(host.model_type.build_all(ckpt)[2].first_stage_model).values())
        model, _, vae = host.model_type.build_all(ckpt, channels_last_vae=True)  # opt-in
    first = vae.first_stage_model
    kernels = _kernels(first)
    assert len(kernels) > 5
    for k, p in kernels.items():
        assert p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous(), k
        assert p.data_ptr() == ckpt.vae[k].data_ptr(), k  # still the checkpoint's memory: no second copy
        assert torch.equal(p, ckpt.vae[k]), k
    # the UNet gained nothing from it (docs/benchmarks.md) and keeps the file's order
    assert all(p.is_contiguous() for p in _kernels(model.model.diffusion_model).values())
    pixels = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        latent = vae.encode(pixels)
        image = vae.decode(latent)
        first.to(memory_format=torch.contiguous_format)
        assert all(p.is_contiguous() for p in _kernels(first).values())
        latent_ref = vae.encode(pixels)
        image_ref = vae.decode(latent_ref)
    assert close(latent, latent_ref), (latent - latent_ref).abs().max()
    assert close(image, image_ref), (image - image_ref).abs().max()


# --- the CFG halves share the layers before the first cross-attention ------------------------------------------------
def _cfg_call(host, model, x_half, t, seed=0, load=True):
    """One UNet evaluation as CFG makes it: the same latent and timestep twice, two different one-token contexts.
    ``load=False``: as the model is patched now (the host's model management is not asked to load it)."""
    if load:
        host.model_management.load_models_gpu([model])
    dm = model.model.diffusion_model
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randn(2, 1, _context_width(dm), generator=g).to(host.device)
    options = dict(model.model_options["transformer_options"])
    with torch.inference_mode():
        return dm(x_half.to(host.device).repeat(2, 1, 1, 1), torch.tensor([t, t], device=host.device), context=ctx,
                  transformer_options=options).float()


def _count_shared(host, model):
    """Batch sizes each SharedHalves patch of ``model`` hands to the forward it replaced."""
    return _record_fallbacks(model, host.shared.SharedHalves, lambda *args, **kwargs: args[0].shape[0])


def test_shared_prefix_patches_the_first_resblock_and_self_attention_on_a_clone(host, tiny):
    model, _, _ = tiny
    dm = model.model.diffusion_model
    paths = host.shared.shared_prefix_paths(dm)
    # the fixture UNet has the SD-1 layout: input block 1 = ResBlock, then the first transformer
    assert paths == ["input_blocks.1.0", "input_blocks.1.1.transformer_blocks.0.attn1"]
    shared = host.shared.with_shared_cfg_prefix(model)
    assert shared is not model and not host.shared.has_shared_cfg_prefix(model)
    assert host.shared.with_shared_cfg_prefix(shared) is shared
    assert {k for k, v in shared.object_patches.items() if isinstance(v, host.shared.SharedHalves)} == {
        f"diffusion_model.{p}.forward" for p in paths
    }


def test_shared_prefix_is_exact_and_taken_for_equal_halves(host, tiny):
    """Reference: the same MODEL without the patches (REL: fp32 rounding of a batch of one vs two)."""
    model, _, _ = tiny
    shared = host.shared.with_shared_cfg_prefix(model)
    seen = _count_shared(host, shared)
    x = torch.randn(1, 9, 8, 8, generator=torch.Generator().manual_seed(4))
    out = _cfg_call(host, shared, x, 500.0)
    ref = _cfg_call(host, model, x, 500.0)
    assert seen == [1, 1]  # both layers ran once, on one half
    assert close(out, ref), (out - ref).abs().max()
    assert not torch.equal(out[0], out[1])  # the halves did diverge after the first cross-attention


def test_shared_prefix_falls_back_when_the_halves_differ(host, tiny):
    model, _, _ = tiny
    shared = host.shared.with_shared_cfg_prefix(model)
    seen = _count_shared(host, shared)
    out = _unet(host, shared)  # two different latents and timesteps
    ref = _unet(host, model)
    assert seen == [2, 2]
    assert torch.equal(out, ref)  # the very same forward ran
    # a batch of one (cfg 1) as well
    host.model_management.load_models_gpu([shared])
    dm = shared.model.diffusion_model
    width = _context_width(dm)
    dev = host.device
    with torch.inference_mode():
        dm(torch.randn(1, 9, 8, 8, device=dev), torch.tensor([500.0], device=dev),
           context=torch.randn(1, 1, width, device=dev),
           transformer_options=dict(shared.model_options["transformer_options"]))
    assert seen == [2, 2, 1, 1]
    # equal halves of a 1x1 latent (an 8x8-pixel image): torch's group norm refuses a batch of one there, so the
    # normal path runs
    with torch.inference_mode():
        tiny_out = dm(torch.randn(1, 9, 1, 1, device=dev).repeat(2, 1, 1, 1), torch.tensor([500.0, 500.0], device=dev),
                      context=torch.randn(2, 1, width, device=dev),
                      transformer_options=dict(shared.model_options["transformer_options"]))
    assert seen == [2, 2, 1, 1, 2, 2] and torch.isfinite(tiny_out).all()


def test_shared_prefix_whole_edit_matches_and_the_loader_applies_it(host, tiny, fixture_paths, monkeypatch):
    model, encoder, vae = tiny
    shared = host.shared.with_shared_cfg_prefix(model)
    seen = _count_shared(host, shared)
    image, mask, exemplar = _inputs()
    results = []
    for m in (model, shared):
        with torch.inference_mode():
            results.append(host.sampler.Sampler.execute(
                m, encoder, vae, image, mask, exemplar, 7, 3, 5.0, "reference", "normal", 1.0, 0, 4, working_size=0
            ).args)
    (img_a, lat_a), (img_b, lat_b) = results
    assert seen and set(seen) == {1}  # every UNet call of the edit shared its first layers
    assert close(lat_a["samples"], lat_b["samples"]), (lat_a["samples"] - lat_b["samples"]).abs().max()
    assert close(img_a, img_b), (img_a - img_b).abs().max()
    import folder_paths

    folder = str(next(iter(fixture_paths.values())).parent)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "paint_by_example", ([folder], {".safetensors"}))
    for fast in (True, False):
        loaded = host.loader.LoadModel.execute("original-fp32.safetensors", "default", fast).args[0]
        assert host.shared.has_shared_cfg_prefix(loaded)


# --- partial loading (the mechanism behind --lowvram) ------------------------------------------------------------------
@cpu_only
def test_partially_loaded_models_give_the_same_results(host, fixture_paths, monkeypatch):
    """The host's partial load (``ModelPatcher.patch_model(lowvram_model_memory=...)``, what ``--lowvram`` does when a
    model does not fit) with a budget of one byte: every weighted layer runs through the host's per-layer weight
    casting (``comfy_cast_weights``). On this CPU-only machine the weights cannot move to another device, so this
    checks that the pack's patches (single-token path, shared CFG prefix, SDPA override) and the VAE go
    through that code path and give the same numbers as a full load (REL); not the memory saving itself."""
    import folder_paths

    folder = str(next(iter(fixture_paths.values())).parent)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "paint_by_example", ([folder], {".safetensors"}))
    with torch.inference_mode():
        model, _, vae = host.loader.LoadModel.execute("original-fp32.safetensors").args
    x = torch.randn(1, 9, 8, 8, generator=torch.Generator().manual_seed(6))
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(7)) * 2 - 1
    full_unet = _cfg_call(host, model, x, 400.0)
    first = vae.first_stage_model
    with torch.inference_mode():
        full_latent = first.encode(pixels)
        full_image = first.decode(full_latent)
    host.model_management.unload_all_models()
    dm = model.model.diffusion_model
    cpu = torch.device("cpu")
    try:
        model.patch_model(device_to=cpu, lowvram_model_memory=1)
        vae.patcher.patch_model(device_to=cpu, lowvram_model_memory=1)
        assert model.model.model_lowvram and vae.patcher.model.model_lowvram  # loaded partially, layer by layer
        cast = [m for m in dm.modules() if getattr(m, "comfy_cast_weights", False)]
        assert len(cast) > 20
        with torch.inference_mode():
            low_latent = first.encode(pixels)
            low_image = first.decode(low_latent)
        low_unet = _cfg_call(host, model, x, 400.0, load=False)
    finally:
        model.unpatch_model(cpu)
        vae.patcher.unpatch_model(cpu)
    assert close(low_unet, full_unet), (low_unet - full_unet).abs().max()
    assert close(low_latent, full_latent) and close(low_image, full_image)


# --- every default optimisation stays within the fp32 noise floor ------------------------------------------------------
def _edit_at(host, model, encoder, vae, threads, size=128):
    """The whole one-node edit (3 reference steps) of fixed inputs, with ``threads`` CPU threads; (image, latent)."""
    image, mask, exemplar = _inputs(size)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    encoder._cache.clear()
    try:
        with torch.inference_mode():
            out, latent = host.sampler.Sampler.execute(
                model, encoder, vae, image, mask, exemplar, 7, 3, 5.0, "reference", "normal", 1.0, 0, 4, working_size=0
            ).args
    finally:
        torch.set_num_threads(before)
    return out, latent["samples"]


@cpu_only
def test_default_optimisations_stay_within_the_thread_count_noise_floor(host, fixture_paths):
    """The rule: an optimisation that is on by default may move results only as far as changing the thread count
    from 2 to 1 moves them on the same inputs (x1.5); beyond it, it is opt-in. Measured on the whole edit's image and
    latent: single-token cross-attention, the shared CFG prefix, SDPA on the CPU, all three as the loader applies
    them; and the channels-last VAE, which goes beyond and is therefore off unless asked for."""
    ckpt = host.checkpoint.load_checkpoint(fixture_paths["original-fp32.safetensors"])
    with torch.inference_mode():
        plain, encoder, vae = host.model_type.build_all(ckpt)
    base = _edit_at(host, plain, encoder, vae, 2)
    other_threads = _edit_at(host, plain, encoder, vae, 1)
    floor = [float((a - b).abs().max()) for a, b in zip(base, other_threads, strict=True)]
    assert floor[0] > 0 and floor[1] > 0  # the floor is measurable here (else nothing could be within it)
    optimised = {
        "single-token cross-attention": host.sta.with_single_token_attention(plain),
        "shared CFG prefix": host.shared.with_shared_cfg_prefix(plain),
        "SDPA on the CPU": host.attention_choice.with_sdpa_on_cpu(plain),
        "as loaded": host.attention_choice.with_sdpa_on_cpu(
            host.shared.with_shared_cfg_prefix(host.sta.with_single_token_attention(plain))),
    }
    print(f"thread-count floor: image {floor[0]:.2e}, latent {floor[1]:.2e}")  # noqa: T201
    for name, model in optimised.items():
        moved = [float((a - b).abs().max()) for a, b in zip(_edit_at(host, model, encoder, vae, 2), base, strict=True)]
        print(f"{name}: image {moved[0]:.2e}, latent {moved[1]:.2e}")  # noqa: T201
        assert moved[0] <= 1.5 * floor[0] and moved[1] <= 1.5 * floor[1], (name, moved, floor)
    # the channels-last VAE moves the masked-image latent further: opt-in (build_all's channels_last_vae)
    with torch.inference_mode():
        _, _, cl_vae = host.model_type.build_all(host.checkpoint.load_checkpoint(
            fixture_paths["original-fp32.safetensors"]), channels_last_vae=True)
    image, mask, _ = _inputs(128)
    with torch.inference_mode():
        cl = cl_vae.encode(image)
        ref = vae.encode(image)
        torch.set_num_threads(1)
        ref1 = vae.encode(image)
        torch.set_num_threads(2)
    print(f"channels-last VAE: latent {float((cl - ref).abs().max()):.2e}; threads {float((ref1 - ref).abs().max()):.2e}")  # noqa: T201


# --- bf16 on the CPU ----------------------------------------------------------------------------------------------------
#: bf16 edit vs fp32 edit of the tiny fixture model, 0..1 pixels inside the mask (6 PLMS steps, cfg 5, 64x64 and
#: 128x128). Measured 2026-12-02 (torch 2.14.1, ComfyUI 0.3.64): max 7.6e-2 / mean 1.1e-2 at 64x64, 5.5e-2 / 7.6e-3 at
#: 128x128; the tiny random UNet amplifies rounding far more than a trained one would (its latents reach 140). The
#: bounds are twice the worst measured value. Reference: the fp32 path, which matches diffusers to 3e-6 (README).
BF16_MAX_ABS = 0.15
BF16_MEAN_ABS = 0.025


@pytest.fixture
def native_bf16(host, monkeypatch):
    """The pack's bf16 path as on a CPU with AMX-BF16, on whatever CPU runs the test (torch computes bf16 on any x86
    CPU, only slowly without AMX): the pack's own CPU check answers as for a CPU whose flags include amx_bf16."""
    from comfy_inprocess import pack_module

    precision = pack_module("pbe_core.weights.cpu_precision")
    amx = frozenset({"amx_bf16", "amx_tile", "avx512_bf16", "avx512f"})
    for module in (host.model_type, host.encoder):  # the UNet and VAE's choice, and the encoder's
        monkeypatch.setattr(module, "cpu_computes_natively", lambda dtype, _flags=None: precision.cpu_computes_natively(dtype, amx))


def _load(host, fixture_paths, monkeypatch, weight_dtype):
    import folder_paths

    folder = str(next(iter(fixture_paths.values())).parent)
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "paint_by_example", ([folder], {".safetensors"}))
    with torch.inference_mode():
        return host.loader.LoadModel.execute("original-fp32.safetensors", weight_dtype).args


def _kernels_channels_last(module):
    return all(p.is_contiguous(memory_format=torch.channels_last) for p in _kernels(module).values())


def test_bf16_with_amx_computes_every_network_in_bf16(host, fixture_paths, monkeypatch, native_bf16):
    model, encoder, vae = _load(host, fixture_paths, monkeypatch, "bf16")
    dm = model.model.diffusion_model
    # the host builds the UNet with plain bf16 layers (no per-layer cast to fp32) from the model config's dtype
    assert model.model.get_dtype() == torch.bfloat16 and model.model.manual_cast_dtype is None
    assert {p.dtype for p in dm.parameters()} == {torch.bfloat16}
    assert not any(getattr(m, "comfy_cast_weights", False) for m in dm.modules())
    assert vae.vae_dtype == torch.bfloat16 and {p.dtype for p in vae.first_stage_model.parameters()} == {torch.bfloat16}
    assert encoder.dtype == torch.bfloat16 and {p.dtype for p in encoder.model.parameters()} == {torch.bfloat16}
    # both networks' convolution kernels channels-last, with the file's values (rounded to bf16, nothing else)
    assert _kernels_channels_last(dm) and _kernels_channels_last(vae.first_stage_model)
    fp32 = host.checkpoint.load_checkpoint(fixture_paths["original-fp32.safetensors"])
    k = "input_blocks.1.0.in_layers.2.weight"
    assert torch.equal(dm.state_dict()[k], fp32.unet[k].to(torch.bfloat16))
    # and the loader's MODEL carries the fast paths, as in fp32
    assert host.sta.has_single_token_attention(model) and host.shared.has_shared_cfg_prefix(model)


def test_bf16_edit_takes_the_fast_paths_and_stays_near_fp32(host, fixture_paths, monkeypatch, native_bf16):
    """The same edit (weights, source, mask, exemplar, seed) from the fp32 and the bf16 MODEL / VAE / encoder of the
    same file: within the measured bf16 tolerance inside the mask, the photo itself outside it, and every UNet call of
    the bf16 edit took the single-token path and the shared CFG prefix (their fallbacks never ran)."""
    ref_model, ref_encoder, ref_vae = _load(host, fixture_paths, monkeypatch, "default")
    model, encoder, vae = _load(host, fixture_paths, monkeypatch, "bf16")
    single = _record_fallbacks(model, host.sta.SingleTokenCrossAttention)
    # what the shared prefix hands its layers: one half (batch 1) when it shares them, the whole batch when not
    shared = _record_fallbacks(model, host.shared.SharedHalves, lambda *args, **kwargs: (args[0].shape[0], args[0].dtype))
    rows = []
    for size in (64, 128):
        image, mask, exemplar = _inputs(size)
        outs = []
        for m, e, v in ((ref_model, ref_encoder, ref_vae), (model, encoder, vae)):
            with torch.inference_mode():
                outs.append(host.sampler.Sampler.execute(
                    m, e, v, image, mask, exemplar, 7, 6, 5.0, "reference", "normal", 1.0, 0, 0, working_size=0
                ).args[0])
        ref, out = outs
        inside = mask[0].bool()
        d = (out[0][inside] - ref[0][inside]).abs()
        rows.append((size, d.max().item(), d.mean().item()))
        assert torch.equal(out[0][~inside], image[0][~inside])  # pasted back: the photo, bit for bit
    assert not single  # the single-token path at every cross-attention of every call
    assert shared and set(shared) == {(1, torch.bfloat16)}  # the shared prefix at every call, in bf16
    for _size, max_abs, mean_abs in rows:
        assert max_abs <= BF16_MAX_ABS and mean_abs <= BF16_MEAN_ABS, rows
        assert mean_abs > 1e-4, rows  # it did compute in bf16: not the fp32 result


@pytest.fixture
def no_native_bf16(host, monkeypatch):
    """The pack's CPU check answering as for a CPU without AMX-BF16 (e.g. AVX-512 BF16 only)."""
    from comfy_inprocess import pack_module

    precision = pack_module("pbe_core.weights.cpu_precision")
    flags = frozenset({"avx512_bf16", "avx512f"})
    for module in (host.model_type, host.encoder):
        monkeypatch.setattr(module, "cpu_computes_natively", lambda dtype, _flags=None: precision.cpu_computes_natively(dtype, flags))


def test_bf16_without_amx_keeps_the_hosts_choice(host, fixture_paths, monkeypatch, no_native_bf16):
    """Without AMX-BF16 bf16 is slower than fp32 (docs/benchmarks.md): the UNet keeps bf16 weights computed in fp32
    through the host's per-layer casting (ComfyUI's own choice), the VAE the host's fp32 and the encoder fp32."""
    model, encoder, vae = _load(host, fixture_paths, monkeypatch, "bf16")
    dm = model.model.diffusion_model
    assert model.model.get_dtype() == torch.bfloat16 and model.model.manual_cast_dtype == torch.float32
    assert any(getattr(m, "comfy_cast_weights", False) for m in dm.modules())
    assert vae.vae_dtype == torch.float32 and encoder.dtype == torch.float32
    assert all(p.is_contiguous() for p in _kernels(dm).values())  # NCHW, as in fp32
    assert host.sta.has_single_token_attention(model) and host.shared.has_shared_cfg_prefix(model)


def test_a_host_vae_precision_flag_wins(host, fixture_paths, monkeypatch, native_bf16):
    """ComfyUI's ``--fp32-vae`` (``comfy.cli_args.args.fp32_vae``) keeps the VAE in fp32 under weight_dtype bf16."""
    import comfy.cli_args

    monkeypatch.setattr(comfy.cli_args.args, "fp32_vae", True)
    model, encoder, vae = _load(host, fixture_paths, monkeypatch, "bf16")
    assert vae.vae_dtype == torch.float32 and {p.dtype for p in vae.first_stage_model.parameters()} == {torch.float32}
    assert model.model.get_dtype() == torch.bfloat16 and encoder.dtype == torch.bfloat16


def test_what_the_loader_converts_while_reading(host, monkeypatch, native_bf16):
    """``read_dtypes``: the half-precision targets known before reading (what ``load_checkpoint`` then casts tensor by
    tensor); fp32 and "default" read the file as it is (the lazy memory map of an fp32 file)."""
    import comfy.cli_args

    bf16 = torch.bfloat16
    assert host.model_type.read_dtypes("bf16") == {"unet": bf16, "encoder": bf16, "vae": bf16}
    assert host.model_type.read_dtypes("fp16") == {"unet": torch.float16}  # the encoder computes fp32 on a CPU
    assert host.model_type.read_dtypes("fp32") == {} and host.model_type.read_dtypes("default") == {}
    monkeypatch.setattr(comfy.cli_args.args, "fp32_vae", True)
    assert host.model_type.read_dtypes("bf16") == {"unet": bf16, "encoder": bf16}


def test_bf16_without_amx_reads_only_the_unet_as_bf16(host, no_native_bf16):
    assert host.model_type.read_dtypes("bf16") == {"unet": torch.bfloat16}
