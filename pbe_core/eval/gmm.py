"""The QS (quality score) model: a Gaussian mixture over CLIP features, as plain arrays, scored in numpy.

The official ``eval_tool/gmm/gmm_score_coco.py`` loads ``coco2017_gmm_k20`` (a pickled scikit-learn
``GaussianMixture``, 20 components, fitted on COCO), takes CLIP ViT-B/32 ``encode_image`` of each result (512-d,
not normalised; computed in fp16 on CUDA, which scikit-learn turns into float64), and scores it with
``score_samples``: the log-likelihood ``log sum_k w_k N(x | mu_k, S_k)``. Each score is mapped to
``clip((s - 0) / (300 - 0), 0, 1)`` and QS is the mean times 100. No PCA by default (``--pca_path`` unset). It reads
files in batches of 50 and drops the remainder (3,500 = 70 x 50, so none on COCOEE).

:class:`GmmParams` holds what ``score_samples`` needs. It comes from the pickle through the safe reader
(:mod:`.gmm_pickle`) or from a ``.npz`` holding scikit-learn's attribute names: ``weights_`` (K,), ``means_`` (K, D),
``covariance_type`` (a 0-d string), and ``precisions_cholesky_`` and/or ``covariances_`` with the shapes of that type:

=========== ====================== ==========================================
type        covariances_           precisions_cholesky_ (P = L L^T, P = S^-1)
=========== ====================== ==========================================
full        (K, D, D)              (K, D, D), upper-triangular L per component
tied        (D, D)                 (D, D)
diag        (K, D) variances       (K, D) = 1 / sqrt(variance)
spherical   (K,) variance          (K,) = 1 / sqrt(variance)
=========== ====================== ==========================================

The log-density written here, per component k: ``-D/2 log(2 pi) + sum(log diag L_k) - |(x - mu_k) L_k|^2 / 2``,
plus ``log w_k``, combined with a max-shifted log-sum-exp.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .gmm_pickle import GmmPickleError, read_gaussian_mixture_pickle

log = logging.getLogger(__name__)

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
#: ``gmm_score_coco.py``'s min_number and max_number
QS_MIN, QS_MAX = 0.0, 300.0


class GmmError(ValueError):
    """The GMM file cannot be used; the message names the file, the problem and the fix."""


@dataclass(frozen=True)
class GmmParams:
    """A fitted Gaussian mixture: ``weights`` (K,) summing to 1, ``means`` (K, D), ``precisions_cholesky`` shaped per
    ``covariance_type`` (module docstring), float64. ``source`` names where it came from (for messages)."""

    weights: np.ndarray
    means: np.ndarray
    precisions_cholesky: np.ndarray
    covariance_type: str
    source: str = ""

    @property
    def n_components(self) -> int:
        return self.weights.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def describe(self) -> dict:
        return {"source": self.source, "covariance_type": self.covariance_type, "n_components": self.n_components,
                "dim": self.dim}


def precisions_cholesky_from_covariances(covariances: np.ndarray, covariance_type: str) -> np.ndarray:
    """What scikit-learn stores as ``precisions_cholesky_``, from ``covariances_``.

    full/tied: with ``S = C C^T`` (Cholesky, C lower), ``L = (C^-1)^T``, so ``L L^T = S^-1``; diag/spherical:
    ``1 / sqrt(S)``. Raises ValueError for a covariance that is not positive definite.
    """
    from scipy import linalg

    cov = np.asarray(covariances, dtype=np.float64)
    if covariance_type in ("diag", "spherical"):
        if np.any(cov <= 0):
            raise ValueError("a variance is not positive")
        return 1.0 / np.sqrt(cov)
    stack = cov[None] if covariance_type == "tied" else cov
    out = np.empty_like(stack)
    for k, s in enumerate(stack):
        try:
            chol = linalg.cholesky(s, lower=True)
        except linalg.LinAlgError:
            raise ValueError(f"covariance {k} is not positive definite") from None
        out[k] = linalg.solve_triangular(chol, np.eye(s.shape[0]), lower=True).T
    return out[0] if covariance_type == "tied" else out


def params_from_fields(fields: dict, source: str) -> GmmParams:
    """Check scikit-learn's fitted attributes and build :class:`GmmParams` (see the module docstring's table)."""
    ctype = fields.get("covariance_type")
    if isinstance(ctype, np.ndarray):
        ctype = ctype.item() if ctype.ndim == 0 else ctype
    if ctype not in COVARIANCE_TYPES:
        raise GmmError(f"{source}: covariance_type is {ctype!r}; expected one of {', '.join(COVARIANCE_TYPES)}")
    weights = np.asarray(fields.get("weights_"), dtype=np.float64)
    means = np.asarray(fields.get("means_"), dtype=np.float64)
    if weights.ndim != 1 or means.ndim != 2 or means.shape[0] != weights.shape[0]:
        raise GmmError(f"{source}: weights_ {weights.shape} and means_ {means.shape} are not (K,) and (K, D)")
    k, d = means.shape
    expected = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[ctype]
    if fields.get("precisions_cholesky_") is not None:
        prec = np.asarray(fields["precisions_cholesky_"], dtype=np.float64)
        name = "precisions_cholesky_"
    elif fields.get("covariances_") is not None:
        name = "covariances_"
        cov = np.asarray(fields["covariances_"], dtype=np.float64)
        if cov.shape != expected:
            raise GmmError(f"{source}: covariances_ has shape {cov.shape}; a {ctype} mixture of {k} x {d} needs {expected}")
        try:
            prec = precisions_cholesky_from_covariances(cov, ctype)
        except ValueError as e:
            raise GmmError(f"{source}: {e}") from None
    else:
        raise GmmError(f"{source}: neither precisions_cholesky_ nor covariances_ is present")
    if prec.shape != expected:
        raise GmmError(f"{source}: {name} has shape {prec.shape}; a {ctype} mixture of {k} x {d} needs {expected}")
    if not (np.isfinite(weights).all() and np.isfinite(means).all() and np.isfinite(prec).all()):
        raise GmmError(f"{source}: the mixture holds NaN or infinite values")
    scales = np.diagonal(prec, axis1=-2, axis2=-1) if ctype in ("full", "tied") else prec
    if np.any(scales <= 0):
        raise GmmError(f"{source}: {name} gives a non-positive precision scale; the file is damaged")
    if np.any(weights < 0) or not np.isclose(weights.sum(), 1.0, atol=1e-6):
        raise GmmError(f"{source}: weights_ are not a distribution (sum {weights.sum():.6g})")
    return GmmParams(weights, means, prec, ctype, source)


def read_gmm(path: str | Path) -> GmmParams:
    """A GMM from a ``.npz`` (this module's format) or a scikit-learn pickle (read safely); raises :class:`GmmError`."""
    path = Path(path)
    if not path.is_file():
        raise GmmError(f"GMM file {path} does not exist; download coco2017_gmm_k20 (see docs/evaluation.md)")
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK"):  # np.savez writes a zip
        try:
            with np.load(path, allow_pickle=False) as z:
                fields = {k: z[k] for k in z.files}
        except ValueError as e:
            raise GmmError(f"{path} is an .npz with object arrays ({e}); write it with gmm-convert") from None
        return params_from_fields(fields, str(path))
    try:
        fields = read_gaussian_mixture_pickle(str(path))
    except GmmPickleError as e:
        raise GmmError(str(e)) from None
    if "_sklearn_version" in fields:
        log.info("%s: a GaussianMixture pickled by scikit-learn %s", path, fields["_sklearn_version"])
    return params_from_fields(fields, str(path))


def save_gmm_npz(params: GmmParams, path: str | Path) -> None:
    """Write ``params`` as a ``.npz`` :func:`read_gmm` reads back exactly (no pickle inside)."""
    np.savez(
        path,
        weights_=params.weights,
        means_=params.means,
        precisions_cholesky_=params.precisions_cholesky,
        covariance_type=np.str_(params.covariance_type),
    )


def component_log_densities(params: GmmParams, x: np.ndarray) -> np.ndarray:
    """(N, D) features -> (N, K) ``log N(x | mu_k, S_k)``, float64."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != params.dim:
        raise ValueError(
            f"the GMM ({params.source}) is over {params.dim}-d features but got an array of shape {x.shape}; "
            f"use the CLIP model it was fitted with (ViT-B/32: 512-d)"
        )
    d, k_count, prec, mu = params.dim, params.n_components, params.precisions_cholesky, params.means
    ctype = params.covariance_type
    maha = np.empty((x.shape[0], k_count))  # squared Mahalanobis distance to each component
    log_det = np.empty(k_count)  # log det L_k = half the log-determinant of the precision
    for k in range(k_count):  # one component at a time: N x K x D at once is 290 MB for COCOEE's 3,500 x 20 x 512
        diff = x - mu[k]
        if ctype in ("full", "tied"):
            chol = prec if ctype == "tied" else prec[k]
            y = diff @ chol
            log_det[k] = np.log(np.diagonal(chol)).sum()
        elif ctype == "diag":
            y = diff * prec[k]
            log_det[k] = np.log(prec[k]).sum()
        else:  # spherical
            y = diff * prec[k]
            log_det[k] = d * np.log(prec[k])
        maha[:, k] = np.einsum("nd,nd->n", y, y)
    return -0.5 * (d * np.log(2 * np.pi) + maha) + log_det[None]


def log_likelihood(params: GmmParams, x: np.ndarray) -> np.ndarray:
    """scikit-learn's ``score_samples``: (N, D) -> (N,) ``log sum_k w_k N(x | mu_k, S_k)``, float64."""
    weighted = component_log_densities(params, x) + np.log(params.weights)[None]
    top = weighted.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(weighted - top).sum(axis=1, keepdims=True)))[:, 0]


def quality_scores(loglik: np.ndarray) -> np.ndarray:
    """Per-image QS in [0, 1]: ``clip((s - 0) / 300, 0, 1)``; QS itself is ``100 * mean`` of these."""
    return np.clip((np.asarray(loglik, dtype=np.float64) - QS_MIN) / (QS_MAX - QS_MIN), 0.0, 1.0)
