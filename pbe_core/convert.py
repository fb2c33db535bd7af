"""Convert any accepted Paint-by-Example checkpoint to the original single-file layout as ``.safetensors``.

    python -m pbe_core.convert SRC DST.safetensors [--dtype fp16|bf16|fp32]

SRC is anything :func:`pbe_core.weights.checkpoint.load_checkpoint` reads (the 12.6 GB training ``model.ckpt``, a
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
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

#: --dtype choices (torch dtypes are looked up only once torch is imported)
DTYPE_NAMES = ("fp32", "fp16", "bf16")

#: what to say when the Python running the converter has no torch
NEEDS_TORCH = (
    "python -m pbe_core.convert needs torch: run it with the Python ComfyUI runs on (for example "
    "ComfyUI/venv/bin/python -m pbe_core.convert ..., or python_embeded\\python.exe -m pbe_core.convert ... in the "
    "Windows portable build), from this folder."
)


def _torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def convert(src: str | os.PathLike, dst: str | os.PathLike, dtype: str = "fp32", show_progress: bool = False,
            key: str | None = None) -> Path:
    """Convert ``src`` to the original single-file layout at ``dst`` (.safetensors). Returns ``dst``.

    ``key``: the entry of a torch file that holds the model's state dict (``"entry"`` or ``"entry/sub"``), for a file
    that holds several.
    """
    import torch

    from .weights.checkpoint import load_checkpoint
    from .weights.safetensors_writer import write_safetensors

    if dtype not in DTYPE_NAMES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPE_NAMES)}, not {dtype!r}.")
    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise ValueError(f"The output {dst} must end in .safetensors (the converter writes no pickles).")
    if not Path(src).exists():
        raise ValueError(f"The source {src} does not exist; give the path of a Paint-by-Example checkpoint file or "
                         f"diffusers folder (any folder: it need not be inside ComfyUI).")
    if Path(src).resolve() == dst.resolve():
        raise ValueError(f"Refusing to overwrite the source {src}; choose another output path.")
    ckpt = load_checkpoint(src, key=key)
    sd = ckpt.original_state_dict()
    total = sum(t.numel() * torch.empty((), dtype=_torch_dtype(dtype) if t.is_floating_point() else t.dtype).element_size()
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
    write_safetensors(sd, dst, _torch_dtype(dtype), meta, progress)
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
    parser.add_argument("--dtype", choices=list(DTYPE_NAMES), default="fp32", help="floating-point dtype of the output")
    parser.add_argument("--key", help="for a .ckpt/.pt file holding several state dicts: the entry to convert "
                        "(ENTRY or ENTRY/SUB); the loader's error names them")
    parser.epilog = "Needs torch: run it with the Python ComfyUI runs on."
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        import torch  # noqa: F401 - only to say clearly when it is missing
    except ImportError:
        log.error("error: %s", NEEDS_TORCH)
        return 2
    try:
        convert(args.src, args.dst, args.dtype, show_progress=True, key=args.key)
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError
        log.error("error: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
