"""Peak memory of opening the 12.6 GB *training* ``model.ckpt``: PBE_LoadModel and the converter, at real proportions.

    COMFYUI_PATH=/path/to/ComfyUI /path/to/comfy-python benchmarks/training_checkpoint_memory.py [--dir DIR]

The official checkpoint on the hub is a Lightning training checkpoint: 5.2 GB of fp32 weights (the whole model) and
7.4 GB of AdamW state (``exp_avg`` and ``exp_avg_sq`` of every trained parameter: UNet, mapper, final LayerNorm,
``proj_out``, learned vector), 1.4x the weights. This script writes one of exactly that shape from the full-size
random weights of ``benchmarks/weights.py`` (the same architecture, 1.31 B parameters; the optimizer state is zeros,
which costs the loader as much as any values), then runs, each in a fresh process:

* the converter: ``python -m pbe_core.convert train.ckpt out.safetensors --dtype fp16`` (and ``fp32``);
* ``PBE_LoadModel`` in ComfyUI (in-process, ``--cpu``): the node's ``execute`` on the file, as a prompt runs it,
  and the same followed by reading every weight once (the weights are views of the file's memory map, paged in when
  first used: this is what a first edit adds before its activations);
* for scale, a process that only imports what the loader imports.

For each: the peak resident set (``ru_maxrss``, exact) and, sampled every 20 ms from ``/proc/PID/status``, the peaks
of its anonymous part (``RssAnon``: memory the process owns) and its file-backed part (``RssFile``: pages of mapped
files, which the kernel can drop and re-read). Written to stdout as a table and, with ``--json``, to a file.
Linux only (``/proc``). About 13 GB of disk for the checkpoint, plus the outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
GIB = 2**30

WRITE = """
import sys, torch
from lightning_pickle import save_lightning_checkpoint
from pbe_core.weights.checkpoint import read_state_dict
from pbe_core.weights import layouts
src, dst, scratch = sys.argv[1:4]
sd = dict(read_state_dict(src))  # views of the file's memory map: nothing is copied
trained = [k for k in sd if k.startswith((layouts.UNET_PREFIX, layouts.MAPPER_PREFIX, layouts.FINAL_LN_PREFIX,
                                          layouts.PROJ_OUT_PREFIX)) or k == layouts.UNCOND_KEY]
n = sum(sd[k].numel() for k in trained)
# both moments of every trained parameter, as views of one zero-filled file mapping (evictable pages, not RAM)
with open(scratch, "wb") as f:
    f.truncate(2 * n * 4)
pool = torch.from_file(scratch, shared=True, size=2 * n, dtype=torch.float32)
offsets = {}
at = 0
for k in trained:
    offsets[k] = at
    at += sd[k].numel()
by_index = {i: k for i, k in enumerate(trained)}
def moments(param, i):
    a, m = offsets[by_index[i]], param.numel()
    return pool[a:a + m].view(param.shape), pool[n + a:n + a + m].view(param.shape)
