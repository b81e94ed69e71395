"""The canonical factor frame: factor and label aligned once, cleaned once, ranked once.

Like alphalens' `get_clean_factor_and_forward_returns`, everything downstream (IC, quantiles,
turnover) is a pure function of this record, and cleaning refuses loudly when it would drop more than
`max_loss` of the factor's values instead of quietly scoring what is left.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantcore.evaluate.errors import FactorEvaluationError
from quantcore.evaluate.ic import MIN_PAIRS, DailyRanks, cs_rank

__all__ = ["FactorData", "align", "MAX_LOSS", "MIN_DAYS"]

#: Refuse when cleaning drops more than this share of the factor's values (alphalens' default).
MAX_LOSS = 0.35
#: Fewer usable days than this and there is no IC std, ICIR or t-stat worth reporting.
MIN_DAYS = 3


@dataclass(frozen=True, eq=False)
class FactorData:
    """Factor and label on the usable (instrument, day) cells, NaN elsewhere; all arrays (N, T)."""

    factor: np.ndarray  # float64 (N, T)
    label: np.ndarray  # float64 (N, T), NaN exactly where `factor` is
    factor_rank: np.ndarray  # percentile rank of factor within each day's usable set, (0, 1]
    label_rank: np.ndarray  # percentile rank of label within the same set
    count: np.ndarray  # int (T,): usable pairs per day
    days_used: np.ndarray  # bool (T,): count >= min_pairs and neither side is constant that day
    calendar: np.ndarray | None  # datetime64 (T,) when known
    loss: float  # share of the factor's non-NaN values dropped by cleaning

    @property
    def n_days(self) -> int:
        return int(self.days_used.sum())


def align(
    factor: np.ndarray,
    label: np.ndarray | DailyRanks,
    *,
    calendar: np.ndarray | None = None,
    min_pairs: int = MIN_PAIRS,
    max_loss: float = MAX_LOSS,
    min_days: int = MIN_DAYS,
    name: str = "factor",
) -> FactorData:
    """Keep the cells where factor and label are both valid on days with >= `min_pairs` such cells and
    some spread in each; refuse (FactorEvaluationError) a factor that is all-NaN, constant, or loses
    more than `max_loss` of its values, and a range with fewer than `min_days` usable days.

    `label` may be a `DailyRanks` (see `daily_ranks`): a label scored against many factors is then
    sorted once, and its ranks over each factor's usable cells are walked from that order, equal bit
    for bit to ranking it again."""
    ranked = label if isinstance(label, DailyRanks) else None
    x = np.asarray(factor, dtype=np.float64)
    y = ranked.values if ranked is not None else np.asarray(label, dtype=np.float64)
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(
            f"factor and label must be (instruments, days) arrays of one shape, got {x.shape} and {y.shape}"
        )
    if x.shape[1] == 0:
        raise FactorEvaluationError(f"{name}: the date range holds no trading days")
    has_x = np.isfinite(x)  # +/-inf (a division by zero) is missing, as in alphalens' cleaning
    n_factor = int(has_x.sum())
    if n_factor == 0:
        raise FactorEvaluationError(
            f"{name} is NaN on every instrument and day in the range (inf counts as NaN); nothing to score"
        )
    if np.max(x, initial=-np.inf, where=has_x) == np.min(x, initial=np.inf, where=has_x):
        raise FactorEvaluationError(
            f"{name} is constant ({x[has_x][0]:g} wherever defined); a constant has no cross-sectional order to score"
        )
    both = has_x & (ranked.valid if ranked is not None else np.isfinite(y))
    fx = np.where(both, x, np.nan)
    fy = np.where(both, y, np.nan)
    count = both.sum(axis=0)
    # a day needs some spread on both sides: a constant cross-section has no order to correlate (fmax and
    # fmin skip the NaN cells; a day without cells compares NaN > NaN, False)
    spread = (np.fmax.reduce(fx, axis=0) > np.fmin.reduce(fx, axis=0)) & (
        np.fmax.reduce(fy, axis=0) > np.fmin.reduce(fy, axis=0)
    )
    days_used = (count >= min_pairs) & spread
    fx[:, ~days_used] = np.nan
    fy[:, ~days_used] = np.nan
    kept = int(count[days_used].sum())
    loss = 1.0 - kept / n_factor
    n_days = int(days_used.sum())
    if n_days < min_days:
        raise FactorEvaluationError(
            f"{name}: only {n_days} of {x.shape[1]} days have >= {min_pairs} instruments with both factor and "
            f"label defined and not constant (need {min_days}); widen the date range or lower min_pairs"
        )
    if loss > max_loss:
        raise FactorEvaluationError(
            f"{name}: cleaning drops {loss:.0%} of the factor's values (label missing, or days with < {min_pairs} "
            f"valid pairs or no spread), more than max_loss={max_loss:.0%}; check the factor's NaN pattern "
            f"or raise max_loss"
        )
    return FactorData(
        factor=fx,
        label=fy,
        factor_rank=cs_rank(fx),
        label_rank=cs_rank(fy) if ranked is None else ranked.within(both & days_used),
        count=count.astype(np.int64) * days_used,
        days_used=days_used,
        calendar=calendar,
        loss=loss,
    )
