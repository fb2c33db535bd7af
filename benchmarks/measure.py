"""The measurements of ``benchmarks/run.py``: worker processes (``benchmarks/worker.py``) driven section by section,
the raw results as a dict (saved with ``--json``; ``benchmarks/report.py`` turns them into the report).

Every section interleaves the implementations it compares, so a shared machine's load falls on all of them alike.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_info, machine

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

log = logging.getLogger("pbe.bench")

#: what can be measured, each on its own (``--sections``)
SECTIONS = ("main", "fast_path", "layout", "cache", "photo", "precision")


#: the implementations compared: worker kind and the host flags it runs with (ComfyUI's own command-line options)
VARIANTS = {
    "ours": ("ours", []),
    # ComfyUI picks sub-quadratic attention on a CPU; --use-pytorch-cross-attention makes it use torch's SDPA
    "ours_sdpa": ("ours", ["use_pytorch_cross_attention"]),
    "diffusers": ("diffusers", []),
}


class Worker:
    def __init__(self, kind: str, weights: Path, env: dict, logfile: Path, flags=()):
        self.kind = kind
        self.peak_rss_mib = 0.0
        self._log = open(logfile, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "worker.py"), kind, str(weights), *flags],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env, text=True,
        )
        self.last: dict = {}

    def __call__(self, op: str, **kw) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.kind} worker died; see its log")
        res = json.loads(line)
        if "error" in res:
            raise RuntimeError(f"{self.kind} {op} {kw}: {res['error']}")
        self.last = res
        self.peak_rss_mib = max(self.peak_rss_mib, res.get("peak_rss_mib", 0.0))
        return res

    def close(self) -> None:
        try:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(60)
        finally:
            self._log.close()


def versions(env: dict) -> dict:
    code = (
        "import json, torch, diffusers, transformers, numpy, sys; "
        "sys.path.insert(0, sys.argv[1]); import comfyui_version; "
        "print(json.dumps({'python': sys.version.split()[0], 'torch': torch.__version__, "
        "'diffusers': diffusers.__version__, 'transformers': transformers.__version__, 'numpy': numpy.__version__, "
        "'comfyui': comfyui_version.__version__}))"
    )
    out = subprocess.run([sys.executable, "-c", code, env["COMFYUI_PATH"]], env=env, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {"error": out.stderr[-500:]}


def run(args) -> dict:
    """Every section of ``args.sections``: the raw measurements, with the run's commit, machine and versions."""
    env = worker_environment(args)
    log.info("weights: %s", args.weights)
    subprocess.run([sys.executable, str(HERE / "weights.py"), "--dir", str(args.weights)], env=env, check=True)
    logdir = args.weights / "logs"
    logdir.mkdir(exist_ok=True)
    report = run_record(args, env)
    sections = set(args.sections)
    if "precision" in sections:  # first, and alone: its workers are started one at a time (see run_precision)
        report["precision"] = run_precision(args, env, logdir)
        sections.discard("precision")
    if not sections:
        return report
    names = [n for n in VARIANTS if (n != "ours_sdpa" or args.sdpa_variant) and (n != "diffusers" or "main" in sections)]
    report["variants"] = names
    workers = {n: Worker(VARIANTS[n][0], args.weights, env, logdir / f"{n}.log", VARIANTS[n][1]) for n in names}
    try:
        for name, w in workers.items():
            res = w("load", name="original-fp32.safetensors") if w.kind == "ours" else w("load")
            report[f"load_{name}"] = res
            log.info("%s loaded: %s", name, res)
        if "main" in sections:
            report.update(measure_main(args, workers, logdir, env))
        if "fast_path" in sections:
            report["fast_path"] = measure_fast_path(args, workers)
        steps = {"layout": measure_layout, "cache": measure_exemplar_cache, "photo": measure_photo_sizes}
        for section, measure in steps.items():
            if section in sections:
                report.update(measure(args, workers["ours"]))
        for name, w in workers.items():
            report[f"final_{name}"] = w.last  # every answer carries the worker's peak RSS so far
    finally:
        for w in workers.values():
            w.close()
    return report


