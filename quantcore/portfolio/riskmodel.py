"""Risk models over a (T days x N instruments) return matrix with NaNs, history strictly before the decision.

Missing data: each instrument is demeaned over the days it has, then its missing days are filled with 0
(qlib's `nan_option="fill"`), so every estimate is a proper (PSD) covariance over T common days. Days
where no instrument has data are dropped first. Instruments observed on fewer than `min_coverage` of the
days are left out of the estimation and get the median variance of the others and zero correlation:
a rarely-seen name is treated as average risk, not as riskless.

Estimators follow the sklearn/skfolio contract: `__init__` stores settings, `fit(returns)` returns self,
learned state ends in `_`; `risk_` is what `optimize_weights` consumes:
- `CovarianceRisk`: a dense (N, N) covariance, handed to cvxpy as a square root G (Σ = G Gᵀ).
- `FactorRisk`: Σ = B F Bᵀ + diag(specific); cvxpy sees only ||F^{1/2} Bᵀ w||² + Σ specific·w², so the
  problem grows with N + K, not N².
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from quantcore.portfolio.errors import RiskModelError

__all__ = [
    "CovarianceRisk",
    "FactorRisk",
    "FactorRiskModel",
    "Risk",
    "ShrinkageCovariance",
    "ShrinkageTarget",
    "prepare_returns",
]


# --------------------------------------------------------------------------------------------- risk objects
@dataclass(frozen=True, eq=False)
class CovarianceRisk:
    """A dense covariance matrix (N, N)."""

    cov: np.ndarray  # float64 (N, N), symmetric PSD

    def __post_init__(self) -> None:
        c = np.asarray(self.cov, dtype=np.float64)
        if c.ndim != 2 or c.shape[0] != c.shape[1] or not np.all(np.isfinite(c)):
            raise RiskModelError(
                f"covariance must be a finite square (N, N) matrix, got shape {c.shape}; "
                "fit ShrinkageCovariance on returns with NaNs instead of np.cov"
            )
        if not np.allclose(c, c.T, rtol=1e-8, atol=1e-12 * max(1.0, float(np.abs(c).max()))):
            raise RiskModelError("covariance is not symmetric; pass (cov + cov.T) / 2")
        object.__setattr__(self, "cov", c)

    @property
    def n(self) -> int:
        return self.cov.shape[0]

    def covariance(self) -> np.ndarray:
        return self.cov

    def variance(self, w: np.ndarray) -> float:
        """wᵀ Σ w."""
        return float(w @ self.cov @ w)

    def times(self, x: np.ndarray) -> np.ndarray:
        """Σ x, (N,)."""
        return self.cov @ x

    def variances(self) -> np.ndarray:
        """diag(Σ), (N,)."""
        return np.diag(self.cov).copy()

    @cached_property
    def sqrt(self) -> np.ndarray:
        """G (N, r) with Σ = G Gᵀ; eigen-decomposition, negative round-off eigenvalues clipped to 0."""
        vals, vecs = np.linalg.eigh((self.cov + self.cov.T) / 2)
        keep = vals > vals.max() * 1e-12 if vals.max() > 0 else np.zeros(len(vals), bool)
        return vecs[:, keep] * np.sqrt(vals[keep])

    def cvx_terms(self, x):
        """A cvxpy vector y(x) with xᵀΣx = ||y||²: the optimiser builds the tracking-error cap from it."""
        return self.sqrt.T @ x

    def cvx_variance(self, x):
        """xᵀΣx as a cvxpy expression; a quadratic form (not ||Gᵀx||²) solves ~2x faster for dense Σ."""
        import cvxpy as cp

        return cp.quad_form(x, cp.psd_wrap(self.cov))

    def subset(self, idx: np.ndarray) -> "CovarianceRisk":
        return CovarianceRisk(self.cov[np.ix_(idx, idx)])


@dataclass(frozen=True, eq=False)
class FactorRisk:
    """Σ = B F Bᵀ + diag(specific), with K factors."""

    exposures: np.ndarray  # float64 (N, K): B
    factor_cov: np.ndarray  # float64 (K, K): F
    specific_var: np.ndarray  # float64 (N,): diagonal specific variances, > 0

    def __post_init__(self) -> None:
        n, k = self.exposures.shape
        if self.factor_cov.shape != (k, k) or self.specific_var.shape != (n,):
            raise RiskModelError(
                f"factor risk shapes disagree: exposures {self.exposures.shape}, factor_cov "
                f"{self.factor_cov.shape} (expected {(k, k)}), specific_var {self.specific_var.shape} (expected {(n,)})"
            )

    @property
    def n(self) -> int:
        return self.exposures.shape[0]

    def covariance(self) -> np.ndarray:
        b = self.exposures
        return b @ self.factor_cov @ b.T + np.diag(self.specific_var)

    def variance(self, w: np.ndarray) -> float:
        f = self.exposures.T @ w
        return float(f @ self.factor_cov @ f + self.specific_var @ (w * w))

    def times(self, x: np.ndarray) -> np.ndarray:
        """Σ x, (N,), without forming Σ."""
        return self.exposures @ (self.factor_cov @ (self.exposures.T @ x)) + self.specific_var * x

    def variances(self) -> np.ndarray:
        """diag(Σ), (N,), without forming Σ."""
        return np.sum(self._loading_sqrt**2, axis=0) + self.specific_var

    @cached_property
    def _factor_sqrt(self) -> np.ndarray:
        """L (K, r) with F = L Lᵀ."""
        vals, vecs = np.linalg.eigh((self.factor_cov + self.factor_cov.T) / 2)
        vals = np.clip(vals, 0.0, None)
        return vecs * np.sqrt(vals)

    @cached_property
    def _loading_sqrt(self) -> np.ndarray:
        """(r, N) matrix Lᵀ Bᵀ, precomputed so cvxpy sees one small dense product."""
        return np.ascontiguousarray(self._factor_sqrt.T @ self.exposures.T)

    def cvx_terms(self, x):
        import cvxpy as cp

        return cp.hstack([self._loading_sqrt @ x, cp.multiply(np.sqrt(self.specific_var), x)])

    def cvx_variance(self, x):
        """||F^{1/2} Bᵀ x||² + Σ specific·x²: K + N terms, never the dense N x N matrix."""
        import cvxpy as cp

        return cp.sum_squares(self.cvx_terms(x))

    def subset(self, idx: np.ndarray) -> "FactorRisk":
        return FactorRisk(self.exposures[idx], self.factor_cov, self.specific_var[idx])


Risk = CovarianceRisk | FactorRisk


# --------------------------------------------------------------------------------------------- data prep
@dataclass(frozen=True)
class PreparedReturns:
    """Demeaned, zero-filled returns of the well-covered instruments."""

    x: np.ndarray  # float64 (T', M): T' days with any data, M covered instruments
    covered: np.ndarray  # int (M,): column indices into the original N


def prepare_returns(returns: np.ndarray, min_coverage: float, min_days: int = 2) -> PreparedReturns:
    """Drop empty days, keep instruments seen on >= min_coverage of days, demean each, fill NaN with 0."""
    r = np.asarray(returns, dtype=np.float64)
    if r.ndim != 2:
        raise RiskModelError(f"returns must be a (days, instruments) matrix, got shape {r.shape}")
    r = np.where(np.isfinite(r), r, np.nan)
    r = r[~np.isnan(r).all(axis=1)]
    t = len(r)
    if t < min_days:
        raise RiskModelError(f"only {t} days with any return data; pass at least {min_days} days of history")
    seen = (~np.isnan(r)).sum(axis=0)
    covered = np.flatnonzero((seen >= max(2, min_coverage * t)))
    if len(covered) < 2:
        raise RiskModelError(
            f"fewer than 2 instruments have data on >= {min_coverage:.0%} of the {t} days; "
            "pass a longer history or lower min_coverage"
        )
    x = r[:, covered]
    x = np.nan_to_num(x - np.nanmean(x, axis=0), nan=0.0)
    return PreparedReturns(x, covered)


def _embed_cov(cov_sub: np.ndarray, covered: np.ndarray, n: int) -> np.ndarray:
    """Full (n, n) covariance: uncovered instruments get the median variance and zero correlation."""
    fill = float(np.median(np.diag(cov_sub)))
    out = np.diag(np.full(n, fill))
    out[np.ix_(covered, covered)] = cov_sub
    return out


# --------------------------------------------------------------------------------------------- shrinkage
class ShrinkageTarget(enum.Enum):
    IDENTITY = "identity"  # mean variance x I (Ledoit & Wolf 2004, JMVA; sklearn's LedoitWolf)
    CONSTANT_CORRELATION = "constant_correlation"  # sample variances, average correlation (L&W 2004, JPM)


class ShrinkageCovariance:
    """Ledoit-Wolf shrinkage: Σ = (1 - δ) S + δ F, with S the (1/T) sample covariance and F the target.

    `shrinkage=None` estimates δ with Ledoit-Wolf's formula for the target; a float in [0, 1] fixes it.
    """

    def __init__(
        self,
        target: ShrinkageTarget = ShrinkageTarget.IDENTITY,
        shrinkage: float | None = None,
        min_coverage: float = 0.5,
    ):
        self.target = target
        self.shrinkage = shrinkage
        self.min_coverage = min_coverage  # instruments seen on fewer days get average risk, see module doc

    def fit(self, returns: np.ndarray) -> "ShrinkageCovariance":
        if not isinstance(self.target, ShrinkageTarget):
            raise RiskModelError(
                f"target must be a ShrinkageTarget, e.g. ShrinkageTarget.IDENTITY; got {self.target!r}"
            )
        if self.shrinkage is not None and not 0.0 <= self.shrinkage <= 1.0:
            raise RiskModelError(f"shrinkage must be in [0, 1] or None (Ledoit-Wolf), got {self.shrinkage}")
        n = np.asarray(returns).shape[-1]
        p = prepare_returns(returns, self.min_coverage)
        x = p.x
        t = len(x)
        s = x.T @ x / t
        if self.target is ShrinkageTarget.IDENTITY:
            f = np.diag(np.full(len(s), np.trace(s) / len(s)))
        else:
            f = _constant_correlation_target(s)
        if self.shrinkage is None:
            delta = _lw_intensity(x, s, f, self.target)
        else:
            delta = float(self.shrinkage)
        cov = (1.0 - delta) * s + delta * f
        self.shrinkage_ = delta
        self.covered_ = p.covered
        self.covariance_ = _embed_cov(cov, p.covered, n)
        self.risk_ = CovarianceRisk(self.covariance_)
        return self


def _constant_correlation_target(s: np.ndarray) -> np.ndarray:
    sd = np.sqrt(np.diag(s))
    n = len(s)
    outer = np.outer(sd, sd)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.where(outer > 0, s / outer, 0.0)
    r_bar = (corr.sum() - np.trace(corr)) / (n * (n - 1))
    f = r_bar * outer
    np.fill_diagonal(f, np.diag(s))
    return f


def _lw_intensity(x: np.ndarray, s: np.ndarray, f: np.ndarray, target: ShrinkageTarget) -> float:
    """Ledoit-Wolf δ = clip((π - ρ) / (T γ), 0, 1) with π, ρ, γ as in the papers (x demeaned, (T, N))."""
    t = len(x)
    y = x * x
    pi_mat = y.T @ y / t - s * s  # asymptotic variances of the sample covariances
    pi = pi_mat.sum()
    gamma = float(np.sum((s - f) ** 2))
    if gamma <= 0:
        return 1.0  # S already equals the target
    if target is ShrinkageTarget.IDENTITY:
        rho = 0.0  # the identity target has no estimation error of its own to correlate with S
    else:
        var = np.diag(s)
        sd = np.sqrt(var)
        n = len(s)
        corr_sum = (np.sum(s / np.outer(sd, sd)) - n) / (n * (n - 1))
        theta = (x**3).T @ x / t - var[:, None] * s  # theta[i, j] = AsyCov(s_ii, s_ij)
        np.fill_diagonal(theta, 0.0)
        rho = np.trace(pi_mat) + corr_sum * np.sum(np.outer(1.0 / sd, sd) * theta)
    return float(np.clip((pi - rho) / gamma / t, 0.0, 1.0))


# --------------------------------------------------------------------------------------------- factor model
class FactorRiskModel:
    """Statistical (PCA) factor model: the top `n_factors` principal components of the demeaned returns.

    B (N, K) = leading right singular vectors; factor returns f = X B have covariance F = diag(σ²/T);
    specific variance = mean squared residual, floored at `specific_floor` x the median so Σ stays
    positive definite. diag(Σ) equals the (1/T) sample variances exactly.
    """

    def __init__(self, n_factors: int = 10, min_coverage: float = 0.5, specific_floor: float = 1e-3):
        self.n_factors = n_factors
        self.min_coverage = min_coverage
        self.specific_floor = specific_floor

    def fit(self, returns: np.ndarray) -> "FactorRiskModel":
        if self.n_factors < 1:
            raise RiskModelError(f"n_factors must be >= 1, got {self.n_factors}")
        n = np.asarray(returns).shape[-1]
        p = prepare_returns(returns, self.min_coverage)
        x = p.x
        t, m = x.shape
        k = min(self.n_factors, m - 1, t - 1)
        if k < 1:
            raise RiskModelError(f"{t} days x {m} covered instruments cannot support a factor model; pass more history")
        _, sv, vt = np.linalg.svd(x, full_matrices=False)
        b = vt[:k].T  # (M, K)
        fcov = np.diag(sv[:k] ** 2 / t)
        resid = x - (x @ b) @ b.T
        spec = np.mean(resid * resid, axis=0)
        total = np.mean(x * x, axis=0)
        floor = self.specific_floor * float(np.median(total))
        spec = np.maximum(spec, floor)
        exposures = np.zeros((n, k))
        exposures[p.covered] = b
        specific = np.full(n, float(np.median(total)))  # uncovered: average total risk, all specific
        specific[p.covered] = spec
        self.n_factors_ = k
        self.covered_ = p.covered
        self.exposures_ = exposures
        self.factor_covariance_ = fcov
        self.specific_variance_ = specific
        self.explained_variance_ratio_ = sv[:k] ** 2 / np.sum(sv**2)
        self.risk_ = FactorRisk(exposures, fcov, specific)
        return self
