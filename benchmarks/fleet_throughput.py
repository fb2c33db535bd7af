"""Rows per second of ``batch --ray`` with 1 and 2 private CPU workers, against the single-server client, in one run.

    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/fleet_throughput.py [--rows 24] [--steps 2 20] [--json FILE]

Each configuration edits the same rows (tiny random Paint-by-Example model from tests/support/pbe_fixtures.py, 128²
photos, ``working_size=0``, so the edit is the whole photo) into a fresh output folder:

* ``single server``: one private ComfyUI with all the machine's threads, driven by ``jobs.run_batch`` (no Ray);
* ``fleet, 1 worker``: ``fleet.run_fleet`` with one private worker holding all the threads;
* ``fleet, 2 workers``: two private workers, the threads split between them.

Rows/s counts from the first row sent to the last row ended (the model's first load on each server included; the
servers' and Ray's start-up are reported apart). The driver's own serial work per row (reading and hashing a row's
files, writing its result with fsync) is timed alone: it bounds what any number of workers can reach. The
configurations run one after another, in the order given, ``--repeats`` times, rotating. OMP_WAIT_POLICY=PASSIVE.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(REPO / "tests" / "support")]
os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

from pbe_core.client import fleet, jobs, workflow  # noqa: E402
from pbe_core.client.api import ComfyClient  # noqa: E402
from pbe_core.client.embedded import PrivateComfyUI  # noqa: E402
from pbe_core.client.results import ResultStore  # noqa: E402

log = logging.getLogger("pbe.bench.fleet")


def machine() -> str:
    """The machine as the benchmark reports name it (benchmarks/machine.py: CPU model, AVX-512 / AMX flags), and this Python."""
    from benchmarks.machine import machine as named

    return f"{named()}, Python {platform.python_version()}"


def make_rows(folder: Path, n: int) -> Path:
    """``n`` CSV rows: 128² photo-like sources, a box mask, one shared exemplar, seeds 0..n-1."""
    import numpy as np
    from host_util import BOX, SIZE
    from images import make_photo, png_bytes
    from PIL import Image

    (folder / "in").mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_photo(224, 224, 7)).save(folder / "exemplar.jpg", quality=95)
    y0, y1, x0, x1 = BOX
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[y0:y1, x0:x1] = 255
    lines = ["source,mask,exemplar,seed"]
    for k in range(n):
        (folder / "in" / f"p{k}.png").write_bytes(png_bytes(make_photo(SIZE, SIZE, 100 + k)))
        (folder / "in" / f"p{k}_mask.png").write_bytes(png_bytes(mask))
        lines.append(f"in/p{k}.png,in/p{k}_mask.png,exemplar.jpg,{k}")
    (folder / "rows.csv").write_text("\n".join(lines) + "\n")
    return folder / "rows.csv"


def settings_for(out: Path, steps: int, model: Path) -> jobs.Settings:
    return jobs.Settings(workflow=workflow.load_workflow(workflow.DEFAULT_WORKFLOW), out_dir=out, model=model.name,
                         values={"steps": steps}, sets=[("Paint by Example", "working_size", 0)],
                         model_path=model, identity={"model": str(model)})  # fmt: skip


def single_server(comfyui: Path, rows: list, settings: jobs.Settings, threads: int) -> dict:
    started = time.monotonic()
    server = PrivateComfyUI(comfyui, python=sys.executable, models={settings.model: settings.model_path},
                            extra_args=["--cpu"], env={"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    try:
        server.start()
        startup = time.monotonic() - started
        client = ComfyClient(server.base_url, progress=False)
        t0 = time.monotonic()
        report, status = jobs.run_batch(client, rows, settings)
        seconds = time.monotonic() - t0
    finally:
        server.stop()
    assert status == 0 and report["succeeded"] == len(rows), report
    return {"rows_per_s": len(rows) / seconds, "startup_s": startup, "batch_s": seconds}


def on_fleet(comfyui: Path, rows: list, settings: jobs.Settings, workers: int, threads: int) -> dict:
    options = fleet.FleetOptions(workers=workers, cpus_per_worker=threads // workers, progress=False, private={
        "comfyui": str(comfyui), "python": sys.executable, "model_name": settings.model,
        "model_path": str(settings.model_path)})  # fmt: skip
    t0 = time.monotonic()
    report, status = fleet.run_fleet(rows, settings, options)
    wall = time.monotonic() - t0
    assert status == 0 and report["succeeded"] == len(rows), json.dumps(report)[:3000]
    worker_s = [t["seconds"] for r in report["rows"] for t in r["tries"] if t["outcome"] == "done"]
    ready = max(w["ready_after_s"] for w in report["workers"])
    return {"rows_per_s": report["rows_per_s"], "startup_s": report["ray"]["startup_s"] + ready, "wall_s": wall,
            "ray_s": report["ray"]["startup_s"], "worker_s_per_row": statistics.median(worker_s),
            "per_worker": {w["worker"]: w["rows_done"] for w in report["workers"]}}  # fmt: skip


def driver_serial(rows: list, settings: jobs.Settings, out: Path) -> dict:
    """Seconds per row of the driver's own work: the row's key (read + hash every file) and writing a result of the
    size the edits make (fsync), as the driver does for every row whatever the number of workers."""
    store = ResultStore(out)
    result = os.urandom(50_000)  # about the size of a 128² edit's PNG
    t0 = time.monotonic()
    keys = [jobs.job_key(job, settings)[2] for job in rows]
    t1 = time.monotonic()
    for job, key in zip(rows, keys, strict=True):
        store.write(job.name, key, [(".png", result)])
    t2 = time.monotonic()
    return {"key_s_per_row": (t1 - t0) / len(rows), "write_s_per_row": (t2 - t1) / len(rows)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_PATH"))
    parser.add_argument("--rows", type=int, default=24)
    parser.add_argument("--steps", type=int, nargs="+", default=[2, 20])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="threads in all (default: cores)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.comfyui is None:
        parser.error("give --comfyui or set COMFYUI_PATH")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import pbe_fixtures

    model = pbe_fixtures.write_all_layouts(pbe_fixtures.fixture_root())["original.ckpt"]
    work = Path(tempfile.mkdtemp(prefix="pbe-fleet-bench-"))
    results: dict = {"machine": machine(), "threads": args.threads, "rows": args.rows, "omp_wait_policy": "PASSIVE",
                     "configs": {}}  # fmt: skip
    try:
        rows = jobs.jobs_from_csv(make_rows(work, args.rows))
        configs = [("single server", lambda s: single_server(args.comfyui, rows, s, args.threads)),
                   ("fleet, 1 worker", lambda s: on_fleet(args.comfyui, rows, s, 1, args.threads)),
                   ("fleet, 2 workers", lambda s: on_fleet(args.comfyui, rows, s, 2, args.threads))]  # fmt: skip
        for steps in args.steps:
            for rep in range(args.repeats):
                order = configs[rep % len(configs):] + configs[:rep % len(configs)]
                for name, fn in order:
                    out = work / f"out-{steps}-{rep}-{name.replace(' ', '_').replace(',', '')}"
                    log.info("steps %d, repeat %d: %s", steps, rep + 1, name)
                    m = fn(settings_for(out, steps, model))
                    log.info("  %.3f rows/s (%s)", m["rows_per_s"], json.dumps(m))
                    results["configs"].setdefault(f"{steps}", {}).setdefault(name, []).append(m)
                    shutil.rmtree(out, ignore_errors=True)
        results["driver_serial"] = driver_serial(rows, settings_for(work / "serial", 2, model), work / "serial")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines = [f"machine: {results['machine']}", f"{args.threads} threads in all, OMP_WAIT_POLICY=PASSIVE, "
             f"{args.rows} rows per configuration", "",
             "| steps | configuration | rows/s | / fleet 1 worker | / single server | start-up s | worker s/row |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for steps, by_name in results["configs"].items():
        rate = {name: statistics.median(m["rows_per_s"] for m in ms) for name, ms in by_name.items()}
        for name, ms in by_name.items():
            worker_s = statistics.median(m.get("worker_s_per_row", float("nan")) for m in ms)
            lines.append(f"| {steps} | {name} | {rate[name]:.3f} | {rate[name] / rate['fleet, 1 worker']:.2f} | "
                         f"{rate[name] / rate['single server']:.2f} | "
                         f"{statistics.median(m['startup_s'] for m in ms):.1f} | {worker_s:.3f} |")
    serial = results["driver_serial"]
    lines += ["", f"driver's serial work per row: key {serial['key_s_per_row'] * 1000:.1f} ms, result write "
              f"{serial['write_s_per_row'] * 1000:.1f} ms"]  # fmt: skip
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
