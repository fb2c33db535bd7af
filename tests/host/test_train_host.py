"""A model fine-tuned by ``python -m pbe_core.train`` (from a tiny SD-1.x start) paints through PBE_Sampler on a real,
headless ComfyUI, driven only through its HTTP API.

Training runs in a subprocess with ``PBE_TRAIN_PYTHON`` (default: this Python), which needs the ``train`` extra
(accelerate, albumentations, diffusers); ComfyUI's own Python often lacks it, so the two may differ, as they may for
a user who trains in one environment and paints in another.
"""

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pbe_fixtures
import pytest
from comfy_host import execution_error, temporary_server
from host_util import BOX, SIZE
from images import make_photo, png_bytes
from train_toy import write_toy_dataset

pytestmark = pytest.mark.host

REPO = Path(__file__).resolve().parents[2]
MODEL_NAME = "finetuned.safetensors"


def _train_python() -> str:
    py = os.environ.get("PBE_TRAIN_PYTHON", sys.executable)
    probe = subprocess.run([py, "-c", "import accelerate, albumentations, diffusers"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(
            f"{py} lacks the training extra (accelerate, albumentations, diffusers); set PBE_TRAIN_PYTHON to a "
            f"Python that has it"
        )
    return py


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    py = _train_python()
    d = tmp_path_factory.mktemp("finetune")
    sd1 = pbe_fixtures.write_sd1_checkpoint(d / "sd1.safetensors")
    clip = pbe_fixtures.write_clip_vision(d / "clip.safetensors")
    toy = write_toy_dataset(d / "toy")
    out = d / "out"
    args = {
        "init_from": sd1, "clip_weights": clip, "mapper_depth": 2, "data_format": "openimages",
        "annotations": toy["openimages"], "images": toy["openimages_images"], "image_size": 64, "batch_size": 2,
        "num_workers": 0, "learning_rate": 1e-3, "warmup_steps": 0, "max_steps": 6, "checkpoint_every": 3,
        "output_dir": out, "final_name": MODEL_NAME, "progress": "false",
    }
    env = {**os.environ, "OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}
    r = subprocess.run([py, "-m", "pbe_core.train", *(f"{k}={v}" for k, v in args.items())], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    return out / MODEL_NAME


@pytest.fixture(scope="module")
def server(finetuned):
    with temporary_server("pbe-host-train-", models={MODEL_NAME: finetuned}) as srv:
        yield srv


def test_finetuned_model_paints_through_pbe_sampler(server):
    from PIL import Image

    src = make_photo(SIZE, SIZE, 0)
    alpha = np.full((SIZE, SIZE), 255, np.uint8)
    y0, y1, x0, x1 = BOX
    alpha[y0:y1, x0:x1] = 0  # LoadImage: mask = 1 - alpha, the region to paint
    server.upload("source.png", png_bytes(np.dstack([src, alpha])))
    server.upload("exemplar.png", png_bytes(make_photo(224, 224, 1)))

    info = server.object_info()
    assert MODEL_NAME in info["PBE_LoadModel"]["input"]["required"]["model_name"][1]["options"]
    prompt = {
        "load": {"class_type": "PBE_LoadModel", "inputs": {"model_name": MODEL_NAME}},
        "src": {"class_type": "LoadImage", "inputs": {"image": "source.png"}},
        "ex": {"class_type": "LoadImage", "inputs": {"image": "exemplar.png"}},
        "pbe": {"class_type": "PBE_Sampler", "inputs": {
            "model": ["load", 0], "encoder": ["load", 1], "vae": ["load", 2], "image": ["src", 0], "mask": ["src", 1],
            "exemplar": ["ex", 0], "seed": 1, "steps": 8, "cfg": 5.0, "sampler_name": "reference",
            "scheduler": "normal", "denoise": 1.0, "mask_grow": 0, "mask_feather": 0, "working_size": 0}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["pbe", 0], "filename_prefix": "finetuned"}},
    }
    entry = server.run(prompt, timeout=600)
    assert execution_error(entry) is None, execution_error(entry)
    files = entry["outputs"]["save"]["images"]
    out = np.asarray(Image.open(io.BytesIO(server.view(files[0]["filename"], files[0]["subfolder"]))).convert("RGB"))
    assert out.shape == (SIZE, SIZE, 3)
    outside = np.ones((SIZE, SIZE), bool)
    outside[y0:y1, x0:x1] = False
    # pasted back: outside the mask the source (SaveImage truncates to 8 bits, hence one level)
    assert np.abs(out[outside].astype(int) - src[outside]).max() <= 1
    inside = out[y0:y1, x0:x1].astype(int)
    assert np.abs(inside - src[y0:y1, x0:x1]).mean() > 2  # the region was repainted
    assert inside.std() > 0  # not a flat fill
