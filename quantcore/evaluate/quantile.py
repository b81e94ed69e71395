"""Quantile buckets of the factor per day and the mean label (forward return) of each bucket."""

from __future__ import annotations

import numpy as np

from quantcore.evaluate.factor_data import FactorData

__all__ = ["quantile_buckets", "quantile_returns", "long_short"]


def quantile_buckets(data: FactorData, quantiles: int = 5) -> np.ndarray:
    """Bucket 0 (lowest factor) .. quantiles-1 (highest) per usable cell, -1 elsewhere; int (N, T).

    Cuts the day's ranks where pd.qcut (alphalens' binning) cuts distinct values: edge k sits at
    rank position k * (count - 1) / quantiles, intervals closed on the right. Tied factor values
    share an average rank and so a bucket (where qcut on values would refuse duplicate edges)."""
    if quantiles < 2:
        raise ValueError(f"quantiles must be at least 2, got {quantiles}")
    valid = ~np.isnan(data.factor_rank)
    count = np.where(data.count > 0, data.count, 1)
    # the kernel's pct rank is rank / count; doubling and rounding recovers the exact (half-)integer
    # average rank, so the ceil below is exact arithmetic, never a rounding accident at an edge
    position = np.round(np.where(valid, data.factor_rank, 0.0) * count * 2.0) / 2.0 - 1.0
    bucket = np.ceil(position * quantiles / np.maximum(count - 1, 1)).astype(np.int64) - 1
    return np.where(valid, np.clip(bucket, 0, quantiles - 1), -1)


def quantile_returns(data: FactorData, buckets: np.ndarray, quantiles: int) -> np.ndarray:
    """Mean label of each bucket per day, float (quantiles, T); NaN where a bucket is empty that day."""
    out = np.full((quantiles, buckets.shape[1]), np.nan)
    y = np.where(np.isnan(data.label), 0.0, data.label)
    with np.errstate(invalid="ignore", divide="ignore"):
        for q in range(quantiles):
            member = buckets == q
            n = member.sum(axis=0)
            out[q] = np.where(n > 0, np.where(member, y, 0.0).sum(axis=0) / n, np.nan)
    return out


def long_short(per_quantile: np.ndarray) -> np.ndarray:
    """Top-minus-bottom bucket return per day (T,): an equal-weight, dollar-neutral spread, not demeaned."""
    return per_quantile[-1] - per_quantile[0]
