"""Peak RSS of ``load_state_dict`` on a Lightning training checkpoint, next to ``torch.load``.

Writes (once) a checkpoint of ``--weights-mb`` MB of fp32 weights plus twice that of AdamW state, then
runs each loader in a fresh process that loads the state dict and sums every tensor (touching every
byte), and reports its ``ru_maxrss``. This parent process stays small and never imports torch: on
Linux a child's ``ru_maxrss`` starts from its parent's RSS at fork. ``torch.load(weights_only=False)``
runs only because this script wrote the file itself; it gets a stub ``pytorch_lightning`` module.
Usage: ``python tests/support/measure_load_rss.py --dir /tmp/rss --weights-mb 200``.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

WRITE = """
import sys, torch
from lightning_pickle import save_lightning_checkpoint
g = torch.Generator().manual_seed(0)
sd = {f"model.diffusion_model.p{i}": torch.randn(1024, 1024, generator=g) for i in range(int(sys.argv[2]) // 4)}
save_lightning_checkpoint(sys.argv[1], sd, training=True)
"""
LOADERS = {
    "baseline (imports only, nothing loaded)": "sd = {}",
    "safe_torch_load.load_state_dict": "sd = load_state_dict(path)",
    "torch.load(mmap=False, weights_only=False)": "sd = torch.load(path, mmap=False, weights_only=False)['state_dict']",
    "torch.load(mmap=True, weights_only=False)": "sd = torch.load(path, mmap=True, weights_only=False)['state_dict']",
}
CHILD = """
import resource, sys, types, torch
from pbe_core.weights.safe_torch_load import load_state_dict
for name in ("pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"):
    sys.modules[name] = types.ModuleType(name)  # stub, so that plain torch.load can resolve the callback class
sys.modules["pytorch_lightning.callbacks.model_checkpoint"].ModelCheckpoint = type("ModelCheckpoint", (), {{}})
path = sys.argv[1]
{load}
total = sum(float(t.sum(dtype=torch.float64)) for t in sd.values())
scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
sys.stdout.write(f"{{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20:.0f}} {{len(sd)}} {{total:.6g}}")
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--weights-mb", type=int, default=200)
    args = ap.parse_args()
    here = Path(__file__).resolve().parent
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(here.parents[1]), str(here)]))
    path = args.dir / f"training-{args.weights_mb}mb.ckpt"
    if not path.exists():
        args.dir.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-c", WRITE, str(path), str(args.weights_mb)], env=env, check=True)
    sys.stdout.write(f"{path}: {path.stat().st_size / 2**20:.0f} MiB\n")
    for name, load in LOADERS.items():
        cmd = [sys.executable, "-c", CHILD.format(load=load), str(path)]
        rss, count, total = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout.split()
        sys.stdout.write(f"{name:45s} peak RSS {rss:>5s} MiB  ({count} tensors, sum {total})\n")


if __name__ == "__main__":
    main()
