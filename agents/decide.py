"""Deterministic decisions on validation metrics: factor admission and "replace the best model".

No LLM decides anything here. A factor enters the library only if it passes the cheap gates and the
admission rules: its residual RankIC (what it adds beyond the base features and the library) is large
enough and significant once every trial of the project on the market is counted (a HAC t-test per
trial, false discovery rate controlled across trials). A model replaces the best only if its daily
RankIC advantage is significant at a level split across the run's model comparisons (so the run, not
each comparison, keeps the nominal false replacement rate), and its with-cost return is no worse."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from agents.contracts import Verdict
from quantcore.evaluate.significance import (
    FdrMethod,
    benjamini_hochberg,
    benjamini_yekutieli,
    newey_west_t,
    one_sided_p,
)
from sandbox.result import ExperimentResult

__all__ = [
    "AdmissionRules",
    "Significance",
    "admit_factor",
    "refine_factor",
    "compare_models",
    "bootstrap_mean_interval",
    "merge_folds",
    "model_score",
    "trial_significance",
    "admission_p",
    "factor_metrics",
]


@dataclass(frozen=True)
class AdmissionRules:
    """Configurable thresholds (validation segment)."""

    min_abs_rank_ic: float = 0.01
    min_abs_rank_icir: float = 0.08
    max_library_corr: float = 0.7
    max_loss: float = 0.35  # share of values missing after cleaning (coverage)
    max_nodes: int = 40
    max_depth: int = 10
    bootstrap_samples: int = 1000
    bootstrap_block: int = 10  # days: keeps autocorrelation inside a resampled block
    confidence: float = 0.9
    # Trial-aware significance (None: the per-trial gates of runs stored before it, which ignore how
    # many candidates were tried). fdr_q: the false discovery rate controlled across every admission
    # trial of the project on the market; model_alpha: the run's false replacement rate, split evenly
    # over the model comparisons it may make (`model_tests`: budget x candidates per iteration).
    fdr_q: float | None = None
    fdr_method: str = FdrMethod.BY.value
    model_alpha: float | None = None
    model_tests: int = 1


@dataclass(frozen=True)
class Significance:
    """One admission trial's test: its raw two-sided p-value (HAC t of the admission statistic) and the
    FDR-adjusted p over the `trials` tests of the project on the market, this batch included."""

    p: float
    adjusted: float
    trials: int
    method: str
    planned: int = 0  # of `trials`, tests the run has planned but not made yet (counted at p = 1)

    def passes(self, q: float) -> bool:
        return self.adjusted <= q  # NaN never passes


def factor_metrics(name: str, result: ExperimentResult) -> dict[str, float]:
    """A factor experiment's metrics of factor `name`, without the `name.` prefix."""
    return {k.split(".", 1)[1]: v for k, v in result.metrics.items() if k.startswith(f"{name}.")}


def admission_p(metrics: dict) -> float:
    """The p-value a factor is admitted on: its residual RankIC's when measured, else its raw RankIC's
    (HAC t, two-sided); NaN when neither was (a failed experiment is not a test)."""
    p = metrics.get("residual_p", metrics.get("rank_ic_p", math.nan))
    return math.nan if p is None else float(p)


def trial_significance(
    earlier: list[float], batch: dict[str, float], method: str, planned: int = 0
) -> dict[str, Significance]:
    """FDR-adjusted p-values of this batch's trials, counted with every earlier admission trial of the
    project on the market (their raw p-values, NaN ones not counted). Re-adjusting the whole family at
    each step makes the m of the correction grow with the search: the thousandth trial needs stronger
    evidence than the tenth.

    `planned`: the size the family will reach by the run's end (earlier runs' tests plus the run's
    budget of admission tests). The tests not made yet count at p = 1, so the run's first trials face
    the same family as its last rather than a handful of tests (an early lucky candidate is no more
    admissible than a late one); once the run has made them all, it changes nothing."""
    names = list(batch)
    p = np.array([*earlier, *(batch[k] for k in names)], dtype=np.float64)
    pad = max(0, planned - int(np.isfinite(p).sum()))
    adjust = benjamini_hochberg if FdrMethod(method) is FdrMethod.BH else benjamini_yekutieli
    family = np.concatenate([p, np.ones(pad)])
    q = adjust(family) if family.size else family
    m = int(np.isfinite(family).sum())
    tail = q[len(earlier) : len(p)]
    return {k: Significance(batch[k], float(tail[j]), m, FdrMethod(method).value, pad) for j, k in enumerate(names)}


