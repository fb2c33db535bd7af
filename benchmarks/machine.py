"""The machine a benchmark ran on, as its reports name it: CPU model, the flags that decide half precision, cores,
memory. Standard library only: the benchmarks' parent processes import no torch, so each worker's peak RSS is its own.
"""

from __future__ import annotations

import os
import platform

#: the CPU features that decide how fast torch computes bf16 / fp16 (as pbe_core.weights.cpu_precision; not imported here,
#: because that imports torch and the parent process stays torch-free)
HALF_PRECISION_FLAGS = ("amx_bf16", "amx_fp16", "amx_tile", "avx512_bf16", "avx512_fp16", "avx512f")


#: the vector units that set the fp32 peak (:func:`peak_flops_per_cycle`)
FP32_FLAGS = ("avx512f", "avx2", "fma")


def cpu_info() -> dict:
    """The CPU's model name, which of :data:`HALF_PRECISION_FLAGS` it has, its fp32 vector flags and its clock in MHz
    as the kernel reports it (from /proc/cpuinfo; "?" or absent elsewhere)."""
    name, flags, mhz = "?", None, None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name == "?":
                    name = value.strip()
                elif key.strip() == "flags" and flags is None:
                    flags = value.split()
                elif key.strip() == "cpu MHz" and mhz is None:
                    mhz = float(value)
    except (OSError, ValueError):
        pass
    info = {"model": name, "flags": {f: f in (flags or ()) for f in HALF_PRECISION_FLAGS} if flags is not None else {}}
    if flags is not None:
        info["fp32_flags"] = {f: f in flags for f in FP32_FLAGS}
    if mhz:
        info["mhz"] = mhz
    return info


def peak_flops_per_cycle(info: dict) -> dict:
    """Each precision's peak FLOPs per cycle and core from the CPU's flags (2 per multiply-add), or None if unknown:
    fp32 64 with AVX-512 (two 16-lane FMA units, as on Xeon Scalable; an AMD Zen 4 core does half that), 32 with
    AVX2 + FMA; bf16 1024 with AMX-BF16 (a tile multiply does 16x16x32 multiply-adds per 16 cycles), else the fp32
    rate (bf16 computed by converting). Upper bounds: wide vector code runs at a lower clock than the nominal one."""
    flags = {**info.get("flags", {}), **info.get("fp32_flags", {})}
    if flags.get("avx512f"):
        fp32 = 64
    elif flags.get("avx2") and flags.get("fma"):
        fp32 = 32
    else:
        fp32 = None
    return {"fp32": fp32, "bf16": 1024 if flags.get("amx_bf16") else fp32}


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
