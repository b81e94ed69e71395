"""Walk-forward validation folds for model candidates and the noise band they feed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from agents.decide import AdmissionRules, compare_models, merge_folds
from agents.nodes import inner_folds
from quantcore.data.panel import Panel
from quantcore.data.sources import load_market
from quantcore.dataset.purge import purge_segments
from quantcore.expr.evaluate import evaluate
from quantcore.features import DEFAULT_LABEL
from sandbox.result import ExperimentResult
from sandbox.spec import default_segments


def test_folds_are_chronological_disjoint_and_never_reach_test():
    """Unpurged (horizon 0, embargo 0): the folds of runs stored before purging, which replay as they ran."""
    panel = load_market("synthetic:20:2520:0")
    segments = default_segments(panel.calendar)
    folds = inner_folds(segments, panel, 4, horizon=0, embargo=0)
    assert folds[0]["test"] == segments["valid"]
    # fold 0 fits on the first 80% of train and early-stops on the rest of it
    train = panel.calendar[panel.date_index(*segments["train"])]
    cut = int(len(train) * 0.8)
    assert folds[0]["train"] == (str(train[0])[:10], str(train[cut - 1])[:10])
    assert folds[0]["valid"] == (str(train[cut])[:10], str(train[-1])[:10])
    # 60/20/20: folds score valid and the two blocks before it; a fourth would have nothing to fit on
    assert len(folds) == 3
    for f in folds:
        assert f["train"][1] < f["valid"][0] <= f["valid"][1] < f["test"][0] <= f["test"][1] < segments["test"][0]
    for later, earlier in zip(folds, folds[1:]):  # scored blocks do not overlap
        assert earlier["test"][1] < later["test"][0]
    scored = [len(panel.calendar[panel.date_index(*f["test"])]) for f in folds]
    assert len(set(scored)) == 1
    # the embedded market (1,259 days) gets two folds
    sp500 = load_market("sp500")
    assert len(inner_folds(default_segments(sp500.calendar), sp500, 2, horizon=0, embargo=0)) == 2
    # a short market keeps one fold rather than fit on a few weeks
    short = load_market("synthetic:20:400:0")
    assert len(inner_folds(default_segments(short.calendar), short, 2, horizon=0, embargo=0)) == 1


def _labels_blind_to(panel: Panel, label: np.ndarray, last: int, first_changed: int) -> bool:
    """Whether the label of every day up to `last` stays the same when every close from day
    `first_changed` on moves: those labels read no price of those days."""
    close = panel.fields["close"].copy()
    close[:, first_changed:] *= 1.5
    moved = evaluate(panel.with_fields(close=close), {"y": DEFAULT_LABEL}, allow_future=True, dtype=np.float64)["y"]
    return np.array_equal(label[:, : last + 1], moved[:, : last + 1], equal_nan=True)


@pytest.mark.parametrize("embargo", [0, 5])
def test_purged_folds_keep_the_horizon_and_embargo_between_fit_early_stop_and_scored_days(embargo):
    """Default label: horizon 2 (it reads the closes of t+1 and t+2). Inside every fold, exactly 2 + embargo
    trading days separate fitting from early-stopping and at least that many early-stopping from the
    scored block; fold 0 scores exactly the purged validation segment. Checked against the label itself:
    moving the prices of the later range leaves every label of the earlier one unchanged."""
    horizon = 2
    panel = load_market("synthetic:20:2520:0")
    segments = purge_segments(panel.calendar, default_segments(panel.calendar), horizon, embargo)
    folds = inner_folds(segments, panel, 4, horizon=horizon, embargo=embargo)
    assert len(folds) == 3 and folds[0]["test"] == segments["valid"]
    label = evaluate(panel, {"y": DEFAULT_LABEL}, allow_future=True, dtype=np.float64)["y"]
    at = pd.DatetimeIndex(panel.calendar).get_loc
    for f in folds:
        fit_end, stop_start = at(pd.Timestamp(f["train"][1])), at(pd.Timestamp(f["valid"][0]))
        stop_end, scored = at(pd.Timestamp(f["valid"][1])), at(pd.Timestamp(f["test"][0]))
        assert stop_start - fit_end - 1 == horizon + embargo
        assert scored - stop_end - 1 >= horizon + embargo
        assert _labels_blind_to(panel, label, fit_end, stop_start)
        assert _labels_blind_to(panel, label, stop_end, scored)
    # fold 0 early-stops up to the purged train's end, exactly horizon + embargo days before valid
    assert folds[0]["valid"][1] == segments["train"][1]
    # the unpurged folds do read the days after them: the check above can fail
    unpurged = inner_folds(segments, panel, 1, horizon=0, embargo=0)[0]
    fit_end, stop_start = at(pd.Timestamp(unpurged["train"][1])), at(pd.Timestamp(unpurged["valid"][0]))
    assert stop_start == fit_end + 1 and not _labels_blind_to(panel, label, fit_end, stop_start)


def test_a_train_segment_too_short_to_purge_twice_is_refused_by_name():
    panel = load_market("synthetic:20:400:0")
    segments = {"train": ("2010-01-04", "2010-01-08"), "valid": ("2010-02-01", "2010-06-30")}  # 5 days
    with pytest.raises(ValueError, match="segment 'train'.*embargo 5"):
        inner_folds(segments, panel, 1, horizon=2, embargo=5)


def _result(daily: np.ndarray, arr: float) -> ExperimentResult:
    rank_ic = float(np.mean(daily))
    return ExperimentResult(
        spec_hash="x",
        kind="model",
        details={"daily_rank_ic": daily.tolist()},
        metrics={"Rank IC": rank_ic, "IC": rank_ic, "ARR.with_cost": arr, "IR.with_cost": 1.0},
    )


def test_more_scored_days_narrow_the_band_enough_to_decide():
    """A real but small daily edge (+0.004 RankIC, daily noise 0.05) is within noise on one 504-day block
    and decided on two; a model with no edge is kept out either way."""
    rng = np.random.default_rng(7)
    rules = AdmissionRules()
    best = [rng.normal(0.05, 0.1, 504) for _ in range(2)]
    edge = [b + 0.004 + rng.normal(0, 0.05, 504) for b in best]
    none = [b + rng.normal(0, 0.05, 504) for b in best]
    best_one, best_two = merge_folds([_result(best[0], 0.1)]), merge_folds([_result(b, 0.1) for b in best])
    one = compare_models(
        "m", merge_folds([_result(edge[0], 0.12)]), best_one.details["daily_rank_ic"], best_one.metrics, rules, seed=1
    )
    two = compare_models(
        "m",
        merge_folds([_result(e, 0.12) for e in edge]),
        best_two.details["daily_rank_ic"],
        best_two.metrics,
        rules,
        seed=1,
    )
    null = compare_models(
        "m",
        merge_folds([_result(e, 0.12) for e in none]),
        best_two.details["daily_rank_ic"],
        best_two.metrics,
        rules,
        seed=1,
    )
    assert one.verdict == "keep_best" and "within noise" in one.reasons[0]
    assert two.verdict == "replace_best" and "1008 validation days" in two.reasons[0]
    assert null.verdict == "keep_best"
    # the cost check uses the mean over folds: a with-cost ARR that falls on average keeps the best
    worse = compare_models(
        "m",
        merge_folds([_result(edge[0], 0.12), _result(edge[1], 0.05)]),
        best_two.details["daily_rank_ic"],
        best_two.metrics,
        rules,
        seed=1,
    )
    assert worse.verdict == "keep_best" and "with-cost ARR" in worse.reasons[0]


def test_a_failed_fold_fails_the_candidate_and_mismatched_folds_are_not_compared():
    from sandbox.result import Failure, FailureCategory

    good = _result(np.full(100, 0.05), 0.1)
    bad = ExperimentResult(
        spec_hash="y", kind="model", failure=Failure(category=FailureCategory.RUNTIME_ERROR, message="boom", context="")
    )
    assert merge_folds([good, bad]).failure.message == "boom"
    v = compare_models("m", merge_folds([good]), [0.0] * 200, good.metrics, AdmissionRules(), seed=0)
    assert v.verdict == "keep_best" and "not comparable" in v.reasons[0]