save_lightning_checkpoint(dst, sd, optimizer_param_names=trained, training=True, moments=moments)
weights = sum(t.numel() * t.element_size() for t in sd.values())
sys.stdout.write(f"{weights} {2 * n * 4}")
"""

LOAD_NODE = """
import sys
sys.path[:0] = [sys.argv[2], sys.argv[3]]
from comfy_inprocess import import_host, pack_module
import_host(sys.argv[2])
import folder_paths
loader = pack_module("nodes.loader")
folder = sys.argv[1]
extensions = pack_module("pbe_core.weights.checkpoint").CHECKPOINT_EXTENSIONS
folder_paths.folder_names_and_paths["paint_by_example"] = ([folder], set(extensions))
{body}
"""

CASES = {
    "imports only (ComfyUI + the pack)": ("node", "pass"),
    "PBE_LoadModel on the training model.ckpt": ("node", "out = loader.LoadModel.execute('train.ckpt')"),
    # the weights are views of the file's memory map, read when first used: read every one, as a first edit does
    "PBE_LoadModel, then every weight read once": ("node", (
        "import torch\nmodel, encoder, vae = loader.LoadModel.execute('train.ckpt').result\n"
        "modules = (model.model, encoder.model, vae.first_stage_model)\n"
        "total = sum(float(p.double().sum()) for m in modules for p in m.parameters())"
    )),
    "converter, --dtype fp16": ("convert", "fp16"),
    "converter, --dtype fp32": ("convert", "fp32"),
}


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def measure(cmd: list[str], env: dict) -> dict:
    """Run ``cmd``; its exact peak RSS (the child prints its own ru_maxrss last) and sampled peaks of RssAnon and
    RssFile."""
    peaks = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample():
        while not done.is_set():
            st = _status(proc.pid)
            for k in peaks:
                peaks[k] = max(peaks[k], st.get(k, 0))
            time.sleep(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = proc.communicate()
    done.set()
    t.join()
    if proc.returncode:
        raise RuntimeError(f"{cmd[:4]} failed ({proc.returncode}):\n{err[-3000:]}")
    maxrss = int(out.strip().splitlines()[-1]) if out.strip() else 0
    return {"peak_rss": maxrss, "peak_anon": peaks["RssAnon"], "peak_file": peaks["RssFile"],
            "seconds": time.monotonic() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", type=Path, default=HERE / ".weights", help="where the full-size weights are (or go)")
    ap.add_argument("--work", type=Path, default=HERE / ".weights" / "training-memory",
                    help="where the training checkpoint and the converter's outputs are written")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    comfy = os.environ.get("COMFYUI_PATH")
    if not comfy:
        raise SystemExit("set COMFYUI_PATH to a ComfyUI folder (PBE_LoadModel runs inside it)")
    sys.path[:0] = [str(HERE)]
    from weights import ensure_weights

    original = ensure_weights(args.dir)["original"]
    args.work.mkdir(parents=True, exist_ok=True)
    ckpt = args.work / "train.ckpt"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests" / "support")]), OMP_WAIT_POLICY="PASSIVE",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    sizes = args.work / "sizes.txt"
    if not ckpt.exists() or not sizes.exists():
        scratch = args.work / "moments.scratch"
        r = subprocess.run([sys.executable, "-c", WRITE, str(original), str(ckpt), str(scratch)], env=env,
                           cwd=REPO, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"writing {ckpt} failed:\n{r.stderr[-3000:]}")
        scratch.unlink()
        sizes.write_text(r.stdout.strip().splitlines()[-1])
    weights_bytes, optimizer_bytes = map(int, sizes.read_text().split())
    file_bytes = ckpt.stat().st_size
    tail = "import resource; sys.stdout.write(f\"\\n{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}\")"
    results = {}
    for name, (kind, what) in CASES.items():
        if kind == "node":
            code = LOAD_NODE.format(body=what) + tail
            cmd = [sys.executable, "-c", code, str(args.work), comfy, str(REPO / "tests" / "support")]
        else:
            code = ("import runpy, sys; sys.argv = ['pbe_core.convert', *sys.argv[1:]]\n"
                    "try:\n    runpy.run_module('pbe_core.convert', run_name='__main__')\nexcept SystemExit as e:\n"
                    "    assert not e.code, e.code\n" + tail)
            out = args.work / f"converted-{what}.safetensors"
            cmd = [sys.executable, "-c", code, str(ckpt), str(out), "--dtype", what]
        # drop the file's cached pages first, so that each process starts from the same state where allowed
        subprocess.run(["sh", "-c", "sync; echo 1 > /proc/sys/vm/drop_caches"], capture_output=True)
        results[name] = measure(cmd, env)
        r = results[name]
        sys.stdout.write(f"{name:45s} peak RSS {r['peak_rss'] / GIB:6.2f} GiB = anon {r['peak_anon'] / GIB:5.2f} "
                         f"+ file-backed {r['peak_file'] / GIB:5.2f} (sampled peaks)  {r['seconds']:5.0f} s\n")
    cpu = platform.processor() or platform.machine()
    report = {
        "file_bytes": file_bytes, "weights_bytes": weights_bytes, "optimizer_bytes": optimizer_bytes,
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "python": sys.version.split()[0]}, "results": results,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    sys.stdout.write(f"file {file_bytes / GIB:.2f} GiB: weights {weights_bytes / GIB:.2f} GiB + optimizer state "
                     f"{optimizer_bytes / GIB:.2f} GiB ({optimizer_bytes / weights_bytes:.2f}x the weights)\n")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
