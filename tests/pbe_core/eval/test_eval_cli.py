"""``python -m pbe_core.eval`` end to end on the tiny COCOEE set, in a subprocess: report files, their contents,
the manifest, the conversion command and the errors a user gets. Also the bootstrap intervals and the optional
Inception FID.
"""

from __future__ import annotations

import csv
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pbe_core.eval import bootstrap
from pbe_core.eval.clip_features import features_of_files, load_clip
from pbe_core.eval.manifest import ManifestError, read_manifest, settings_sha256, write_manifest

REPO = Path(__file__).resolve().parents[3]
mixture = pytest.importorskip("sklearn.mixture")


def _main(*args) -> int:
    """The CLI in-process (what the subprocess runs, without paying the interpreter start again)."""
    from pbe_core.eval.__main__ import main

    return main([str(a) for a in args])


def _run(*args, cwd=REPO, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="2", OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "pbe_core.eval", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def gmm_pickle(tiny, tmp_path_factory):
    """A GaussianMixture fitted by scikit-learn on tiny-CLIP features of photo crops, pickled as the official one."""
    encoder = load_clip(tiny["clip"])
    train = features_of_files(encoder, sorted(tiny["gmm_train"].glob("*.png")), batch_size=16)
    gm = mixture.GaussianMixture(3, covariance_type="full", random_state=0, reg_covar=1e-4).fit(train)
    path = tmp_path_factory.mktemp("gmm") / "coco2017_gmm_k20"
    path.write_bytes(pickle.dumps(gm))
    return path, gm


@pytest.fixture(scope="module")
def scored(tiny, gmm_pickle, tmp_path_factory):
    """One `score` run over a copy of the results, with a manifest the generate step would write."""
    out = tmp_path_factory.mktemp("run")
    shutil.copytree(tiny["results"], out / "results")
    settings = {"sampler": "reference", "steps": 50, "guidance": 5.0, "seed": 42, "size": 512}
    rows = [{"id": n, "result": f"results/{n}.png"} for n in tiny["names"]]
    write_manifest(out, "tiny.safetensors", "ab" * 32, settings, rows)
    proc = _run("score", out, tiny["cocoee"], "--clip", tiny["clip"], "--gmm", gmm_pickle[0], "--fid-reference",
                tiny["reference"], "--bootstrap", 200, "--batch-size", 5, "--device", "cpu", "--grid-rows", 4)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, json.loads((out / "report.json").read_text()), proc


def test_score_writes_a_sane_report(scored, tiny):
    out, report, _ = scored
    assert report["format"] == "pbe-cocoee-report/1" and report["n_images"] == 12 and report["n_expected"] == 12
    m = report["metrics"]
    assert set(m) == {"clip_score", "qs", "fid_clip"}
    assert (m["fid_clip"]["paper"], m["qs"]["paper"], m["clip_score"]["paper"]) == (3.18, 77.80, 84.97)
    assert m["clip_score"]["leaderboard"] == 84.84
    for key in ("clip_score", "qs"):
        lo, hi = m[key]["ci95"]
        assert lo <= m[key]["value"] <= hi and hi > lo, key  # a mean lies inside its own bootstrap interval
    assert m["fid_clip"]["value"] > 0 and m["fid_clip"]["ci95"][1] > m["fid_clip"]["ci95"][0]
    assert 0 <= m["qs"]["value"] <= 100 and -100 <= m["clip_score"]["value"] <= 100
    assert report["bootstrap"]["resamples"] == 200 and report["bootstrap"]["seed"] == 0
    assert report["clip_model"]["sha256"] == eval_fixtures_sha(tiny["clip"] / "model.safetensors")
    assert report["clip_model"]["vit_b32"] is False
    assert report["manifest"]["model"]["sha256"] == "ab" * 32 and report["manifest"]["settings_sha256_matches"]
    assert report["fid_reference"]["n_images"] == 36 and Path(report["fid_reference"]["cache"]).is_file()

    md = (out / "report.md").read_text()
    for text in ("3.18", "77.80", "84.97", "84.84", "Not the full 3,500-image benchmark", "not ViT-B/32", "ab" * 32,
                 "sample_grid.png", "clip_score_histogram.png", f"{m['clip_score']['value']:.2f}"):
        assert text in md, text
    with Image.open(out / "sample_grid.png") as grid:
        assert grid.mode == "RGB" and grid.width == 4 * 164 + 4 and grid.height > 4 * 160
    with Image.open(out / "clip_score_histogram.png") as hist:
        assert hist.size == (720, 420) and len(hist.getcolors(1 << 16)) > 3
    with open(out / "per_image.csv") as f:
        per_image = list(csv.DictReader(f))
    assert [r["id"] for r in per_image] == tiny["names"]
    clip = np.array([float(r["clip_score"]) for r in per_image])
    assert clip.mean() == pytest.approx(m["clip_score"]["value"], abs=1e-5)
    qs = np.array([float(r["qs"]) for r in per_image])
    assert 100 * qs.mean() == pytest.approx(m["qs"]["value"], abs=1e-4)


def eval_fixtures_sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_score_qs_equals_sklearn_on_the_same_images(scored, tiny, gmm_pickle):
    """The QS in the report against scikit-learn's score_samples on features transformers' CLIP gives (tolerance
    1e-4 on per-image QS in [0, 1]: float32 features)."""
    import eval_oracles
    import torch

    out, report, _ = scored
    _, gm = gmm_pickle
    files = [out / "results" / f"{n}.png" for n in tiny["names"]]
    pixels = torch.stack([eval_oracles.clip_load_transform(224)(Image.open(p)) for p in files])
    expected = np.clip(gm.score_samples(eval_oracles.encode_image(tiny["clip"], pixels)) / 300, 0, 1)
    with open(out / "per_image.csv") as f:
        ours = np.array([float(r["qs"]) for r in csv.DictReader(f)])
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)


