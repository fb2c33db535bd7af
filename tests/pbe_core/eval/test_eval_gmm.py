"""QS: the GMM pickle read safely, scored in numpy, against scikit-learn's own ``score_samples`` and a QS rebuilt in
the test; malicious pickles refused without running (and shown to run under plain ``pickle.load``).

Tolerance: 1e-6 absolute on log-likelihoods (float64 on both sides; they agree to about 1e-12). The QS set is built so
that log-likelihoods fall below 0 (102 of 200), inside [0, 300] (78) and above 300 (20): QS is 32.80; without the
clipping it would be -63.75, dividing by 299 instead of 300 gives 32.87 (differences asserted), so the QS check would
fail on either.
"""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
from lightning_pickle import FakeCall, FakeGlobal, Pickler, malicious_call

from pbe_core.eval.clip_features import features_of_files, load_clip
from pbe_core.eval.gmm import GmmError, log_likelihood, quality_scores, read_gmm, save_gmm_npz

mixture = pytest.importorskip("sklearn.mixture")

TOL = 1e-6
TYPES = ("full", "tied", "diag", "spherical")


@pytest.fixture(scope="module")
def clip_features(tiny):
    """CLIP features (16-d) of 64 photo crops (to fit on) and of the 12 fixture results (to score)."""
    encoder = load_clip(tiny["clip"])
    train = features_of_files(encoder, sorted(tiny["gmm_train"].glob("*.png")), batch_size=16)
    test = features_of_files(encoder, sorted(tiny["results"].glob("*.png")), batch_size=16)
    return train, test


