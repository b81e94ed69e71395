"""How fast the factor's picks change: bucket turnover and lag-1 rank autocorrelation."""

from __future__ import annotations

import numpy as np

from quantcore.evaluate.factor_data import FactorData
from quantcore.evaluate.ic import daily_rank_ic

__all__ = ["bucket_turnover", "rank_autocorr"]


def bucket_turnover(buckets: np.ndarray, bucket: int, days_used: np.ndarray) -> np.ndarray:
    """Share of day t's members of `bucket` that were not in it on day t-1, per day (T,); NaN on the
    first day and wherever t or t-1 is not a usable day (alphalens' quantile_turnover, period 1)."""
    member = buckets == bucket
    now, before = member[:, 1:], member[:, :-1]
    n_now = now.sum(axis=0)
    stayed = (now & before).sum(axis=0)
    ok = days_used[1:] & days_used[:-1] & (n_now > 0)
    out = np.full(buckets.shape[1], np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[1:] = np.where(ok, 1.0 - stayed / n_now, np.nan)
    return out


def rank_autocorr(data: FactorData, min_pairs: int) -> np.ndarray:
    """Spearman correlation of the factor on day t with itself on day t-1 across instruments, per day
    (T,); NaN on the first day. Near 1 means slow-moving picks, i.e. low trading cost."""
    out = np.full(data.factor.shape[1], np.nan)
    out[1:] = daily_rank_ic(data.factor[:, 1:], data.factor[:, :-1], min_pairs)
    return out
