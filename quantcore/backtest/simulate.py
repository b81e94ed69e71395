"""The daily loop. The simulator owns time: on day t the strategy gets only signal rows before t and
the current book; the simulator then executes its decision at day t's deal prices, marks the book at
day t's close and writes one row of qlib's daily report.

Report columns (qlib `PortfolioMetrics`): account = cash + value; return = (account change + cost) /
previous account (gross of cost, as qlib); turnover and cost are today's traded value and cost over
the previous account; total_* are cumulative; value = holdings at their marks; bench = benchmark return.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from quantcore.backtest.account import Account, isclose
from quantcore.backtest.errors import BacktestError, SignalError
from quantcore.backtest.exchange import Exchange
from quantcore.backtest.strategy import DropoutOrders, Strategy, TargetWeights
from quantcore.data.panel import Panel

__all__ = ["REPORT_COLUMNS", "align_signal", "equal_weight_benchmark", "instrument_benchmark", "simulate"]

REPORT_COLUMNS = ("account", "return", "total_turnover", "turnover", "total_cost", "cost", "value", "cash", "bench")


def align_signal(signal: pd.Series, panel: Panel) -> np.ndarray:
    """A (T, N) score array on the panel's calendar and instruments from a (datetime, instrument) series."""
    if not isinstance(signal.index, pd.MultiIndex) or signal.index.nlevels != 2:
        raise SignalError("signal must be indexed by (datetime, instrument)")
    names = list(signal.index.names)
    if "datetime" in names and "instrument" in names and names.index("datetime") == 1:
        signal = signal.swaplevel()
    dates = pd.DatetimeIndex(pd.to_datetime(signal.index.get_level_values(0)))
    t = pd.DatetimeIndex(panel.calendar).get_indexer(dates)
    n = pd.Index(panel.instruments).get_indexer(signal.index.get_level_values(1).astype(str))
    ok = (t >= 0) & (n >= 0) & np.isfinite(signal.to_numpy(dtype=np.float64, na_value=np.nan))
    if not ok.any():
        raise SignalError("signal shares no (datetime, instrument) with the market; check dates and instrument names")
    out = np.full((len(panel.calendar), len(panel.instruments)), np.nan)
    out[t[ok], n[ok]] = signal.to_numpy(dtype=np.float64, na_value=np.nan)[ok]
    return out


