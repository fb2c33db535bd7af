"""The host's own MODEL nodes on the Paint-by-Example MODEL, with the pack's fast paths on, in a real ComfyUI.

FreeU, FreeU_V2, PerturbedAttentionGuidance, SelfAttentionGuidance, ModelSamplingDiscrete and TorchCompileModel, each
applied by the host's own node code (ComfyUI's comfy_extras/nodes_freelunch.py, nodes_pag.py, nodes_sag.py,
nodes_model_advanced.py, nodes_torch_compile.py) to the MODEL as 'Load Paint-by-Example Model' gives it (single-token
cross-attention, shared CFG prefix, SDPA on the CPU), on both paths: the one-node edit (PBE_Sampler) and the modular
graph (PBE_ExemplarEncode -> PBE_InpaintConditioning -> the host's KSampler).

The oracle for each node is the host applying the same node to the same weights with every fast path off (the bare
MODEL ``build_all`` makes): equal to fp32 rounding (``REL``, relative to the largest value; the tiny random UNet's
latents reach ~500). Each node must also do what it is for: change the edit (FreeU, PAG, SAG) or leave it bit for
bit as it is (ModelSamplingDiscrete set to what the model is, TorchCompileModel up to the compiler's rounding); and the
fast paths must have served the calls they can and stepped aside for the others (PAG's and SAG's extra UNet calls are
batches of one, not CFG halves). ModelSampling settings the model cannot be sampled with are refused, naming the node.
In-process, like tests/host/test_inprocess_host.py; the last tests run the graphs through the HTTP API.
"""

import uuid

import pytest
import torch
from comfy_host import execution_error
from comfy_inprocess import host_device

pytestmark = pytest.mark.host

ON_CUDA = host_device() == "cuda"

#: fp32 rounding of the same maths in another order (tests/host/test_inprocess_host.py: the fast paths' own bound)
REL = 2e-5
STEPS = 3
SIZE = 128  # SAG needs the UNet's middle block at 2x2 or more: the tiny UNet's is the latent / 8


def rel_diff(a, b) -> float:
    scale = max(float(a.abs().max()), float(b.abs().max()), 1.0)
    return float((a - b).abs().max()) / scale


@pytest.fixture(scope="module")
def models(host, fixture_paths):
    """``(fast, plain, encoder, vae)``: the loader's MODEL (every fast path on) and the bare MODEL of the same file."""
    import folder_paths

    folder = str(next(iter(fixture_paths.values())).parent)
    saved = folder_paths.folder_names_and_paths.get("paint_by_example")
    folder_paths.folder_names_and_paths["paint_by_example"] = ([folder], {".safetensors"})
    try:
        with torch.inference_mode():
            fast = host.loader.LoadModel.execute("original-fp32.safetensors").args[0]
            plain, encoder, vae = host.model_type.build_all(
                host.checkpoint.load_checkpoint(fixture_paths["original-fp32.safetensors"]))
    finally:
        if saved is None:
            folder_paths.folder_names_and_paths.pop("paint_by_example", None)
        else:
            folder_paths.folder_names_and_paths["paint_by_example"] = saved
    assert host.sta.has_single_token_attention(fast) and host.shared.has_shared_cfg_prefix(fast)
    assert not host.sta.has_single_token_attention(plain) and not host.shared.has_shared_cfg_prefix(plain)
    if not ON_CUDA:
        assert "optimized_attention_override" in fast.model_options["transformer_options"]
    return fast, plain, encoder, vae