def _fit(train: np.ndarray, covariance_type: str, **kwargs):
    return mixture.GaussianMixture(3, covariance_type=covariance_type, random_state=0, reg_covar=1e-4, **kwargs).fit(train)


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("covariance_type", TYPES)
def test_log_likelihood_equals_sklearn_score_samples(clip_features, tmp_path, covariance_type, protocol):
    train, test = clip_features
    gm = _fit(train, covariance_type)
    path = tmp_path / "gmm.pkl"
    path.write_bytes(pickle.dumps(gm, protocol=protocol))
    params = read_gmm(path)
    assert params.covariance_type == covariance_type and params.n_components == 3 and params.dim == 16
    expected = gm.score_samples(test)
    np.testing.assert_allclose(log_likelihood(params, test), expected, rtol=0, atol=TOL)
    np.testing.assert_allclose(log_likelihood(params, train), gm.score_samples(train), rtol=0, atol=TOL)
    # the pickle-free copy scores the same
    save_gmm_npz(params, tmp_path / "gmm.npz")
    np.testing.assert_allclose(log_likelihood(read_gmm(tmp_path / "gmm.npz"), test), expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("covariance_type", TYPES)
def test_npz_of_covariances_only(clip_features, tmp_path, covariance_type):
    """A .npz with covariances_ and no precisions_cholesky_ (derived here) scores as scikit-learn does."""
    train, test = clip_features
    gm = _fit(train, covariance_type)
    np.savez(tmp_path / "c.npz", weights_=gm.weights_, means_=gm.means_, covariances_=gm.covariances_,
             covariance_type=np.str_(covariance_type))
    np.testing.assert_allclose(log_likelihood(read_gmm(tmp_path / "c.npz"), test), gm.score_samples(test), atol=TOL, rtol=0)


def test_a_pickle_with_a_random_state_object_is_read(clip_features, tmp_path):
    """random_state=RandomState pickles numpy.random._pickle names: kept as inert placeholders, not needed to score."""
    train, test = clip_features
    gm = _fit(train, "full").set_params(random_state=np.random.RandomState(3))
    path = tmp_path / "rs.pkl"
    path.write_bytes(pickle.dumps(gm, protocol=4))
    assert b"numpy.random" in path.read_bytes()
    np.testing.assert_allclose(log_likelihood(read_gmm(path), test), gm.score_samples(test), atol=TOL, rtol=0)


def test_quality_score_with_clipping_against_the_official_formula(tmp_path):
    rng = np.random.default_rng(0)
    d = 64
    train = rng.normal(scale=0.003, size=(400, d))
    gm = mixture.GaussianMixture(2, covariance_type="full", random_state=0).fit(train)
    # points from the centre outwards: log-likelihoods from about +300 to well below 0
    test = rng.normal(size=(200, d)) * np.linspace(0, 0.15, 200)[:, None] / np.sqrt(d)
    path = tmp_path / "qs.pkl"
    path.write_bytes(pickle.dumps(gm))
    s = gm.score_samples(test)
    assert (s < 0).sum() > 20 and (s > 300).sum() > 5 and ((s > 0) & (s < 300)).sum() > 20
    official = float(np.mean(np.clip([(v - 0) / (300 - 0) for v in s], 0, 1)) * 100)
    ours = float(100 * quality_scores(log_likelihood(read_gmm(path), test)).mean())
    assert ours == pytest.approx(official, abs=1e-9)
    no_clip = float(100 * np.mean(s / 300))
    by_299 = float(100 * np.mean(np.clip(s / 299, 0, 1)))
    assert abs(no_clip - official) > 10 and abs(by_299 - official) > 0.01


# --- what the reader refuses ----------------------------------------------------------------------------------------


def _dump_with_fakes(path, obj, protocol=2):
    with open(path, "wb") as f:
        Pickler(f, protocol=protocol).dump(obj)


def _malicious_files(tmp_path, clip_features=None):
    """Three pickles that create a marker under plain pickle.load: a fitted GMM whose random_state is os.system(...),
    a bare builtins.exec(...), and subprocess.call([...]) inside a dict."""
    train = np.random.default_rng(0).normal(size=(40, 4))
    gm = mixture.GaussianMixture(2, random_state=0).fit(train)
    files = {}
    gm.random_state = malicious_call(tmp_path / "marker-gmm", via="system")
    _dump_with_fakes(tmp_path / "gmm-system.pkl", gm)
    files["gmm-system.pkl"] = ("marker-gmm", "posix.system|os.system")
    _dump_with_fakes(tmp_path / "exec.pkl", malicious_call(tmp_path / "marker-exec", via="exec"))
    files["exec.pkl"] = ("marker-exec", "builtins.exec")
    call = FakeCall(FakeGlobal("subprocess.call"), (["touch", str(tmp_path / "marker-subprocess")],))
    _dump_with_fakes(tmp_path / "subprocess.pkl", {"weights_": call})
    files["subprocess.pkl"] = ("marker-subprocess", "subprocess.call")
    return files


def test_malicious_pickles_are_refused_and_run_nothing(tmp_path):
    for name, (marker, pickled) in _malicious_files(tmp_path).items():
        with pytest.raises(GmmError, match=rf"unsafe: its pickle names ({pickled}).*Nothing in it was run"):
            read_gmm(tmp_path / name)
        assert not (tmp_path / marker).exists()


def test_the_malicious_fixtures_really_run_code_under_plain_pickle_load(tmp_path):
    files = _malicious_files(tmp_path)
    code = "import pickle, sys\nfor p in sys.argv[1:]:\n    pickle.load(open(p, 'rb'))\n"  # plain, as the official tool
    subprocess.run([sys.executable, "-c", code, *(str(tmp_path / n) for n in files)], cwd=tmp_path, check=True,
                   timeout=120, capture_output=True)
    assert all((tmp_path / marker).exists() for marker, _ in files.values())


def test_other_objects_are_refused(tmp_path):
    train = np.random.default_rng(0).normal(size=(40, 3))
    bayes = mixture.BayesianGaussianMixture(n_components=2, random_state=0).fit(train)
    (tmp_path / "bayes.pkl").write_bytes(pickle.dumps(bayes))
    with pytest.raises(GmmError, match="BayesianGaussianMixture, not a scikit-learn GaussianMixture"):
        read_gmm(tmp_path / "bayes.pkl")
    (tmp_path / "dict.pkl").write_bytes(pickle.dumps({"weights_": [1.0]}))
    with pytest.raises(GmmError, match="holds dict, not a scikit-learn GaussianMixture"):
        read_gmm(tmp_path / "dict.pkl")
    gm = mixture.GaussianMixture(2, random_state=0).fit(train)
    gm.means_ = gm.means_.astype(object)
    (tmp_path / "object.pkl").write_bytes(pickle.dumps(gm))
    with pytest.raises(GmmError, match="only plain numeric dtypes"):
        read_gmm(tmp_path / "object.pkl")
    unfitted = mixture.GaussianMixture(2)
    (tmp_path / "unfitted.pkl").write_bytes(pickle.dumps(unfitted))
    with pytest.raises(GmmError, match="never fitted"):
        read_gmm(tmp_path / "unfitted.pkl")
    (tmp_path / "text").write_text("not a pickle")
    with pytest.raises(GmmError, match="is not a pickle"):
        read_gmm(tmp_path / "text")
    np.savez(tmp_path / "bad.npz", weights_=np.ones(2) / 2, means_=np.zeros((2, 3)), precisions_cholesky_=np.ones((2, 3)),
             covariance_type=np.str_("full"))
    with pytest.raises(GmmError, match=r"precisions_cholesky_ has shape \(2, 3\); a full mixture of 2 x 3 needs \(2, 3, 3\)"):
        read_gmm(tmp_path / "bad.npz")


def test_features_of_the_wrong_width_are_refused(clip_features, tmp_path):
    train, _ = clip_features
    (tmp_path / "g.pkl").write_bytes(pickle.dumps(_fit(train, "diag")))
    with pytest.raises(ValueError, match="over 16-d features but got an array of shape"):
        log_likelihood(read_gmm(tmp_path / "g.pkl"), np.zeros((3, 512)))
