"""Score one expression end to end: evaluate it on the full history, restrict to [start, end], clean
once into a `FactorData`, and summarise IC, RankIC, quantile returns, turnover and IC decay."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from quantcore.data.panel import Panel
from quantcore.evaluate.correlation import FactorCorrelation, library_correlation
from quantcore.evaluate.errors import FactorEvaluationError
from quantcore.evaluate.factor_data import MAX_LOSS, MIN_DAYS, FactorData, align
from quantcore.evaluate.ic import MIN_PAIRS, DailyRanks, ICStats, daily_ic, daily_rank_ic, ic_stats
from quantcore.evaluate.quantile import long_short, quantile_buckets, quantile_returns
from quantcore.evaluate.turnover import bucket_turnover, rank_autocorr
from quantcore.expr.evaluate import Evaluator
from quantcore.features import DEFAULT_LABEL

__all__ = ["FactorReport", "evaluate_expression", "evaluate_arrays", "decay_label", "DECAY_HORIZONS"]

#: IC decay horizons in days (1 is qlib's default label).
DECAY_HORIZONS = tuple(range(1, 21))


def decay_label(horizon: int) -> str:
    """The h-day forward return label, entered like qlib's default label (trade at close t+1, exit at
    close t+1+h), so horizon 1 is exactly DEFAULT_LABEL and only the exit moves with h."""
    if horizon < 1:
        raise ValueError(f"decay horizons must be >= 1, got {horizon}")
    return f"Ref($close, -{horizon + 1}) / Ref($close, -1) - 1"


@dataclass(frozen=True)
class FactorReport:
    """Summary of one factor against one label over one date range."""

    expression: str
    label: str
    start: str | None  # first and last calendar day scored
    end: str | None
    n_days: int  # usable days (>= min_pairs valid pairs and some spread)
    loss: float  # share of the factor's values dropped by cleaning
    ic: ICStats
    rank_ic: ICStats
    quantiles: int
    quantile_returns: tuple[float, ...]  # mean daily label per bucket, lowest factor first
    long_short: float  # mean daily top-minus-bottom bucket label
    long_short_t: float  # its t-statistic
    turnover_top: float  # mean daily share of the top bucket replaced
    turnover_bottom: float
    autocorr: float  # mean lag-1 rank autocorrelation of the factor
    decay: Mapping[int, float] = field(default_factory=dict)  # horizon -> mean RankIC
    correlations: Mapping[str, FactorCorrelation] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready dict: means of IC/RankIC at the top level, NaN as None."""
        return {
            "expression": self.expression,
            "label": self.label,
            "start": self.start,
            "end": self.end,
            "n_days": self.n_days,
            "loss": _num(self.loss),
            "ic": _num(self.ic.mean),
            "rank_ic": _num(self.rank_ic.mean),
            "icir": _num(self.ic.icir),
            "rank_icir": _num(self.rank_ic.icir),
            "ic_t": _num(self.ic.t_stat),
            "rank_ic_t": _num(self.rank_ic.t_stat),
            "ic_std": _num(self.ic.std),
            "rank_ic_std": _num(self.rank_ic.std),
            "ic_days": self.ic.n_days,
            "rank_ic_days": self.rank_ic.n_days,
            "quantiles": self.quantiles,
            "quantile_returns": [_num(v) for v in self.quantile_returns],
            "long_short": _num(self.long_short),
            "long_short_t": _num(self.long_short_t),
            "turnover": {"top": _num(self.turnover_top), "bottom": _num(self.turnover_bottom)},
            "autocorr": _num(self.autocorr),
            "decay": {str(h): _num(v) for h, v in self.decay.items()},
            "correlations": {
                k: {"daily_mean": _num(c.daily_mean), "pooled": _num(c.pooled)} for k, c in self.correlations.items()
            },
        }


