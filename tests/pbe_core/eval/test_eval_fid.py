"""FID on CLIP features: the formula against torchmetrics' (eigenvalues of S1 S2) and scipy's sqrtm, the whole
pipeline against torchmetrics' FrechetInceptionDistance fed transformers' CLIP, and the reference-statistics cache.

Tolerances: relative 1e-8 between float64 formulas on well-conditioned statistics; 1e-6 for the pipeline (float32
features). The wrong variants move the value by far more (asserted at 1e-3 relative): on the 30-sample set where the
right FID is 3.439, without the factor 2 on the cross term it is 19.87, with the biased covariance (ddof=0) 3.393, on
L2-normalised features 0.189; so the parity checks would catch each of them.
"""

from __future__ import annotations

import os

import eval_oracles
import numpy as np
import pytest
import torch
from PIL import Image

from pbe_core.eval import cocoee
from pbe_core.eval.clip_features import features_of_files, load_clip
from pbe_core.eval.fid import FrechetToReference, feature_statistics, frechet_distance
from pbe_core.eval.fid_reference import FidReferenceError, list_images, reference_statistics

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _two_sets(n1=300, n2=500, d=16, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    a = rng.normal(size=(n1, d)) @ mix + 0.3
    b = rng.normal(size=(n2, d)) @ (mix + 0.2 * rng.normal(size=(d, d)) / np.sqrt(d))
    return a, b


def test_statistics_are_mean_and_unbiased_covariance():
    a, _ = _two_sets()
    mu, sigma = feature_statistics(a)
    t = torch.from_numpy(a)
    np.testing.assert_allclose(mu, t.mean(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(sigma, torch.cov(t.T, correction=1).numpy(), rtol=1e-10, atol=1e-14)


def test_frechet_distance_matches_torchmetrics_and_scipy():
    from scipy import linalg

    a, b = _two_sets()
    (mu1, s1), (mu2, s2) = feature_statistics(a), feature_statistics(b)
    ours = frechet_distance(mu1, s1, mu2, s2)
    tm = eval_oracles.torchmetrics_fid(mu1, s1, mu2, s2)
    by_scipy = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real))
    assert ours > 0.1
    assert ours == pytest.approx(tm, rel=1e-8) and ours == pytest.approx(by_scipy, rel=1e-10)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-9)


def test_wrong_fid_variants_would_fail():
    """Without the 2 on tr sqrt(S1 S2), with np.cov(ddof=0) on 30 samples, or on normalised features, the value moves
    by far more than the 1e-8 tolerance (numbers asserted)."""
    a, b = _two_sets(n1=30)
    (mu1, s1), (mu2, s2) = feature_statistics(a), feature_statistics(b)
    right = eval_oracles.torchmetrics_fid(mu1, s1, mu2, s2)
    from scipy import linalg

    no_two = float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - linalg.sqrtm(s1 @ s2).real))
    biased = frechet_distance(mu1, np.cov(a, rowvar=False, ddof=0), mu2, np.cov(b, rowvar=False, ddof=0))
    an, bn = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    normalised = frechet_distance(*feature_statistics(an), *feature_statistics(bn))
    for wrong in (no_two, biased, normalised):
        assert abs(wrong - right) > 1e-3 * right


def test_bootstrap_form_equals_the_sqrtm_form():
    a, b = _two_sets()
    (mu1, s1), (mu2, s2) = feature_statistics(a), feature_statistics(b)
    assert FrechetToReference(mu2, s2)(a) == pytest.approx(frechet_distance(mu1, s1, mu2, s2), rel=1e-9)


def test_mismatched_statistics_are_refused():
    with pytest.raises(ValueError, match="same CLIP model"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(np.zeros((1, 4)))


def test_pipeline_matches_torchmetrics_fid_on_transformers_clip(tiny, tmp_path):
    """Results folder vs reference folder: ours (our preprocessing, safe loading, numpy statistics, sqrtm) against
    torchmetrics' FrechetInceptionDistance with transformers' CLIP as its feature extractor, fed torchvision's
    clip.load transform (torchmetrics accumulates its own float64 sums for the statistics)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    encoder = load_clip(tiny["clip"])
    results = sorted(tiny["results"].glob("*.png"))
    ref = reference_statistics(encoder, tiny["reference"], tmp_path)
    ours = frechet_distance(*feature_statistics(features_of_files(encoder, results, batch_size=5)), ref.mu, ref.sigma)

    class TransformersClip(torch.nn.Module):
        def forward(self, pixels):  # torchmetrics first probes the width with a random uint8 image
            return torch.from_numpy(eval_oracles.encode_image(tiny["clip"], pixels.float()))

    metric = FrechetInceptionDistance(feature=TransformersClip(), input_img_size=(3, 224, 224))
    transform = eval_oracles.clip_load_transform(224)
    for real, files in ((True, sorted(tiny["reference"].glob("*.png"))), (False, results)):
        metric.update(torch.stack([transform(Image.open(p)) for p in files]), real=real)
    assert ours == pytest.approx(float(metric.compute()), rel=1e-6)
    assert ref.n == 36 and ours > 0


def test_reference_statistics_are_cached_and_invalidated(tiny, tmp_path):
    encoder = load_clip(tiny["clip"])
    folder = tmp_path / "ref"
    folder.mkdir()
    for p in sorted(tiny["reference"].glob("*.png"))[:20]:
        (folder / p.name).write_bytes(p.read_bytes())
    first = reference_statistics(encoder, folder, tmp_path / "out")
    assert not first.cached and first.cache.is_file() and first.n == 20
    second = reference_statistics(encoder, folder, tmp_path / "out")
    assert second.cached and second.cache == first.cache
    np.testing.assert_array_equal(second.sigma, first.sigma)
    changed = sorted(folder.glob("*.png"))[0]
    Image.open(changed).transpose(Image.Transpose.ROTATE_90).save(changed)
    os.utime(changed, ns=(1, 1))
    third = reference_statistics(encoder, folder, tmp_path / "out")
    assert not third.cached and third.key != first.key and not np.array_equal(third.mu, first.mu)
    # a .npz of mu/sigma is accepted as the reference; one of another width is refused
    given = reference_statistics(encoder, first.cache, tmp_path / "elsewhere")
    np.testing.assert_array_equal(given.mu, first.mu)
    np.savez(tmp_path / "wide.npz", mu=np.zeros(512), sigma=np.eye(512))
    with pytest.raises(FidReferenceError, match=r"mu \(512,\).*16-d features"):
        reference_statistics(encoder, tmp_path / "wide.npz", tmp_path)


def test_listing_follows_fid_score_py(tmp_path):
    for name in ("b.png", "a.jpg", "c.JPG", "d.txt", "e.webp"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.png", "e.webp"]


def test_the_set_is_the_results_in_benchmark_order(tiny):
    rows = cocoee.read_rows(tiny["cocoee"])
    assert [r.name for r in rows][:2] == ["000000001773", "000000003419"] and rows[5].name == "900100376112"