def worker_environment(args) -> dict:
    env = dict(os.environ)
    env.update(OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               COMFYUI_PATH=str(args.comfyui), PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    deps = HERE / ".deps"  # optional: `pip install --target benchmarks/.deps accelerate` without touching the venv
    if deps.is_dir():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(deps), env.get("PYTHONPATH", "")) if p)
    return env


def run_record(args, env: dict) -> dict:
    """What a report says of the run itself: its arguments, commit, machine, versions and start."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return {"args": vars(args) | {"weights": str(args.weights), "comfyui": str(args.comfyui)},
            "commit": (commit.stdout.strip() or "?") + (" with uncommitted changes" if dirty else ""),
            "machine": machine(), "versions": versions(env), "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def rotations(items, r: int) -> list:
    """``items`` in the order of repetition ``r``: every item takes every position in turn."""
    k = r % len(items)
    return list(items[k:]) + list(items[:k])


def measure_main(args, workers: dict, logdir: Path, env: dict) -> dict:
    """Whole edits of every implementation at every size, interleaved; the agreement of ours and diffusers."""
    order = list(workers)
    edits: dict = {}
    out: dict = {}
    for size in args.sizes:
        common = dict(size=size, steps=args.steps, seed=args.seed, cfg=args.cfg)
        for name in order:  # warm-up (first touch of the weights, allocator, oneDNN primitives)
            workers[name]("edit", **common)
        if size == min(args.sizes):  # same inputs, same noise: the two results should agree inside the mask
            paths = {}
            for name in ("ours", "diffusers"):
                paths[name] = str(logdir / f"{name}-{size}.safetensors")
                workers[name]("save_last", path=paths[name])
            out["agreement"] = {"size": size, **compare(paths["ours"], paths["diffusers"], size, env)}
        for r in range(args.reps):
            for name in rotations(order, r):
                res = workers[name]("edit", **common)
                edits.setdefault(f"{name}@{size}", []).append(res)
                log.info("%s %d rep %d: %.1f s (UNet %.1f s)", name, size, r, res["total_s"], res["unet_s"])
    out["edits"] = edits
    # peak RSS after the same work in all (ru_maxrss only grows: the later sections are the pack's alone)
    out["peak_compared"] = {name: w.last["peak_rss_mib"] for name, w in workers.items()}
    return out


def measure_fast_path(args, workers: dict) -> dict:
    """The fast paths' gain on the UNet alone, interleaved, under each host attention; with --fast-path-edits also
    on whole edits."""
    size = max(args.sizes)
    out: dict = {"size": size}
    variants = ("all", "no_single_token", "no_shared_prefix")
    for name in [n for n in workers if n != "diffusers"]:
        w = workers[name]
        for v in variants:
            w("unet", size=size, calls=1, variant=v)
        times: dict = {v: [] for v in variants}
        for r in range(args.reps):
            for v in rotations(variants, r):
                times[v].extend(w("unet", size=size, calls=1, variant=v)["times"])
        key = "" if name == "ours" else f"_{name}"
        out.update({f"fast_s{key}": times["all"], f"plain_s{key}": times["no_single_token"],
                    f"unshared_s{key}": times["no_shared_prefix"]})
    if args.fast_path_edits:
        common = dict(size=size, steps=args.steps, seed=args.seed, cfg=args.cfg)
        fe, pe = [], []
        for r in range(args.reps):
            for f in (True, False) if r % 2 == 0 else (False, True):
                (fe if f else pe).append(workers["ours"]("edit", fast=f, **common)["total_s"])
        out.update(edit_fast_s=fe, edit_plain_s=pe)
    return out


def measure_layout(args, ours: Worker) -> dict:
    """Channels-last convolution kernels (as the pack loads them on the CPU) against the same kernels in NCHW order."""
    size = max(args.sizes)
    for cl in (True, False):  # warm-up: oneDNN builds its primitives for each order once
        ours("layout", size=size, channels_last=cl)
    lay: dict = {"size": size, "channels_last": [], "nchw": []}
    for r in range(args.reps):
        for cl in (True, False) if r % 2 == 0 else (False, True):
            lay["channels_last" if cl else "nchw"].append(ours("layout", size=size, channels_last=cl))
    return {"layout": lay}


def measure_exemplar_cache(args, ours: Worker) -> dict:
    """Exemplar encoding once: a second edit with only the seed changed does not run the encoder again."""
    common = dict(size=min(args.sizes), steps=args.steps, cfg=args.cfg)
    a = ours("edit", seed=args.seed + 1, **common)
    b = ours("edit", seed=args.seed + 2, cold_exemplar=False, **common)
    return {"exemplar_cache": {"first_calls": a["exemplar_calls"], "seed_change_calls": b["exemplar_calls"],
                               "first_s": a["total_s"], "seed_change_s": b["total_s"]}}


def measure_photo_sizes(args, ours: Worker) -> dict:
    """Photo size: a 10% mask on an N x N photo, edited in a 512 window."""
    photo: dict = {}
    for r in range(args.reps):
        for n in rotations([512, *args.photo_sizes], r):
            res = ours("edit", size=512, photo=n, steps=args.photo_steps, seed=args.seed, cfg=args.cfg)
            photo.setdefault(str(n), []).append(res)
            log.info("photo %d rep %d: %.1f s", n, r, res["total_s"])
    return {"photo": photo}


#: the precision section's implementations: worker kind and load options. "ours fp32" is the pack's CPU default
#: (weight_dtype "default" = fp32 there); diffusers' half precision is its own torch_dtype.
PRECISION_VARIANTS = {
    "ours_fp32": ("ours", {"weight_dtype": "default"}),
    "ours_bf16": ("ours", {"weight_dtype": "bf16"}),
    "diffusers_fp32": ("diffusers", {"dtype": "fp32"}),
    "diffusers_bf16": ("diffusers", {"dtype": "bf16"}),
}
#: what the precision section's kernel and UNet probes run under: oneDNN's instruction set, standing in for other CPUs
PRECISION_ISAS = {
    "": "this CPU (AMX where it has it)",
    "AVX512_CORE_BF16": "oneDNN held to AVX-512 BF16 (stands in for avx512_bf16 without AMX: Xeon Cooper Lake, AMD Zen 4/5)",
    "AVX512_CORE": "oneDNN held to AVX-512 without bf16 instructions (Xeon Skylake-SP..Ice Lake)",
}
UNET_PRECISION_VARIANTS = {
    "": ["fp32", "bf16_native", "bf16_host_cast", "fp16_native", "fp16_host_cast"],
    "AVX512_CORE_BF16": ["fp32", "bf16_native", "bf16_host_cast"],
}


def run_precision(args, env: dict, logdir: Path) -> dict:
    """The pack in bf16 and fp32 against diffusers in bf16 and fp32: whole edits at ``--precision-size``,
    ``--precision-steps`` steps (the headline) and ``--precision-breakdown-steps`` steps (where the time goes).

    Every repetition starts each implementation's worker afresh, one at a time, in an order that rotates: four
    full-size models at once would not fit beside each other in 24 GB, and each worker's peak RSS is then that of
    exactly this work (loading, a 1-step warm-up edit, the two timed edits). The first repetition's long edits are
    saved and compared (bf16 against fp32 of the same implementation, ours against diffusers). The pack's bf16 worker
    also times its channels-last layout against NCHW (after its peak RSS is taken: the comparison copies modules).
    Then the probes behind the choice of precisions: single kernels (fp32 / bf16 / fp16) and whole UNet calls per
    precision, on this CPU and with oneDNN held to lower instruction sets.
    """
    size, steps, bsteps = args.precision_size, args.precision_steps, args.precision_breakdown_steps
    out: dict = {"size": size, "steps": steps, "breakdown_steps": bsteps, "reps": args.reps, "cpu": cpu_info(),
                 "machine": machine(), "load": {}, "edits": {}, "breakdown": {}, "peak_rss_mib": {}, "layout": []}
    order = [n for n in PRECISION_VARIANTS if n in args.precision_variants]
    saved: dict = {}
    common = dict(size=size, seed=args.seed, cfg=args.cfg)
    for r in range(args.reps):
        for name in rotations(order, r):
            kind, options = PRECISION_VARIANTS[name]
            w = Worker(kind, args.weights, env, logdir / f"precision-{name}.log")
            try:
                load = w("load", name="original-fp32.safetensors", **options) if kind == "ours" else w("load", **options)
                out["load"].setdefault(name, []).append(load)
                w("edit", steps=1, **common)  # warm-up: oneDNN's primitives, the first touch of every weight
                res = w("edit", steps=steps, **common)
                out["edits"].setdefault(name, []).append(res)
                log.info("precision %s rep %d: %d steps %.1f s (UNet %.1f s)", name, r, steps, res["total_s"],
                         res["unet_s"])
                if r == 0:
                    saved[name] = str(logdir / f"precision-{name}-{size}.safetensors")
                    w("save_last", path=saved[name])
                out["breakdown"].setdefault(name, []).append(w("edit", steps=bsteps, **common))
                out["peak_rss_mib"].setdefault(name, []).append(w.peak_rss_mib)
                if name == "ours_bf16":
                    lay = {}
                    for cl in (True, False):
                        w("layout", size=size, channels_last=cl)  # warm-up, and the copies in the other order
                    for cl in (True, False) if r % 2 == 0 else (False, True):
                        lay["channels_last" if cl else "nchw"] = w("layout", size=size, channels_last=cl)
                    out["layout"].append(lay)
            finally:
                w.close()
    pairs = {"ours_bf16/ours_fp32": ("ours_bf16", "ours_fp32"),
             "diffusers_bf16/diffusers_fp32": ("diffusers_bf16", "diffusers_fp32"),
             "ours_bf16/diffusers_bf16": ("ours_bf16", "diffusers_bf16"),
             "ours_fp32/diffusers_fp32": ("ours_fp32", "diffusers_fp32")}
    out["agreement"] = {k: compare(saved[a], saved[b], size, env) for k, (a, b) in pairs.items()
                        if a in saved and b in saved}
    if args.precision_probes:
        out["kernels"], out["unet_precisions"] = {}, {}
        for isa in PRECISION_ISAS:
            probe_env = dict(env, ONEDNN_MAX_CPU_ISA=isa) if isa else env
            w = Worker("kernels", args.weights, probe_env, logdir / f"kernels-{isa or 'default'}.log")
            try:
                out["kernels"][isa] = {**w("load"), **w("kernels", reps=max(args.reps, 5))}
            finally:
                w.close()
            if isa in UNET_PRECISION_VARIANTS:
                w = Worker("ours", args.weights, probe_env, logdir / f"unet-precisions-{isa or 'default'}.log")
                try:
                    out["unet_precisions"][isa] = w("unet_precisions", name="original-fp32.safetensors", size=size,
                                                    reps=max(args.reps, 3), variants=UNET_PRECISION_VARIANTS[isa])
                finally:
                    w.close()
    return out


def compare(a: str, b: str, size: int, env: dict) -> dict:
    """Max / mean abs difference of two saved results inside the mask (0..1 pixels), in a throwaway process."""
    code = (
        "import sys, json, torch; sys.path.insert(0, sys.argv[3]); from worker import test_images; "
        "from safetensors.torch import load_file; a = load_file(sys.argv[1])['image']; "
        "b = load_file(sys.argv[2])['image']; _, r, _ = test_images(int(sys.argv[4])); "
        "m = torch.from_numpy(r).bool(); d = (a[m] - b[m]).abs(); "
        "print(json.dumps({'max_abs': d.max().item(), 'mean_abs': d.mean().item()}))"
    )
    out = subprocess.run([sys.executable, "-c", code, a, b, str(HERE), str(size)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
