"""The COCOEE evaluation end to end: ``generate`` edits a tiny COCOEE-format set (scikit-image photos, box masks)
through a real headless ComfyUI with the tiny Paint-by-Example fixture, then ``score`` reads what it wrote."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import eval_fixtures
import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.host, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ROWS = 4


def _eval(*args, timeout=1200):
    env = dict(os.environ, OMP_NUM_THREADS="2", OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "pbe_core.eval", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def generated(tmp_path_factory, fixture_paths):
    root = tmp_path_factory.mktemp("cocoee")
    bench = eval_fixtures.write_cocoee(root, n=ROWS)
    out = root / "generated"
    # the official protocol, with 2 steps instead of 50 to keep the test short; a private ComfyUI for the run
    proc = _eval("generate", bench["cocoee"], out, "--model", fixture_paths["original.ckpt"], "--comfyui",
                 os.environ["COMFYUI_PATH"], "--steps", 2, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return bench, out, proc


def test_generate_writes_every_row_and_a_manifest(generated, fixture_paths):
    bench, out, proc = generated
    results = sorted((out / "results").glob("*.png"))
    assert [p.stem for p in results] == sorted(bench["names"])
    assert all(Image.open(p).size == (512, 512) for p in results)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "pbe-cocoee-results/1" and manifest["model"]["file"] == "original.ckpt"
    assert len(manifest["model"]["sha256"]) == 64 and manifest["model"]["sha256"] != "0" * 64
    assert [r["id"] for r in manifest["rows"]] == bench["names"]
    assert [r["seed"] for r in manifest["rows"]] == [42 + k for k in range(ROWS)]
    assert "rows/s" in proc.stderr and "left" in proc.stderr  # progress: rows per second and the time left
    report = json.loads((out / "generate_report.json").read_text())
    assert report["succeeded"] == ROWS and report["failed"] == 0
    # the whole decoded frame is saved (official): outside the box too, the pixels are the model's decoding
    name = bench["names"][0]
    gt = np.asarray(Image.open(bench["cocoee"] / "GT_3500" / f"{name}_GT.png").convert("RGB")).astype(int)
    res = np.asarray(Image.open(out / "results" / f"{name}.png").convert("RGB")).astype(int)
    box = np.asarray(Image.open(bench["cocoee"] / "Mask_bbox_3500" / f"{name}_mask.png")) >= 128
    assert np.abs(res[~box] - gt[~box]).mean() > 1


def test_a_rerun_does_no_work(generated, fixture_paths):
    bench, out, _ = generated
    before = {p.name: p.stat().st_mtime_ns for p in (out / "results").glob("*.png")}
    proc = _eval("generate", bench["cocoee"], out, "--model", fixture_paths["original.ckpt"], "--comfyui",
                 os.environ["COMFYUI_PATH"], "--steps", 2, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "starting a private ComfyUI" not in proc.stderr  # every row was done: no server started
    assert {p.name: p.stat().st_mtime_ns for p in (out / "results").glob("*.png")} == before
    report = json.loads((out / "generate_report.json").read_text())
    assert report["skipped"] == ROWS


def test_score_reads_what_generate_wrote(generated, tmp_path):
    """The three numbers and the report, from the generated results (a GMM fitted in the test on the tiny CLIP's
    features of photo crops, as the official one was on COCO)."""
    from sklearn.mixture import GaussianMixture

    from pbe_core.eval.clip_features import features_of_files, load_clip

    bench, out, _ = generated
    clip = eval_fixtures.write_tiny_clip(tmp_path / "clip")
    train = features_of_files(load_clip(clip), sorted(bench["gmm_train"].glob("*.png")), batch_size=16)
    gmm = tmp_path / "gmm.pkl"
    gmm.write_bytes(pickle.dumps(GaussianMixture(3, random_state=0, reg_covar=1e-4).fit(train)))
    proc = _eval("score", out, bench["cocoee"], "--clip", clip, "--gmm", gmm, "--fid-reference", bench["reference"],
                 "--bootstrap", 50, "--batch-size", 4, "--device", "cpu", "--grid-rows", 2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    text = json.dumps(report)
    assert "original.ckpt" in text  # the manifest's model is named in the report
    for name in ("report.md", "sample_grid.png"):
        assert (out / name).is_file(), name
