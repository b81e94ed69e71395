"""One-period mean-variance optimiser: maximise αᵀw − λ·risk(w − b) − c·‖w − w_prev‖₁ under constraints.

Long-only, bounds [0, max_weight], fully invested (Σw = budget) or with cash (Σw ≤ budget); with
benchmark weights b: a tracking-error cap √((w−b)ᵀΣ(w−b)) ≤ te, per-name deviation |w − b| ≤ b_dev and
factor-exposure deviation |Xᵀ(w − b)| ≤ f_dev (qlib's EnhancedIndexingOptimizer). Without a benchmark,
b = 0 and the risk term is plain portfolio variance.

Names that cannot trade today (the `tradable` mask is False, or alpha is NaN) keep their previous weight
(0 if not held). A failed or infeasible solve never returns solver output: it returns an explicit
fallback (previous weights, else the benchmark, else all cash) with the reason in `fallback`, and every
returned solution is checked (finite, bounds, budget, caps) first.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field

import numpy as np

from quantcore.portfolio.errors import OptimizerConfigError
from quantcore.portfolio.riskmodel import FactorRisk, Risk

__all__ = ["OptimizationResult", "OptimizerConfig", "ProblemCache", "Solver", "Status", "optimize_weights"]


class Solver(enum.Enum):
    """cvxpy solvers, by their cvxpy names. OSQP solves QPs only (no tracking-error cap)."""

    CLARABEL = "CLARABEL"
    OSQP = "OSQP"
    SCS = "SCS"
    ECOS = "ECOS"


class Status(str, enum.Enum):
    OPTIMAL = "optimal"
    OPTIMAL_INACCURATE = "optimal_inaccurate"  # solver stopped early; the solution still passed our checks
    INFEASIBLE = "infeasible"  # no portfolio meets the constraints; `fallback` names the culprit
    UNBOUNDED = "unbounded"
    SOLVER_ERROR = "solver_error"  # every solver raised or stopped without a solution
    INVALID_SOLUTION = "invalid_solution"  # a solver answered, but its weights broke a constraint


@dataclass(frozen=True)
class OptimizerConfig:
    """Settings of one optimisation; the data (alpha, risk, benchmark, exposures) are arguments."""

    risk_aversion: float = 1.0  # λ on the variance (in return² units: alpha and risk must share a horizon)
    turnover_penalty: float = 0.0  # cost per unit of ‖w − w_prev‖₁, e.g. 0.002 for 20 bp round trip / 2
    max_weight: float = 1.0  # per-name upper bound; long-only lower bound is 0
    budget: float = 1.0  # Σw; 0.95 keeps 5% cash as qlib's risk_degree
    allow_cash: bool = False  # True: Σw ≤ budget (rest in cash); False: fully invested, Σw = budget
    tracking_error: float | None = None  # cap on √((w−b)ᵀΣ(w−b)), same horizon as Σ; needs a benchmark
    benchmark_deviation: float | None = None  # |w_i − b_i| ≤ this (qlib b_dev); needs a benchmark
    factor_deviation: float | None = None  # |Xᵀ(w − b)|_k ≤ this (qlib f_dev); needs exposures or FactorRisk
    max_turnover: float | None = None  # hard cap on ‖w − w_prev‖₁ (qlib delta); skipped when nothing is held
    solvers: tuple[Solver, ...] = (Solver.CLARABEL, Solver.OSQP, Solver.SCS)  # tried in order
    tolerance: float = 1e-5  # accepted bound/budget violation before a solution is rejected

    def __post_init__(self) -> None:
        for name in ("risk_aversion", "turnover_penalty", "budget", "tolerance"):
            if not (np.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise OptimizerConfigError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if not 0 < self.max_weight:
            raise OptimizerConfigError(f"max_weight must be > 0, got {self.max_weight}")
        for name in ("tracking_error", "benchmark_deviation", "factor_deviation", "max_turnover"):
            v = getattr(self, name)
            if v is not None and not v >= 0:
                raise OptimizerConfigError(f"{name} must be >= 0 or None (no limit), got {v}")
        if not self.solvers or not all(isinstance(s, Solver) for s in self.solvers):
            raise OptimizerConfigError(
                f"solvers must be a non-empty tuple of Solver, e.g. (Solver.CLARABEL,); got {self.solvers!r}"
            )


@dataclass(frozen=True, eq=False)
class OptimizationResult:
    weights: np.ndarray  # float64 (N,): the target weights (fallback weights when `fallback` is set)
    status: Status
    solver: str | None  # the solver whose answer was used (None for a fallback decided before solving)
    objective: float  # αᵀw − λ·risk − c·‖w − w_prev‖₁ evaluated at `weights` (NaN alpha counts as 0)
    fallback: str | None = None  # why the weights are not an optimum, and what was returned instead
    attempts: tuple[str, ...] = field(default=())  # "SOLVER: outcome" for every solver tried

    @property
    def ok(self) -> bool:
        return self.fallback is None


# --------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True, eq=False)
class _Inputs:
    alpha: np.ndarray  # (N,), NaN -> 0
    prev: np.ndarray  # (N,), NaN -> 0
    bench: np.ndarray  # (N,), zeros when no benchmark
    has_bench: bool
    fixed: np.ndarray  # bool (N,): keeps its previous weight
    lb: np.ndarray
    ub: np.ndarray
    exposures: np.ndarray | None  # (N, K) for the factor-deviation constraint


def _vector(name: str, x, n: int, allow_nan: bool) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.shape != (n,):
        raise OptimizerConfigError(f"{name} must have shape ({n},) like alpha, got {a.shape}")
    if not allow_nan and not np.all(np.isfinite(a)):
        raise OptimizerConfigError(f"{name} has NaN or infinite entries; fill them (e.g. with 0) first")
    return a


def _inputs(alpha, risk: Risk, prev, config: OptimizerConfig, tradable, benchmark, exposures) -> _Inputs:
    a = np.asarray(alpha, dtype=np.float64)
    if a.ndim != 1:
        raise OptimizerConfigError(f"alpha must be a vector (N,), got shape {a.shape}")
    n = len(a)
    if risk.n != n:
        raise OptimizerConfigError(f"risk model covers {risk.n} instruments but alpha has {n}; align them first")
    prev_w = np.zeros(n) if prev is None else np.nan_to_num(_vector("prev_weights", prev, n, True), nan=0.0)
    if np.any(prev_w < -config.tolerance):
        raise OptimizerConfigError("prev_weights must be >= 0 (long-only book)")
    prev_w = np.clip(prev_w, 0.0, None)
    ok = np.ones(n, bool) if tradable is None else np.asarray(tradable, dtype=bool)
    if ok.shape != (n,):
        raise OptimizerConfigError(f"tradable must be a bool mask of shape ({n},), got {ok.shape}")
    fixed = ~ok | ~np.isfinite(a)
    has_bench = benchmark is not None
    bench = np.zeros(n) if benchmark is None else _vector("benchmark", benchmark, n, False)
    if has_bench and np.any(bench < 0):
        raise OptimizerConfigError("benchmark weights must be >= 0")
    for name in ("tracking_error", "benchmark_deviation"):
        if getattr(config, name) is not None and not has_bench:
            raise OptimizerConfigError(f"{name} is set but no benchmark was given; pass benchmark=weights (N,)")
    x = None
    if config.factor_deviation is not None:
        if exposures is not None:
            x = np.asarray(exposures, dtype=np.float64)
            if x.ndim != 2 or x.shape[0] != n or not np.all(np.isfinite(x)):
                raise OptimizerConfigError(f"exposures must be a finite (N={n}, K) matrix, got shape {x.shape}")
        elif isinstance(risk, FactorRisk):
            x = risk.exposures
        else:
            raise OptimizerConfigError(
                "factor_deviation is set but there are no exposures; pass exposures=(N, K) or use a FactorRisk"
            )
    lb = np.zeros(n)
    ub = np.full(n, config.max_weight)
    if config.benchmark_deviation is not None:
        lb = np.maximum(lb, bench - config.benchmark_deviation)
        ub = np.minimum(ub, bench + config.benchmark_deviation)
    lb[fixed] = prev_w[fixed]
    ub[fixed] = prev_w[fixed]
    return _Inputs(np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0), prev_w, bench, has_bench, fixed, lb, ub, x)


# --------------------------------------------------------------------------------------------- checks
def _bound_problem(inp: _Inputs, config: OptimizerConfig) -> str | None:
    """Infeasibility that needs no solver: crossed bounds or a budget the bounds cannot meet."""
    free = ~inp.fixed
    crossed = np.flatnonzero(free & (inp.lb > inp.ub + 1e-12))
    if len(crossed):
        i = int(crossed[0])
        return (
            f"benchmark weight {inp.bench[i]:.4g} of instrument {i} is more than benchmark_deviation "
            f"{config.benchmark_deviation} above max_weight {config.max_weight}; raise one of them"
        )
    lo, hi = inp.lb.sum(), inp.ub.sum()
    if lo > config.budget + config.tolerance:
        held = inp.prev[inp.fixed].sum()
        return (
            f"lower bounds sum to {lo:.4g} > budget {config.budget} (untradable names hold {held:.4g}); "
            "raise budget or loosen benchmark_deviation"
        )
    if not config.allow_cash and hi < config.budget - config.tolerance:
        return (
            f"upper bounds sum to {hi:.4g} < budget {config.budget} ({int(free.sum())} tradable names, "
            f"max_weight {config.max_weight}); raise max_weight, loosen benchmark_deviation or set allow_cash=True"
        )
    return None


def _turnover_capped(inp: _Inputs, config: OptimizerConfig) -> bool:
    return config.max_turnover is not None and inp.prev.sum() > 0  # qlib: no cap when building from scratch


def _violation(w: np.ndarray, inp: _Inputs, risk: Risk, config: OptimizerConfig, relaxed: frozenset) -> str | None:
    """Why `w` breaks a constraint (None if it meets all within tolerance)."""
    tol = config.tolerance
    if not np.all(np.isfinite(w)):
        return "weights are not finite"
    if np.any(w < inp.lb - tol) or np.any(w > inp.ub + tol):
        return f"weights leave their bounds by {max(np.max(inp.lb - w), np.max(w - inp.ub)):.3g}"
    s = w.sum()
    if s > config.budget + tol or (not config.allow_cash and s < config.budget - tol):
        return f"weights sum to {s:.6g}, budget is {config.budget}"
    d = w - inp.bench
    if config.tracking_error is not None and "tracking_error" not in relaxed:
        te = np.sqrt(max(risk.variance(d), 0.0))
        if te > config.tracking_error * (1 + 1e-3) + tol:
            return f"tracking error {te:.4g} exceeds its cap {config.tracking_error}"
    if inp.exposures is not None and "factor_deviation" not in relaxed:
        dev = np.max(np.abs(inp.exposures.T @ d))
        if dev > config.factor_deviation * (1 + 1e-3) + tol:
            return f"factor deviation {dev:.4g} exceeds its cap {config.factor_deviation}"
    if _turnover_capped(inp, config) and "max_turnover" not in relaxed:
        to = np.abs(w - inp.prev).sum()
        if to > config.max_turnover * (1 + 1e-3) + tol:
            return f"turnover {to:.4g} exceeds its cap {config.max_turnover}"
    return None


def _objective(w: np.ndarray, inp: _Inputs, risk: Risk, config: OptimizerConfig) -> float:
    return float(
        inp.alpha @ w
        - config.risk_aversion * risk.variance(w - inp.bench)
        - config.turnover_penalty * np.abs(w - inp.prev).sum()
    )


# --------------------------------------------------------------------------------------------- solve
_CAPS = ("max_turnover", "tracking_error", "factor_deviation")  # relaxed one by one to find the culprit
_CAP_NAMES = {
    "max_turnover": "turnover cap",
    "tracking_error": "tracking error cap",
    "factor_deviation": "factor deviation cap",
}


class ProblemCache:
    """Keeps the last compiled cvxpy problem so a daily loop with the same risk model and settings only
    updates parameter values (alpha, previous weights, bounds, benchmark): cvxpy then skips most of its
    compilation, about half of each solve's time. Pass one instance to `optimize_weights(cache=...)`.
    """

    def __init__(self) -> None:
        self.key_: tuple | None = None
        self.problem_ = None
        self.pinned_ = None
        self.hits_ = 0
        self.misses_ = 0


def _key(inp: _Inputs, risk: Risk, config: OptimizerConfig, relaxed: frozenset) -> tuple:
    # Risk objects are immutable, so identity stands for content; the cache pins them so ids stay unique.
    return (id(risk), id(inp.exposures), len(inp.alpha), config, relaxed, inp.has_bench, _turnover_capped(inp, config))


@functools.cache
def _installed_solvers() -> frozenset[str]:
    """cvxpy probes every solver on each call (~30 ms); the set cannot change within a process."""
    import cvxpy as cp

    return frozenset(cp.installed_solvers())


def _data(inp: _Inputs, risk: Risk) -> dict[str, np.ndarray]:
    """The day's data: the values of the problem's parameters."""
    return {
        "alpha": inp.alpha,
        "prev": inp.prev,
        "lb": inp.lb,
        "ub": inp.ub,
        "bench": inp.bench,
        "cov_bench": risk.times(inp.bench),
    }


def _problem(inp: _Inputs, risk: Risk, config: OptimizerConfig, relaxed: frozenset, parametric: bool):
    """The cvxpy problem -> (problem, w, day data by name). `parametric`: the data are cvxpy Parameters
    (for a ProblemCache: the compile is slower once, then reused); otherwise constants (fastest one-off)."""
    import cvxpy as cp

    n = len(inp.alpha)
    par = _data(inp, risk)
    if parametric:
        par = {name: cp.Parameter(n, name=name, value=value) for name, value in par.items()}
    w = cp.Variable(n)
    d = w - par["bench"] if inp.has_bench else w
    objective = par["alpha"] @ w
    if config.risk_aversion > 0:
        # (w−b)ᵀΣ(w−b) = wᵀΣw − 2(Σb)ᵀw + const: keeps the benchmark out of the quadratic form, so the
        # problem stays DPP (parameters only in affine terms) and a cached compile can be reused.
        objective = objective - config.risk_aversion * risk.cvx_variance(w)
        if inp.has_bench:
            objective = objective + 2 * config.risk_aversion * (par["cov_bench"] @ w)
    if config.turnover_penalty > 0:
        objective = objective - config.turnover_penalty * cp.norm1(w - par["prev"])
    cons = [w >= par["lb"], w <= par["ub"]]
    cons.append(cp.sum(w) <= config.budget if config.allow_cash else cp.sum(w) == config.budget)
    if config.tracking_error is not None and "tracking_error" not in relaxed:
        cons.append(cp.norm(risk.cvx_terms(d), 2) <= config.tracking_error)
    if inp.exposures is not None and "factor_deviation" not in relaxed:
        cons.append(cp.abs(inp.exposures.T @ d) <= config.factor_deviation)
    if _turnover_capped(inp, config) and "max_turnover" not in relaxed:
        cons.append(cp.norm1(w - par["prev"]) <= config.max_turnover)
    return cp.Problem(cp.Maximize(objective), cons), w, par


def _solve(
    inp: _Inputs,
    risk: Risk,
    config: OptimizerConfig,
    relaxed: frozenset = frozenset(),
    cache: ProblemCache | None = None,
):
    """Try each solver in order -> (status, solver name, cleaned weights or None, attempts)."""
    import cvxpy as cp

    key = _key(inp, risk, config, relaxed) if cache is not None else None
    if cache is not None and cache.key_ is not None and cache.key_ == key:
        prob, w, par = cache.problem_
        cache.hits_ += 1
        for name, value in _data(inp, risk).items():
            par[name].value = value
    else:
        prob, w, par = _problem(inp, risk, config, relaxed, parametric=cache is not None)
        if cache is not None:
            cache.key_, cache.problem_, cache.pinned_ = key, (prob, w, par), (risk, inp.exposures)
            cache.misses_ += 1
    installed = _installed_solvers()
    attempts: list[str] = []
    status = Status.SOLVER_ERROR
    for solver in config.solvers:
        name = solver.value
        if name not in installed:
            attempts.append(f"{name}: not installed")
            continue
        try:
            prob.solve(solver=name)
        except Exception as exc:  # cvxpy raises SolverError, and a solver may raise its own errors
            attempts.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}")
            continue
        st = prob.status
        attempts.append(f"{name}: {st}")
        if st == cp.INFEASIBLE:
            return Status.INFEASIBLE, name, None, attempts  # a problem property: no other solver will do better
        if st == cp.UNBOUNDED:
            return Status.UNBOUNDED, name, None, attempts
        if st not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) or w.value is None:
            continue
        x = np.asarray(w.value, dtype=np.float64)
        bad = _violation(x, inp, risk, config, relaxed)
        if bad is not None:
            attempts[-1] += f" but {bad}"
            status = Status.INVALID_SOLUTION
            continue
        x = np.clip(x, inp.lb, inp.ub)
        x[~inp.fixed & (x < 1e-9)] = 0.0  # interior-point dust; far inside `tolerance`
        x[inp.fixed] = inp.prev[inp.fixed]
        return (Status.OPTIMAL if st == cp.OPTIMAL else Status.OPTIMAL_INACCURATE), name, x, attempts
    return status, None, None, attempts


def _diagnose(inp: _Inputs, risk: Risk, config: OptimizerConfig) -> str:
    """Relax the caps one at a time: the first whose removal makes the problem feasible is named."""
    active = [
        c
        for c in _CAPS
        if (c == "max_turnover" and _turnover_capped(inp, config))
        or (
            c != "max_turnover"
            and getattr(config, c) is not None
            and (c != "factor_deviation" or inp.exposures is not None)
        )
    ]
    for cap in active:
        status, _, _, _ = _solve(inp, risk, config, frozenset([cap]))
        if status in (Status.OPTIMAL, Status.OPTIMAL_INACCURATE):
            return f"{_CAP_NAMES[cap]} {getattr(config, cap)} too tight"
    if len(active) > 1:
        status, _, _, _ = _solve(inp, risk, config, frozenset(active))
        if status in (Status.OPTIMAL, Status.OPTIMAL_INACCURATE):
            caps = ", ".join(f"{c}={getattr(config, c)}" for c in active)
            return f"caps {caps} too tight together"
    return "bounds, budget and caps cannot all be met"


def _fallback(inp: _Inputs) -> tuple[np.ndarray, str]:
    if inp.prev.sum() > 0:
        return inp.prev.copy(), "kept previous weights"
    if inp.has_bench and inp.bench.sum() > 0:
        w = inp.bench.copy()
        w[inp.fixed] = 0.0  # untradable names cannot be bought
        return w, "returned the benchmark weights (nothing held)"
    return np.zeros(len(inp.prev)), "stayed in cash (nothing held, no benchmark)"


def optimize_weights(
    alpha: np.ndarray,
    risk: Risk,
    prev_weights: np.ndarray | None = None,
    config: OptimizerConfig = OptimizerConfig(),
    *,
    tradable: np.ndarray | None = None,
    benchmark: np.ndarray | None = None,
    exposures: np.ndarray | None = None,
    cache: ProblemCache | None = None,
) -> OptimizationResult:
    """Target weights (N,) for alpha (N,) under `risk`; see the module docstring for the problem solved.

    `prev_weights`: current book (NaN/None = not held). `tradable`: bool (N,), False keeps the previous
    weight. `benchmark`: weights (N,) for active risk and the benchmark caps. `exposures`: (N, K) for
    `factor_deviation` (default: the FactorRisk's exposures). `cache`: a ProblemCache reused across calls.
    """
    inp = _inputs(alpha, risk, prev_weights, config, tradable, benchmark, exposures)
    reason = _bound_problem(inp, config)
    attempts: tuple[str, ...] = ()
    solver = None
    if reason is None:
        status, solver, w, tried = _solve(inp, risk, config, cache=cache)
        attempts = tuple(tried)
        if w is not None:
            return OptimizationResult(w, status, solver, _objective(w, inp, risk, config), None, attempts)
        if status is Status.INFEASIBLE:
            reason = _diagnose(inp, risk, config)
        else:
            reason = "; ".join(attempts) or "no solver tried"
    else:
        status = Status.INFEASIBLE
    w, action = _fallback(inp)
    return OptimizationResult(
        w, status, solver, _objective(w, inp, risk, config), f"{status.value}: {reason}; {action}", attempts
    )
