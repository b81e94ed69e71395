"""The exchange: deal prices, costs, trade-unit rounding and tradability, precomputed as (T, N) arrays.

Rules follow qlib 0.9.7's `Exchange` with a float `limit_threshold`: a day is suspended when the close
is NaN; a buy is blocked when the day's change is >= the threshold, a sell when it is <= -threshold;
TopkDropout (forbid_all_trade_at_limit) blocks both directions on either limit. The change is the
market's `change` field when it has one (qlib reads `$change` the same way); otherwise close / previous
close - 1. Note qlib itself applies no limit at all when a qlib directory lacks change.day.bin, because
its `$change` is then all NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantcore.backtest.errors import BacktestError
from quantcore.data.panel import Panel

__all__ = ["CostModel", "Exchange"]


@dataclass(frozen=True)
class CostModel:
    """Proportional costs with a per-order floor, as qlib's open_cost/close_cost/min_cost."""

    open_cost: float = 0.0005  # buy cost ratio (qlib reference config)
    close_cost: float = 0.0015  # sell cost ratio, includes stamp duty in the CN convention
    min_cost: float = 5.0  # floor per order, in account currency

    def cost(self, value: float, ratio: float) -> float:
        """Cost of one order of `value`; nothing is charged for an empty order (qlib: value <= 1e-5)."""
        return 0.0 if value <= 1e-5 else max(value * ratio, self.min_cost)

    def max_buy_amount(self, cash: float, price: float) -> float:
        """Largest (unrounded) amount whose value plus cost fits in `cash`."""
        if cash < self.min_cost:
            return 0.0
        # Below this cash level the floor, not the ratio, is the binding cost.
        if cash >= self.min_cost / self.open_cost + self.min_cost:
            return cash / (1.0 + self.open_cost) / price
        return (cash - self.min_cost) / price


@dataclass(frozen=True, eq=False)
class Exchange:
    """Market arrays in (day, instrument) layout, so one day's cross-section is one contiguous row."""

    deal_price: np.ndarray  # float64 (T, N); NaN where untradable
    close: np.ndarray  # float64 (T, N); marks positions at the end of each day
    factor: np.ndarray  # float64 (T, N); adjustment factor, 1 where unknown
    suspended: np.ndarray  # bool (T, N)
    limit_buy: np.ndarray  # bool (T, N): cannot buy (limit up or suspended)
    limit_sell: np.ndarray  # bool (T, N): cannot sell (limit down or suspended)
    costs: CostModel = CostModel()
    trade_unit: float | None = 100.0  # shares per lot in raw (unadjusted) units; None = fractional

    @classmethod
    def from_panel(
        cls,
        panel: Panel,
        deal_price: str = "close",
        limit_threshold: float | None = 0.095,
        costs: CostModel = CostModel(),
        trade_unit: float | None = 100.0,
    ) -> "Exchange":
        """Precompute every array the daily loop needs from a market panel."""
        for name in ("close", deal_price):
            if name not in panel.fields:
                raise BacktestError(f"market has no {name!r} field; available: {sorted(panel.fields)}")
        close = np.ascontiguousarray(panel.fields["close"].T)
        price = np.ascontiguousarray(panel.fields[deal_price].T)
        factor = panel.fields.get("factor")
        factor = np.ones_like(close) if factor is None else np.ascontiguousarray(factor.T)
        factor = np.where(np.isfinite(factor) & (factor > 0), factor, 1.0)
        suspended = np.isnan(close) | np.isnan(price)
        if "change" in panel.fields:
            change = np.ascontiguousarray(panel.fields["change"].T)
        else:
            prev = np.vstack([np.full((1, close.shape[1]), np.nan), close[:-1]])
            with np.errstate(invalid="ignore", divide="ignore"):
                change = close / prev - 1.0  # NaN after a suspended day: no limit can be told
        if limit_threshold is None:
            up = down = np.zeros_like(suspended)
        else:
            # Compared in float32, as qlib does on its float32 `$change` data: a move stored as
            # float32(-0.095) must count as limit-down although it is > -0.095 in float64.
            c32, lim = change.astype(np.float32), np.float32(limit_threshold)
            up, down = c32 >= lim, c32 <= -lim
        return cls(price, close, factor, suspended, up | suspended, down | suspended, costs, trade_unit)

    @property
    def n_days(self) -> int:
        return self.close.shape[0]

    def round_amount(self, amount: np.ndarray | float, factor: np.ndarray | float) -> np.ndarray | float:
        """Round adjusted share amounts down to whole lots of raw shares (+0.1 absorbs float error, as qlib)."""
        if self.trade_unit is None:
            return amount
        return (amount * factor + 0.1) // self.trade_unit * self.trade_unit / factor
