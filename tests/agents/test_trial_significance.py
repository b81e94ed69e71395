"""Trial-aware admission: a factor's p-value is adjusted over every admission trial of the project on
the market (BY / BH, counted by hand here), its residual RankIC must clear the minimum effect size, a NaN
never passes, and a model replaces the best only at the run's level split over its comparisons."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agents.decide import AdmissionRules, Significance, admission_p, admit_factor, compare_models, trial_significance
from quantcore.evaluate.significance import newey_west_t, one_sided_p
from sandbox.result import ExperimentResult

RULES = AdmissionRules(fdr_q=0.05, fdr_method="by", model_alpha=0.05, model_tests=5)


def _factor(name: str, **metrics: float) -> ExperimentResult:
    return ExperimentResult(spec_hash="x", kind="factor", metrics={f"{name}.{k}": v for k, v in metrics.items()})


def test_by_adjustment_counts_earlier_trials_by_hand():
    # m = 4 finite p-values (the NaN of a failed trial is not a test); c(4) = 1 + 1/2 + 1/3 + 1/4
    sig = trial_significance([0.01, math.nan, 0.5], {"a": 0.001, "b": 0.04}, "by")
    c = 1 + 1 / 2 + 1 / 3 + 1 / 4
    # sorted: 0.001 (k=1), 0.01 (k=2), 0.04 (k=3), 0.5 (k=4); step-up minimum from the top
    q = [min(1.0, c * 4 * p / k) for k, p in enumerate([0.001, 0.01, 0.04, 0.5], start=1)]
    q = [min(q[i:]) for i in range(4)]
    assert sig["a"].trials == sig["b"].trials == 4
    assert sig["a"].adjusted == pytest.approx(q[0]) and sig["b"].adjusted == pytest.approx(q[2])
    bh = trial_significance([0.01, math.nan, 0.5], {"a": 0.001, "b": 0.04}, "bh")
    assert bh["b"].adjusted == pytest.approx(min(4 * 0.04 / 3, 4 * 0.5 / 4))


def test_the_same_evidence_needs_more_after_more_trials():
    few = trial_significance([0.3] * 5, {"f": 0.002}, "by")["f"]
    many = trial_significance([0.3] * 500, {"f": 0.002}, "by")["f"]
    assert few.passes(0.05) and not many.passes(0.05)
    assert many.trials == 501


def test_planned_tests_count_from_the_first_trial():
    # 2 earlier tests + 1 now, 120 planned: BY over m = 120 with 117 placeholders at p = 1, by hand
    sig = trial_significance([0.2, 0.6], {"f": 1e-4}, "by", planned=120)["f"]
    c = sum(1 / i for i in range(1, 121))
    assert sig.trials == 120 and sig.planned == 117
    assert sig.adjusted == pytest.approx(c * 120 * 1e-4 / 1)
    assert trial_significance([0.2, 0.6], {"f": 1e-4}, "by")["f"].passes(0.05)  # a family of 3 would admit it
    assert not sig.passes(0.05)
    # once the run has made its planned tests, the placeholders are gone: the same as no plan
    done = trial_significance([0.3] * 119, {"f": 1e-4}, "by", planned=120)["f"]
    assert done.planned == 0 and done.adjusted == trial_significance([0.3] * 119, {"f": 1e-4}, "by")["f"].adjusted


def test_admission_on_residual_ic_with_effect_size_and_nan():
    strong = _factor("f", rank_ic=0.05, rank_icir=0.4, residual_rank_ic=0.03, residual_t=5.0, residual_p=1e-6)
    assert admission_p({"residual_p": 1e-6, "rank_ic_p": 0.2}) == 1e-6  # the residual test is the admission test
    ok = admit_factor("f", strong, RULES, {}, (5, 3), significance=Significance(1e-6, 1e-4, 30, "by"))
    assert (
        ok.verdict == "accept"
        and "residual RankIC +0.0300" in ok.reasons[0]
        and "over 30 admission trials" in ok.reasons[0]
    )
    assert ok.metrics["p_adjusted"] == 1e-4 and ok.metrics["residual_p"] == 1e-6
    late = admit_factor("f", strong, RULES, {}, (5, 3), significance=Significance(1e-6, 0.2, 3000, "by"))
    assert late.verdict == "reject" and any(r.startswith("not significant") for r in late.reasons)
    # a large raw IC whose residual is below the effect size is not new information
    spanned = _factor("f", rank_ic=0.08, residual_rank_ic=0.004, residual_t=4.0, residual_p=1e-4)
    v = admit_factor("f", spanned, RULES, {}, (5, 3), significance=Significance(1e-4, 1e-3, 10, "by"))
    assert v.verdict == "reject" and any("minimum effect size" in r for r in v.reasons)
    nan = _factor("f", rank_ic=0.05, residual_rank_ic=math.nan, residual_p=math.nan)
    v = admit_factor("f", nan, RULES, {}, (5, 3), significance=Significance(math.nan, math.nan, 10, "by"))
    assert v.verdict == "reject" and any("no p-value" in r for r in v.reasons)
    assert admit_factor("f", strong, RULES, {}, (5, 3), significance=None).verdict == "reject"


def _model(daily: np.ndarray, arr: float) -> ExperimentResult:
    return ExperimentResult(
        spec_hash="m",
        kind="model",
        metrics={"Rank IC": float(np.mean(daily)), "ARR.with_cost": arr},
        details={"daily_rank_ic": daily.tolist()},
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_model_replacement_at_the_split_level(seed):
    rng = np.random.default_rng(seed)
    best = rng.normal(0.02, 0.1, 400)
    level = RULES.model_alpha / RULES.model_tests
    for shift in (0.0, 0.005, 0.02, 0.05):
        cand = best + shift + rng.normal(0, 0.05, 400)
        v = compare_models("m", _model(cand, 0.1), best.tolist(), {"ARR.with_cost": 0.05}, RULES, seed=0)
        p = one_sided_p(newey_west_t(cand - best).t)
        assert (v.verdict == "replace_best") == (p <= level), (shift, p, v.reasons)
        assert f"level {level:.2g}" in v.reasons[0]
    # significant on RankIC, but an undefined with-cost return never passes
    cand = best + 0.05 + rng.normal(0, 0.05, 400)
    assert (
        compare_models("m", _model(cand, 0.1), best.tolist(), {"ARR.with_cost": 0.05}, RULES, 0).verdict
        == "replace_best"
    )
    v = compare_models("m", _model(cand, math.nan), best.tolist(), {"ARR.with_cost": 0.05}, RULES, seed=0)
    assert v.verdict == "keep_best" and "undefined with-cost ARR" in v.reasons[0]


def test_unmeasured_coverage_or_originality_never_passes():
    sig = Significance(1e-6, 1e-5, 10, "by")
    good = dict(
        rank_ic=0.05, residual_rank_ic=0.03, residual_t=5.0, residual_p=1e-6, loss=0.0, base_corr=0.2, library_corr=0.1
    )
    assert admit_factor("f", _factor("f", **good), RULES, {}, (5, 3), significance=sig).verdict == "accept"
    for key, why in (
        ("loss", "coverage"),
        ("base_corr", "originality unknown"),
        ("library_corr", "originality unknown"),
    ):
        v = admit_factor("f", _factor("f", **{**good, key: math.nan}), RULES, {}, (5, 3), significance=sig)
        assert v.verdict == "reject" and any(r.startswith(why) for r in v.reasons), (key, v.reasons)
