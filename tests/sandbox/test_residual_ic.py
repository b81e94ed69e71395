"""Residual RankIC in factor experiments, through the worker's own path (`run_spec`): a factor made of
library factors adds nothing (its residual IC is exactly 0); a library factor the candidate repeats is
left out of the controls (it is the rival it would replace); HAC statistics come with every report."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantcore.data.sources import load_market
from quantcore.evaluate.significance import newey_west_t, two_sided_p
from sandbox.experiments import WorkerContext, run_spec
from sandbox.spec import SpecError, default_segments, parse_spec

MARKET = "synthetic:60:400:0"
LIBRARY = {"rev5": "$close/Ref($close, 5) - 1", "vol10": "Std($close/Ref($close, 1) - 1, 10)"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    panel = load_market(MARKET)
    ctx = WorkerContext(attach=lambda m: panel)
    root = tmp_path_factory.mktemp("residual")
    valid = default_segments(panel.calendar)["valid"]

    def go(expressions: dict[str, str], **spec):
        result = run_spec(
            {
                "kind": "factor",
                "market": MARKET,
                "expressions": expressions,
                "segment": list(valid),
                "library": LIBRARY,
                "base_features": "alpha158",
                "residual_components": 4,
                "controls": sorted(LIBRARY),
                "pair_threshold": 0.7,
                "report": "full",
                **spec,
            },
            ctx,
            root / str(len(list(root.iterdir()))),
        )
        assert result.ok, result.failure
        return result

    return go


def test_a_mix_of_library_factors_has_no_residual_ic(run):
    # 0.5 rev5 - 2 vol10 is spanned by its controls on every day: the residual is exactly zero
    r = run({"mix": "0.5*($close/Ref($close, 5) - 1) - 2*Std($close/Ref($close, 1) - 1, 10)"}, pair_threshold=None)
    assert r.details["mix"]["residual_controls"] == ["rev5", "vol10"]
    assert r.metrics["mix.residual_rank_ic"] == 0.0
    assert abs(r.metrics["mix.rank_ic"]) > 0  # raw IC stays reported
    assert math.isnan(r.metrics["mix.residual_p"])  # a zero series has no t: never significant


def test_a_repeated_library_factor_is_not_a_control(run):
    # a 1:1 copy of rev5 (corr 1 >= 0.7) competes with it; only vol10 stays a control
    r = run({"copy": "2*($close/Ref($close, 5) - 1) + 1"})
    assert r.details["copy"]["residual_controls"] == ["vol10"]
    assert r.metrics["copy.residual_rank_ic"] != 0.0
    named = run({"copy": "2*($close/Ref($close, 5) - 1) + 1"}, pair_with=["vol10"], pair_threshold=None)
    assert named.details["copy"]["residual_controls"] == ["rev5"]  # pair_with names the rival
    assert named.metrics["copy.residual_rank_ic"] == 0.0


def test_hac_statistics_of_the_daily_rank_ic(run):
    r = run({"mom": "Mean($close, 20)/$close - 1"}, pair_threshold=0.7)
    daily = np.array([math.nan if v is None else v for v in r.details["mom"]["daily_rank_ic"]])
    hac = newey_west_t(daily)
    assert r.metrics["mom.rank_ic_hac_t"] == pytest.approx(hac.t, rel=1e-12)
    assert r.metrics["mom.rank_ic_p"] == pytest.approx(two_sided_p(hac.t), rel=1e-12)


def test_residual_components_need_base_features_and_controls_the_library():
    base = {"kind": "factor", "market": MARKET, "expressions": {"a": "$close"}, "library": LIBRARY}
    with pytest.raises(SpecError, match="residual_components needs base_features"):
        parse_spec({**base, "residual_components": 3})
    with pytest.raises(SpecError, match="controls names nope"):
        parse_spec({**base, "controls": ["nope"]})


def test_a_screen_scores_every_factor_as_admission_scores_each(run):
    """The screen fits its factors' residuals together (one least-squares fit per day and control set):
    each factor gets the residual RankIC admission computes for it alone, its rivals left out."""
    exprs = {
        "mom": "Mean($close, 20)/$close - 1",
        "copy": "2*($close/Ref($close, 5) - 1) + 1",
        "mix": "0.5*($close/Ref($close, 5) - 1) - 2*Std($close/Ref($close, 1) - 1, 10)",
        "rng": "($high - $low)/$close",
        "warm": "Corr($close, $volume, 30)",
    }
    screen = run(exprs, report="screen", corr_days=0)
    for name, expr in exprs.items():
        alone = run({name: expr})
        assert screen.details[name]["residual_controls"] == alone.details[name]["residual_controls"]
        assert screen.metrics[f"{name}.residual_rank_ic"] == pytest.approx(
            alone.metrics[f"{name}.residual_rank_ic"], rel=1e-9, abs=1e-12
        )
        t_screen, t_alone = screen.metrics[f"{name}.residual_t"], alone.metrics[f"{name}.residual_t"]
        assert (math.isnan(t_screen) and math.isnan(t_alone)) or t_screen == pytest.approx(t_alone, rel=1e-9)
    assert screen.details["copy"]["residual_controls"] == ["vol10"]  # the rival left out, as alone
    assert "daily_rank_ic" not in screen.details["mom"] and "library_daily_rank_ic" not in screen.details
