"""Bootstrap 95 % intervals for the three numbers (not part of the official tools, which report point values).

The results are resampled with replacement (``resamples`` draws of N indices from ``numpy.random.default_rng(seed)``);
the same draws serve every metric, so their intervals are paired. The statistic is recomputed on each draw; the
interval is the 2.5th and 97.5th percentile (``numpy.percentile``, linear). For FID only the generated side is
resampled: the reference statistics (40k COCO images) are held fixed. FID has a positive small-sample bias, so its
resampled values sit above the point value; the interval describes the spread, not a bias correction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0


def resample_indices(n: int, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> Iterator[np.ndarray]:
    """``resamples`` arrays of ``n`` int64 indices in [0, n), drawn with replacement, the same for a given seed."""
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        yield rng.integers(0, n, size=n)


def interval(
    statistic: Callable[[np.ndarray], float], n: int, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED
) -> tuple[float, float]:
    """(2.5 %, 97.5 %) percentiles of ``statistic(indices)`` over the resamples."""
    if n < 2 or resamples < 1:
        return (float("nan"), float("nan"))
    values = np.array([statistic(idx) for idx in resample_indices(n, resamples, seed)], dtype=np.float64)
    lo, hi = np.percentile(values, [2.5, 97.5])
    return float(lo), float(hi)


def mean_interval(values: np.ndarray, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> tuple[float, float]:
    """Interval of the mean of per-image ``values`` (N,)."""
    values = np.asarray(values, dtype=np.float64)
    return interval(lambda idx: float(values[idx].mean()), len(values), resamples, seed)
