"""How much a new factor repeats a library of existing ones: value correlations, daily and pooled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from quantcore.evaluate.ic import MIN_PAIRS, daily_ic, pooled_corr

__all__ = ["FactorCorrelation", "library_correlation"]


@dataclass(frozen=True)
class FactorCorrelation:
    """Correlation of two factors' values: mean of the daily cross-sectional correlations, and over
    all (instrument, day) cells at once (pooled, which also sees time-series co-movement)."""

    daily_mean: float
    pooled: float


def library_correlation(
    factor: np.ndarray, library: Mapping[str, np.ndarray], min_pairs: int = MIN_PAIRS
) -> dict[str, FactorCorrelation]:
    """Name -> correlation of `factor` with each (N, T) array of `library`, in the library's order."""
    out = {}
    for name, other in library.items():
        daily = daily_ic(factor, other, min_pairs)
        ok = ~np.isnan(daily)
        out[name] = FactorCorrelation(float(daily[ok].mean()) if ok.any() else float("nan"), pooled_corr(factor, other))
    return out
