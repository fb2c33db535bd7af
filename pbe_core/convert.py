"""Convert any accepted Paint-by-Example checkpoint to the original single-file layout as ``.safetensors``.

    python -m pbe_core.convert SRC DST.safetensors [--dtype fp16|bf16|fp32]

SRC is anything :func:`pbe_core.checkpoint.load_checkpoint` reads (the 12.6 GB training ``model.ckpt``, a
``.safetensors`` conversion, a diffusers folder). The output holds the original key names (``model.diffusion_model.*``,
``first_stage_model.*``, ``cond_stage_model.*``, ``proj_out.*``, ``learnable_vector``) and loads back to the same
tensors (exactly for fp32; rounded to the chosen dtype otherwise). Optimizer state and the fixed DDPM schedule
buffers are dropped.

Memory stays bounded: the source is memory-mapped, and tensors are cast and written one at a time into the output
file (the safetensors format: an 8-byte header length, a JSON header of dtypes/shapes/offsets, then raw little-endian
data), so the peak is about one tensor plus the pages the OS caches, not the whole model.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_checkpoint

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_ST_DTYPE = {
    torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}


def write_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, dtype: torch.dtype | None = None,
                      metadata: dict[str, str] | None = None, progress=None) -> int:
    """Stream ``tensors`` into a .safetensors file, casting floating tensors to ``dtype`` one at a time.

    ``progress`` (optional) is called with the number of bytes written after each tensor. The file is written to
    ``path + '.partial'`` and renamed at the end, so an interrupted conversion leaves no half-written checkpoint.
    Returns the file size.
    """
    items = []
    offset = 0
    for k in sorted(tensors):
        t = tensors[k]
        out_dtype = dtype if (dtype is not None and t.is_floating_point()) else t.dtype
        n = t.numel() * torch.empty((), dtype=out_dtype).element_size()
        items.append((k, out_dtype, tuple(t.shape), offset, offset + n))
        offset += n
    header = {k: {"dtype": _ST_DTYPE[dt], "shape": list(s), "data_offsets": [a, b]} for k, dt, s, a, b in items}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    try:
        with open(tmp, "wb") as f:
            f.write(len(raw).to_bytes(8, "little"))
            f.write(raw)
            for k, out_dtype, _, _, _ in items:
                t = tensors[k].detach().to("cpu", out_dtype).contiguous()
                if t.dtype == torch.bfloat16:  # numpy has no bfloat16: write its bits
                    t = t.view(torch.int16)
                f.write(t.numpy().tobytes() if t.numel() else b"")
                if progress:
                    progress(f.tell())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path.stat().st_size


def convert(src: str | os.PathLike, dst: str | os.PathLike, dtype: str = "fp32", show_progress: bool = False) -> Path:
    """Convert ``src`` to the original single-file layout at ``dst`` (.safetensors). Returns ``dst``."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, not {dtype!r}.")
    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise ValueError(f"The output {dst} must end in .safetensors (the converter writes no pickles).")
    if Path(src).resolve() == dst.resolve():
        raise ValueError(f"Refusing to overwrite the source {src}; choose another output path.")
    ckpt = load_checkpoint(src)
    sd = ckpt.original_state_dict()
    total = sum(t.numel() * torch.empty((), dtype=DTYPES[dtype] if t.is_floating_point() else t.dtype).element_size()
                for t in sd.values())
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"{Path(src).name} -> {dst.name}")
    last = [0]

    def progress(done: int) -> None:
        if bar is not None:
            bar.update(max(done - last[0], 0))
            last[0] = done

    meta = {"format": "pt", "paint_by_example_source_layout": ckpt.layout, "paint_by_example_dtype": dtype}
    write_safetensors(sd, dst, DTYPES[dtype], meta, progress)
    if bar is not None:
        bar.close()
    log.info("Wrote %s (%s, %d tensors) from %s", dst, dtype, len(sd), ckpt.layout)
    return dst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pbe_core.convert",
        description="Convert a Paint-by-Example checkpoint (model.ckpt, .safetensors or diffusers folder) to the "
        "original single-file layout as .safetensors.",
    )
    parser.add_argument("src", help="checkpoint file or diffusers folder")
    parser.add_argument("dst", help="output .safetensors file")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="floating-point dtype of the output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        convert(args.src, args.dst, args.dtype, show_progress=True)
    except (CheckpointError, ValueError, OSError) as e:
        log.error("error: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
