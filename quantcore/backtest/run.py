"""One call from a signal to qlib's daily report: trading range, benchmark, exchange, simulation.

Shared by `rdquant backtest` and the workflow runner so both pick the same days and benchmark."""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantcore.backtest.errors import SignalError
from quantcore.backtest.exchange import Exchange
from quantcore.backtest.simulate import equal_weight_benchmark, instrument_benchmark, simulate
from quantcore.backtest.strategy import Strategy
from quantcore.data.panel import Panel

__all__ = ["benchmark_returns", "trading_range", "backtest_scores"]


def benchmark_returns(panel: Panel, benchmark: str) -> np.ndarray:
    """Daily benchmark returns: `equal-weight` (mean of all instruments) or one instrument's."""
    if benchmark.lower() in ("equal-weight", "equal_weight"):
        return equal_weight_benchmark(panel)
    return instrument_benchmark(panel, benchmark)


def trading_range(panel: Panel, scores: np.ndarray, start=None, end=None) -> tuple[int, int]:
    """Calendar indices [first, last] to trade: by default from the day after the first scored day to
    the day after the last one (day t trades on day t-1's scores), clipped to [start, end]."""
    days = np.flatnonzero(~np.isnan(scores).all(axis=1))
    if len(days) == 0:
        raise SignalError("the signal has no finite score on any day of the market")
    window = panel.date_index(start, end)
    first = max(window.start, int(days[0]) + 1) if start is None else window.start
    last = min(window.stop - 1, int(days[-1]) + 1) if end is None else window.stop - 1
    first = max(first, 1)  # day 0 has no earlier signal to trade on
    if first > last:
        raise SignalError(
            f"no trading day in the backtest range: the signal covers {str(panel.calendar[days[0]])[:10]} .. "
            f"{str(panel.calendar[days[-1]])[:10]}, the market {str(panel.calendar[0])[:10]} .. "
            f"{str(panel.calendar[-1])[:10]}"
        )
    return first, last


def backtest_scores(
    panel: Panel,
    scores: np.ndarray,
    strategy: Strategy,
    *,
    start=None,
    end=None,
    account: float = 1e8,
    benchmark: str = "equal-weight",
    exchange: Exchange | None = None,
) -> pd.DataFrame:
    """Backtest (T, N) scores with `strategy`; returns qlib's daily report indexed by datetime."""
    first, last = trading_range(panel, scores, start, end)
    bench = benchmark_returns(panel, benchmark)
    exchange = exchange if exchange is not None else Exchange.from_panel(panel)
    return simulate(exchange, strategy, scores, panel.calendar, first, last, account, bench)
