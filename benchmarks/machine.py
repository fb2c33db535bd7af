"""The machine a benchmark ran on, as its reports name it: CPU model, the flags that decide half precision, cores,
memory. Standard library only: the benchmarks' parent processes import no torch, so each worker's peak RSS is its own.
"""

from __future__ import annotations

import os
import platform

#: the CPU features that decide how fast torch computes bf16 / fp16 (as pbe_core.cpu_precision; not imported here,
#: because that imports torch and the parent process stays torch-free)
HALF_PRECISION_FLAGS = ("amx_bf16", "amx_fp16", "amx_tile", "avx512_bf16", "avx512_fp16", "avx512f")


def cpu_info() -> dict:
    """The CPU's model name and which of :data:`HALF_PRECISION_FLAGS` it has (from /proc/cpuinfo; "?" elsewhere)."""
    name, flags = "?", None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name == "?":
                    name = value.strip()
                elif key.strip() == "flags" and flags is None:
                    flags = value.split()
    except OSError:
        pass
    return {"model": name, "flags": {f: f in (flags or ()) for f in HALF_PRECISION_FLAGS} if flags is not None else {}}


def cpu_flags_text(info: dict) -> str:
    flags = info.get("flags") or {}
    if not flags:
        return "CPU flags unknown"
    has = [f for f, v in flags.items() if v]
    lacks = [f for f, v in flags.items() if not v]
    return f"has {', '.join(has) or 'none of them'}" + (f"; lacks {', '.join(lacks)}" if lacks else "")


def machine() -> str:
    info = cpu_info()
    cpu = info["model"]
    if info["flags"]:
        cpu += f" ({cpu_flags_text(info)})"
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 2**20:.0f} GiB"
    except (OSError, ValueError):
        pass
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} logical CPUs, {mem} RAM"