def admit_factor(
    name: str,
    result: ExperimentResult,
    rules: AdmissionRules,
    library_corr: dict[str, float],
    complexity: tuple[int, int],
    base: tuple[str, float] | None = None,
    significance: Significance | None = None,
) -> Verdict:
    """accept/reject a factor experiment's result with every reason that applied. `base`: the base
    feature the factor correlates with most, and that correlation (a repeat of it adds nothing);
    `significance`: its trial-aware test (required when `rules.fdr_q` is set)."""
    if not result.ok:
        f = result.failure
        return Verdict(candidate=name, verdict="reject", reasons=[f"{f.category.value}: {f.message}"])
    m = factor_metrics(name, result)
    reasons = []
    nodes, depth = complexity
    if nodes > rules.max_nodes or depth > rules.max_depth:
        reasons.append(f"complexity: {nodes} nodes / depth {depth} exceeds {rules.max_nodes} / {rules.max_depth}")
    rank_ic, icir = m.get("rank_ic", math.nan), m.get("rank_icir", math.nan)
    if rules.fdr_q is not None:
        reasons += _significance_reasons(m, rules, significance)
    else:
        if not (abs(rank_ic) >= rules.min_abs_rank_ic):
            reasons.append(f"weak: |RankIC| {abs(rank_ic):.4f} < {rules.min_abs_rank_ic}")
        if not (abs(icir) >= rules.min_abs_rank_icir):
            reasons.append(f"unstable: |RankICIR| {abs(icir):.3f} < {rules.min_abs_rank_icir}")
    loss = m.get("loss", 0.0)
    if not (loss <= rules.max_loss):  # NaN fails: a coverage that could not be measured is not acceptable
        reasons.append(f"coverage: {loss:.0%} of values lost to NaN/inf (max {rules.max_loss:.0%})")
    for key, what in (("base_corr", "the base features"), ("library_corr", "the library")):
        if key in m and m[key] is not None and math.isnan(m[key]):
            reasons.append(
                f"originality unknown: no validation day had enough instruments in common with "
                f"{what} to measure a correlation"
            )
    if base is not None and base[1] is not None and abs(base[1]) >= rules.max_library_corr:
        reasons.append(
            f"duplicate: value correlation {base[1]:+.2f} with base feature {base[0]} (max {rules.max_library_corr})"
        )
    dup = {k: c for k, c in library_corr.items() if c is not None and abs(c) >= rules.max_library_corr}
    if dup:
        k = max(dup, key=lambda key: abs(dup[key]))
        reasons.append(
            f"duplicate: value correlation {dup[k]:+.2f} with library factor {k} (max {rules.max_library_corr})"
        )
    metrics = {k: v for k, v in m.items() if isinstance(v, float) and math.isfinite(v)}
    if significance is not None:
        metrics.update(
            {
                k: v
                for k, v in (("p_adjusted", significance.adjusted), ("trials", float(significance.trials)))
                if math.isfinite(v)
            }
        )
    if reasons:
        return Verdict(candidate=name, verdict="reject", reasons=reasons, metrics=metrics)
    corr_max = max((abs(c) for c in library_corr.values() if c is not None), default=0)
    if rules.fdr_q is not None:
        why = (
            f"passes: {_effect(m)}, {_test(significance)}; raw RankIC {rank_ic:+.4f}; max |corr| with library "
            f"{corr_max:.2f}"
        )
    else:
        why = f"passes: RankIC {rank_ic:+.4f}, RankICIR {icir:+.3f}, max |corr| with library {corr_max:.2f}"
    return Verdict(candidate=name, verdict="accept", metrics=metrics, reasons=[why])


def _effect(m: dict) -> str:
    if "residual_rank_ic" in m:
        return f"residual RankIC {m['residual_rank_ic']:+.4f} (HAC t {m.get('residual_t', math.nan):+.2f})"
    return f"RankIC {m.get('rank_ic', math.nan):+.4f} (HAC t {m.get('rank_ic_hac_t', math.nan):+.2f})"


def _test(sig: Significance | None) -> str:
    if sig is None:
        return "no significance test"
    planned = f" ({sig.planned} of them the run's tests still to come, at p = 1)" if sig.planned else ""
    return (
        f"p {sig.p:.2g}, {sig.method.upper()}-adjusted p {sig.adjusted:.2g} over {sig.trials} admission trials "
        f"of the project on this market{planned}"
    )


