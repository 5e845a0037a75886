"""Mean scores with bootstrap confidence intervals, and paired differences between two runs.

Intervals are percentile bootstrap intervals (scipy.stats.bootstrap, ``method="percentile"``)
from a fixed seed, so the same scores always give the same interval. The percentile method
is used rather than BCa because BCa is undefined when every value is equal (a run compared
with itself, a category where the judge gives every pair the same score).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 10_000
SEED = 20261201
# Two scores closer than this are a tie: the judge's expected score, recomputed on another
# device, may differ in the last bits.
TIE = 1e-6
# Values drawn per vectorised batch of resamples (8 bytes each): bounds the memory of a
# bootstrap of a large category.
_BATCH_VALUES = 2_500_000


def mean_ci(values: Sequence[float]) -> tuple[float, float] | None:
    """The CONFIDENCE percentile-bootstrap interval of the mean; None below two values."""
    # Imported here: scipy.stats takes ~0.8 s to import, and every producer command imports this module.
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return None
    result = stats.bootstrap((x,), np.mean, n_resamples=RESAMPLES, confidence_level=CONFIDENCE,
                             method="percentile", rng=np.random.default_rng(SEED),
                             batch=max(1, _BATCH_VALUES // x.size))
    interval = result.confidence_interval
    return float(interval.low), float(interval.high)


def mean_summary(values: Sequence[float]) -> dict[str, Any]:
    """n, the mean (full precision) and its interval as ``[low, high]`` (None when undefined)."""
    ci = mean_ci(values)
    return {"n": len(values), "mean": float(np.mean(values)) if len(values) else None,
            "ci95": list(ci) if ci else None}


def paired_difference(baseline: Sequence[float], other: Sequence[float]) -> dict[str, Any]:
    """``other - baseline`` pair by pair: the mean difference with its bootstrap interval (the
    pairs resampled together), and how many pairs ``other`` won, tied and lost."""
    if len(baseline) != len(other):
        raise ValueError(f"paired scores of unequal length: {len(baseline)} and {len(other)}")
    diff = np.asarray(other, dtype=float) - np.asarray(baseline, dtype=float)
    summary = mean_summary(diff)
    return {"n": summary["n"], "mean_difference": summary["mean"], "ci95": summary["ci95"],
            "won": int(np.sum(diff > TIE)), "tied": int(np.sum(np.abs(diff) <= TIE)),
            "lost": int(np.sum(diff < -TIE))}