def evaluate_arrays(
    factor: np.ndarray,
    label: np.ndarray | DailyRanks,
    *,
    calendar: np.ndarray | None = None,
    expression: str = "factor",
    label_name: str = "label",
    quantiles: int = 5,
    min_pairs: int = MIN_PAIRS,
    max_loss: float = MAX_LOSS,
    min_days: int = MIN_DAYS,
) -> tuple[FactorReport, FactorData]:
    """Report for (N, T) factor and label arrays already restricted to the days to score; a label scored
    against many factors may come ranked once (`daily_ranks`), with the same report."""
    data = align(
        factor, label, calendar=calendar, min_pairs=min_pairs, max_loss=max_loss, min_days=min_days, name=expression
    )
    ic = ic_stats(daily_ic(data.factor, data.label, min_pairs))
    # ranks over the common set are already in `data`, so RankIC is Pearson of them
    rank_ic = ic_stats(daily_ic(data.factor_rank, data.label_rank, min_pairs))
    buckets = quantile_buckets(data, quantiles)
    per_q = quantile_returns(data, buckets, quantiles)
    ls = ic_stats(long_short(per_q))
    used = calendar[data.days_used] if calendar is not None else None
    report = FactorReport(
        expression=expression,
        label=label_name,
        start=str(pd.Timestamp(used[0]).date()) if used is not None and used.size else None,
        end=str(pd.Timestamp(used[-1]).date()) if used is not None and used.size else None,
        n_days=data.n_days,
        loss=data.loss,
        ic=ic,
        rank_ic=rank_ic,
        quantiles=quantiles,
        quantile_returns=tuple(_nanmean(row) for row in per_q),
        long_short=ls.mean,
        long_short_t=ls.t_stat,
        turnover_top=_nanmean(bucket_turnover(buckets, quantiles - 1, data.days_used)),
        turnover_bottom=_nanmean(bucket_turnover(buckets, 0, data.days_used)),
        autocorr=_nanmean(rank_autocorr(data, min_pairs)),
    )
    return report, data


def evaluate_expression(
    panel: Panel,
    expr: str,
    label: str = DEFAULT_LABEL,
    start=None,
    end=None,
    *,
    quantiles: int = 5,
    min_pairs: int = MIN_PAIRS,
    max_loss: float = MAX_LOSS,
    min_days: int = MIN_DAYS,
    decay_horizons: Iterable[int] = DECAY_HORIZONS,
    library: Mapping[str, str] | None = None,
    evaluator: Evaluator | None = None,
) -> FactorReport:
    """Evaluate `expr` (no look-ahead allowed) and `label` on the full history, so look-backs are
    warm at `start`, then score the days in [start, end]. `library` maps names to expressions whose
    value correlation with `expr` is reported; decay horizons use `decay_label`."""
    ev = evaluator or Evaluator(panel)
    days = panel.date_index(start, end)
    if days.stop <= days.start:
        cover = f"{str(panel.calendar[0])[:10]} .. {str(panel.calendar[-1])[:10]}" if panel.n_days else "no days"
        asked = " and ".join(f"{w} {d}" for w, d in (("from", start), ("to", end)) if d is not None) or "at all"
        raise FactorEvaluationError(f"no trading days {asked}; the market covers {cover}")
    factor = ev.evaluate({"factor": expr}, dtype=np.float64)["factor"][:, days]
    y = ev.evaluate({"label": label}, allow_future=True, dtype=np.float64)["label"][:, days]
    report, data = evaluate_arrays(
        factor,
        y,
        calendar=panel.calendar[days],
        expression=expr,
        label_name=label,
        quantiles=quantiles,
        min_pairs=min_pairs,
        max_loss=max_loss,
        min_days=min_days,
    )
    horizons = list(decay_horizons)
    decay = {}
    if horizons:
        labels = ev.evaluate({str(h): decay_label(h) for h in horizons}, allow_future=True, dtype=np.float64)
        for h in horizons:
            decay[h] = _nanmean(daily_rank_ic(factor, labels[str(h)][:, days], min_pairs))
    correlations = {}
    if library:
        arrays = ev.evaluate(dict(library), dtype=np.float64)
        correlations = library_correlation(factor, {k: v[:, days] for k, v in arrays.items()}, min_pairs)
    return replace(report, decay=decay, correlations=correlations)


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    ok = ~np.isnan(x)
    return float(x[ok].mean()) if ok.any() else math.nan


def _num(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)
