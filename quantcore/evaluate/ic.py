"""Daily cross-sectional correlations (IC, RankIC) on (instruments, days) arrays, vectorised over days.

Every function takes float (N, T) arrays and returns one value per day (shape (T,)); a day counts only
where both inputs are non-NaN on at least `min_pairs` instruments and neither is constant that day,
otherwise its value is NaN. Spearman is Pearson of average-tie ranks over the day's common valid set,
which is what qlib's `calc_ic` gets from `df.groupby("datetime").apply(lambda d: d.pred.corr(d.label,
method="spearman"))`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from quantcore import kernels

__all__ = ["DailyRanks", "ICStats", "cs_rank", "daily_ic", "daily_rank_ic", "daily_ranks", "ic_stats", "pooled_corr"]

#: Fewer valid (factor, label) pairs than this on a day and the day is skipped: a correlation over a
#: handful of names is noise, and qlib's own reports drop such days the same way.
MIN_PAIRS = 10


def cs_rank(x: np.ndarray) -> np.ndarray:
    """Per-day percentile rank (average ties) of the non-NaN values of an (N, T) array; NaN stays NaN."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    n, t = x.shape
    # NaN already marks everything to skip, so every instrument gets the full span
    return kernels.cross_section("CSRank", x, np.zeros(n, np.int64), np.full(n, t, np.int64))


def _panel(a) -> np.ndarray:
    return a.values if isinstance(a, DailyRanks) else np.asarray(a, dtype=np.float64)


def _common(x, y) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y = _panel(x), _panel(y)
    if x.shape != y.shape or x.ndim != 2:
        raise ValueError(
            f"factor and label must be (instruments, days) arrays of one shape, got {x.shape} and {y.shape}"
        )
    both = np.isfinite(x) & np.isfinite(y)  # inf (a division by zero) counts as missing
    return x, y, both


def _pearson_days(x: np.ndarray, y: np.ndarray, both: np.ndarray, min_pairs: int) -> np.ndarray:
    # two-pass moments (demean, then sum products) in one compiled sweep: one pass of sums of
    # squares loses digits on prices
    # one thread: a few ms of memory-bound work, where a thread team only adds barrier stalls on busy cores
    count, mx, my, sxx, syy, sxy = kernels.pearson_moments(x, y, both, threads=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = sxy / np.sqrt(sxx * syy)
    # a day whose values are all equal has no cross-section to correlate; the demeaned values are then
    # rounding noise of the mean (about count * eps * |mean| each), so compare against that scale
    flat = (sxx <= count * (1e-12 * mx) ** 2) | (syy <= count * (1e-12 * my) ** 2)
    r[(count < min_pairs) | flat | ~np.isfinite(r)] = np.nan
    return np.clip(r, -1.0, 1.0)


@dataclass(frozen=True, eq=False)
class DailyRanks:
    """An (N, T) array sorted once per day, for scoring many factors against one label (or one factor
    against many labels) without ranking it again every time: each scoring ranks it over that day's
    common cells, and a day's common set is seldom all its valid cells (one suspended name is enough),
    so what is kept is the sort, which any subset of a day inherits."""

    values: np.ndarray  # float64 (N, T), a read-only copy: the order stays true to it
    valid: np.ndarray  # bool (N, T): finite cells
    order: np.ndarray  # int64 (T, N): each day's instruments in ascending order of value, NaN last
    keys: np.ndarray  # float64 (T, N): each day's values in that order

    def within(self, common: np.ndarray) -> np.ndarray:
        """Ranks over each day's `common` cells (a subset of `valid`), NaN elsewhere: equal bit for bit
        to cs_rank(np.where(common, values, nan)), walked from the stored order instead of sorted again."""
        return kernels.rank_within(self.keys, self.order, common, threads=1)

    def days(self, days: slice | np.ndarray) -> DailyRanks:
        """The same ranks on a subset of days (a slice or index array over T): each day's sort is its own."""
        return DailyRanks(self.values[:, days], self.valid[:, days], self.order[days], self.keys[days])


def daily_ranks(x: np.ndarray) -> DailyRanks:
    """Sort `x` (N, T) once per day, for repeated `daily_rank_ic` (or `align`) calls against it."""
    values = np.array(x, dtype=np.float64)  # a copy: a later change to x must not stale the order
    if values.ndim != 2:
        raise ValueError(f"daily_ranks needs an (instruments, days) array, got shape {values.shape}")
    order = np.argsort(values.T, axis=1, kind="stable")  # infinities in place, NaN last
    keys = np.take_along_axis(values.T, order, axis=1)
    for a in (values, order, keys):
        a.flags.writeable = False
    return DailyRanks(values, np.isfinite(values), order, keys)


def _ranks_within(a, x: np.ndarray, both: np.ndarray) -> np.ndarray:
    return a.within(both) if isinstance(a, DailyRanks) else cs_rank(np.where(both, x, np.nan))


def daily_ic(factor: np.ndarray | DailyRanks, label: np.ndarray | DailyRanks, min_pairs: int = MIN_PAIRS) -> np.ndarray:
    """Pearson IC per day (T,) between factor and label across instruments; NaN on skipped days."""
    x, y, both = _common(factor, label)
    return _pearson_days(x, y, both, min_pairs)


def daily_rank_ic(
    factor: np.ndarray | DailyRanks, label: np.ndarray | DailyRanks, min_pairs: int = MIN_PAIRS
) -> np.ndarray:
    """Spearman RankIC per day (T,): Pearson of the ranks over each day's common valid set. Either
    side may be a `DailyRanks` (see `daily_ranks`), which is then not sorted again."""
    x, y, both = _common(factor, label)
    rx = _ranks_within(factor, x, both)  # rank over the common set only, as pandas' pairwise corr
    ry = _ranks_within(label, y, both)
    return _pearson_days(rx, ry, both, min_pairs)


@dataclass(frozen=True)
class ICStats:
    """Summary of a daily IC series over the days it is defined."""

    mean: float
    std: float  # ddof=1, as pandas' Series.std in qlib's reports
    icir: float  # mean / std (not annualised, as qlib's ICIR)
    t_stat: float  # mean / std * sqrt(n_days): the IC mean's t-statistic under independent days
    n_days: int

    def to_dict(self) -> dict:
        return {k: _finite(v) for k, v in asdict(self).items()}


def ic_stats(series: np.ndarray) -> ICStats:
    """Mean, std, ICIR and t-stat of a daily IC series, ignoring NaN (skipped) days."""
    s = np.asarray(series, dtype=np.float64)
    s = s[~np.isnan(s)]
    n = int(s.size)
    mean = float(s.mean()) if n else math.nan
    std = float(s.std(ddof=1)) if n > 1 else math.nan
    icir = mean / std if std > 0 else math.nan
    return ICStats(mean, std, icir, icir * math.sqrt(n) if n else math.nan, n)


def pooled_corr(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation over every (instrument, day) where both are non-NaN (NaN if < 2 pairs)."""
    x, y, both = _common(x, y)
    a, b = x[both], y[both]
    if a.size < 2:
        return math.nan
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else math.nan


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v