def _significance_reasons(m: dict, rules: AdmissionRules, sig: Significance | None) -> list[str]:
    """Effect size and trial-aware significance of the admission statistic (residual RankIC when
    measured): a NaN fails both."""
    effect = m.get("residual_rank_ic", m.get("rank_ic", math.nan))
    effect = math.nan if effect is None else effect
    label = "residual RankIC" if "residual_rank_ic" in m else "RankIC"
    out = []
    if not (abs(effect) >= rules.min_abs_rank_ic):
        out.append(f"weak: |{label}| {abs(effect):.4f} < {rules.min_abs_rank_ic} (minimum effect size)")
    if sig is None or not math.isfinite(sig.p):
        out.append(f"not significant: {_effect(m)} has no p-value")
    elif not sig.passes(rules.fdr_q):
        out.append(f"not significant: {_effect(m)}, {_test(sig)} > q {rules.fdr_q}")
    return out


def refine_factor(
    verdict: Verdict,
    result: ExperimentResult,
    rivals: list[str],
    rival_corr: dict[str, float | None],
    rules: AdmissionRules,
    seed: int,
) -> Verdict:
    """A factor that passed admission but repeats library factors (`rivals`: value correlation above the
    bound, or the same idea at another window) replaces them only if its daily RankIC beats each one's
    beyond noise: a paired block bootstrap of the daily difference (signs aligned: a factor's direction
    is its own) over the validation days both were scored on, the model noise band's test."""
    name = verdict.candidate
    own = result.details.get(name, {}).get("daily_rank_ic")
    theirs = result.details.get("library_daily_rank_ic", {})
    lines = []
    for k, rival in enumerate(rivals):
        other = theirs.get(rival)
        corr = rival_corr.get(rival)
        why = f"value correlation {corr:+.2f}" if corr is not None else "the same idea at another window"
        if own is None or other is None or len(own) != len(other):
            return Verdict(
                candidate=name,
                verdict="reject",
                metrics=verdict.metrics,
                reasons=[
                    f"duplicate: repeats library factor {rival} ({why}); no paired daily RankIC to compare them on"
                ],
            )
        a, b = _as_series(own), _as_series(other)
        if not (np.isfinite(a) & np.isfinite(b)).any():
            return Verdict(
                candidate=name,
                verdict="reject",
                metrics=verdict.metrics,
                reasons=[
                    f"duplicate: repeats library factor {rival} ({why}); the two have no scored "
                    "validation day in common to compare them on"
                ],
            )
        diff = np.sign(np.nanmean(a)) * a - np.sign(np.nanmean(b)) * b
        lo, hi = bootstrap_mean_interval(
            diff, rules.bootstrap_samples, rules.bootstrap_block, rules.confidence, seed + k
        )
        band = (
            f"|RankIC| advantage {np.nanmean(diff):+.4f} over {int(np.isfinite(diff).sum())} validation days, "
            f"{rules.confidence:.0%} interval [{lo:+.4f}, {hi:+.4f}]"
        )
        if not lo > 0:
            return Verdict(
                candidate=name,
                verdict="reject",
                metrics=verdict.metrics,
                reasons=[f"duplicate: repeats library factor {rival} ({why}) and is not better beyond noise: {band}"],
            )
        lines.append(f"refines {rival} ({why}): {band}")
    return Verdict(
        candidate=name,
        verdict="accept",
        metrics=verdict.metrics,
        reasons=verdict.reasons + lines,
        replaces=list(rivals),
    )


def _as_series(values: list) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


def bootstrap_mean_interval(
    diff: np.ndarray, samples: int, block: int, confidence: float, seed: int
) -> tuple[float, float]:
    """Moving-block bootstrap interval of the mean of a daily series (NaN days dropped)."""
    x = np.asarray(diff, dtype=np.float64)
    x = x[np.isfinite(x)]
    n = len(x)
    if n < 2 * block:
        return -math.inf, math.inf
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n - block + 1, size=(samples, math.ceil(n / block)))
    idx = (starts[:, :, None] + np.arange(block)[None, None, :]).reshape(samples, -1)[:, :n]
    means = x[idx].mean(axis=1)
    tail = (1 - confidence) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


FOLD_MEANS = ("IC", "Rank IC", "ARR.with_cost", "IR.with_cost")


