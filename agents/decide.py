"""Deterministic decisions on validation metrics: factor admission and "replace the best model".

No LLM decides anything here. A factor enters the library only if it passes the cheap gates and the
admission rules; a model replaces the best only if a block bootstrap of its daily RankIC advantage
over the best model excludes zero (the noise band), net of a cost check on turnover."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from agents.contracts import Verdict
from sandbox.result import ExperimentResult

__all__ = ["AdmissionRules", "admit_factor", "refine_factor", "compare_models", "bootstrap_mean_interval", "merge_folds",
           "model_score"]


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


def admit_factor(name: str, result: ExperimentResult, rules: AdmissionRules, library_corr: dict[str, float],
                 complexity: tuple[int, int], base: tuple[str, float] | None = None) -> Verdict:
    """accept/reject a factor experiment's result with every reason that applied. `base`: the base
    feature the factor correlates with most, and that correlation (a repeat of it adds nothing)."""
    if not result.ok:
        f = result.failure
        return Verdict(candidate=name, verdict="reject", reasons=[f"{f.category.value}: {f.message}"])
    m = {k.split(".", 1)[1]: v for k, v in result.metrics.items() if k.startswith(f"{name}.")}
    reasons = []
    nodes, depth = complexity
    if nodes > rules.max_nodes or depth > rules.max_depth:
        reasons.append(f"complexity: {nodes} nodes / depth {depth} exceeds {rules.max_nodes} / {rules.max_depth}")
    rank_ic, icir = m.get("rank_ic", math.nan), m.get("rank_icir", math.nan)
    if not (abs(rank_ic) >= rules.min_abs_rank_ic):
        reasons.append(f"weak: |RankIC| {abs(rank_ic):.4f} < {rules.min_abs_rank_ic}")
    if not (abs(icir) >= rules.min_abs_rank_icir):
        reasons.append(f"unstable: |RankICIR| {abs(icir):.3f} < {rules.min_abs_rank_icir}")
    if m.get("loss", 0.0) > rules.max_loss:
        reasons.append(f"coverage: {m['loss']:.0%} of values lost to NaN/inf (max {rules.max_loss:.0%})")
    if base is not None and base[1] is not None and abs(base[1]) >= rules.max_library_corr:
        reasons.append(f"duplicate: value correlation {base[1]:+.2f} with base feature {base[0]} "
                       f"(max {rules.max_library_corr})")
    dup = {k: c for k, c in library_corr.items() if c is not None and abs(c) >= rules.max_library_corr}
    if dup:
        k = max(dup, key=lambda key: abs(dup[key]))
        reasons.append(f"duplicate: value correlation {dup[k]:+.2f} with library factor {k} (max {rules.max_library_corr})")
    metrics = {k: v for k, v in m.items() if isinstance(v, float) and math.isfinite(v)}
    if reasons:
        return Verdict(candidate=name, verdict="reject", reasons=reasons, metrics=metrics)
    return Verdict(candidate=name, verdict="accept", metrics=metrics,
                   reasons=[f"passes: RankIC {rank_ic:+.4f}, RankICIR {icir:+.3f}, max |corr| with library "
                            f"{max((abs(c) for c in library_corr.values() if c is not None), default=0):.2f}"])


def refine_factor(verdict: Verdict, result: ExperimentResult, rivals: list[str], rival_corr: dict[str, float | None],
                  rules: AdmissionRules, seed: int) -> Verdict:
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
            return Verdict(candidate=name, verdict="reject", metrics=verdict.metrics,
                           reasons=[f"duplicate: repeats library factor {rival} ({why}); no paired daily RankIC to "
                                    "compare them on"])
        a, b = _as_series(own), _as_series(other)
        if not (np.isfinite(a) & np.isfinite(b)).any():
            return Verdict(candidate=name, verdict="reject", metrics=verdict.metrics,
                           reasons=[f"duplicate: repeats library factor {rival} ({why}); the two have no scored "
                                    "validation day in common to compare them on"])
        diff = np.sign(np.nanmean(a)) * a - np.sign(np.nanmean(b)) * b
        lo, hi = bootstrap_mean_interval(diff, rules.bootstrap_samples, rules.bootstrap_block, rules.confidence, seed + k)
        band = (f"|RankIC| advantage {np.nanmean(diff):+.4f} over {int(np.isfinite(diff).sum())} validation days, "
                f"{rules.confidence:.0%} interval [{lo:+.4f}, {hi:+.4f}]")
        if not lo > 0:
            return Verdict(candidate=name, verdict="reject", metrics=verdict.metrics,
                           reasons=[f"duplicate: repeats library factor {rival} ({why}) and is not better beyond "
                                    f"noise: {band}"])
        lines.append(f"refines {rival} ({why}): {band}")
    return Verdict(candidate=name, verdict="accept", metrics=verdict.metrics, reasons=verdict.reasons + lines,
                   replaces=list(rivals))


def _as_series(values: list) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


def bootstrap_mean_interval(diff: np.ndarray, samples: int, block: int, confidence: float, seed: int) -> tuple[float, float]:
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
    return replace(first, metrics=metrics, details={**first.details, "daily_rank_ic": daily},
                   seconds=sum(r.seconds for r in folds))


def model_score(metrics: dict) -> float:
    """The RankIC a model is ranked by: the mean over its folds (fold 0 alone for a one-fold run)."""
    return metrics.get("folds.Rank IC", metrics.get("Rank IC", -math.inf))


def compare_models(name: str, candidate: ExperimentResult, best_daily: list[float] | None, best_metrics: dict,
                   rules: AdmissionRules, seed: int) -> Verdict:
    """replace_best only when the daily RankIC advantage's bootstrap interval lies above zero and the
    with-cost excess return does not get worse; keep_best otherwise (with the numbers)."""
    if not candidate.ok:
        f = candidate.failure
        return Verdict(candidate=name, verdict="reject", reasons=[f"{f.category.value}: {f.message}"])
    m = {k: v for k, v in candidate.metrics.items() if math.isfinite(v)}
    daily = candidate.details.get("daily_rank_ic")
    if best_daily is None:
        return Verdict(candidate=name, verdict="replace_best", metrics=m, reasons=["first model: becomes the best"])
    if daily is None or len(daily) != len(best_daily):
        return Verdict(candidate=name, verdict="keep_best", metrics=m,
                       reasons=[f"not comparable: {len(daily or [])} scored days vs the best model's {len(best_daily)}"])
    diff = np.asarray(daily, dtype=np.float64) - np.asarray(best_daily, dtype=np.float64)
    lo, hi = bootstrap_mean_interval(diff, rules.bootstrap_samples, rules.bootstrap_block, rules.confidence, seed)
    band = (f"RankIC advantage {np.nanmean(diff):+.4f} over {int(np.isfinite(diff).sum())} validation days, "
            f"{rules.confidence:.0%} interval [{lo:+.4f}, {hi:+.4f}]")
    arr_key = "folds.ARR.with_cost" if "folds.ARR.with_cost" in m and "folds.ARR.with_cost" in best_metrics else "ARR.with_cost"
    arr, best_arr = m.get(arr_key, math.nan), best_metrics.get(arr_key, math.nan)
    if lo > 0 and not (arr < best_arr):
        return Verdict(candidate=name, verdict="replace_best", metrics=m, reasons=[f"better beyond noise: {band}"])
    if lo > 0:
        why = f"higher RankIC but lower with-cost ARR ({arr:+.3f} < {best_arr:+.3f})"
    else:
        why = f"{'worse' if hi < 0 else 'within noise'}: {band}"
    return Verdict(candidate=name, verdict="keep_best", metrics=m, reasons=[why])
