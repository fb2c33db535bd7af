"""This pack in ComfyUI vs diffusers' PaintByExamplePipeline on the same full-size weights: one command.

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/run.py [--sizes 256 512] [--steps 4] [--reps 3] [--threads 2]

1. builds the real 1.31 B-parameter architecture with seeded random weights (no download) and writes it in both
   layouts (``benchmarks/weights.py``, git-ignored ``benchmarks/.weights/``, reused on later runs);
2. starts two worker processes (``benchmarks/worker.py``): this pack's nodes inside ComfyUI, and diffusers;
3. per size: one warm-up edit each, then ``--reps`` edits each, interleaved (the order alternates every repetition),
   same seed, steps, cfg 5, fp32 on the CPU; per edit the end-to-end time and, from forward hooks, the time in the
   UNet, the VAE encoder and decoder and the exemplar encoder;
4. the gains of the single-token fast path and of the shared CFG prefix: UNet evaluations alone with and without
   each, interleaved; and of channels-last kernels: a UNet call and a VAE encode + decode in each memory order;
5. photo size: the pack's edit of 512, 1024, 2048 and 4096-pixel-square photos whose mask covers 10%;
6. prints the ratios (ours / diffusers) last and writes everything, with the command, machine and versions, to
   ``docs/benchmarks.md``.

Medians of the repetitions are reported. Both workers get ``OMP_WAIT_POLICY=PASSIVE`` (spinning OpenMP threads slow
torch down many times on a shared machine) and ``--threads`` threads. The parent imports no torch, so each worker's
peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from measure import PRECISION_VARIANTS, SECTIONS, run
from report import combine, portable, write_report

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

log = logging.getLogger("pbe.bench")


def main() -> None:
    ap = argparse.ArgumentParser(description="Paint by Example: this pack in ComfyUI vs diffusers, same weights.")
    ap.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_PATH"),
                    help="ComfyUI folder (default: $COMFYUI_PATH)")
    ap.add_argument("--weights", type=Path, default=HERE / ".weights")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--photo-sizes", type=int, nargs="*", default=[1024, 2048, 4096])
    ap.add_argument("--photo-steps", type=int, default=1)
    ap.add_argument("--fast-path-edits", action="store_true", help="also time whole edits with the fast path off")
    ap.add_argument("--precision-size", type=int, default=512, help="precision section: edit size (default 512)")
    ap.add_argument("--precision-steps", type=int, default=50,
                    help="precision section: steps of the headline edit (default 50, what users run)")
    ap.add_argument("--precision-breakdown-steps", type=int, default=4,
                    help="precision section: steps of the shorter edit whose per-network times are the breakdown")
    ap.add_argument("--precision-variants", nargs="+", choices=list(PRECISION_VARIANTS), default=list(PRECISION_VARIANTS),
                    help="precision section: which implementations to run (default: all four, which the targets need)")
    ap.add_argument("--no-precision-probes", dest="precision_probes", action="store_false",
                    help="precision section: skip the kernel and per-precision UNet probes")
    ap.add_argument("--no-sdpa-variant", dest="sdpa_variant", action="store_false",
                    help="skip the pack's second run under ComfyUI's --use-pytorch-cross-attention")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw measurements here")
    ap.add_argument("--flops", type=Path, default=None,
                    help="counts from benchmarks/flops.py --json: adds 'The limit' (FLOP/s reached) to the report")
    ap.add_argument("--compile", type=Path, nargs="+", default=None,
                    help="runs of benchmarks/compile.py --json: adds the torch.compile section (the first cold)")
    ap.add_argument("--note", action="append", default=[], help="with --render: a line for the report's setup")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                    help="what to measure (default: all); the report needs all of them, see --render")
    ap.add_argument("--render", type=Path, nargs="+", default=None,
                    help="do not measure: rewrite --out from runs saved with --json; a later file's sections replace "
                    "an earlier one's")
    args = ap.parse_args()
    if args.render:
        report = combine([json.loads(p.read_text())["report"] for p in args.render])
        report["notes"] = report["notes"] + args.note
        if args.flops:
            report["flops"] = json.loads(args.flops.read_text())
        if args.compile:
            report["compile"] = [json.loads(p.read_text()) for p in args.compile]
        write_report(args.out, report, report["command"])
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if not args.comfyui or not (Path(args.comfyui) / "main.py").is_file():
        ap.error("set --comfyui or COMFYUI_PATH to a ComfyUI folder")
    if args.reps < 3:
        log.warning("--reps %d: medians of fewer than 3 repetitions are not what docs/benchmarks.md reports", args.reps)
    command = portable("COMFYUI_PATH=... " + " ".join(shlex.quote(x) for x in [Path(sys.executable).name, *sys.argv]))
    report = run(args)
    report["command"] = command
    if args.flops:
        report["flops"] = json.loads(args.flops.read_text())
    if args.json:
        args.json.write_text(json.dumps({"report": report}, indent=1, default=str))
    if set(args.sections) == {"precision"}:
        write_report(args.out, report, command)  # a report of its own
        return
    if set(args.sections) != set(SECTIONS):
        log.info("partial run (%s): combine it with a full one: --render FULL.json THIS.json", ", ".join(args.sections))
        return
    write_report(args.out, report, command)


if __name__ == "__main__":
    main()
