"""Factor evaluation: how well one factor predicts a label, on (instruments, days) arrays.

`evaluate_expression(panel, expr)` is the one-call entry point; `align` builds the canonical cleaned
`FactorData` and the functions of `ic`, `quantile`, `turnover` and `correlation` are pure over arrays.
"""

from quantcore.evaluate.correlation import FactorCorrelation, library_correlation
from quantcore.evaluate.errors import FactorEvaluationError
from quantcore.evaluate.factor_data import FactorData, align
from quantcore.evaluate.ic import (
    DailyRanks,
    ICStats,
    cs_rank,
    daily_ic,
    daily_rank_ic,
    daily_ranks,
    ic_stats,
    pooled_corr,
)
from quantcore.evaluate.quantile import long_short, quantile_buckets, quantile_returns
from quantcore.evaluate.report import DECAY_HORIZONS, FactorReport, decay_label, evaluate_arrays, evaluate_expression
from quantcore.evaluate.turnover import bucket_turnover, rank_autocorr

__all__ = [
    "DECAY_HORIZONS",
    "DailyRanks",
    "FactorCorrelation",
    "FactorData",
    "FactorEvaluationError",
    "FactorReport",
    "ICStats",
    "align",
    "bucket_turnover",
    "cs_rank",
    "daily_ic",
    "daily_rank_ic",
    "daily_ranks",
    "decay_label",
    "evaluate_arrays",
    "evaluate_expression",
    "ic_stats",
    "library_correlation",
    "long_short",
    "pooled_corr",
    "quantile_buckets",
    "quantile_returns",
    "rank_autocorr",
]
