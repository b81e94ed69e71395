"""Strategies turn the signal known before day t (and the current book) into a decision for day t.

They never see prices or tradability of day t: the simulator (`simulate.py`) sizes and executes the
decision at day t's deal prices, and refuses untradable orders, as qlib's exchange does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from quantcore.backtest.errors import BacktestError

__all__ = ["DropoutOrders", "TargetWeights", "Strategy", "TopkDropout", "WeightStrategy", "rank_desc"]


@dataclass(frozen=True)
class DropoutOrders:
    """Sell whole holdings of `sell`; then buy `buy` in order, each with `buy_fraction` of the cash."""

    sell: np.ndarray  # int (k,)
    buy: np.ndarray  # int (m,), highest priority first
    buy_fraction: float


@dataclass(frozen=True)
class TargetWeights:
    """Rebalance so each instrument's value is weights[i] x account value (NaN/0 = not held)."""

    weights: np.ndarray  # float64 (N,)


class Strategy(Protocol):
    def decide(self, past_scores: np.ndarray, held: np.ndarray) -> DropoutOrders | TargetWeights | None:
        """`past_scores`: (t, N) signal rows strictly before day t; `held`: bool (N,). None = no trade."""


def rank_desc(scores: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """`idx` ordered by score, highest first, NaN last; ties keep `idx` order (pandas sort_values)."""
    key = -scores[idx]
    key[np.isnan(key)] = np.inf
    return idx[np.argsort(key, kind="stable")]


@dataclass(frozen=True)
class TopkDropout:
    """qlib 0.9.7 TopkDropoutStrategy (method_sell='bottom', method_buy='top', hold_thresh=1).

    Each day: rank the held names by yesterday's score; take the best `topk + n_drop - held` unheld
    names as candidates; sell the held names among the `n_drop` worst of (held + candidates); buy the
    best `sold + topk - held` candidates, each with risk_degree / len(buy) of the cash after sales.
    """

    topk: int = 50
    n_drop: int = 5
    risk_degree: float = 0.95  # qlib's default: keep 5% cash

    def __post_init__(self) -> None:
        if self.topk < 1 or self.n_drop < 0:
            raise BacktestError(f"topk must be >= 1 and n_drop >= 0, got topk={self.topk}, n_drop={self.n_drop}")

    def decide(self, past_scores: np.ndarray, held: np.ndarray) -> DropoutOrders | None:
        if len(past_scores) == 0:
            return None
        scores = past_scores[-1]  # qlib trades day t on the signal of the previous trading day
        scored = ~np.isnan(scores)
        if not scored.any():
            return None  # qlib: no signal that day -> empty decision
        # Instrument-index order stands in for qlib's sorted-label order in pandas index unions.
        last = rank_desc(scores, np.flatnonzero(held))
        n_new = max(0, self.n_drop + self.topk - len(last))
        today = rank_desc(scores, np.flatnonzero(scored & ~held))[:n_new]
        comb = rank_desc(scores, np.sort(np.concatenate([last, today])))
        # Python slicing as in qlib's get_last_n: n_drop = 0 gives comb[-0:], i.e. every name.
        in_worst = np.zeros(len(held), dtype=bool)
        in_worst[comb[-self.n_drop :]] = True
        sell = last[in_worst[last]]
        buy = today[: max(0, len(sell) + self.topk - len(last))]
        return DropoutOrders(sell, buy, self.risk_degree / len(buy) if len(buy) else 0.0)


@dataclass(frozen=True)
class WeightStrategy:
    """Target weights from a function of the past signal rows (default: the last row, used as weights)."""

    risk_degree: float = 0.95  # fraction of the account invested

    def decide(self, past_scores: np.ndarray, held: np.ndarray) -> TargetWeights | None:
        if len(past_scores) == 0 or np.isnan(past_scores[-1]).all():
            return None
        w = np.nan_to_num(past_scores[-1], nan=0.0)
        if np.any(w < 0):
            raise BacktestError("target weights must be >= 0 (long-only); shift or clip the signal")
        total = w.sum()
        return TargetWeights(w / total * self.risk_degree if total > 0 else w)
