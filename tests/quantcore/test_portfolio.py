"""Portfolio: optimiser on hand-made problems with known optima, fallbacks, risk models vs closed forms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantcore.portfolio import (
    AlphaScaling,
    CovarianceRisk,
    FactorRiskModel,
    OptimizedPolicy,
    OptimizerConfig,
    OptimizerConfigError,
    PolicyStrategy,
    ProblemCache,
    RiskModelError,
    ShrinkageCovariance,
    ShrinkageTarget,
    Solver,
    Status,
    daily_returns,
    optimize_weights,
)

VAR = np.array([0.04, 0.01, 0.02, 0.05, 0.025])
DIAG = CovarianceRisk(np.diag(VAR))


def factor_data(t=400, n=40, k=3, seed=0, nan_frac=0.0, loading=0.01):
    rng = np.random.default_rng(seed)
    b = rng.normal(size=(n, k)) * loading
    spec = rng.uniform(0.005, 0.015, n) ** 2
    x = rng.normal(size=(t, k)) @ b.T + rng.normal(size=(t, n)) * np.sqrt(spec)
    if nan_frac:
        x[rng.random(x.shape) < nan_frac] = np.nan
    return x, b, spec


# --- optimiser: known optima -----------------------------------------------------------------------------------


def test_no_risk_no_cost_fills_highest_alphas_up_to_max_weight():
    res = optimize_weights(
        np.array([1.0, 5.0, 3.0, 4.0, 2.0]), DIAG, None, OptimizerConfig(risk_aversion=0.0, max_weight=0.4)
    )
    assert res.ok and res.status is Status.OPTIMAL
    np.testing.assert_allclose(res.weights, [0, 0.4, 0.2, 0.4, 0], atol=1e-6)


@pytest.mark.parametrize("solver", [Solver.CLARABEL, Solver.OSQP, Solver.SCS])
def test_min_variance_with_diagonal_covariance_is_inverse_variance(solver):
    res = optimize_weights(np.zeros(5), DIAG, None, OptimizerConfig(risk_aversion=1.0, solvers=(solver,)))
    if res.attempts == (f"{solver.value}: not installed",):
        pytest.skip(f"{solver.value} is not installed")
    assert res.ok and res.solver == solver.value
    inv = 1 / VAR
    np.testing.assert_allclose(res.weights, inv / inv.sum(), atol=1e-4)  # SCS is a first-order method


def test_mean_variance_matches_lagrange_closed_form():
    # max αᵀw − λ Σ σ²w² s.t. Σw = 1  ->  w_i = (α_i − ν) / (2λσ_i²), ν from the budget (all w_i > 0 here)
    alpha, lam = np.array([0.01, 0.02, 0.015, 0.005, 0.012]), 2.0
    inv = 1 / (2 * lam * VAR)
    nu = (alpha @ inv - 1) / inv.sum()
    expected = (alpha - nu) * inv
    assert np.all(expected > 0)
    res = optimize_weights(alpha, DIAG, None, OptimizerConfig(risk_aversion=lam))
    np.testing.assert_allclose(res.weights, expected, atol=1e-6)
    assert res.objective == pytest.approx(alpha @ expected - lam * VAR @ expected**2)


def test_huge_turnover_penalty_keeps_previous_weights():
    prev = np.array([0.1, 0.3, 0.2, 0.25, 0.15])
    res = optimize_weights(
        np.array([0.05, -0.02, 0.0, 0.01, 0.03]), DIAG, prev, OptimizerConfig(risk_aversion=1.0, turnover_penalty=10.0)
    )
    np.testing.assert_allclose(res.weights, prev, atol=1e-6)


def test_cash_allowed_and_all_alphas_negative_holds_cash():
    res = optimize_weights(-np.ones(5), DIAG, None, OptimizerConfig(risk_aversion=0.0, allow_cash=True, budget=0.95))
    assert res.ok
    np.testing.assert_allclose(res.weights, 0.0, atol=1e-7)


def test_problem_cache_reuses_the_compiled_problem_and_gives_the_same_answer():
    x, _, _ = factor_data(n=30)
    risk = FactorRiskModel(n_factors=3).fit(x).risk_
    bench = np.full(30, 1 / 30)
    cfg = OptimizerConfig(risk_aversion=1.0, max_weight=0.1, turnover_penalty=1e-4, tracking_error=0.004)
    cache, rng, prev = ProblemCache(), np.random.default_rng(3), None
    for _ in range(3):
        alpha = rng.normal(size=30) * 1e-3
        cached = optimize_weights(alpha, risk, prev, cfg, benchmark=bench, cache=cache)
        fresh = optimize_weights(alpha, risk, prev, cfg, benchmark=bench)
        # the L1 turnover term makes the optimum flat in some directions: compare objectives tightly
        assert cached.objective == pytest.approx(fresh.objective, rel=1e-5)
        np.testing.assert_allclose(cached.weights, fresh.weights, atol=1e-3)
        prev = cached.weights
    assert (cache.misses_, cache.hits_) == (1, 2)
    optimize_weights(alpha, FactorRiskModel(n_factors=2).fit(x).risk_, prev, cfg, benchmark=bench, cache=cache)
    assert cache.misses_ == 2  # a new risk model compiles a new problem


# --- constraints -----------------------------------------------------------------------------------------------


def test_constraints_hold_on_a_factor_model_problem_with_benchmark():
    x, _, _ = factor_data(n=60)
    risk = FactorRiskModel(n_factors=3).fit(x).risk_
    rng = np.random.default_rng(1)
    alpha = rng.normal(size=60) * 0.01
    bench = rng.uniform(0.5, 1.5, 60)
    bench /= bench.sum()
    cfg = OptimizerConfig(
        risk_aversion=1.0, max_weight=0.04, tracking_error=0.002, benchmark_deviation=0.02, factor_deviation=0.01
    )
    res = optimize_weights(alpha, risk, None, cfg, benchmark=bench)
    assert res.ok, res.fallback
    w, d = res.weights, res.weights - bench
    assert np.all(w >= 0) and np.all(w <= 0.04 + 1e-7)
    assert np.all(np.abs(d) <= 0.02 + 1e-7)
    assert w.sum() == pytest.approx(1.0, abs=1e-6)
    assert np.sqrt(d @ risk.covariance() @ d) <= 0.002 * (1 + 1e-4)
    assert np.max(np.abs(risk.exposures.T @ d)) <= 0.01 * (1 + 1e-4)
    # the cap binds: without it the active risk is larger
    free = optimize_weights(alpha, risk, None, OptimizerConfig(risk_aversion=1.0, max_weight=0.04), benchmark=bench)
    dd = free.weights - bench
    assert np.sqrt(dd @ risk.covariance() @ dd) > 0.002


def test_max_turnover_caps_l1_change():
    prev = np.full(5, 0.2)
    res = optimize_weights(
        np.array([0.0, 1.0, 0.0, 0.0, 0.0]), DIAG, prev, OptimizerConfig(risk_aversion=0.0, max_turnover=0.3)
    )
    assert np.abs(res.weights - prev).sum() == pytest.approx(0.3, abs=1e-6)
    assert res.weights[1] == pytest.approx(0.35, abs=1e-6)


# --- infeasible and failed solves -> explicit fallbacks ----------------------------------------------------------


def test_too_tight_tracking_error_falls_back_to_previous_weights_with_reason():
    bench = np.array([1.0, 0, 0, 0, 0])
    prev = np.full(5, 0.2)
    cfg = OptimizerConfig(max_weight=0.5, tracking_error=0.001)
    res = optimize_weights(np.zeros(5), DIAG, prev, cfg, benchmark=bench)
    assert res.status is Status.INFEASIBLE and not res.ok
    assert "tracking error cap 0.001 too tight" in res.fallback and "kept previous weights" in res.fallback
    np.testing.assert_array_equal(res.weights, prev)


def test_unreachable_budget_is_caught_before_solving_and_says_how_to_fix():
    res = optimize_weights(np.ones(5), DIAG, None, OptimizerConfig(max_weight=0.1))
    assert res.status is Status.INFEASIBLE and res.solver is None
    assert "raise max_weight" in res.fallback and "stayed in cash" in res.fallback
    np.testing.assert_array_equal(res.weights, 0.0)


def test_fallback_without_previous_weights_returns_benchmark():
    bench = np.array([0.6, 0.1, 0.1, 0.1, 0.1])
    res = optimize_weights(
        np.zeros(5), DIAG, None, OptimizerConfig(max_weight=0.5, benchmark_deviation=0.05), benchmark=bench
    )
    assert res.status is Status.INFEASIBLE and "benchmark_deviation" in res.fallback
    np.testing.assert_array_equal(res.weights, bench)


def test_solver_chain_skips_solvers_that_cannot_handle_the_problem():
    bench = np.full(5, 0.2)
    cfg = OptimizerConfig(tracking_error=0.05, solvers=(Solver.ECOS, Solver.OSQP, Solver.CLARABEL))
    res = optimize_weights(np.arange(5) * 0.01, DIAG, None, cfg, benchmark=bench)
    assert res.ok and res.solver == "CLARABEL"
    assert len(res.attempts) == 3 and res.attempts[-1] == "CLARABEL: optimal"
    only_qp = optimize_weights(
        np.arange(5) * 0.01, DIAG, None, OptimizerConfig(tracking_error=0.05, solvers=(Solver.OSQP,)), benchmark=bench
    )
    assert only_qp.status is Status.SOLVER_ERROR and only_qp.fallback.startswith("solver_error: OSQP")
    np.testing.assert_array_equal(only_qp.weights, bench)


def test_config_errors_say_how_to_fix():
    with pytest.raises(OptimizerConfigError, match="pass benchmark="):
        optimize_weights(np.zeros(5), DIAG, None, OptimizerConfig(tracking_error=0.01))
    with pytest.raises(OptimizerConfigError, match="max_weight must be > 0"):
        OptimizerConfig(max_weight=0.0)
    with pytest.raises(OptimizerConfigError, match="align them"):
        optimize_weights(np.zeros(4), DIAG)
    with pytest.raises(OptimizerConfigError, match="pass exposures"):
        optimize_weights(np.zeros(5), DIAG, None, OptimizerConfig(factor_deviation=0.1), benchmark=np.full(5, 0.2))


# --- untradable names ------------------------------------------------------------------------------------------


def test_untradable_and_nan_alpha_names_keep_previous_weight_or_stay_out():
    prev = np.array([0.3, 0.2, 0.0, 0.5, 0.0])
    alpha = np.array([-1.0, 0.0, np.nan, 0.0, 5.0])  # name 2 has no score; name 0 is suspended
    tradable = np.array([False, True, True, True, True])
    res = optimize_weights(alpha, DIAG, prev, OptimizerConfig(risk_aversion=0.0, max_weight=0.6), tradable=tradable)
    assert res.ok
    assert res.weights[0] == 0.3  # suspended: kept exactly despite the worst alpha
    assert res.weights[2] == 0.0  # no score, not held: stays out
    assert res.weights[4] == pytest.approx(0.6, abs=1e-6)
    assert res.weights.sum() == pytest.approx(1.0, abs=1e-6)
    held_nan = optimize_weights(np.array([np.nan, 1, 0, 0, 0]), DIAG, prev, OptimizerConfig(risk_aversion=0.0))
    assert held_nan.weights[0] == 0.3


def test_nothing_tradable_keeps_the_book_and_says_so():
    prev = np.array([0.5, 0.3, 0.0, 0.0, 0.0])
    res = optimize_weights(np.ones(5), DIAG, prev, OptimizerConfig(), tradable=np.zeros(5, bool))
    assert res.status is Status.INFEASIBLE and "0 tradable names" in res.fallback
    np.testing.assert_array_equal(res.weights, prev)
    cash_ok = optimize_weights(np.ones(5), DIAG, prev, OptimizerConfig(allow_cash=True), tradable=np.zeros(5, bool))
    assert cash_ok.ok
    np.testing.assert_array_equal(cash_ok.weights, prev)


def test_bad_covariance_is_refused_with_a_fix():
    with pytest.raises(RiskModelError, match="square"):
        CovarianceRisk(np.ones((3, 2)))
    with pytest.raises(RiskModelError, match="symmetric"):
        CovarianceRisk(np.array([[1.0, 0.5], [0.0, 1.0]]))


# --- risk models -----------------------------------------------------------------------------------------------


def test_identity_shrinkage_matches_sklearn_ledoit_wolf():
    sk = pytest.importorskip("sklearn.covariance")
    x, _, _ = factor_data(t=60, n=25)
    ours = ShrinkageCovariance(ShrinkageTarget.IDENTITY).fit(x)
    ref = sk.LedoitWolf().fit(x)
    assert 0 < ours.shrinkage_ < 1
    assert ours.shrinkage_ == pytest.approx(ref.shrinkage_, rel=1e-9)
    np.testing.assert_allclose(ours.covariance_, ref.covariance_, rtol=1e-9, atol=1e-15)


def _lw_constant_correlation_by_loops(x):
    """Ledoit & Wolf (2004, 'Honey, I shrunk...') written element by element from the paper."""
    t, n = x.shape
    y = x - x.mean(axis=0)
    s = y.T @ y / t
    sd = np.sqrt(np.diag(s))
    r_bar = sum(s[i, j] / (sd[i] * sd[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    f = np.array([[s[i, i] if i == j else r_bar * sd[i] * sd[j] for j in range(n)] for i in range(n)])
    pi = np.array([[np.mean((y[:, i] * y[:, j] - s[i, j]) ** 2) for j in range(n)] for i in range(n)])

    def theta(i, j):  # AsyCov(√T s_ii, √T s_ij)
        return np.mean((y[:, i] ** 2 - s[i, i]) * (y[:, i] * y[:, j] - s[i, j]))

    rho = np.trace(pi) + sum(
        r_bar / 2 * (sd[j] / sd[i] * theta(i, j) + sd[i] / sd[j] * theta(j, i))
        for i in range(n)
        for j in range(n)
        if i != j
    )
    gamma = np.sum((f - s) ** 2)
    delta = min(1.0, max(0.0, (pi.sum() - rho) / gamma / t))
    return delta, delta * f + (1 - delta) * s


def test_constant_correlation_shrinkage_matches_the_paper():
    x, _, _ = factor_data(t=40, n=8, seed=3)
    delta, cov = _lw_constant_correlation_by_loops(x)
    ours = ShrinkageCovariance(ShrinkageTarget.CONSTANT_CORRELATION).fit(x)
    assert 0 < delta < 1
    assert ours.shrinkage_ == pytest.approx(delta, rel=1e-9)
    np.testing.assert_allclose(ours.covariance_, cov, rtol=1e-9)


def test_fixed_shrinkage_and_nan_handling_demean_then_fill_zero():
    x = np.array(
        [
            [0.01, 0.02, np.nan],
            [0.03, np.nan, np.nan],
            [-0.01, 0.00, 0.05],
            [0.02, 0.01, np.nan],
            [np.nan, np.nan, np.nan],
        ]
    )  # last day: no data at all, dropped
    est = ShrinkageCovariance(shrinkage=0.25, min_coverage=0.5).fit(x)
    y = x[:4, :2] - np.nanmean(x[:4, :2], axis=0)
    y = np.nan_to_num(y)
    s = y.T @ y / 4
    expected = 0.75 * s + 0.25 * np.eye(2) * np.trace(s) / 2
    np.testing.assert_allclose(est.covariance_[:2, :2], expected, rtol=1e-12)
    # instrument 2 is seen on 1 of 4 days: average variance, no correlation
    assert est.covariance_[2, 2] == pytest.approx(np.median(np.diag(expected)))
    assert est.covariance_[2, 0] == 0 and est.covariance_[1, 2] == 0
    with pytest.raises(RiskModelError, match="pass at least 2 days"):
        ShrinkageCovariance().fit(x[:1])
    with pytest.raises(RiskModelError, match="lower min_coverage"):
        ShrinkageCovariance(min_coverage=0.9).fit(x)


def test_factor_model_recovers_known_factor_covariance():
    x, b, spec = factor_data(t=4000, n=60, k=3, seed=5, loading=0.02)
    fit = FactorRiskModel(n_factors=3).fit(x)
    true = b @ b.T + np.diag(spec)
    est = fit.risk_.covariance()
    err = np.linalg.norm(est - true) / np.linalg.norm(true)
    sample_err = np.linalg.norm(np.cov(x.T, ddof=0) - true) / np.linalg.norm(true)
    assert err < 0.05 and err < 1.25 * sample_err  # as good as the sample covariance, with 3 + 60 numbers
    np.testing.assert_allclose(np.diag(est), x.var(axis=0), rtol=1e-10)  # PCA keeps total variances exactly
    np.testing.assert_allclose(fit.risk_.variances(), np.diag(est), rtol=1e-12)
    np.testing.assert_allclose(
        np.sort(np.linalg.eigvalsh(fit.factor_covariance_)), np.sort(np.linalg.eigvalsh(b.T @ b)), rtol=0.15
    )  # factor variances recovered
    w = np.random.default_rng(0).uniform(size=60)
    assert fit.risk_.variance(w) == pytest.approx(w @ est @ w, rel=1e-12)


def test_factor_and_dense_risk_give_the_same_optimum():
    x, _, _ = factor_data(t=300, n=20, seed=7)
    fr = FactorRiskModel(n_factors=3).fit(x).risk_
    dense = CovarianceRisk(fr.covariance())
    alpha = np.random.default_rng(2).normal(size=20) * 1e-3
    cfg = OptimizerConfig(risk_aversion=2.0, max_weight=0.2)
    np.testing.assert_allclose(
        optimize_weights(alpha, fr, None, cfg).weights, optimize_weights(alpha, dense, None, cfg).weights, atol=1e-5
    )


# --- policy ----------------------------------------------------------------------------------------------------


def test_policy_refits_every_k_days_and_records_each_step():
    x, _, _ = factor_data(t=120, n=30, seed=9)
    rng = np.random.default_rng(4)
    policy = OptimizedPolicy(
        OptimizerConfig(risk_aversion=1.0, max_weight=0.1, turnover_penalty=1e-4),
        FactorRiskModel(n_factors=3),
        lookback=60,
        refit_every=5,
        alpha_scaling=AlphaScaling.VOLATILITY,
    )
    w = None
    for t in range(60, 72):
        w = policy.target_weights(t, rng.normal(size=30), x[:t], w)
        assert w.sum() == pytest.approx(1.0, abs=1e-6) and w.max() <= 0.1 + 1e-7
    rep = policy.report()
    assert list(rep["refit"]) == [i % 5 == 0 for i in range(12)]
    assert (rep["status"] == "optimal").all() and policy.fallback_days().empty


def test_policy_without_history_keeps_the_book_and_says_why():
    policy = OptimizedPolicy(refit_every=5)
    w = policy.target_weights(1, np.ones(3), np.full((1, 3), 0.01), np.array([0.5, 0.5, 0.0]))
    np.testing.assert_array_equal(w, [0.5, 0.5, 0.0])
    assert "risk model" in policy.fallback_days()["fallback"].iloc[0]


def test_policy_strategy_runs_in_the_backtest():
    backtest = pytest.importorskip("quantcore.backtest")
    from quantcore.data.panel import Panel

    t, n = 80, 12
    rng = np.random.default_rng(11)
    close = 10 * np.exp(np.cumsum(rng.normal(0, 0.01, (n, t)), axis=1))
    cal = pd.bdate_range("2021-01-01", periods=t).values
    names = [f"S{i}" for i in range(n)]
    panel = Panel.from_arrays(
        cal, names, {"close": close, "factor": np.ones_like(close)}, starts=np.zeros(n, int), ends=np.full(n, t)
    )
    ex = backtest.Exchange.from_panel(panel)
    scores = rng.normal(size=(t, n))
    policy = OptimizedPolicy(
        OptimizerConfig(risk_aversion=1.0, max_weight=0.2, budget=0.95),
        FactorRiskModel(n_factors=2),
        lookback=40,
        refit_every=10,
        alpha_scaling=AlphaScaling.VOLATILITY,
    )
    report = backtest.simulate(ex, PolicyStrategy(policy, daily_returns(ex.close)), scores, cal, 40, t - 1, 1e8)
    assert len(report) == t - 40 and np.isfinite(report["account"]).all()
    steps = policy.report()
    assert len(steps) == t - 40 and (steps["status"] == "optimal").all()
    assert report["value"].iloc[-1] / report["account"].iloc[-1] == pytest.approx(0.95, abs=0.02)