def _daily_return(close: np.ndarray) -> np.ndarray:
    """close / previous close - 1 along days, (N, T) -> (N, T), NaN on the first day."""
    prev = np.concatenate([np.full((close.shape[0], 1), np.nan), close[:, :-1]], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return close / prev - 1.0


def equal_weight_benchmark(panel: Panel) -> np.ndarray:
    """Mean daily return over the instruments trading that day (0 where none), as the qlib reference."""
    r = _daily_return(panel.fields["close"])
    count = np.sum(~np.isnan(r), axis=0)
    return np.where(count > 0, np.nansum(r, axis=0) / np.maximum(count, 1), 0.0)


def instrument_benchmark(panel: Panel, instrument: str) -> np.ndarray:
    """One instrument's daily close-to-close return (0 where missing)."""
    if instrument not in panel.instruments:
        raise BacktestError(f"benchmark instrument {instrument!r} is not in the market")
    i = panel.instruments.index(instrument)
    return np.nan_to_num(_daily_return(panel.fields["close"][i : i + 1])[0], nan=0.0)


def simulate(
    exchange: Exchange,
    strategy: Strategy,
    scores: np.ndarray,
    calendar: np.ndarray,
    start: int,
    end: int,
    account: float = 1e8,
    benchmark: np.ndarray | None = None,
) -> pd.DataFrame:
    """Run days [start, end] (calendar indices, inclusive); returns qlib's daily report."""
    t_all, n = exchange.close.shape
    if scores.shape != (t_all, n):
        raise BacktestError(f"scores have shape {scores.shape}, expected {(t_all, n)} (days, instruments)")
    if not 0 <= start <= end < t_all:
        raise BacktestError(f"backtest days [{start}, {end}] fall outside the calendar of {t_all} days")
    book = Account.empty(account, n)
    rows = np.empty((end - start + 1, len(REPORT_COLUMNS)))
    last_value, last_turnover, last_cost = book.value(), 0.0, 0.0
    for k, t in enumerate(range(start, end + 1)):
        decision = strategy.decide(scores[:t], book.held)  # rows before t only: no look-ahead
        if isinstance(decision, DropoutOrders):
            _execute_dropout(exchange, book, t, decision)
        elif isinstance(decision, TargetWeights):
            _execute_weights(exchange, book, t, decision.weights)
        book.mark(exchange.close[t])
        stock = book.stock_value()
        value = book.cash + stock
        cost, turnover = book.total_cost - last_cost, book.total_turnover - last_turnover
        rows[k] = (
            value,
            (value - last_value + cost) / last_value,
            book.total_turnover,
            turnover / last_value,
            book.total_cost,
            cost / last_value,
            stock,
            book.cash,
            0.0,
        )
        last_value, last_turnover, last_cost = value, book.total_turnover, book.total_cost
    report = pd.DataFrame(
        rows, columns=list(REPORT_COLUMNS), index=pd.DatetimeIndex(calendar[start : end + 1], name="datetime")
    )
    report["bench"] = 0.0 if benchmark is None else benchmark[start : end + 1]
    return report


def _sell(ex: Exchange, book: Account, t: int, i: int, amount: float, price: float) -> None:
    """Sell `amount` of instrument i; a partial sale is rounded to whole lots (qlib)."""
    held = float(book.amount[i])
    if not isclose(amount, held):
        amount = ex.round_amount(min(amount, held), float(ex.factor[t, i]))
    val = amount * price
    if book.cash + val < max(val * ex.costs.close_cost, ex.costs.min_cost):
        return  # cannot even pay the cost
    cost = ex.costs.cost(val, ex.costs.close_cost)
    if val > 1e-5:
        book.sell(i, amount, price, cost)


def _buy(ex: Exchange, book: Account, t: int, i: int, amount: float, price: float) -> None:
    """Buy a lot-rounded `amount`, shrunk to what the cash pays for (qlib's cash clipping)."""
    c = ex.costs
    val = amount * price
    if book.cash < max(val * c.open_cost, c.min_cost):
        return
    if book.cash < val + max(val * c.open_cost, c.min_cost):
        amount = ex.round_amount(min(c.max_buy_amount(book.cash, price), amount), float(ex.factor[t, i]))
    else:
        amount = ex.round_amount(amount, float(ex.factor[t, i]))
    val = amount * price
    if val > 1e-5:
        book.buy(i, amount, price, c.cost(val, c.open_cost))


def _execute_dropout(ex: Exchange, book: Account, t: int, d: DropoutOrders) -> None:
    # TopkDropout forbids any trade in a name at either limit (qlib forbid_all_trade_at_limit=True).
    blocked = (ex.limit_buy[t] | ex.limit_sell[t]).tolist()
    price, factor = ex.deal_price[t].tolist(), ex.factor[t].tolist()
    for i in d.sell.tolist():
        if not blocked[i]:
            _sell(ex, book, t, i, float(book.amount[i]), price[i])
    value = book.cash * d.buy_fraction  # the split counts blocked names too, as qlib does
    for i in d.buy.tolist():
        if not blocked[i]:
            _buy(ex, book, t, i, ex.round_amount(value / price[i], factor[i]), price[i])


def _execute_weights(ex: Exchange, book: Account, t: int, weights: np.ndarray) -> None:
    price = ex.deal_price[t]
    mark = np.where(np.isnan(price), book.price, price)
    total = book.cash + float(np.nansum(book.amount * mark))
    with np.errstate(invalid="ignore", divide="ignore"):
        target = np.where(weights > 0, ex.round_amount(weights * total / price, ex.factor[t]), 0.0)
    delta = np.nan_to_num(target) - book.amount
    for i in np.flatnonzero((delta < 0) & ~ex.limit_sell[t]).tolist():
        _sell(ex, book, t, i, float(-delta[i]), float(price[i]))
    for i in np.flatnonzero((delta > 0) & ~ex.limit_buy[t]).tolist():
        _buy(ex, book, t, i, float(delta[i]), float(price[i]))
