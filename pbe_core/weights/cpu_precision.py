"""Which half precisions this CPU computes natively, and so which dtype the models should compute in on the CPU.

On x86 CPUs torch runs convolutions and matrix products through oneDNN, which computes bfloat16 with AMX tiles
(``amx_bf16``: Intel Xeon 4th generation "Sapphire Rapids" and later). Measured with torch 2.14 on such a CPU
(docs/benchmarks.md, "Headline" and the probes after it): a 320-channel 3x3 convolution at 64x64 in bf16 took about
0.1x the fp32 time, a linear layer 0.1x, SDPA attention 0.5x, a whole 512^2 UNet call 0.2-0.45x. With oneDNN held to
the AVX-512 BF16 instructions on the same CPU (``ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16``, standing in for CPUs with
``avx512_bf16`` but no AMX: Xeon "Cooper Lake", AMD Zen 4/5) the bf16 convolution took 1.1-1.4x the fp32 time and the
UNet call 1.1-2.5x; without any bf16 instructions the convolution took 3-9x. So bf16 is computed natively only with AMX-BF16; elsewhere ComfyUI's
own choice applies, which keeps bf16 *weights* but computes in fp32 (``comfy/model_management.py``:
``should_use_bf16`` is False for a CPU device, so ``unet_manual_cast`` answers fp32), and fp32 weights are the fast
choice.

fp16 is different: on that CPU, which has AVX-512 FP16 (``avx512_fp16``) but not AMX-FP16 (``amx_fp16``, Xeon 6
"Granite Rapids"), oneDNN does use the fp16 instructions (held below them, the fp16 convolution took 10-15x the fp32
time), yet the fp16 convolution still took 1.2-1.8x the fp32 time and a whole UNet call 1.0-1.3x. So fp16 is never computed natively on a CPU
here; AMX-FP16 was not available to measure, and every CPU with it also has AMX-BF16, the precision to choose there.

Run ``lscpu | grep -o amx_bf16`` to see whether a CPU has native bf16. This module only reads what the
CPU reports (``/proc/cpuinfo`` on Linux, torch's own CPU probes elsewhere); it never runs a kernel.
"""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger(__name__)

__all__ = ["HALF_PRECISION_FLAGS", "cpu_flags", "cpu_computes_natively", "cpu_model_name"]

#: the CPU features that decide how fast torch computes bf16 / fp16 on the CPU (names as Linux's /proc/cpuinfo has them)
HALF_PRECISION_FLAGS = ("amx_bf16", "amx_fp16", "amx_tile", "avx512_bf16", "avx512_fp16", "avx512f")


def _proc_cpuinfo() -> dict[str, str]:
    """The first processor's ``model name`` and ``flags`` lines of ``/proc/cpuinfo``; empty where there is none."""
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                key = key.strip()
                if sep and key in ("model name", "flags") and key not in out:
                    out[key] = value.strip()
                if len(out) == 2:
                    break
    except OSError:
        pass
    return out


def _torch_probe(name: str) -> bool:
    """One of torch's CPU feature probes (``torch.cpu._is_..._supported``, private; False where this torch lacks it)."""
    probe = getattr(getattr(torch, "cpu", None), name, None)
    try:
        return bool(probe()) if callable(probe) else False
    except Exception:  # a private probe that changed its signature: report the feature as absent
        return False


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU features in :data:`HALF_PRECISION_FLAGS` this CPU has.

    From ``/proc/cpuinfo`` (Linux); where that does not exist, from torch's CPU probes, which know ``amx_tile``,
    ``avx512_bf16``, ``amx_fp16`` and AVX-512 (``amx_tile`` then stands for ``amx_bf16``: every CPU with AMX so far has
    AMX-BF16).
    """
    flags = _proc_cpuinfo().get("flags")
    if flags is not None:
        return frozenset(f for f in flags.split() if f in HALF_PRECISION_FLAGS)
    found = set()
    if _torch_probe("_is_amx_tile_supported"):
        found |= {"amx_tile", "amx_bf16"}
    if _torch_probe("_is_avx512_bf16_supported"):
        found.add("avx512_bf16")
    if _torch_probe("_is_amx_fp16_supported"):
        found.add("amx_fp16")
    if _torch_probe("_is_avx512_supported"):
        found.add("avx512f")
    return frozenset(found)


def cpu_model_name() -> str:
    """The CPU's model name as the OS reports it ("?" where it does not)."""
    import platform

    return _proc_cpuinfo().get("model name") or platform.processor() or "?"


def cpu_computes_natively(dtype: torch.dtype, flags: frozenset[str] | None = None) -> bool:
    """True if torch on this CPU (or on one with ``flags``) computes ``dtype`` faster than fp32, as measured.

    fp32 (and fp64): True. bf16: True with AMX-BF16 only. fp16: False on every CPU (see the module doc). Anything else
    (fp8, ...): False.
    """
    if dtype in (torch.float32, torch.float64):
        return True
    if dtype == torch.bfloat16:
        return "amx_bf16" in (cpu_flags() if flags is None else flags)
    return False
