"""The account: cash plus holdings in (adjusted) shares, marked at the last known price."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Account", "isclose"]


def isclose(a: float, b: float) -> bool:
    """Scalar `np.isclose` (rtol 1e-5, atol 1e-8), without numpy's per-call overhead in the daily loop."""
    return abs(a - b) <= 1e-8 + 1e-5 * abs(b)


@dataclass
class Account:
    """Mutable book of one backtest. Arrays have one entry per instrument."""

    cash: float
    amount: np.ndarray  # float64 (N,): shares held; 0 = not held
    price: np.ndarray  # float64 (N,): last mark (deal price on entry, then each non-suspended close)
    total_turnover: float = 0.0
    total_cost: float = 0.0
    value_history: list = field(default_factory=list)

    @classmethod
    def empty(cls, cash: float, n_instruments: int) -> "Account":
        return cls(float(cash), np.zeros(n_instruments), np.full(n_instruments, np.nan))

    @property
    def held(self) -> np.ndarray:
        return self.amount > 0

    def stock_value(self) -> float:
        held = self.held
        return float(np.dot(self.amount[held], self.price[held]))

    def value(self) -> float:
        return self.cash + self.stock_value()

    def buy(self, i: int, amount: float, price: float, cost: float) -> None:
        if self.amount[i] == 0:
            self.price[i] = price
        self.amount[i] += amount
        self._book(-amount * price, cost)

    def sell(self, i: int, amount: float, price: float, cost: float) -> None:
        # A sale of (numerically) the whole holding closes it, as qlib's np.isclose check.
        held = float(self.amount[i])
        self.amount[i] = 0.0 if isclose(held, amount) else held - amount
        self._book(amount * price, cost)

    def mark(self, close: np.ndarray) -> None:
        """Re-mark holdings at today's close, keeping the last price where the close is missing."""
        ok = self.held & ~np.isnan(close)
        self.price[ok] = close[ok]

    def _book(self, cash_flow: float, cost: float) -> None:
        self.cash += cash_flow - cost
        self.total_turnover += abs(cash_flow)
        self.total_cost += cost
