"""One benchmark worker process: this pack inside a real ComfyUI (``ours``) or diffusers' pipeline (``diffusers``).

Started by ``benchmarks/run.py``; reads one JSON command per line on stdin and answers one JSON line on stdout (logs
go to stderr). Each implementation lives in its own process so that its peak RSS (``ru_maxrss``) is its own.

``ours`` runs the path ComfyUI runs, in-process: ComfyUI's modules are imported with ``--cpu`` (``args.cpu = True``),
the pack is imported as a custom-node package, and its node classes' ``execute`` are called with host objects under
``torch.inference_mode()`` as ComfyUI's executor does (``execution.py``): ``PBE_LoadModel`` (from
``models/paint_by_example``, registered as a user's extra path) and the one-node ``PBE_Sampler`` with the official
``reference`` sampler. ``diffusers`` runs ``PaintByExamplePipeline`` built from the diffusers folder's components
(``from_pretrained`` each; diffusers 0.42 cannot reload the folder's ``model_index.json`` itself) with its PNDM
scheduler. Both get the same source, mask, exemplar, noise, steps and cfg.

Component times come from forward hooks placed the same way on both (UNet module, VAE encoder and decoder modules,
exemplar encoder module): everything else in an edit is reported as "rest" (preprocessing, the scheduler's maths,
the pack's mask/paste-back work, host overhead). An edit also reports the process's CPU time (``cpu_s``, all threads
together): on a shared machine it counts the work done rather than the waits for a core, so it is the steadier
figure when other jobs run.

Besides ``load`` / ``edit`` (any kind) the ``ours`` worker answers ``unet`` / ``layout`` (single UNet calls, memory
orders) and ``unet_precisions`` (one UNet call per precision), and the ``kernels`` worker (torch only) times single
convolution, linear and attention kernels in fp32, bf16 and fp16.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "tests" / "support")]

log = logging.getLogger("pbe.bench.worker")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Timer:
    """Forward pre/post hooks that add up the time spent in a module and count its calls."""

    def __init__(self, module):
        self.seconds, self.calls, self._t0 = 0.0, 0, None
        self._hooks = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def remove(self) -> None:
        """Take the hooks off (benchmarks/compile.py: a clock read inside the module would split torch.compile's
        graph)."""
        for hook in self._hooks:
            hook.remove()

    def _pre(self, *_):
        self._t0 = time.perf_counter()

    def _post(self, *_):
        self.seconds += time.perf_counter() - self._t0
        self.calls += 1

    def take(self) -> tuple[float, int]:
        out = (self.seconds, self.calls)
        self.seconds, self.calls = 0.0, 0
        return out


def test_images(size: int, photo: int | None = None, seed: int = 0):
    """uint8 arrays: source (H, W, 3), region (H, W) 0/1 and exemplar (256, 192, 3).

    ``photo`` None: a ``size``-square source with a box of a quarter of its area on the 8-pixel grid (where the
    official, diffusers' and ComfyUI's latent masks agree). ``photo`` N: an N-square source whose mask box covers
    10% of it (the photo-size case).
    """
    import numpy as np

    n = photo or size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n]
    base = np.stack([np.sin(xx / (n / 57)), np.cos(yy / (n / 73)), np.sin((xx + yy) / (n / 39))], -1) * 90 + 128
    source = np.clip(base + rng.normal(0, 12, (n, n, 3)), 0, 255).astype(np.uint8)
    region = np.zeros((n, n), np.uint8)
    if photo is None:
        a, b = n // 4 // 8 * 8, (3 * n // 4) // 8 * 8
        region[a:b, a:b] = 1
    else:
        side = int(round(n * 0.1**0.5))
        y0, x0 = n // 3, n // 2 - side // 2
        region[y0 : y0 + side, x0 : x0 + side] = 1
    ey, ex = np.mgrid[0:256, 0:192]
    exemplar = np.stack([ex / 192 * 255, ey / 256 * 255, 128 + 100 * np.sin(ex / 9) * np.cos(ey / 11)], -1)
    return source, region, np.clip(exemplar, 0, 255).astype(np.uint8)


class Ours:
    def __init__(self, comfyui: str, weights: Path, flags: list[str]):
        from comfy_inprocess import import_host, import_pack, pack_module

        # host command-line flags for this worker, e.g. use_pytorch_cross_attention (= --use-pytorch-cross-attention)
        import_host(comfyui, **dict.fromkeys(flags, True))
        import_pack()
        import folder_paths
        import torch

        folder_paths.add_model_folder_path("paint_by_example", str(weights))
        self.torch = torch
        self.loader = pack_module("nodes.loader")
        self.sampler = pack_module("nodes.sampler")
        self.sta = pack_module("nodes.host.single_token_attention")
        self.shared = pack_module("nodes.host.shared_cfg_prefix")
        self.attention_choice = pack_module("nodes.host.attention_choice")
        self.mm = sys.modules["comfy.model_management"]
        import comfy.ldm.modules.attention as attention

        self.attention = attention.optimized_attention.__name__

    def load(self, name: str, fast: bool = True, weight_dtype: str = "default") -> dict:
        t0 = time.perf_counter()
        with self.torch.inference_mode():
            out = self.loader.LoadModel.execute(name, weight_dtype, fast).args
        self.model, self.encoder, self.vae = out
        seconds = time.perf_counter() - t0
        self.fallbacks = self._count_fallbacks()
        # the same MODEL without one of the pack's UNet shortcuts, for its gain (clones without those object patches)
        self.plain = self._without(self.sta.SingleTokenCrossAttention)
        self.unshared = self._without(self.shared.SharedHalves)
        first = self.vae.first_stage_model
        self.timers = {
            "unet": Timer(self.model.model.diffusion_model),
            "vae_encode": Timer(first.encoder),
            "vae_decode": Timer(first.decoder),
            "exemplar": Timer(self.encoder.model),
        }
        return {"load_s": seconds, "attention": self.attention, "threads": self.torch.get_num_threads(),
                "weight_dtype": weight_dtype, "fast_path_blocks": self.fallbacks["patched"], **self.precision_info()}

    def precision_info(self) -> dict:
        """What each network of the loaded MODEL / VAE / encoder computes in, and its convolution kernels' order."""
        torch = self.torch
        dm, first = self.model.model.diffusion_model, self.vae.first_stage_model

        def channels_last(module) -> bool:
            kernels = [p for p in module.parameters() if p.dim() == 4 and p.shape[2] * p.shape[3] > 1]
            return bool(kernels) and all(p.is_contiguous(memory_format=torch.channels_last) for p in kernels)

        cast = self.model.model.manual_cast_dtype
        return {"unet_weights": str(dm.dtype).replace("torch.", ""),
                "unet_computes": str(cast or dm.dtype).replace("torch.", ""),
                "unet_channels_last": channels_last(dm), "vae_dtype": str(self.vae.vae_dtype).replace("torch.", ""),
                "vae_channels_last": channels_last(first),
                "encoder_dtype": str(self.encoder.dtype).replace("torch.", "")}

    def _count_fallbacks(self) -> dict:
        """Counters around the MODEL's fast paths: ``single_token`` counts the calls a single-token patch handed to
        the forward it replaced (0 = the fast path was taken at every cross-attention); ``shared_prefix`` the calls
        of a shared-prefix layer and ``shared_prefix_halved`` those it ran on half the batch (shared: equal to
        ``shared_prefix`` when every call shared its first layers; the benchmark's edits have one image, so a CFG batch
        of 2)."""
        counts = {"single_token": 0, "shared_prefix": 0, "shared_prefix_halved": 0}
        sta, shared = self.sta.SingleTokenCrossAttention, self.shared.SharedHalves
        self._uncounted = []
        for patch in self.model.object_patches.values():
            if not isinstance(patch, (sta, shared)):
                continue
            inner, is_shared = patch.fallback, isinstance(patch, shared)
            self._uncounted.append((patch, inner))

            def counted(*args, _inner=inner, _shared=is_shared, **kwargs):
                if _shared:
                    counts["shared_prefix"] += 1
                    counts["shared_prefix_halved"] += int(args[0].shape[0] == 1)
                else:
                    counts["single_token"] += 1
                return _inner(*args, **kwargs)

            patch.fallback = counted
        counts["patched"] = {"single_token": sum(isinstance(p, sta) for p in self.model.object_patches.values()),
                             "shared_prefix": sum(isinstance(p, shared) for p in self.model.object_patches.values())}
        return counts

    def stop_counting(self) -> None:
        """Give the fast paths back their own fallbacks (benchmarks/compile.py: torch.compile traces the counters and
        guards on their values, so every call would compile the UNet again)."""
        for patch, inner in self._uncounted:
            patch.fallback = inner

    def _without(self, patch_type):
        m = self.model.clone()
        m.object_patches = {k: v for k, v in m.object_patches.items() if not isinstance(v, patch_type)}
        assert len(m.object_patches) < len(self.model.object_patches), f"the MODEL has no {patch_type.__name__}"
        return m

    def edit(self, size: int, steps: int, seed: int, cfg: float, photo: int | None = None, fast: bool = True,
             cold_exemplar: bool = True) -> dict:
        torch = self.torch
        source, region, exemplar = test_images(size, photo)
        image = torch.from_numpy(source).float().div(255)[None]
        mask = torch.from_numpy(region).float()[None]
        ex = torch.from_numpy(exemplar).float().div(255)[None]
        if cold_exemplar:
            self.encoder._cache.clear()  # an edit here includes encoding the exemplar, as diffusers' does
        for t in self.timers.values():
            t.take()
        for k in ("single_token", "shared_prefix", "shared_prefix_halved"):
            self.fallbacks[k] = 0
        model = self.model if fast else self.plain
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            out = self.sampler.Sampler.execute(
                model, self.encoder, self.vae, image, mask, ex, seed, steps, cfg, "reference", "normal", 1.0, 0, 8,
                exemplar_preprocess="center_crop", working_size=size,
            ).args[0]
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
        res = {"total_s": total, "cpu_s": cpu, "shape": list(out.shape)}
        for k, t in self.timers.items():
            res[f"{k}_s"], res[f"{k}_calls"] = t.take()
        res["inside"] = out[0][torch.from_numpy(region).bool()].float().mean().item()
        res["fallbacks"] = {k: self.fallbacks[k] for k in ("single_token", "shared_prefix", "shared_prefix_halved")}
        self.last = out[0]
        return res

    def unet(self, size: int, calls: int, variant: str = "all") -> dict:
        """Time UNet evaluations alone, as CFG makes them: a batch of two halves with the same latent, concat and
        timestep and two different context tokens (exemplar, unconditional). ``variant``: ``all`` (the MODEL as
        loaded), ``no_single_token`` or ``no_shared_prefix`` (without that shortcut)."""
        torch = self.torch
        model = {"all": self.model, "no_single_token": self.plain, "no_shared_prefix": self.unshared}[variant]
        self.mm.load_models_gpu([model])
        x, ts, ctx = self._cfg_inputs(size, self._compute_dtype(model))
        dm = model.model.diffusion_model
        times = []
        with torch.inference_mode():
            for _ in range(calls):
                t0 = time.perf_counter()
                out = dm(x, ts, context=ctx, transformer_options=model.model_options["transformer_options"].copy())
                times.append(time.perf_counter() - t0)
        self.timers["unet"].take()
        return {"times": times, "checksum": out.double().sum().item(), "out": out}

    def _cfg_inputs(self, size: int, dtype=None):
        """A UNet call's inputs as CFG makes them: ``(x, timesteps, context)``, the halves equal but the context;
        ``x`` and the context in ``dtype`` (the UNet's compute dtype, as the host's ``BaseModel._apply_model`` casts
        them; default fp32)."""
        torch = self.torch
        g = torch.Generator().manual_seed(0)
        h = size // 8
        x = torch.randn(1, 9, h, h, generator=g).repeat(2, 1, 1, 1)
        dtype = dtype or torch.float32
        return x.to(dtype), torch.tensor([500.0, 500.0]), torch.randn(2, 1, 768, generator=g).to(dtype)

    @staticmethod
    def _compute_dtype(model):
        return model.model.manual_cast_dtype or model.model.get_dtype()

    def layout(self, size: int, channels_last: bool) -> dict:
        """One UNet call and one VAE encode + decode at ``size``, with the convolution kernels in either memory order.

        The pack loads the VAE's kernels channels-last on the CPU (``pbe_core.weights.memory_format``, in place), the UNet's
        channels-last where it computes in bf16 on the CPU and as the file has them (NCHW) otherwise. For the
        comparison the first call makes a copy of each module not already in the other order
        (``Module.to(memory_format=...)``; the copies stay for the rest of the run, so this worker's whole-run peak
        memory includes them) and every call then runs the modules of one order: no conversion is timed.
        """
        import copy

        torch = self.torch
        if not hasattr(self, "_orders"):
            self.mm.load_models_gpu([self.model])  # the copies take the MODEL's patches as they are applied
            loaded = (self.model.model.diffusion_model, self.vae.first_stage_model)

            def in_order(module, cl):
                fmt = torch.channels_last if cl else torch.contiguous_format
                kernels = [p for p in module.parameters() if p.dim() == 4 and p.shape[2] * p.shape[3] > 1]
                if all(p.is_contiguous(memory_format=fmt) for p in kernels):
                    return module
                with torch.inference_mode():
                    return copy.deepcopy(module).to(memory_format=fmt)

            self._orders = {cl: tuple(in_order(m, cl) for m in loaded) for cl in (True, False)}
            for cl, mods in self._orders.items():
                fmt = torch.channels_last if cl else torch.contiguous_format
                kernels = [p for m in mods for p in m.parameters() if p.dim() == 4 and p.shape[2] * p.shape[3] > 1]
                assert all(p.is_contiguous(memory_format=fmt) for p in kernels), f"kernels not in {fmt}"
        dm, first = self._orders[channels_last]
        x, ts, ctx = self._cfg_inputs(size, self._compute_dtype(self.model))
        pixels = (torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(self.vae.vae_dtype)
        options = self.model.model_options["transformer_options"]
        with torch.inference_mode():
            t0 = time.perf_counter()
            dm(x, ts, context=ctx, transformer_options=options.copy())
            t1 = time.perf_counter()
            latent = first.encode(pixels)
            t2 = time.perf_counter()
            image = first.decode(latent)
            t3 = time.perf_counter()
        for t in self.timers.values():
            t.take()
        return {"unet_s": t1 - t0, "vae_encode_s": t2 - t1, "vae_decode_s": t3 - t2, "checksum": image.double().sum().item()}


    def unet_precisions(self, name: str, size: int, reps: int, variants: list[str]) -> dict:
        """One UNet call at ``size`` (CFG-shaped, batch 2) per precision, interleaved; the UNets built from the same
        file by the pack's own ``build_model_patcher`` with the loader's patches. ``variants``: ``fp32``,
        ``bf16_native`` / ``fp16_native`` (computed in that dtype: what the pack does for bf16 on a CPU with
        AMX-BF16), ``bf16_host_cast`` / ``fp16_host_cast`` (weights in that dtype, computed in fp32 through the host's
        per-layer casting: ComfyUI's own choice on a CPU, and the pack's for fp16). The compute choice is forced by
        replacing the pack's ``native_half_on_cpu`` while each variant is built. Returns times and each output's max /
        mean abs difference from the fp32 one."""
        import folder_paths

        torch = self.torch
        from comfy_inprocess import pack_module

        mt, ck = pack_module("nodes.host.model_type"), pack_module("pbe_core.weights.checkpoint")
        ckpt = ck.load_checkpoint(folder_paths.get_full_path_or_raise("paint_by_example", name))
        dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
        models = {}
        real = mt.native_half_on_cpu
        try:
            for v in variants:
                dtype = dtypes[v.split("_")[0]]
                if v.endswith("_native"):
                    mt.native_half_on_cpu = lambda w, d, host: None
                elif v.endswith("_host_cast"):
                    mt.native_half_on_cpu = lambda w, d, host: host
                with torch.inference_mode():
                    m = mt.build_model_patcher(ckpt, dtype)
                mt.native_half_on_cpu = real
                models[v] = self.attention_choice.with_sdpa_on_cpu(
                    self.shared.with_shared_cfg_prefix(self.sta.with_single_token_attention(m)))
        finally:
            mt.native_half_on_cpu = real
        del ckpt

        def call(v):
            m = models[v]
            self.mm.load_models_gpu([m])
            x, ts, ctx = self._cfg_inputs(size, self._compute_dtype(m))
            with torch.inference_mode():
                t0, c0 = time.perf_counter(), time.process_time()
                out = m.model.diffusion_model(x, ts, context=ctx,
                                              transformer_options=dict(m.model_options["transformer_options"]))
                return time.perf_counter() - t0, time.process_time() - c0, out.float()

        times: dict = {v: [] for v in variants}
        cpu_times: dict = {v: [] for v in variants}
        outs = {}
        for v in variants:  # warm-up
            call(v)
        for r in range(reps):
            k = r % len(variants)
            for v in variants[k:] + variants[:k]:
                t, c, outs[v] = call(v)
                times[v].append(t)
                cpu_times[v].append(c)
        info = {v: {"computes": str(self._compute_dtype(models[v])).replace("torch.", "")} for v in variants}
        ref = outs.get("fp32")
        for v in variants:
            if ref is not None:
                d = (outs[v] - ref).abs()
                info[v].update(max_abs=d.max().item(), mean_abs=d.mean().item(), ref_max=ref.abs().max().item())
        return {"size": size, "times": times, "cpu_times": cpu_times, "info": info}


class Kernels:
    """Single kernels at the UNet's highest resolution (512^2 edit: 64^2 latents, 320 channels, batch 2), in fp32,
    bf16 and fp16: what the CPU's own instructions give torch for each precision. Only torch is imported; the runner
    starts this worker with oneDNN held to lower instruction sets (``ONEDNN_MAX_CPU_ISA``) to stand in for CPUs
    without AMX."""

    def __init__(self):
        import torch

        self.torch = torch

    def load(self, name: str = "", fast: bool = True) -> dict:
        return {"load_s": 0.0, "threads": self.torch.get_num_threads(), "isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
                "cpu_capability": self.torch.backends.cpu.get_cpu_capability()}

    def kernels(self, reps: int = 5) -> dict:
        torch = self.torch
        F = torch.nn.functional
        g = torch.Generator().manual_seed(0)
        x32 = torch.randn(2, 320, 64, 64, generator=g)
        w32 = torch.randn(320, 320, 3, 3, generator=g) * 0.02
        a32, b32 = torch.randn(8192, 320, generator=g), torch.randn(1280, 320, generator=g) * 0.05
        q32 = torch.randn(2, 4096, 320, generator=g)
        ops: dict = {}
        with torch.inference_mode():
            for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
                x = x32.to(dt).contiguous(memory_format=torch.channels_last)
                w = w32.to(dt).contiguous(memory_format=torch.channels_last)
                a, b = a32.to(dt), b32.to(dt)
                q = q32.to(dt).view(2, -1, 8, 40).transpose(1, 2)  # as the host's attention_pytorch passes it
                ops[name] = {"conv3x3": lambda x=x, w=w: F.conv2d(x, w, padding=1),
                             "linear": lambda a=a, b=b: F.linear(a, b),
                             "sdpa": lambda q=q: F.scaled_dot_product_attention(q, q, q)}
            out: dict = {}
            cpu: dict = {}
            for fns in ops.values():  # warm-up: oneDNN builds each primitive once
                for fn in fns.values():
                    fn()
            names = list(ops)
            for r in range(reps):  # the precisions interleaved, their order rotating: drift hits all alike
                for name in names[r % 3:] + names[: r % 3]:
                    for op, fn in ops[name].items():
                        t0, c0 = time.perf_counter(), time.process_time()
                        fn()
                        out.setdefault(op, {}).setdefault(name, []).append(time.perf_counter() - t0)
                        cpu.setdefault(op, {}).setdefault(name, []).append(time.process_time() - c0)
        return {"times": out, "cpu_times": cpu}


class Diffusers:
    def __init__(self, weights: Path):
        import torch
        from diffusers import AutoencoderKL, PaintByExamplePipeline, PNDMScheduler, UNet2DConditionModel
        from diffusers.pipelines.deprecated.paint_by_example.image_encoder import PaintByExampleImageEncoder
        from diffusers.utils import is_accelerate_available
        from transformers import CLIPImageProcessor

        self.torch = torch
        self.classes = (AutoencoderKL, PaintByExamplePipeline, PNDMScheduler, UNet2DConditionModel,
                        PaintByExampleImageEncoder, CLIPImageProcessor)
        self.low_cpu_mem_usage = is_accelerate_available()
        self.folder = weights / "diffusers"

    def load(self, name: str = "", fast: bool = True, dtype: str = "fp32") -> dict:
        vae_cls, pipe_cls, sched_cls, unet_cls, enc_cls, fe_cls = self.classes
        f = self.folder
        t0 = time.perf_counter()
        # torch_dtype: diffusers' own way to run the pipeline in half precision (every component in that dtype)
        self.dtype = {"fp32": self.torch.float32, "bf16": self.torch.bfloat16}[dtype]
        kw = {"low_cpu_mem_usage": self.low_cpu_mem_usage, "torch_dtype": self.dtype}
        unet = unet_cls.from_pretrained(f / "unet", **kw)
        vae = vae_cls.from_pretrained(f / "vae", **kw)
        encoder = enc_cls.from_pretrained(f / "image_encoder", **kw)
        self.pipe = pipe_cls(
            vae=vae, image_encoder=encoder, unet=unet, scheduler=sched_cls.from_pretrained(f / "scheduler"),
            safety_checker=None, feature_extractor=fe_cls.from_pretrained(f / "feature_extractor"),
            requires_safety_checker=False,
        )
        self.pipe.set_progress_bar_config(disable=True)
        seconds = time.perf_counter() - t0
        self.timers = {
            "unet": Timer(unet), "vae_encode": Timer(vae.encoder), "vae_decode": Timer(vae.decoder),
            "exemplar": Timer(encoder),
        }
        return {"load_s": seconds, "low_cpu_mem_usage": self.low_cpu_mem_usage,
                "attention": type(unet.attn_processors[next(iter(unet.attn_processors))]).__name__,
                "threads": self.torch.get_num_threads(), "dtype": dtype}

    def edit(self, size: int, steps: int, seed: int, cfg: float, photo: int | None = None, fast: bool = True,
             cold_exemplar: bool = True) -> dict:
        import numpy as np
        from PIL import Image

        torch = self.torch
        source, region, exemplar = test_images(size, photo)
        h = w = source.shape[0]
        # the initial noise ComfyUI draws for this seed (comfy.sample.prepare_noise, batch 1), in the pipeline's dtype
        # (its prepare_latents does not cast given latents; the ones it draws itself are in that dtype)
        latents = torch.randn((1, 4, h // 8, w // 8), generator=torch.Generator().manual_seed(seed)).to(self.dtype)
        for t in self.timers.values():
            t.take()
        t0, c0 = time.perf_counter(), time.process_time()
        out = self.pipe(
            example_image=Image.fromarray(exemplar), image=Image.fromarray(source),
            mask_image=Image.fromarray(region * 255), height=h, width=w, num_inference_steps=steps,
            guidance_scale=cfg, latents=latents, output_type="np", generator=torch.Generator().manual_seed(0),
        ).images
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
        res = {"total_s": total, "cpu_s": cpu, "shape": list(out.shape)}
        for k, t in self.timers.items():
            res[f"{k}_s"], res[f"{k}_calls"] = t.take()
        res["inside"] = float(out[0][region.astype(bool)].mean())
        self.last = torch.from_numpy(np.ascontiguousarray(out[0]))
        return res


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    kind, weights, flags = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    if kind == "ours":
        impl = Ours(os.environ["COMFYUI_PATH"], weights, flags)
    elif kind == "kernels":
        impl = Kernels()
    else:
        impl = Diffusers(weights)
    out = sys.stdout
    sys.stdout = sys.stderr  # anything a library prints must not mix into the answers
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        if op == "quit":
            break
        try:
            if op == "load":
                res = impl.load(**cmd)
            elif op == "edit":
                res = impl.edit(**cmd)
            elif op == "layout":
                res = impl.layout(**cmd)
            elif op == "unet":
                res = impl.unet(**cmd)
                res.pop("out")
            elif op == "unet_precisions":
                res = impl.unet_precisions(**cmd)
            elif op == "kernels":
                res = impl.kernels(**cmd)
            elif op == "save_last":
                from safetensors.torch import save_file

                save_file({"image": impl.last.float().contiguous()}, cmd["path"])
                res = {}
            else:
                raise ValueError(f"unknown op {op!r}")
            res.update(peak_rss_mib=peak_rss_mib(), rss_mib=current_rss_mib())
        except Exception as e:  # report it to the runner, which stops the benchmark
            log.exception("%s failed", op)
            res = {"error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(res) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
