"""Rank correlation of two scorings of the same heads, with its uncertainty.

How well does the proxy rank cells as end-to-end training does? Spearman's
rho answers, and the bootstrap interval says how much a handful of heads can
tell. No TensorFlow.
"""

import warnings

import numpy as np
from scipy import stats


def spearman(proxy_scores, full_scores):
    """Spearman's rho between two score lists (None when undefined)."""
    if len(set(proxy_scores)) < 2 or len(set(full_scores)) < 2:
        return None  # A constant list has no ranks to correlate.
    rho = stats.spearmanr(proxy_scores, full_scores).statistic
    return None if np.isnan(rho) else float(rho)


def spearman_interval(x, y, *, confidence=0.9, resamples=2000, seed=0):
    """Spearman's rho of paired scores with a bootstrap confidence interval.

    The interval is the percentile bootstrap over pairs
    (`scipy.stats.bootstrap`, paired): with few cells it is wide, and it says
    so where a bare rho would not (6 cells give an interval of about +-0.5
    around a rho of 0.6).

    Args:
      x, y: equal-length sequences of numbers, at least 3 pairs.
      confidence: float in (0, 1), e.g. 0.9 for a 90% interval.
      resamples: int, bootstrap resamples.
      seed: int, seeds the resampling (the interval is reproducible).

    Returns:
      (rho, low, high): floats; None for all three when rho is undefined (a
      constant list). Resamples whose rho is undefined (all ties) are left
      out of the interval.

    Raises:
      ValueError: for lists of different lengths or fewer than 3 pairs.
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(
            f"x and y must be equal-length lists, got {x.shape}, {y.shape}"
        )
    if len(x) < 3:
        raise ValueError(f"{len(x)} pairs: a rank correlation needs at least 3")
    rho = spearman(list(x), list(y))
    if rho is None:
        return None, None, None

    def statistic(a, b):
        value = stats.spearmanr(a, b).statistic
        return value if np.isfinite(value) else np.nan

    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Constant resamples warn.
        result = stats.bootstrap(
            (x, y),
            statistic,
            paired=True,
            vectorized=False,
            n_resamples=resamples,
            confidence_level=confidence,
            method="percentile",
            random_state=np.random.default_rng(seed),
        )
    low, high = result.confidence_interval
    if not (np.isfinite(low) and np.isfinite(high)):
        values = result.bootstrap_distribution
        values = values[np.isfinite(values)]
        tail = (1.0 - confidence) / 2 * 100
        low, high = np.percentile(values, [tail, 100 - tail])
    return rho, float(low), float(high)