def merge_folds(folds: list[ExperimentResult]) -> ExperimentResult:
    """One model candidate's walk-forward folds as one result: fold 0's metrics (the validation
    segment) plus `folds.<metric>` means over the folds, and the daily RankIC of every scored day in
    time order. A failed fold makes the candidate fail with that fold's failure."""
    failed = next((r for r in folds if not r.ok), None)
    if failed is not None:
        return failed
    first = folds[0]
    metrics = dict(first.metrics)
    for key in FOLD_MEANS:
        values = [r.metrics.get(key, math.nan) for r in folds]
        metrics[f"folds.{key}"] = float(np.mean(values))
    metrics["folds"] = float(len(folds))
    daily = [x for r in reversed(folds) for x in (r.details.get("daily_rank_ic") or [])]
    return replace(
        first, metrics=metrics, details={**first.details, "daily_rank_ic": daily}, seconds=sum(r.seconds for r in folds)
    )


def model_score(metrics: dict) -> float:
    """The RankIC a model is ranked by: the mean over its folds (fold 0 alone for a one-fold run)."""
    return metrics.get("folds.Rank IC", metrics.get("Rank IC", -math.inf))


def compare_models(
    name: str,
    candidate: ExperimentResult,
    best_daily: list[float] | None,
    best_metrics: dict,
    rules: AdmissionRules,
    seed: int,
) -> Verdict:
    """replace_best only when the daily RankIC advantage is significant (`rules.model_alpha` set: a
    one-sided HAC t-test at the run's level split over its possible comparisons; else a block-bootstrap
    interval above zero) and the with-cost excess return is defined and not worse; keep_best otherwise
    (with the numbers)."""
    if not candidate.ok:
        f = candidate.failure
        return Verdict(candidate=name, verdict="reject", reasons=[f"{f.category.value}: {f.message}"])
    m = {k: v for k, v in candidate.metrics.items() if math.isfinite(v)}
    daily = candidate.details.get("daily_rank_ic")
    if best_daily is None:
        return Verdict(candidate=name, verdict="replace_best", metrics=m, reasons=["first model: becomes the best"])
    if daily is None or len(daily) != len(best_daily):
        return Verdict(
            candidate=name,
            verdict="keep_best",
            metrics=m,
            reasons=[f"not comparable: {len(daily or [])} scored days vs the best model's {len(best_daily)}"],
        )
    diff = _as_series(daily) - _as_series(best_daily)
    if rules.model_alpha is not None:
        # one-sided HAC t-test of the mean daily advantage at the run's level split over its comparisons
        level = rules.model_alpha / max(rules.model_tests, 1)
        hac = newey_west_t(diff)
        p = one_sided_p(hac.t)
        better, worse = p <= level, one_sided_p(-hac.t) <= level
        band = (
            f"RankIC advantage {hac.mean:+.4f} over {hac.n} validation days, HAC t {hac.t:+.2f}, one-sided p "
            f"{p:.2g} vs level {level:.2g} (the run's {rules.model_alpha} split over {rules.model_tests} "
            "possible model comparisons)"
        )
    else:
        lo, hi = bootstrap_mean_interval(diff, rules.bootstrap_samples, rules.bootstrap_block, rules.confidence, seed)
        better, worse = lo > 0, hi < 0
        band = (
            f"RankIC advantage {np.nanmean(diff):+.4f} over {int(np.isfinite(diff).sum())} validation days, "
            f"{rules.confidence:.0%} interval [{lo:+.4f}, {hi:+.4f}]"
        )
    arr_key = (
        "folds.ARR.with_cost"
        if "folds.ARR.with_cost" in m and "folds.ARR.with_cost" in best_metrics
        else "ARR.with_cost"
    )
    arr, best_arr = candidate.metrics.get(arr_key, math.nan), best_metrics.get(arr_key, math.nan)
    # a NaN with-cost return never passes; a best model without one is compared on RankIC alone
    arr_ok = math.isfinite(arr) and not (arr < best_arr)
    if better and arr_ok:
        return Verdict(candidate=name, verdict="replace_best", metrics=m, reasons=[f"better beyond noise: {band}"])
    if better:
        why = f"higher RankIC but lower or undefined with-cost ARR ({arr:+.3f} vs {best_arr:+.3f})"
    else:
        why = f"{'worse' if worse else 'within noise'}: {band}"
    return Verdict(candidate=name, verdict="keep_best", metrics=m, reasons=[why])