def test_second_run_reads_the_reference_cache(scored, tiny, tmp_path):
    first_out, first, _ = scored
    out = tmp_path / "again"
    shutil.copytree(first_out, out)
    assert _main("score", out, tiny["cocoee"], "--clip", tiny["clip"], "--fid-reference", tiny["reference"],
                 "--bootstrap", 0, "--device", "cpu") == 0
    second = json.loads((out / "report.json").read_text())
    assert second["fid_reference"]["read_from_cache"] is True
    # the reference's statistics come back exactly (float64 in the cache); the results' float32 CLIP features are
    # computed again, which on some CPUs sums in another order from run to run (BLAS kernels that depend on memory
    # alignment): 7.5e-8 apart on an AMD EPYC with AVX2, so fp32's relative step is the tolerance
    assert second["metrics"]["fid_clip"]["value"] == pytest.approx(first["metrics"]["fid_clip"]["value"], rel=1e-6)
    assert second["metrics"]["qs"]["skipped"] == "no --gmm given"
    assert second["metrics"]["clip_score"]["ci95"] == [None, None]  # --bootstrap 0


def test_missing_results_are_an_error_naming_the_fix(tiny, tmp_path, caplog):
    (tmp_path / "results").mkdir()
    first = tiny["names"][0]
    shutil.copy(tiny["results"] / f"{first}.png", tmp_path / "results")
    assert _main("score", tmp_path, tiny["cocoee"], "--clip", tiny["clip"], "--device", "cpu") == 2
    assert "11 of 12 results are missing" in caplog.text and "--allow-missing" in caplog.text
    assert _main("score", tmp_path, tiny["cocoee"], "--clip", tiny["clip"], "--device", "cpu", "--allow-missing",
                 "--bootstrap", 10) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["n_images"] == 1 and report["n_expected"] == 12


def test_bad_clip_folder_is_a_clean_error(tiny, tmp_path):
    proc = _run("score", tiny["out"], tiny["cocoee"], "--clip", tmp_path, "--device", "cpu")
    assert proc.returncode == 2 and "no config.json" in proc.stderr and "Traceback" not in proc.stderr


def test_gmm_convert(gmm_pickle, tmp_path):
    from pbe_core.eval.gmm import log_likelihood, read_gmm

    path, gm = gmm_pickle
    assert _main("gmm-convert", path, tmp_path / "gmm.npz") == 0
    with np.load(tmp_path / "gmm.npz", allow_pickle=False) as z:
        assert sorted(z.files) == ["covariance_type", "means_", "precisions_cholesky_", "weights_"]
    x = gm.means_ + 0.01
    np.testing.assert_allclose(log_likelihood(read_gmm(tmp_path / "gmm.npz"), x), gm.score_samples(x), atol=1e-6, rtol=0)
    assert _main("gmm-convert", path, tmp_path / "gmm.bin") == 2


def test_manifest_round_trip_and_errors(tmp_path):
    settings = {"steps": 50, "guidance": 5.0, "sampler": "reference"}
    write_manifest(tmp_path, "m.safetensors", "0" * 64, settings,
                   [{"id": "000000000001", "result": "results/000000000001.png", "seed": 1},
                    {"id": "000000000002", "result": "results/000000000002.png", "settings_sha256": "f" * 64}])
    m = read_manifest(tmp_path)
    assert m.settings_sha256 == settings_sha256({"sampler": "reference", "guidance": 5.0, "steps": 50})
    assert m.results["000000000001"] == tmp_path / "results/000000000001.png"
    assert m.mixed_settings == ["f" * 64] and m.describe()["rows_with_other_settings"] == 1
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["rows"][1]["id"] = "000000000001"
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="appears in two rows"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    with pytest.raises(ManifestError, match="pbe-cocoee-results/1"):
        read_manifest(tmp_path)
    assert read_manifest(tmp_path / "nowhere") is None


