"""A daily optimisation policy: day t's scores + returns before t + current book -> target weights.

`OptimizedPolicy.target_weights` is the whole policy and knows nothing of a simulator; it re-fits its
risk model every `refit_every` days on the last `lookback` days of returns and records one `PolicyStep`
per call (status, solver, fallback) for the report. `PolicyStrategy` adapts it to the backtest's
`Strategy` protocol (`decide(past_scores, held) -> TargetWeights`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd

from quantcore.portfolio.errors import OptimizerConfigError, RiskModelError
from quantcore.portfolio.optimizer import OptimizationResult, OptimizerConfig, ProblemCache, optimize_weights
from quantcore.portfolio.riskmodel import FactorRiskModel, Risk

__all__ = ["AlphaScaling", "OptimizedPolicy", "PolicyStep", "PolicyStrategy", "RiskEstimator", "daily_returns"]


class RiskEstimator(Protocol):
    risk_: Risk

    def fit(self, returns: np.ndarray) -> "RiskEstimator": ...


class AlphaScaling(enum.Enum):
    NONE = "none"  # scores are expected returns already
    VOLATILITY = "volatility"  # qlib scale_return: z-score across names, times the mean name volatility


@dataclass(frozen=True)
class PolicyStep:
    """One decision, for the run report."""

    t: int  # decision day (calendar index)
    status: str  # OptimizationResult.status value, or "no_risk_model" / "no_signal"
    solver: str | None
    fallback: str | None  # set when the weights are not an optimum (reason + what was returned)
    objective: float
    turnover: float  # ‖w − w_prev‖₁
    refit: bool  # the risk model was re-estimated for this day


def daily_returns(close: np.ndarray) -> np.ndarray:
    """(T, N) close-to-close returns, NaN on the first day and around missing closes."""
    c = np.asarray(close, dtype=np.float64)
    out = np.full_like(c, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[1:] = c[1:] / c[:-1] - 1.0
    return out


class OptimizedPolicy:
    """Mean-variance target weights each day, with a risk model re-fitted every `refit_every` days."""

    def __init__(
        self,
        config: OptimizerConfig = OptimizerConfig(),
        risk_model: RiskEstimator | None = None,
        lookback: int = 250,
        refit_every: int = 20,
        alpha_scaling: AlphaScaling = AlphaScaling.NONE,
    ):
        self.config = config
        self.risk_model = FactorRiskModel(n_factors=10) if risk_model is None else risk_model
        self.lookback = lookback  # ~one trading year of daily returns
        self.refit_every = refit_every  # ~monthly: risk moves slowly, a refit costs an SVD/eigh
        self.alpha_scaling = alpha_scaling
        if lookback < 2 or refit_every < 1:
            raise OptimizerConfigError(f"lookback must be >= 2 and refit_every >= 1, got {lookback}, {refit_every}")
        if not isinstance(alpha_scaling, AlphaScaling):
            raise OptimizerConfigError(f"alpha_scaling must be an AlphaScaling, got {alpha_scaling!r}")
        self.risk_: Risk | None = None
        self.fitted_at_: int | None = None
        self.steps_: list[PolicyStep] = []
        self.last_result_: OptimizationResult | None = None
        self.cache_ = ProblemCache()  # one compiled problem per risk-model fit

    def target_weights(
        self,
        t: int,
        alpha: np.ndarray,
        past_returns: np.ndarray,
        weights: np.ndarray | None,
        tradable: np.ndarray | None = None,
        benchmark: np.ndarray | None = None,
    ) -> np.ndarray:
        """Weights (N,) for day t. `past_returns`: (rows before t, N); `weights`: the current book (N,)."""
        n = len(alpha)
        prev = np.zeros(n) if weights is None else np.nan_to_num(np.asarray(weights, dtype=np.float64), nan=0.0)
        refit = self.risk_ is None or t - self.fitted_at_ >= self.refit_every
        if refit:
            try:
                self.risk_ = self.risk_model.fit(np.asarray(past_returns)[-self.lookback :]).risk_
                self.fitted_at_ = t
            except RiskModelError as exc:
                if self.risk_ is None:
                    return self._skip(t, prev, "no_risk_model", f"risk model: {exc}; kept previous weights")
                refit = False  # keep the last good model; the next day tries again
        a = self._scale(np.asarray(alpha, dtype=np.float64))
        if not np.isfinite(a).any():
            return self._skip(t, prev, "no_signal", "no finite score today; kept previous weights")
        res = optimize_weights(
            a, self.risk_, prev, self.config, tradable=tradable, benchmark=benchmark, cache=self.cache_
        )
        self.last_result_ = res
        self.steps_.append(
            PolicyStep(
                t,
                res.status.value,
                res.solver,
                res.fallback,
                res.objective,
                float(np.abs(res.weights - prev).sum()),
                refit,
            )
        )
        return res.weights

    def _scale(self, a: np.ndarray) -> np.ndarray:
        if self.alpha_scaling is AlphaScaling.NONE:
            return a
        ok = np.isfinite(a)
        sd = np.std(a[ok]) if ok.sum() > 1 else 0.0
        if sd == 0:
            return np.where(ok, 0.0, np.nan)
        return (a - np.mean(a[ok])) / sd * float(np.sqrt(np.mean(self.risk_.variances())))

    def _skip(self, t: int, prev: np.ndarray, status: str, reason: str) -> np.ndarray:
        self.steps_.append(PolicyStep(t, status, None, reason, float("nan"), 0.0, False))
        return prev

    def report(self) -> pd.DataFrame:
        """One row per decision: t, status, solver, fallback, objective, turnover, refit."""
        cols = list(PolicyStep.__dataclass_fields__)
        return pd.DataFrame([s.__dict__ for s in self.steps_], columns=cols)

    def fallback_days(self) -> pd.DataFrame:
        """Only the days whose weights were not an optimum, with the reason."""
        r = self.report()
        return r[r["fallback"].notna()]


class PolicyStrategy:
    """`quantcore.backtest` Strategy adapter: decide(past_scores, held) -> TargetWeights.

    Day t = len(past_scores); alpha = the last score row (qlib trades day t on day t-1's signal);
    returns: rows before t of `returns` (T, N) (e.g. `daily_returns(exchange.close)`); tradable: row t of
    `tradable` if given (known-ahead suspensions), else names with a return on day t-1. The simulator
    does not hand the book's weights to strategies, so the current weights are this adapter's last
    targets, zeroed where nothing is held (drift since the last trade is ignored).
    """

    def __init__(
        self,
        policy: OptimizedPolicy,
        returns: np.ndarray,
        tradable: np.ndarray | None = None,
        benchmark: np.ndarray | None = None,
    ):
        self.policy = policy
        self.returns = np.asarray(returns, dtype=np.float64)
        self.tradable = tradable
        self.benchmark = benchmark  # (T, N) weights or None
        self.weights_: np.ndarray | None = None

    def decide(self, past_scores: np.ndarray, held: np.ndarray):
        from quantcore.backtest.strategy import TargetWeights

        t = len(past_scores)
        if t == 0:
            return None
        n = past_scores.shape[1]
        prev = np.zeros(n) if self.weights_ is None else np.where(held, self.weights_, 0.0)
        ok = np.isfinite(self.returns[t - 1]) if self.tradable is None else np.asarray(self.tradable[t], bool)
        bench = None if self.benchmark is None else self.benchmark[t]
        w = self.policy.target_weights(t, past_scores[-1], self.returns[:t], prev, ok, bench)
        self.weights_ = w
        return TargetWeights(w.copy())