def _inputs(size=SIZE, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, size, size, 3, generator=g)
    mask = torch.zeros(1, size, size)
    mask[:, size // 4 : 3 * size // 4, size // 4 + 8 : 3 * size // 4] = 1
    exemplar = torch.rand(1, 96, 80, 3, generator=g)
    return image, mask, exemplar


def one_node(host, model, encoder, vae, sampler_name="reference", size=SIZE):
    """PBE_Sampler's whole edit: (image, latent)."""
    image, mask, exemplar = _inputs(size)
    with torch.inference_mode():
        out, latent = host.sampler.Sampler.execute(
            model, encoder, vae, image, mask, exemplar, 7, STEPS, 5.0, sampler_name, "normal", 1.0, 0, 4,
            working_size=0,
        ).args
    return out, latent["samples"]


def modular(host, model, encoder, vae, size=SIZE):
    """Exemplar Encode -> Inpaint Conditioning -> the host's KSampler (euler): (decoded image, latent)."""
    image, mask, exemplar = _inputs(size)
    with torch.inference_mode():
        pos, neg = host.conditioning.ExemplarEncode.execute(encoder, exemplar).args
        pos, neg, latent = host.conditioning.InpaintConditioning.execute(pos, neg, vae, image, mask).args
        samples = host.ksampler().sample(model, 7, STEPS, 5.0, "euler", "normal", pos, neg, latent, 1.0)[0]["samples"]
        return vae.decode(samples), samples


PATHS = {"one-node": one_node, "modular": modular}


def record_fast_paths(host, model):
    """``(single, shared)``: lists that fill as ``model``'s fast paths run. ``single``: one entry per call the
    single-token path handed to the forward it replaced. ``shared``: ``(batch, half)`` per call of a shared-prefix
    layer (half = 0: it stepped aside and the layer ran on the whole batch)."""
    single, shared = [], []
    for patch in model.object_patches.values():
        if isinstance(patch, host.sta.SingleTokenCrossAttention):
            inner = patch.fallback

            def fallback(*args, _inner=inner, **kwargs):
                single.append(1)
                return _inner(*args, **kwargs)

            patch.fallback = fallback
        elif isinstance(patch, host.shared.SharedHalves):
            def halves(args, _check=patch._halves_equal):
                h = _check(args)
                shared.append((args[0].shape[0], h))
                return h

            patch._halves_equal = halves  # the instance's own: its __call__ asks self._halves_equal
    return single, shared


# --- FreeU, FreeU_V2, PAG, SAG: same effect as on the bare model, and an effect -----------------------------------
NODES = {
    "FreeU": lambda host, m: host.freelunch.FreeU().patch(m, 1.1, 1.2, 0.9, 0.2)[0],
    "FreeU_V2": lambda host, m: host.freelunch.FreeU_V2().patch(m, 1.3, 1.4, 0.9, 0.2)[0],
    "PerturbedAttentionGuidance": lambda host, m: host.pag.PerturbedAttentionGuidance.execute(m, 3.0).args[0],
    "SelfAttentionGuidance": lambda host, m: host.sag.SelfAttentionGuidance.execute(m, 0.5, 2.0).args[0],
}
#: UNet calls per sampling step beyond the CFG batch: PAG (cond only) and SAG (uncond only) each make one more
EXTRA_CALL = {"PerturbedAttentionGuidance": True, "SelfAttentionGuidance": True}


@pytest.fixture(scope="module")
def baselines(host, models):
    """Each path's result on the bare MODEL without any host node."""
    _, plain, encoder, vae = models
    return {name: run(host, plain, encoder, vae) for name, run in PATHS.items()}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("node", NODES)
def test_node_on_the_fast_paths_matches_the_bare_model_and_changes_the_edit(host, models, baselines, node, path):
    fast, plain, encoder, vae = models
    run = PATHS[path]
    on_fast = NODES[node](host, fast)
    assert host.sta.has_single_token_attention(on_fast) and host.shared.has_shared_cfg_prefix(on_fast)
    single, shared = record_fast_paths(host, on_fast)
    image, latent = run(host, on_fast, encoder, vae)
    ref_image, ref_latent = run(host, NODES[node](host, plain), encoder, vae)
    moved = rel_diff(latent, ref_latent), rel_diff(image, ref_image)
    print(f"{node}, {path}: fast paths vs bare model: latent {moved[0]:.1e}, image {moved[1]:.1e} (relative)")  # noqa: T201
    assert moved[0] <= REL and moved[1] <= REL, moved
    # the node did change the edit, far beyond that rounding
    base_image, base_latent = baselines[path]
    effect = rel_diff(ref_latent, base_latent)
    assert effect > 1e-3, (node, path, effect)
    # the fast paths served what they can: every cross-attention took the single-token path (PAG's and SAG's extra
    # calls too: their context is one token per item); the shared prefix ran once on one half of every CFG batch and
    # stepped aside (whole batch, exact) for the extra calls, whose batch of one has no halves
    assert not single
    assert (2, 1) in shared
    if EXTRA_CALL.get(node):
        assert set(shared) == {(2, 1), (1, 0)} and shared.count((2, 1)) == shared.count((1, 0)), shared
    else:
        assert set(shared) == {(2, 1)}, shared



def test_guidance_with_two_exemplars_shares_only_equal_halves(host, models):
    """Two exemplars, one photo: every CFG batch is [uncond x2, cond x2] over the same two latents (shared), while
    PAG's and SAG's extra calls hold two different latents (noise differs per item): an even batch whose halves
    differ, which the shared prefix must compute whole. Same result as the bare model."""
    fast, plain, encoder, vae = models
    image, mask, exemplar = _inputs()
    exemplars = torch.cat([exemplar, exemplar.flip(2)])

    def both(m):
        return NODES["SelfAttentionGuidance"](host, NODES["PerturbedAttentionGuidance"](host, m))

    outs = []
    on_fast = both(fast)
    single, shared = record_fast_paths(host, on_fast)
    for m in (on_fast, both(plain)):
        with torch.inference_mode():
            outs.append(host.sampler.Sampler.execute(
                m, encoder, vae, image, mask, exemplars, 7, STEPS, 5.0, "reference", "normal", 1.0, 0, 4,
                working_size=0,
            ).args[1]["samples"])
    assert outs[0].shape[0] == 2 and rel_diff(outs[0], outs[1]) <= REL, rel_diff(outs[0], outs[1])
    assert not single
    assert set(shared) == {(4, 2), (2, 0)} and shared.count((2, 0)) == 2 * shared.count((4, 2)), shared

# --- ModelSamplingDiscrete: what the model is, bit for bit; anything else refused ----------------------------------
def _model_sampling(host, model, sampling, zsnr=False):
    return host.model_advanced.ModelSamplingDiscrete().patch(model, sampling, zsnr)[0]


@pytest.mark.parametrize("path", PATHS)
def test_model_sampling_discrete_eps_keeps_the_edit_bit_for_bit(host, models, path):
    """``eps`` without zsnr is what the Paint-by-Example UNet is (docs/design/model.md): the host node builds a new
    ``model_sampling`` object (an object patch on a clone) and the edit stays exactly the same, fast paths and all."""
    fast, _, encoder, vae = models
    run = PATHS[path]
    patched = _model_sampling(host, fast, "eps")
    assert "model_sampling" in patched.object_patches and host.sta.has_single_token_attention(patched)
    assert patched.get_model_object("model_sampling") is not fast.get_model_object("model_sampling")
    image, latent = run(host, patched, encoder, vae)
    ref_image, ref_latent = run(host, fast, encoder, vae)
    assert torch.equal(latent, ref_latent) and torch.equal(image, ref_image)


REFUSED = {
    "v_prediction": ("ModelSamplingDiscrete + V_PREDICTION", False),
    "x0": ("ModelSamplingDiscrete + X0", False),
    "lcm": ("ModelSamplingDiscreteDistilled + LCM", False),
    "img_to_img": ("ModelSamplingDiscrete + IMG_TO_IMG", False),
    "eps": ("zsnr", True),
}


@pytest.mark.parametrize("sampling", REFUSED)
def test_model_sampling_the_model_cannot_take_is_refused_on_every_path(host, models, sampling):
    """The host reads the UNet's output through the MODEL's ``model_sampling``: v, x0, LCM or img2img on an eps model,
    or the zero-terminal-SNR schedule (which needs v-prediction), sample a wrong image without a word. The pack refuses
    it where the user meets it: the sampler node (PBE_Sampler, the host's KSampler, PBE_ReferenceScheduler)."""
    fast, _, encoder, vae = models
    what, zsnr = REFUSED[sampling]
    patched = _model_sampling(host, fast, sampling, zsnr)
    for name, call in (
        ("PBE_Sampler", lambda: one_node(host, patched, encoder, vae)),
        ("KSampler", lambda: modular(host, patched, encoder, vae)),
        ("PBE_ReferenceScheduler", lambda: host.sampler.ReferenceScheduler.execute(patched, 10, 1.0)),
    ):
        with pytest.raises(ValueError) as err:
            call()
        message = str(err.value)
        assert what in message and "ModelSamplingDiscrete" in message, (name, message)
        assert "'eps' with zsnr off" in message, (name, message)  # what to do instead


def test_other_model_sampling_nodes_are_refused(host, models):
    """A continuous (EDM-style) schedule maps sigmas to timesteps the discrete SD-1 UNet was never trained on, even
    with eps: refused as well."""
    fast, _, encoder, vae = models
    patched = host.model_advanced.ModelSamplingContinuousEDM().patch(fast, "eps", 120.0, 0.002)[0]
    with pytest.raises(ValueError, match="ModelSamplingContinuousEDM \\+ EPS"):
        modular(host, patched, encoder, vae)


def test_the_check_reads_the_trained_schedule_independently_of_the_host(host, models):
    """The schedule the check accepts is the pack's own statement of the training schedule (pbe_core.edit.sampling), and the
    host's table for the model equals it: the check is not comparing the host with itself."""
    from comfy_inprocess import pack_module

    check = pack_module("nodes.host.model_sampling_check")
    fast, _, _, _ = models
    table = fast.get_model_object("model_sampling").sigmas.double()
    assert table.shape == (1000,)
    assert torch.allclose(table, check.trained_sigmas(), rtol=1e-6)
    assert abs(float(check.trained_sigmas()[0]) - 0.0292) < 1e-4  # timestep 0's sigma (docs/design/inference.md)


# --- TorchCompileModel: the fast paths compiled with the UNet, the same numbers -----------------------------------
#: inductor fuses kernels and vectorises exp/erf its own way: measured 2.6e-6 relative on the tiny model (torch
#: 2.14.1, CPU); the bound leaves room for other CPUs' vector widths
COMPILE_REL = 1e-4


@pytest.mark.slow
def test_torch_compile_model_compiles_the_fast_paths_into_one_graph(host, models):
    """The host's TorchCompileModel (inductor; on the CPU it needs a C++ compiler) on the loader's MODEL: the whole UNet
    with the single-token cross-attention becomes one graph without a break (the shared CFG prefix steps aside while
    it is traced, nodes/host/shared_cfg_prefix.py), and both paths give the bare model's eager result to the
    compiler's rounding. Slow: compiling even the tiny UNet takes minutes on two busy cores."""
    import torch._dynamo
    from comfy_extras import nodes_torch_compile
    from torch._dynamo.utils import counters

    fast, plain, encoder, vae = models
    torch._dynamo.reset()
    counters.clear()
    try:
        _compile_and_compare(host, fast, plain, encoder, vae, nodes_torch_compile, counters)
    finally:
        torch._dynamo.reset()  # the compiled graphs and their guards go; nothing else in the session compiles


def _compile_and_compare(host, fast, plain, encoder, vae, nodes_torch_compile, counters):
    import time

    compiled = nodes_torch_compile.TorchCompileModel.execute(fast, "inductor").args[0]
    assert host.sta.has_single_token_attention(compiled) and host.shared.has_shared_cfg_prefix(compiled)
    timings, results = {}, {}
    for path, run in PATHS.items():
        start = time.perf_counter()
        results[path] = run(host, compiled, encoder, vae)
        timings[path] = time.perf_counter() - start
    graphs, breaks = counters["stats"]["unique_graphs"], dict(counters["graph_break"])
    start = time.perf_counter()
    again = modular(host, compiled, encoder, vae)
    steady = time.perf_counter() - start
    start = time.perf_counter()
    modular(host, fast, encoder, vae)
    eager = time.perf_counter() - start
    print(f"TorchCompileModel: first calls {timings} s (compiling), then the modular edit {steady:.2f} s compiled vs "  # noqa: T201
          f"{eager:.2f} s eager; {graphs} graph(s)")
    assert breaks == {}, breaks  # the UNet was not cut into pieces
    assert graphs >= 1  # it did run compiled code
    assert counters["stats"]["unique_graphs"] == graphs  # the steady-state call reused it
    assert torch.equal(again[1], results["modular"][1]) or rel_diff(again[1], results["modular"][1]) <= COMPILE_REL
    for path, run in PATHS.items():
        ref_image, ref_latent = run(host, plain, encoder, vae)
        image, latent = results[path]
        moved = rel_diff(latent, ref_latent), rel_diff(image, ref_image)
        print(f"TorchCompileModel, {path}: vs the bare model, eager: latent {moved[0]:.1e}, image {moved[1]:.1e}")  # noqa: T201
        assert moved[0] <= COMPILE_REL and moved[1] <= COMPILE_REL, (path, moved)


# --- the graphs, through the HTTP API -----------------------------------------------------------------------------
def _prompt(chain, sampler, steps=3):
    """Load -> the host nodes in ``chain`` ((class_type, inputs) each, MODEL first) -> ``sampler`` ("one-node":
    PBE_Sampler; "modular": Exemplar Encode -> Inpaint Conditioning -> KSampler -> VAE Decode) -> saved tensor."""
    p = {
        "load": {"class_type": "PBE_LoadModel", "inputs": {"model_name": "original.ckpt"}},
        "src": {"class_type": "LoadImage", "inputs": {"image": "source.png"}},
        "ex": {"class_type": "LoadImage", "inputs": {"image": "exemplar.png"}},
    }
    model = ["load", 0]
    for i, (class_type, inputs) in enumerate(chain):
        p[f"n{i}"] = {"class_type": class_type, "inputs": {"model": model, **inputs}}
        model = [f"n{i}", 0]
    if sampler == "one-node":
        p["edit"] = {"class_type": "PBE_Sampler", "inputs": {
            "model": model, "encoder": ["load", 1], "vae": ["load", 2], "image": ["src", 0], "mask": ["src", 1],
            "exemplar": ["ex", 0], "seed": 7, "steps": steps, "cfg": 5.0, "sampler_name": "reference",
            "scheduler": "normal", "denoise": 1.0, "mask_grow": 0, "mask_feather": 0, "working_size": 0}}
        out = ["edit", 0]
    else:
        p["enc"] = {"class_type": "PBE_ExemplarEncode",
                    "inputs": {"encoder": ["load", 1], "exemplar": ["ex", 0], "preprocess": "squash"}}
        p["cond"] = {"class_type": "PBE_InpaintConditioning", "inputs": {
            "positive": ["enc", 0], "negative": ["enc", 1], "vae": ["load", 2], "image": ["src", 0],
            "mask": ["src", 1]}}
        p["edit"] = {"class_type": "KSampler", "inputs": {
            "model": model, "positive": ["cond", 0], "negative": ["cond", 1], "latent_image": ["cond", 2], "seed": 7,
            "steps": steps, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
        p["decode"] = {"class_type": "VAEDecode", "inputs": {"samples": ["edit", 0], "vae": ["load", 2]}}
        out = ["decode", 0]
    p["save"] = {"class_type": "PBETest_SaveTensor", "inputs": {"value": out, "filename": f"{uuid.uuid4().hex}.st"}}
    return p


HOST_CHAIN = [
    ("FreeU_V2", {"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}),
    ("PerturbedAttentionGuidance", {"scale": 3.0}),
    ("SelfAttentionGuidance", {"scale": 0.5, "blur_sigma": 2.0}),
    ("ModelSamplingDiscrete", {"sampling": "eps", "zsnr": False}),
]


@pytest.mark.parametrize("sampler", ["one-node", "modular"])
def test_graphs_with_the_host_nodes_run(comfy_server, images, sampler):
    """Through a user's server: the loader's MODEL through FreeU_V2, PAG, SAG and ModelSamplingDiscrete (eps) into
    either sampler path runs and edits differently from the same graph without them."""
    from host_util import fetch_tensor

    results = []
    for chain in (HOST_CHAIN, []):
        entry = comfy_server.run(_prompt(chain, sampler))
        assert execution_error(entry) is None, execution_error(entry)
        results.append(fetch_tensor(comfy_server, entry, "save"))
    with_nodes, without = results
    assert torch.isfinite(with_nodes).all() and with_nodes.shape == without.shape
    assert (with_nodes - without).abs().max() > 1e-2


@pytest.mark.parametrize("sampler", ["one-node", "modular"])
def test_a_model_sampling_the_model_cannot_take_fails_on_the_sampler_node(comfy_server, images, sampler):
    from comfy_host import status_messages

    entry = comfy_server.run(_prompt([("ModelSamplingDiscrete", {"sampling": "v_prediction", "zsnr": False})], sampler))
    error = status_messages(entry).get("execution_error")
    assert error is not None
    assert error["node_type"] == ("PBE_Sampler" if sampler == "one-node" else "KSampler")
    assert "ModelSamplingDiscrete + V_PREDICTION" in error["exception_message"]
    assert "'eps' with zsnr off" in error["exception_message"]
