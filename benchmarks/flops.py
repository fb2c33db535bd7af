"""What a UNet call costs in arithmetic, counted: the FLOPs of one classifier-free-guidance call (batch 2) of the
full-size Paint-by-Example UNet, and of the single kernels the precision section's probes time.

    python benchmarks/flops.py [--sizes 256 512] [--json FILE]

Counted with torch's own ``torch.utils.flop_counter.FlopCounterMode`` (2 FLOPs per multiply-add; convolutions, matrix
products and attention; element-wise work is not counted) on diffusers' ``UNet2DConditionModel`` built on the
``meta`` device with the published sizes (``tests/support/pbe_fixtures.FULL``): no weights, no arithmetic, seconds to
run. diffusers' module is the reference architecture that the original checkpoint and ComfyUI's UNet share. The count
per submodule gives the cross-attention's share, which the pack's single-token path does not compute per pixel
(``nodes/host/single_token_attention.py``); what the pack's UNet computes is at most the total less that share.

``benchmarks/run.py --render ... --flops FILE`` adds the section "The limit" to a report: these counts against the
times of the saved run (FLOP/s reached, and the fraction of the CPU's peak where its clock was recorded).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(REPO / "tests" / "support")]

log = logging.getLogger("pbe.bench.flops")

#: the precision section's kernel probes (benchmarks/worker.py ``Kernels.kernels``): their FLOPs, by their shapes
KERNEL_FLOPS = {
    # conv2d 320 -> 320, 3x3, on (2, 320, 64, 64)
    "conv3x3": 2 * (2 * 64 * 64) * 320 * 320 * 9,
    # linear (8192, 320) x (1280, 320)^T
    "linear": 2 * 8192 * 320 * 1280,
    # self-attention, batch 2, 8 heads of 40, 4096 tokens: Q K^T and the weighted sum of V
    "sdpa": 2 * (2 * 2 * 8 * 4096 * 4096 * 40),
}


def unet_flops(size: int) -> dict:
    """FLOPs of one CFG call (batch 2, one context token) at ``size``² pixels: total, cross-attention, by operator."""
    import pbe_fixtures
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        unet = UNet2DConditionModel(
            in_channels=9, out_channels=4, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, **pbe_fixtures.FULL.unet,
        )
        x = torch.empty(2, 9, size // 8, size // 8)
        context = torch.empty(2, 1, pbe_fixtures.FULL.unet["cross_attention_dim"])
        with FlopCounterMode(display=False) as counter:
            unet(x, torch.empty(2), context)
    per_module = counter.get_flop_counts()
    total = counter.get_total_flops()
    # every cross-attention module (``attn2``), counted once: the counter also lists each of its parents
    cross = sum(sum(ops.values()) for name, ops in per_module.items() if name.endswith(".attn2"))
    by_op = {str(op).removeprefix("aten."): n for op, n in per_module["Global"].items()}
    return {"size": size, "total": total, "cross_attention": cross, "by_op": by_op}


def main() -> None:
    ap = argparse.ArgumentParser(description="FLOPs of a full-size Paint-by-Example UNet call, counted.")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--json", type=Path, default=None, help="write the counts here (for run.py --render --flops)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    out = {"unet": {str(s): unet_flops(s) for s in args.sizes}, "kernels": KERNEL_FLOPS,
           "counted_with": "torch.utils.flop_counter.FlopCounterMode on diffusers' UNet2DConditionModel (meta device)"}
    for s, u in out["unet"].items():
        log.info("%s²: %.3f TFLOP per CFG call, of which cross-attention %.3f (%.1f%%); by operator: %s", s,
                 u["total"] / 1e12, u["cross_attention"] / 1e12, 100 * u["cross_attention"] / u["total"],
                 ", ".join(f"{k} {v / 1e12:.3f}" for k, v in u["by_op"].items()))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
