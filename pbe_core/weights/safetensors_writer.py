"""Stream tensors into a ``.safetensors`` file, one tensor at a time, without a second copy in memory.

The format: an 8-byte little-endian header length, a JSON header of dtypes, shapes and data offsets, then the raw
little-endian tensor data. Used by the converter (``python -m pbe_core.convert``), the trainer's export and the
benchmark's weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

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
