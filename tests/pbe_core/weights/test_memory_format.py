"""Channels-last convolution kernels re-ordered in place (pbe_core.weights.memory_format).

Reference: torch's own ``Tensor.contiguous(memory_format=torch.channels_last)`` and ``torch.nn.functional.conv2d`` on
the untouched kernel. The re-ordering only moves values, so the kernels must compare *equal*; a convolution with a
channels-last kernel may sum in another order, so its output is compared to fp32 rounding (rtol 1e-5, atol 1e-5).
"""

import hashlib

import pytest
import torch
from safetensors import safe_open

from pbe_core.weights.checkpoint import load_checkpoint
from pbe_core.weights.memory_format import conv_weights_to_channels_last_


def _kernels(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "conv3": torch.randn(16, 8, 3, 3, generator=g),
        "conv1": torch.randn(16, 8, 1, 1, generator=g),
        "linear": torch.randn(16, 8, generator=g),
        "bias": torch.randn(16, generator=g),
    }


def test_reorders_in_place_to_channels_last_with_the_same_values():
    sd = _kernels()
    before = {k: v.clone() for k, v in sd.items()}
    obj, ptr = sd["conv3"], sd["conv3"].untyped_storage().data_ptr()
    obj1, ptr1 = sd["conv1"], sd["conv1"].untyped_storage().data_ptr()
    done = conv_weights_to_channels_last_(sd)
    assert done == ["conv3", "conv1"]  # 2-D and 1-D tensors are not kernels
    # a 1x1 kernel: the strides Module.to(memory_format=torch.channels_last) gives it, the same bytes
    assert sd["conv1"] is obj1 and sd["conv1"].untyped_storage().data_ptr() == ptr1
    assert sd["conv1"].stride() == before["conv1"].to(memory_format=torch.channels_last).stride() == (8, 1, 8, 8)
    t = sd["conv3"]
    assert t is obj and t.untyped_storage().data_ptr() == ptr  # same tensor object, same memory
    assert t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    assert t.stride() == before["conv3"].contiguous(memory_format=torch.channels_last).stride()
    for k in sd:
        assert torch.equal(sd[k], before[k]), k
    x = torch.randn(2, 8, 12, 12)
    y = torch.nn.functional.conv2d(x, t, padding=1)
    ref = torch.nn.functional.conv2d(x, before["conv3"], padding=1)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    assert y.is_contiguous(memory_format=torch.channels_last)  # the kernel's order carries to the activations


def test_second_call_changes_nothing():
    sd = _kernels()
    conv_weights_to_channels_last_(sd)
    snapshot = sd["conv3"].clone()
    assert conv_weights_to_channels_last_(sd) == []
    assert torch.equal(sd["conv3"], snapshot)


def test_kernels_sharing_memory_are_left_alone():
    base = torch.randn(2 * 16 * 8 * 9)
    a = base[: 16 * 8 * 9].view(16, 8, 3, 3)
    b = base[16 * 8 * 9 :].view(16, 8, 3, 3)
    overlapping = base[4:100]  # reads some of a's bytes
    own = torch.randn(16, 8, 3, 3)
    sd = {"a": a, "b": b, "own": own}
    expect = {k: v.clone() for k, v in sd.items()}
    done = conv_weights_to_channels_last_(sd, also_in_memory=[overlapping])
    assert sorted(done) == ["b", "own"]  # a overlaps another tensor's bytes; b sits beside it without overlap
    assert a.is_contiguous() and torch.equal(overlapping, expect["a"].view(-1)[4:100])
    for k in sd:
        assert torch.equal(sd[k], expect[k]), k
    # the same tensor object listed twice is not "shared"
    c = torch.randn(4, 4, 3, 3)
    assert conv_weights_to_channels_last_({"c": c}, also_in_memory=[c]) == ["c"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_every_float_dtype(dtype):
    t = torch.randn(8, 4, 3, 3).to(dtype)
    ref = t.clone()
    assert conv_weights_to_channels_last_({"w": t}) == ["w"]
    assert torch.equal(t, ref) and t.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layout", ["original-fp32.safetensors", "original.ckpt", "diffusers-bin"])
def test_checkpoint_files_are_never_written(fixture_paths, layout, tmp_path):
    """The loader's tensors view copy-on-write maps of the file: re-ordering them leaves the file's bytes as they were."""
    path = fixture_paths[layout]
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    digest = {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in files if f.is_file()}
    ckpt = load_checkpoint(path)
    before = {k: v.clone() for k, v in ckpt.vae.items()}
    done = conv_weights_to_channels_last_(ckpt.vae, also_in_memory=list(ckpt.unet.values()))
    assert len(done) > 5
    for k in ckpt.vae:
        assert torch.equal(ckpt.vae[k], before[k]), k
    assert {f: hashlib.sha256(f.read_bytes()).hexdigest() for f in digest} == digest
    if layout.endswith(".safetensors"):
        with safe_open(str(path), framework="pt") as f:  # a fresh read sees the file's (unchanged) order
            k = done[0]
            fresh = f.get_tensor("first_stage_model." + k)
            assert fresh.is_contiguous() and torch.equal(fresh, before[k])
