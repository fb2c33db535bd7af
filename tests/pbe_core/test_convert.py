"""python -m pbe_core.convert: every source -> original-layout .safetensors that loads back to the same tensors."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pbe_core.convert import convert
from pbe_core.weights.checkpoint import load_checkpoint, read_state_dict

REPO = Path(__file__).resolve().parents[2]


def _same(a, b, dtype=None):
    for (name, pa), pb in zip(a.parts().items(), b.parts().values(), strict=True):
        assert set(pa) == set(pb), name
        for k in pa:
            ref = pa[k] if dtype is None else pa[k].to(dtype)
            assert pb[k].dtype == ref.dtype and torch.equal(pb[k], ref), (name, k)


@pytest.mark.parametrize("layout", ["original-training.ckpt", "diffusers-hub", "diffusers-bin", "original-bf16.safetensors"])
def test_fp32_round_trip_is_exact(fixture_paths, tmp_path, layout):
    src = load_checkpoint(fixture_paths[layout])
    out = convert(fixture_paths[layout], tmp_path / "out.safetensors", "fp32")
    back = load_checkpoint(out)
    assert back.info == src.info
    _same(src, back, torch.float32)


@pytest.mark.parametrize("dtype, torch_dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_precision_is_the_rounded_source(fixture_paths, tmp_path, dtype, torch_dtype):
    src = load_checkpoint(fixture_paths["original.ckpt"])
    back = load_checkpoint(convert(fixture_paths["original.ckpt"], tmp_path / f"{dtype}.safetensors", dtype))
    _same(src, back, torch_dtype)


def test_output_uses_the_original_key_names(fixture_paths, tmp_path):
    out = convert(fixture_paths["diffusers-fp16"], tmp_path / "o.safetensors", "fp16")
    keys = set(read_state_dict(out))
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "cond_stage_model.mapper.resblocks.0.attn.c_qkv.weight" in keys
    assert "cond_stage_model.transformer.vision_model.post_layernorm.weight" in keys
    assert "learnable_vector" in keys and "proj_out.weight" in keys
    assert not any(k.startswith(("unet.", "image_encoder.", "mapper.blocks")) for k in keys)


def test_cli_and_bounded_memory(fixture_paths, tmp_path):
    """The command line on the training checkpoint: report peak RSS against the file size."""
    src = fixture_paths["original-training.ckpt"]
    dst = tmp_path / "cli.safetensors"
    code = (
        "import resource, sys; import torch, tqdm, safetensors; import pbe_core.convert as c;"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
        "rc = c.main([sys.argv[1], sys.argv[2], '--dtype', 'fp16']);"
        "print('PEAK_KB', before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(rc)"
    )
    r = subprocess.run([sys.executable, "-c", code, str(src), str(dst)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert dst.is_file() and not dst.with_name(dst.name + ".partial").exists()
    before, after = (int(v) * 1024 for v in r.stdout.split("PEAK_KB")[1].split()[:2])
    size = src.stat().st_size
    weights = sum(t.numel() * t.element_size() for t in read_state_dict(src).values())
    print(f"convert training ckpt: file {size / 2**20:.1f} MiB (weights {weights / 2**20:.1f} MiB), "  # noqa: T201
          f"peak RSS above imports {(after - before) / 2**20:.1f} MiB = {(after - before) / size:.2f}x the file")
    # the training file is mostly optimizer state that is never read; the model's weights are about a third of it
    assert after - before < size


def test_refuses_bad_arguments(fixture_paths, tmp_path):
    with pytest.raises(ValueError, match="must end in .safetensors"):
        convert(fixture_paths["original.ckpt"], tmp_path / "x.ckpt")
    with pytest.raises(ValueError, match="--dtype must be one of"):
        convert(fixture_paths["original.ckpt"], tmp_path / "x.safetensors", "fp8")
    r = subprocess.run([sys.executable, "-m", "pbe_core.convert", str(tmp_path / "nope.ckpt"), str(tmp_path / "o.safetensors")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 1 and "The source" in r.stderr and "nope.ckpt does not exist; give the path" in r.stderr
    assert "models/paint_by_example" not in r.stderr  # the converter reads any path: the loader node's hint is wrong here
