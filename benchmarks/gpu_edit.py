"""One 512² edit on a GPU: this pack inside ComfyUI in fp32, fp16 and bf16, with and without ``--lowvram``, and
diffusers' ``PaintByExamplePipeline`` in fp16; times, peak memory and how far each result is from fp32.
benchmarks/gpu_check.sh runs it; each command below is one process, so that its peak memory is its own.

    python benchmarks/gpu_edit.py weights [--tiny]                    # the full-size random model (benchmarks/weights.py)
    python benchmarks/gpu_edit.py ours --out DIR [--dtypes fp32 fp16 bf16] [--lowvram] [--device cuda|cpu] [--tiny]
    python benchmarks/gpu_edit.py diffusers --out DIR [--dtype fp16] [--device cuda|cpu] [--tiny]
    python benchmarks/gpu_edit.py rows --out DIR [--rows 8]           # a CSV of photos for the client's batch
    python benchmarks/gpu_edit.py summary DIR                         # the tables, from the JSON files in DIR

``ours``: ComfyUI imported in-process on the device (``tests/support/comfy_inprocess.py``; ``--lowvram`` is ComfyUI's
own option), ``PBE_LoadModel`` with ``weight_dtype`` = each dtype (the VAE in ComfyUI's choice, reported), then the
one-node ``PBE_Sampler`` (``reference`` sampler = the official PLMS, cfg 5, ``working_size`` = the size), as
benchmarks/worker.py runs it on the CPU. ``diffusers``: the pipeline from the diffusers folder of the same weights,
``torch_dtype`` fp16, on the device, PNDM with the same steps and the same initial noise. Each: one warm-up edit, then
``--reps`` timed ones (median; the device synchronised around each). Peak memory: ``torch.cuda.max_memory_allocated``
from just before the model is loaded to after the last edit (on the CPU: the process's peak RSS). The result images
(float32, [0, 1], H x W x 3) are saved as ``.npy`` beside the JSON, and ``summary`` reports each one's largest and
mean absolute difference to ours in fp32 over the whole image (the pack pastes the edit back, so only the masked box
and its feather can differ); diffusers' result is not compared (it returns the VAE's reconstruction of the whole
photo, not the photo with the edit pasted back).

``--tiny``: the tiny random fixture model (tests/support/pbe_fixtures.py) instead of the full-size one, for checking the
script's plumbing on a machine without a GPU (``--device cpu``); its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(REPO / "tests" / "support"), str(HERE)]

log = logging.getLogger("pbe.bench.gpu")

SEED, CFG = 7, 5.0


def model_files(tiny: bool) -> dict[str, Path]:
    """``{"folder": the folder holding original-fp32.safetensors, "diffusers": the diffusers folder}``."""
    if tiny:
        import pbe_fixtures

        paths = pbe_fixtures.write_all_layouts(pbe_fixtures.fixture_root())
        return {"folder": paths["original-fp32.safetensors"].parent, "diffusers": paths["diffusers-hub"]}
    from weights import DEFAULT_DIR, ensure_weights

    paths = ensure_weights(DEFAULT_DIR)
    return {"folder": paths["original"].parent, "diffusers": paths["diffusers"]}


class Memory:
    """Peak memory of this process from :meth:`reset` on: CUDA allocations on a GPU, the RSS peak on the CPU."""

    def __init__(self, torch, device: str):
        self.torch, self.cuda = torch, device == "cuda"

    def reset(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_mib(self) -> dict:
        if self.cuda:
            self.torch.cuda.synchronize()
            return {"peak_vram_mib": self.torch.cuda.max_memory_allocated() / 2**20,
                    "peak_vram_reserved_mib": self.torch.cuda.max_memory_reserved() / 2**20}  # fmt: skip
        return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()


def _device_info(torch, device: str) -> dict:
    info = {"torch": torch.__version__, "device": device}
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, vram_mib=p.total_memory / 2**20, cuda=torch.version.cuda,
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32)
    else:
        info["threads"] = torch.get_num_threads()
    return info


def run_ours(args) -> dict:
    os.environ["PBE_HOST_DEVICE"] = args.device
    from comfy_inprocess import import_host, import_pack, pack_module

    flags = {"lowvram": True} if args.lowvram else {}
    mm = import_host(os.environ["COMFYUI_PATH"], **flags)
    import_pack()
    import folder_paths
    import torch
    from worker import test_images

    if mm.get_torch_device().type != args.device:
        raise SystemExit(f"ComfyUI runs on {mm.get_torch_device()}, not {args.device}")
    files = model_files(args.tiny)
    folder_paths.add_model_folder_path("paint_by_example", str(files["folder"]))
    loader, sampler = pack_module("nodes.loader"), pack_module("nodes.sampler")
    source, region, exemplar = test_images(args.size)
    image = torch.from_numpy(source).float().div(255)[None]
    mask = torch.from_numpy(region).float()[None]
    ex = torch.from_numpy(exemplar).float().div(255)[None]
    memory = Memory(torch, args.device)
    out = {"impl": "ours", "lowvram": args.lowvram, "size": args.size, "steps": args.steps, "reps": args.reps,
           "vram_state": str(mm.vram_state), **_device_info(torch, args.device), "runs": {}}  # fmt: skip
    for dtype in args.dtypes:
        mm.unload_all_models()
        gc.collect()
        memory.reset()
        t0 = time.perf_counter()
        with torch.inference_mode():
            model, encoder, vae = loader.LoadModel.execute("original-fp32.safetensors", dtype).args
        load_s = time.perf_counter() - t0
        times, result = [], None
        for k in range(args.reps + 1):  # the first is the warm-up
            encoder._cache.clear()  # each edit encodes its exemplar, as diffusers' does
            memory.sync()
            t0 = time.perf_counter()
            with torch.inference_mode():
                result = sampler.Sampler.execute(
                    model, encoder, vae, image, mask, ex, SEED, args.steps, CFG, "reference", "normal", 1.0, 0, 8,
                    exemplar_preprocess="center_crop", working_size=args.size,
                ).args[0]
            memory.sync()
            if k:
                times.append(time.perf_counter() - t0)
        import numpy as np

        name = f"ours-{dtype}{'-lowvram' if args.lowvram else ''}"
        np.save(args.out / f"{name}.npy", result[0].float().cpu().numpy())
        out["runs"][dtype] = {"name": name, "load_s": load_s, "edit_s": statistics.median(times), "times": times,
                              "unet_dtype": str(getattr(model.model, "get_dtype", lambda: None)()),
                              "manual_cast": str(getattr(model.model, "manual_cast_dtype", None)),
                              "vae_dtype": str(getattr(vae, "vae_dtype", None)), **memory.peak_mib()}  # fmt: skip
        log.info("%s: %.3f s per edit, %s", name, out["runs"][dtype]["edit_s"], memory.peak_mib())
        del model, encoder, vae, result
    return out


def run_diffusers(args) -> dict:
    import numpy as np
    import torch
    from diffusers import AutoencoderKL, PaintByExamplePipeline, PNDMScheduler, UNet2DConditionModel
    from diffusers.pipelines.deprecated.paint_by_example.image_encoder import PaintByExampleImageEncoder
    from PIL import Image
    from transformers import CLIPImageProcessor
    from worker import test_images

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    folder = model_files(args.tiny)["diffusers"]
    memory = Memory(torch, args.device)
    memory.reset()
    t0 = time.perf_counter()
    kw = {"torch_dtype": dtype}
    pipe = PaintByExamplePipeline(
        vae=AutoencoderKL.from_pretrained(folder / "vae", **kw),
        image_encoder=PaintByExampleImageEncoder.from_pretrained(folder / "image_encoder", **kw),
        unet=UNet2DConditionModel.from_pretrained(folder / "unet", **kw),
        scheduler=PNDMScheduler.from_pretrained(folder / "scheduler"),
        feature_extractor=CLIPImageProcessor.from_pretrained(folder / "feature_extractor"),
        safety_checker=None, requires_safety_checker=False,
    ).to(args.device)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - t0
    source, region, exemplar = test_images(args.size)
    h = w = source.shape[0]
    times, result = [], None
    for k in range(args.reps + 1):
        # the initial noise ComfyUI draws for this seed (comfy.sample.prepare_noise, batch 1)
        latents = torch.randn((1, 4, h // 8, w // 8), generator=torch.Generator().manual_seed(SEED)).to(dtype)
        memory.sync()
        t0 = time.perf_counter()
        result = pipe(example_image=Image.fromarray(exemplar), image=Image.fromarray(source),
                      mask_image=Image.fromarray(region * 255), height=h, width=w, num_inference_steps=args.steps,
                      guidance_scale=CFG, latents=latents, output_type="np").images[0]  # fmt: skip
        memory.sync()
        if k:
            times.append(time.perf_counter() - t0)
    name = f"diffusers-{args.dtype}"
    np.save(args.out / f"{name}.npy", np.asarray(result, np.float32))
    run = {"name": name, "load_s": load_s, "edit_s": statistics.median(times), "times": times, **memory.peak_mib()}
    log.info("%s: %.3f s per edit, %s", name, run["edit_s"], memory.peak_mib())
    return {"impl": "diffusers", "size": args.size, "steps": args.steps, "reps": args.reps,
            **_device_info(torch, args.device), "runs": {args.dtype: run}}  # fmt: skip


def make_rows(args) -> dict:
    """``--rows`` rows of ``--size``² photos with a box mask and one exemplar (benchmarks/worker.py's images)."""
    import numpy as np
    from PIL import Image
    from worker import test_images

    (args.out / "in").mkdir(parents=True, exist_ok=True)
    lines = ["source,mask,exemplar,seed"]
    for k in range(args.rows):
        source, region, exemplar = test_images(args.size, seed=k)
        Image.fromarray(source).save(args.out / "in" / f"p{k}.png")
        Image.fromarray((region * 255).astype(np.uint8)).save(args.out / "in" / f"p{k}_mask.png")
        if k == 0:
            Image.fromarray(exemplar).save(args.out / "exemplar.png")
        lines.append(f"in/p{k}.png,in/p{k}_mask.png,exemplar.png,{k}")
    (args.out / "rows.csv").write_text("\n".join(lines) + "\n")
    return {"rows": str(args.out / "rows.csv"), "model": str(model_files(args.tiny)["folder"] /
                                                               "original-fp32.safetensors")}  # fmt: skip


def summary(folder: Path) -> str:
    """Markdown tables from the JSON files ``ours*.json``, ``diffusers*.json`` and ``fleet*.json`` in ``folder``."""
    import numpy as np

    runs = []
    for path in sorted(folder.glob("*.json")):
        doc = json.loads(path.read_text())
        if doc.get("impl") in ("ours", "diffusers"):
            for dtype, run in doc["runs"].items():
                runs.append({**run, "dtype": dtype, "impl": doc["impl"], "lowvram": doc.get("lowvram", False),
                             "info": doc})  # fmt: skip
    if not runs:
        return "no results in " + str(folder) + "\n"
    info = runs[0]["info"]
    lines = [f"device: {info.get('gpu', info['device'])}, torch {info['torch']}"
             + (f", CUDA {info['cuda']}, TF32 matmul {info['tf32_matmul']} / cuDNN {info['tf32_cudnn']}"
                if info["device"] == "cuda" else f", {info.get('threads')} threads"),
             f"{info['size']}², {info['steps']} steps, cfg {CFG}, median of {info['reps']} timed edits after a warm-up",
             ""]  # fmt: skip
    reference = folder / "ours-fp32.npy"
    ref = np.load(reference) if reference.exists() else None
    fp16 = next((r for r in runs if r["impl"] == "diffusers" and r["dtype"] == "fp16"), None)
    memory_key = "peak_vram_mib" if "peak_vram_mib" in runs[0] else "peak_rss_mib"
    lines += [f"| run | weights | VAE | edit s | / diffusers fp16 | load s | {memory_key.replace('_', ' ')} | "
              "max \\|Δ\\| to ours fp32 | mean \\|Δ\\| |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in runs:
        diff = max_d = "–"
        image = folder / f"{r['name']}.npy"
        if ref is not None and image.exists() and r["impl"] == "ours":  # diffusers' does not paste back: not comparable
            d = np.abs(np.load(image).astype(np.float64) - ref)
            max_d, diff = f"{d.max():.2e}", f"{d.mean():.2e}"
        ratio = f"{r['edit_s'] / fp16['edit_s']:.2f}" if fp16 else "–"
        weights = r.get("unet_dtype", r["dtype"]) + (f" (cast {r['manual_cast']})" if r.get("manual_cast") not in
                                                      (None, "None") else "")  # fmt: skip
        lines.append(f"| {r['name']} | {weights} | {r.get('vae_dtype', r['dtype'])} | {r['edit_s']:.3f} | {ratio} | "
                     f"{r['load_s']:.1f} | {r.get(memory_key, float('nan')):.0f} | {max_d} | {diff} |")
    for path in sorted(folder.glob("fleet-*/report.json")):
        report = json.loads(path.read_text())
        workers = ", ".join(f"{w['worker']} {w['rows_done']}" for w in report["workers"])
        lines.append("")
        lines.append(f"client batch --ray, {path.parent.name}: {report['succeeded']} of {len(report['rows'])} rows, "
                     f"{report['rows_per_s'] or 0:.3f} rows/s (first row sent to last ended), {report['elapsed_s']:.0f} s "
                     f"in all; rows per worker: {workers}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["weights", "ours", "diffusers", "rows", "summary"])
    parser.add_argument("folder", nargs="?", type=Path, help="summary: the folder of results")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "fp16", "bf16"])
    parser.add_argument("--dtype", default="fp16")
    parser.add_argument("--lowvram", action="store_true")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.what == "summary":
        sys.stdout.write(summary(args.folder))
        return 0
    if args.what == "weights":
        sys.stdout.write(json.dumps({k: str(v) for k, v in model_files(args.tiny).items()}) + "\n")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what == "rows":
        doc = make_rows(args)
        sys.stdout.write(json.dumps(doc) + "\n")
        return 0
    doc = run_ours(args) if args.what == "ours" else run_diffusers(args)
    name = f"{args.what}{'-lowvram' if args.lowvram else ''}.json"
    (args.out / name).write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
