#!/usr/bin/env python
"""Portfolio optimiser latency: one solve for N instruments (default 300) against the 0.2 s target.

    python benchmarks/bench_optimizer.py [--instruments 300 --days 250 --factors 10 --repeat 7]

One warm process (cvxpy's import and first-call costs are paid once, before timing). Each solve builds
a fresh cvxpy problem, as `optimize_weights` does every day. Reported: median wall time per call, the
solver, and the status; plus the risk-model fits on a (days x instruments) history with 5% NaNs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from quantcore.portfolio import (
    CovarianceRisk,
    FactorRiskModel,
    OptimizedPolicy,
    OptimizerConfig,
    ProblemCache,
    ShrinkageCovariance,
    ShrinkageTarget,
    optimize_weights,
)

TARGET_MS = 200.0


def _median_ms(func, repeat: int):
    out, times = None, []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = func()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instruments", type=int, default=300)
    ap.add_argument("--days", type=int, default=250)
    ap.add_argument("--factors", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n, t, k = args.instruments, args.days, args.factors

    rng = np.random.default_rng(args.seed)
    loadings = rng.normal(size=(n, 5)) * 0.01
    returns = rng.normal(size=(t, 5)) @ loadings.T + rng.normal(size=(t, n)) * 0.015
    returns[rng.random(returns.shape) < 0.05] = np.nan
    alpha = rng.normal(size=n) * 0.002
    bench = rng.uniform(0.5, 1.5, n)
    bench /= bench.sum()
    prev = bench * rng.uniform(0.8, 1.2, n)
    prev /= prev.sum()
    tradable = rng.random(n) > 0.02

    print(f"N={n} instruments, {t} days of history, {k} PCA factors; median of {args.repeat} runs")
    ms, fm = _median_ms(lambda: FactorRiskModel(n_factors=k).fit(returns), args.repeat)
    print(f"  fit FactorRiskModel                         {ms:8.1f} ms")
    ms, sc = _median_ms(lambda: ShrinkageCovariance(ShrinkageTarget.CONSTANT_CORRELATION).fit(returns), args.repeat)
    print(f"  fit ShrinkageCovariance (const. corr.)      {ms:8.1f} ms   shrinkage {sc.shrinkage_:.3f}")

    factor, dense = fm.risk_, CovarianceRisk(sc.covariance_)
    cases = [
        ("factor: λ, max_weight", factor, OptimizerConfig(risk_aversion=1.0, max_weight=0.02), {}),
        (
            "factor: + turnover penalty, untradable",
            factor,
            OptimizerConfig(risk_aversion=1.0, max_weight=0.02, turnover_penalty=5e-4),
            {"tradable": tradable},
        ),
        (
            "factor: + benchmark, TE cap, b_dev, f_dev",
            factor,
            OptimizerConfig(
                risk_aversion=1.0,
                max_weight=0.02,
                turnover_penalty=5e-4,
                tracking_error=0.003,
                benchmark_deviation=0.01,
                factor_deviation=0.05,
            ),
            {"tradable": tradable, "benchmark": bench},
        ),
        (
            "dense Σ: λ, max_weight, turnover penalty",
            dense,
            OptimizerConfig(risk_aversion=1.0, max_weight=0.02, turnover_penalty=5e-4),
            {},
        ),
        (
            "dense Σ: + benchmark, TE cap",
            dense,
            OptimizerConfig(risk_aversion=1.0, max_weight=0.02, turnover_penalty=5e-4, tracking_error=0.003),
            {"benchmark": bench},
        ),
    ]
    optimize_weights(alpha, factor, prev, cases[0][2])  # warm-up: cvxpy's first-call costs
    for name, risk, cfg, kw in cases:
        ms, res = _median_ms(lambda: optimize_weights(alpha, risk, prev, cfg, **kw), args.repeat)
        flag = "ok " if ms <= TARGET_MS else "SLOW"
        print(
            f"  solve {name:<40} {ms:8.1f} ms  {flag} {res.status.value} via {res.solver}"
            + (f"  fallback: {res.fallback}" if res.fallback else "")
        )

    cache = ProblemCache()
    cfg = cases[1][2]
    optimize_weights(alpha, factor, prev, cfg, tradable=tradable, cache=cache)  # compiles once
    ms, res = _median_ms(
        lambda: optimize_weights(rng.normal(size=n) * 0.002, factor, prev, cfg, tradable=tradable, cache=cache),
        args.repeat,
    )
    print(
        f"  re-solve, new alpha, ProblemCache (factor+tp) {ms:8.1f} ms  {res.status.value} ({cache.hits_} cache hits)"
    )

    def run_policy(days: int) -> list[float]:
        policy = OptimizedPolicy(
            OptimizerConfig(risk_aversion=1.0, max_weight=0.02, turnover_penalty=5e-4),
            FactorRiskModel(n_factors=k),
            lookback=t,
            refit_every=20,
        )
        w, out = prev, []
        for d in range(t, t + days):
            t0 = time.perf_counter()
            w = policy.target_weights(d, rng.normal(size=n) * 0.002, long_returns[:d], w)
            out.append((time.perf_counter() - t0) * 1e3)
        assert policy.fallback_days().empty, policy.fallback_days()
        return out

    long_returns = np.concatenate([returns, returns[:40]])
    run_policy(1)  # cvxpy's first parametric compile in this process (~1-2 s, once)
    per_day = run_policy(40)
    refits = per_day[::20]
    steady = [x for i, x in enumerate(per_day) if i % 20]
    print(
        f"  policy, 40 days, refit every 20: {statistics.median(steady):6.1f} ms/day, refit days "
        + ", ".join(f"{x:.0f}" for x in refits)
        + f" ms; mean {statistics.mean(per_day):.1f} ms/day"
    )
    print(f"target: one solve <= {TARGET_MS:.0f} ms")


if __name__ == "__main__":
    main()
