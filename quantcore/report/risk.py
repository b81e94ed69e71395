"""qlib-compatible risk analysis of a return series and of a backtest's daily report.

Formulas follow qlib 0.9.7 `qlib/contrib/evaluate.py:risk_analysis`; the portfolio summary follows
`qlib/workflow/record_temp.py:PortAnaRecord` (excess return = return - bench, with cost also - cost).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from enum import Enum

import numpy as np
import pandas as pd

from quantcore.report.errors import ReportError

__all__ = [
    "Accumulation",
    "RiskMetrics",
    "periods_per_year",
    "risk_analysis",
    "excess_returns",
    "portfolio_analysis",
    "PORTFOLIO_COLUMNS",
    "analysis_frame",
]

#: Periods per year by frequency unit, as qlib 0.9.7 `cal_risk_analysis_scaler` has them: 238 trading
#: days (China's A-share calendar, not 252), 50 weeks, 12 months, 240 minutes a day.
_PERIODS = {"day": 238.0, "week": 50.0, "month": 12.0, "min": 240.0 * 238.0}
_UNITS = {
    "month": "month",
    "mon": "month",
    "week": "week",
    "w": "week",
    "day": "day",
    "d": "day",
    "minute": "min",
    "min": "min",
}
_FREQ = re.compile(r"^([0-9]*)(month|mon|week|w|day|d|minute|min)$")

#: Columns of the daily report that `portfolio_analysis` reads.
PORTFOLIO_COLUMNS = ("return", "bench", "cost")


class Accumulation(str, Enum):
    """How returns accumulate: qlib's default sums them (linear curve), PRODUCT compounds them."""

    SUM = "sum"
    PRODUCT = "product"


@dataclass(frozen=True)
class RiskMetrics:
    """qlib's five risk numbers of one return series."""

    mean: float  # per-period mean (sum mode) or geometric mean (product mode)
    std: float  # sample std, ddof=1 (of log(1 + r) in product mode)
    annualized_return: float  # mean * N (sum) or compounded to N periods (product)
    information_ratio: float  # mean / std * sqrt(N); NaN when std is 0 or undefined
    max_drawdown: float  # <= 0: deepest fall of the cumulative curve below its running peak

    def to_dict(self) -> dict[str, float]:
        """The metrics under qlib's names, in qlib's order."""
        return asdict(self)


def periods_per_year(freq: str = "day") -> float:
    """qlib's annualisation scaler for a frequency such as "day", "1d", "week", "5min", "month"."""
    m = _FREQ.match(str(freq).lower())
    if m is None:
        raise ReportError(f"unknown frequency {freq!r}; use (n)day/d, (n)week/w, (n)month/mon or (n)minute/min")
    count = int(m.group(1)) if m.group(1) else 1
    if count < 1:
        raise ReportError(f"frequency {freq!r} has a zero count; use e.g. '1day'")
    return _PERIODS[_UNITS[m.group(2)]] / count


def risk_analysis(
    returns: pd.Series, freq: str = "day", mode: Accumulation | str = Accumulation.SUM, *, n: float | None = None
) -> RiskMetrics:
    """qlib's risk analysis of per-period returns. `n` overrides the periods per year that `freq`
    implies (pass 252 for a US calendar). Missing values are dropped first; in sum mode this is what
    qlib's NaN-skipping pandas reductions give, in product mode qlib would count them in len(r)."""
    mode = _mode(mode)
    r = _clean(returns, "returns")
    scale = float(n) if n is not None else periods_per_year(freq)
    if not scale > 0:
        raise ReportError(f"periods per year must be positive, got {n}")
    if mode is Accumulation.SUM:
        mean = float(r.mean())
        std = _std(r)
        annualized = mean * scale
        curve = np.cumsum(r)
        max_dd = float(np.min(curve - np.maximum.accumulate(curve)))
    else:
        if np.any(r <= -1.0):
            raise ReportError("product mode needs every return > -100%; a total loss has no log return")
        curve = np.cumprod(1.0 + r)
        mean = float(curve[-1] ** (1.0 / r.size) - 1.0)
        std = _std(np.log(1.0 + r))  # qlib: np.log(1 + r), not log1p, to match its digits
        annualized = float(curve[-1] ** (scale / r.size) - 1.0)
        max_dd = float(np.min(curve / np.maximum.accumulate(curve) - 1.0))
    # qlib divides by a zero std and reports +-inf; an IR of a riskless series is undefined, so NaN
    ir = mean / std * math.sqrt(scale) if std > 0 else math.nan
    return RiskMetrics(mean=mean, std=std, annualized_return=annualized, information_ratio=ir, max_drawdown=max_dd)


