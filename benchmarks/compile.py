"""torch.compile (inductor, on the CPU) on the full-size Paint-by-Example UNet, through ComfyUI's own
``TorchCompileModel`` node: what compiling costs, what it gains per step, and after how many steps it pays off.

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/compile.py [--size 512] [--steps 10] [--reps 3] [--threads 2]
        [--cache-dir DIR] [--json FILE]

One process runs this pack inside ComfyUI in-process, as ``benchmarks/worker.py``'s ``ours`` worker does (the
full-size seeded weights of ``benchmarks/weights.py``, the loader's MODEL with its fast paths, the one-node sampler
with the ``reference`` sampler, fp32 unless ``--weight-dtype`` says otherwise):

1. an eager edit of ``--steps`` steps (warm-up: first-call allocations, the exemplar encoder);
2. the host's ``TorchCompileModel`` (backend ``inductor``) on that MODEL, and a first compiled edit of the same
   steps: its time minus the warm eager edit's is the compile time (dynamo tracing, inductor's code generation and
   the C++ compiler; the compiler's caches under ``--cache-dir``, default inductor's own, say whether they were warm);
3. ``--reps`` pairs of edits, eager and compiled, the order alternating (the same seed and inputs); the medians give
   the gain per UNet step ((eager - compiled) / steps: the VAE and the exemplar encoder are not compiled);
4. the compiled image's largest difference from the eager one (pixels in 0..1), and the CPU's name and flags.

The compile time over the gain per step is the number of steps a compiled MODEL must run before it has paid for
itself (a 50-step edit runs 50 UNet calls, each a CFG batch of two; the compiled graph is kept for as long as the
MODEL and its input sizes stay the same). On the CPU inductor needs a C++ compiler (``cc``/``g++`` on PATH).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

log = logging.getLogger("pbe.bench.compile")


def main() -> None:
    ap = argparse.ArgumentParser(description="torch.compile on the full-size PbE UNet through TorchCompileModel")
    ap.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_PATH"))
    ap.add_argument("--weights", type=Path, default=HERE / ".weights")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weight-dtype", default="default", help="the loader's weight_dtype (default: fp32 on the CPU)")
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="inductor's cache folder (TORCHINDUCTOR_CACHE_DIR); an empty or new one measures a cold compile")
    ap.add_argument("--json", type=Path, default=None, help="write the measurements here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if not args.comfyui or not (Path(args.comfyui) / "main.py").is_file():
        ap.error("set --comfyui or COMFYUI_PATH to a ComfyUI folder")
    # before torch is imported: the thread count, no spinning OpenMP threads, where inductor keeps its caches
    os.environ.update(OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    if args.cache_dir:
        args.cache_dir.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(args.cache_dir.resolve())
    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    # None: inductor's default folder, whose state this script does not know
    cache_warm = (Path(cache).is_dir() and any(Path(cache).iterdir())) if cache else None
    if not shutil.which("cc") and not shutil.which("g++"):
        ap.error("inductor needs a C++ compiler on the CPU: install one (e.g. gcc/g++)")

    from machine import machine
    from weights import ensure_weights
    from worker import Ours

    ensure_weights(args.weights)
    ours = Ours(str(args.comfyui), args.weights, [])
    loaded = ours.load("original-fp32.safetensors", weight_dtype=args.weight_dtype)
    for timer in ours.timers.values():
        timer.remove()
    ours.stop_counting()
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    eager = ours.model
    compiled = TorchCompileModel.execute(eager, "inductor").args[0]

    def edit(model) -> dict:
        ours.model = model
        return ours.edit(args.size, args.steps, 1234, 5.0)

    log.info("warm-up: an eager edit of %d steps at %d²", args.steps, args.size)
    warm = edit(eager)
    log.info("eager edit %.1f s; compiling (first compiled edit) ...", warm["total_s"])
    first = edit(compiled)
    log.info("first compiled edit %.1f s", first["total_s"])
    images = {}
    times = {"eager": [], "compiled": []}
    for rep in range(args.reps):
        for name in (("eager", "compiled") if rep % 2 == 0 else ("compiled", "eager")):
            res = edit(eager if name == "eager" else compiled)
            times[name].append(res["total_s"])
            images[name] = ours.last.float()
            log.info("rep %d %s: %.1f s", rep, name, res["total_s"])
    eager_s, compiled_s = statistics.median(times["eager"]), statistics.median(times["compiled"])
    gain_per_step = (eager_s - compiled_s) / args.steps
    compile_s = first["total_s"] - eager_s
    result = {
        "machine": machine(), "threads": args.threads, "size": args.size, "steps": args.steps, "reps": args.reps,
        "load": loaded, "inductor_cache_dir": cache or "inductor's default", "inductor_cache_warm_at_start": cache_warm,
        "edit_s": times, "warm_up_eager_s": warm["total_s"], "first_compiled_s": first["total_s"],
        "median_eager_s": eager_s, "median_compiled_s": compiled_s, "compiled_over_eager": compiled_s / eager_s,
        "compile_s": compile_s, "gain_per_step_s": gain_per_step,
        "pays_off_after_steps": compile_s / gain_per_step if gain_per_step > 0 else None,
        "max_abs_diff_compiled_vs_eager": (images["compiled"] - images["eager"]).abs().max().item(),
        "command": "COMFYUI_PATH=... python " + " ".join(sys.argv),
    }
    import torch._dynamo.utils

    counters = torch._dynamo.utils.counters
    result["dynamo"] = {"stats": dict(counters["stats"]), "graph_breaks": sum(counters["graph_break"].values()),
                        "recompile_limit_hit": any("recompile_limit" in k for k in counters["frames"])}
    log.info("%s", json.dumps({k: v for k, v in result.items() if k not in ("load", "edit_s")}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