def test_bootstrap_interval_is_reproducible_and_covers_the_mean():
    values = np.random.default_rng(1).normal(80, 5, size=400)
    a = bootstrap.mean_interval(values, resamples=500, seed=0)
    assert a == bootstrap.mean_interval(values, resamples=500, seed=0)
    assert a != bootstrap.mean_interval(values, resamples=500, seed=1)
    # against the normal-theory interval of a mean: +-1.96 s / sqrt(n) = +-0.49 here; the bootstrap is within 0.1 of it
    half = 1.96 * values.std(ddof=1) / np.sqrt(values.size)
    assert a[0] == pytest.approx(values.mean() - half, abs=0.1) and a[1] == pytest.approx(values.mean() + half, abs=0.1)


# --- optional Inception FID -----------------------------------------------------------------------------------------


def _random_inception_weights(path: Path) -> Path:
    """torch-fidelity's InceptionV3 with PyTorch's default random init (its constructor would download the real
    weights; here the download function and the load are stubbed only to obtain the module's own parameters)."""
    from unittest import mock

    import torch
    from safetensors.torch import save_file
    from torch_fidelity import feature_extractor_inceptionv3 as tfi

    torch.manual_seed(0)
    with mock.patch.object(tfi, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None):
        module = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    return path


@pytest.mark.slow
def test_inception_fid_is_torchmetrics_with_the_given_weights(tiny, tmp_path):
    pytest.importorskip("torch_fidelity")
    import torch
    from safetensors.torch import load_file
    from torchmetrics.image.fid import FrechetInceptionDistance

    from pbe_core.eval.inception_fid import InceptionUnavailable, inception_fid

    weights = _random_inception_weights(tmp_path / "inception.safetensors")
    generated = sorted(tiny["results"].glob("*.png"))[:5]
    reference = sorted(tiny["reference"].glob("*.png"))[:7]  # 7 and 5 images of one size: batches of 4, then the rest
    ours = inception_fid(generated, reference, weights, batch_size=4)
    torch.save(load_file(weights), tmp_path / "direct.pth")  # the test's own file, given to torch-fidelity directly
    metric = FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(tmp_path / "direct.pth"))
    for real, files in ((True, reference), (False, generated)):
        batch = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p in files])
        metric.update(batch, real=real)
    assert np.isfinite(ours) and ours == pytest.approx(float(metric.compute()), rel=1e-5)
    # a file that is not InceptionV3, and a malicious one, are refused (the latter without running)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(InceptionUnavailable, match="not torch-fidelity's InceptionV3"):
        inception_fid(generated[:2], reference[:2], tmp_path / "other.safetensors")
    from lightning_pickle import save_malicious_checkpoint

    save_malicious_checkpoint(tmp_path / "evil.pth", tmp_path / "pwned", via="exec")
    with pytest.raises(InceptionUnavailable, match="unsafe"):
        inception_fid(generated[:2], reference[:2], tmp_path / "evil.pth")
    assert not (tmp_path / "pwned").exists()


def test_inception_fid_is_skipped_with_a_message_without_a_reference_folder(tiny, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(tiny["results"], out / "results")
    assert _main("score", out, tiny["cocoee"], "--clip", tiny["clip"], "--inception-weights", tmp_path / "x.pth",
                 "--bootstrap", 0, "--device", "cpu") == 0
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["fid_inception"]["skipped"] == "needs --fid-reference as a folder of images"


def test_generate_parses_the_clients_options_itself(tmp_path, caplog):
    """``generate`` takes the client's options on its own parser (no command line handed on): an option neither has
    is refused by argparse, and the client's options are read before its own check for --model."""
    with pytest.raises(SystemExit) as e:
        _main("generate", str(tmp_path), str(tmp_path / "out"), "--no-such-option")
    assert e.value.code == 2
    with caplog.at_level("ERROR"):
        status = _main("generate", str(tmp_path), str(tmp_path / "out"), "--steps", "3", "--server", "127.0.0.1:9",
                       "--set", "Sampler.cfg=4", "--ray", "--workers", "2")  # fmt: skip
    assert status == 1 and "generate needs --model" in caplog.text
    import argparse

    from pbe_core.client.cli import add_fleet_options, add_run_options
    from pbe_core.eval.generate import OFFICIAL_WORKFLOW, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([str(tmp_path), "out", "--model", "m.ckpt", "--server", "127.0.0.1:9", "--steps", "3"])
    assert (args.workflow, args.steps, args.server, args.ray) == (str(OFFICIAL_WORKFLOW), 3, ["127.0.0.1:9"], None)
    client = argparse.ArgumentParser()
    add_run_options(client)
    add_fleet_options(client)
    assert {a.dest for a in client._actions} - {a.dest for a in parser._actions} == {"output"}