def excess_returns(report: pd.DataFrame) -> pd.DataFrame:
    """Daily excess returns of a backtest report: `without_cost` = return - bench and `with_cost` =
    return - bench - cost, as qlib's PortAnaRecord forms them."""
    _check_report(report)
    r, b, c = (report[k].astype(np.float64) for k in PORTFOLIO_COLUMNS)
    return pd.DataFrame({"without_cost": r - b, "with_cost": r - b - c}, index=report.index)


def portfolio_analysis(
    report: pd.DataFrame, freq: str = "day", mode: Accumulation | str = Accumulation.SUM, *, n: float | None = None
) -> dict[str, float]:
    """Risk analysis of a backtest's daily report under qlib's metric names, e.g.
    "excess_return_without_cost.annualized_return", "excess_return_with_cost.max_drawdown" and the
    benchmark's own "bench.information_ratio". The report needs the columns `return`, `bench`, `cost`."""
    ex = excess_returns(report)
    series = {
        "excess_return_without_cost": ex["without_cost"],
        "excess_return_with_cost": ex["with_cost"],
        "bench": report["bench"].astype(np.float64),
    }
    out: dict[str, float] = {}
    for name, s in series.items():
        for key, value in risk_analysis(s, freq, mode, n=n).to_dict().items():
            out[f"{name}.{key}"] = value
    return out


def analysis_frame(analysis: dict[str, float]) -> pd.DataFrame:
    """`portfolio_analysis` output in qlib's `port_analysis` layout: rows (series, metric), one
    column "risk"."""
    keys = [tuple(k.rsplit(".", 1)) for k in analysis]
    if not keys or any(len(k) != 2 for k in keys):
        raise ReportError("expected keys like 'excess_return_with_cost.mean', as portfolio_analysis returns")
    index = pd.MultiIndex.from_tuples(keys)
    return pd.DataFrame({"risk": list(analysis.values())}, index=index)


def _mode(mode: Accumulation | str) -> Accumulation:
    try:
        return Accumulation(mode)
    except ValueError:
        raise ReportError(f"unknown accumulation mode {mode!r}; use 'sum' or 'product'") from None


def _clean(returns, what: str) -> np.ndarray:
    if isinstance(returns, pd.DataFrame):
        raise ReportError(f"{what} must be one series, got a frame with columns {list(returns.columns)}; pick one")
    try:
        r = np.asarray(pd.Series(returns), dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ReportError(f"{what} must be numeric: {e}") from None
    if r.size == 0:
        raise ReportError(f"{what} are empty; the backtest or date range produced no periods")
    if np.isinf(r).any():
        raise ReportError(f"{what} contain infinite values; check the prices or weights that produced them")
    r = r[~np.isnan(r)]
    if r.size == 0:
        raise ReportError(f"{what} are all NaN; check the date range and that the benchmark has data")
    return r


def _std(x: np.ndarray) -> float:
    return float(np.std(x, ddof=1)) if x.size > 1 else math.nan


def _check_report(report: pd.DataFrame) -> None:
    if not isinstance(report, pd.DataFrame):
        raise ReportError(f"expected the backtest's daily report frame, got {type(report).__name__}")
    missing = [c for c in PORTFOLIO_COLUMNS if c not in report.columns]
    if missing:
        raise ReportError(
            f"the daily report lacks column(s) {missing} (has {list(report.columns)}); pass the frame "
            "`quantcore.backtest.simulate` returns, or add a zero `bench`/`cost` column"
        )
    if report.empty:
        raise ReportError("the daily report has no rows; the backtest range produced no trading days")
