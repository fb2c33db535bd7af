"""Which precisions the pack computes natively on a CPU: the measured rule (docs/benchmarks.md, "Whole UNet calls per precision")."""

import pytest
import torch

from pbe_core.weights.cpu_precision import HALF_PRECISION_FLAGS, cpu_computes_natively, cpu_flags, cpu_model_name

SAPPHIRE_RAPIDS = frozenset({"amx_bf16", "amx_tile", "avx512_bf16", "avx512_fp16", "avx512f"})
ZEN4 = frozenset({"avx512_bf16", "avx512f"})  # AVX-512 BF16, no AMX
ICE_LAKE = frozenset({"avx512f"})
AVX2_ONLY = frozenset()


@pytest.mark.parametrize(("flags", "bf16"), [(SAPPHIRE_RAPIDS, True), (ZEN4, False), (ICE_LAKE, False), (AVX2_ONLY, False)])
def test_bf16_natively_only_with_amx(flags, bf16):
    assert cpu_computes_natively(torch.bfloat16, flags) is bf16


@pytest.mark.parametrize("flags", [SAPPHIRE_RAPIDS, SAPPHIRE_RAPIDS | {"amx_fp16"}, ZEN4, AVX2_ONLY])
def test_fp32_always_fp16_and_fp8_never(flags):
    assert cpu_computes_natively(torch.float32, flags)
    assert not cpu_computes_natively(torch.float16, flags)
    assert not cpu_computes_natively(torch.float8_e4m3fn, flags)


def test_this_cpus_flags_are_among_the_ones_that_matter():
    flags = cpu_flags()
    assert flags <= set(HALF_PRECISION_FLAGS)
    assert isinstance(cpu_model_name(), str) and cpu_model_name()
    try:
        with open("/proc/cpuinfo") as f:
            listed = next(line for line in f if line.startswith("flags")).split(":", 1)[1].split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo here")
    assert flags == {f for f in listed if f in HALF_PRECISION_FLAGS}
