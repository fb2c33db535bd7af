"""Fréchet distance between two sets of features (the paper's "FID", on CLIP ViT-B/32 features).

The official ``eval_tool/fid/fid_score.py`` is pytorch-fid with InceptionV3 swapped for CLIP ViT-B/32
``encode_image`` (its ``inception.py`` ``forward`` returns the 512-d CLIP embedding), fed ``clip.load``'s
preprocessing. The statistics and the distance are pytorch-fid's, restated here:

* statistics: the mean and ``np.cov(features, rowvar=False)`` (unbiased, divisor N - 1), in float64;
* distance: ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2))`` with ``scipy.linalg.sqrtm``; if the root is not
  finite, ``eps * I`` (1e-6) is added to both covariances and it is taken again; an imaginary part whose diagonal
  exceeds 1e-3 is an error, a smaller one is dropped.

For bootstrap intervals :class:`FrechetToReference` uses the identity ``tr sqrt(S1 S2) = sum sqrt(eig(R S1 R))``
with ``R = sqrt(S2)`` (S1 S2 and R S1 R have the same eigenvalues), so each resample costs one symmetric
eigen-decomposition; it agrees with :func:`frechet_distance` to rounding on the full set.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

EPS = 1e-6


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> mean (D,) and unbiased covariance (D, D), float64. Needs N >= 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"FID needs an (N, D) feature array with N >= 2, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = EPS) -> float:
    """pytorch-fid's Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2); float64 in, Python float out."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(
            f"FID statistics do not match: means {mu1.shape} and {mu2.shape}, covariances {sigma1.shape} and "
            f"{sigma2.shape}; both sets must come from the same CLIP model"
        )
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        log.warning("FID: sqrtm(S1 S2) is not finite (singular product); adding %g to the covariances' diagonal", eps)
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: sqrtm(S1 S2) has an imaginary part of {np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance (negative rounding-level eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


class FrechetToReference:
    """Fréchet distance of feature subsets to fixed reference statistics (for bootstrap resamples)."""

    def __init__(self, mu_ref: np.ndarray, sigma_ref: np.ndarray):
        self.mu_ref = np.asarray(mu_ref, dtype=np.float64)
        self.sigma_ref = np.asarray(sigma_ref, dtype=np.float64)
        self.root_ref = _psd_sqrt(self.sigma_ref)
        self.trace_ref = float(np.trace(self.sigma_ref))

    def __call__(self, features: np.ndarray) -> float:
        """(N, D) features -> their FID to the reference (same value as :func:`frechet_distance` up to rounding)."""
        mu, sigma = feature_statistics(features)
        diff = mu - self.mu_ref
        inner = self.root_ref @ sigma @ self.root_ref
        eig = np.linalg.eigvalsh((inner + inner.T) / 2)
        return float(diff @ diff + np.trace(sigma) + self.trace_ref - 2 * np.sqrt(np.clip(eig, 0, None)).sum())
