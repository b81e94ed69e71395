"""Factor evaluation: hand-made frames with exactly known IC, cleaning and refusals, quantiles,
turnover, planted alphas recovered, and the `rdquant factor eval` contract."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from quantcore.cli import app
from quantcore.data.synthetic import planted_alphas, synth_market
from quantcore.evaluate import (
    FactorEvaluationError,
    align,
    bucket_turnover,
    daily_ic,
    daily_rank_ic,
    daily_ranks,
    decay_label,
    evaluate_arrays,
    evaluate_expression,
    ic_stats,
    library_correlation,
    quantile_buckets,
    quantile_returns,
)
from quantcore.features import DEFAULT_LABEL

runner = CliRunner()
NAN = np.nan


def _pandas_daily(factor, label, method):
    """Reference: per-day pandas corr over the common valid pairs (qlib's calc_ic), NaN if < 2 pairs."""
    out = []
    for t in range(factor.shape[1]):
        s = pd.DataFrame({"f": factor[:, t], "y": label[:, t]}).dropna()
        if method == "spearman":  # pandas' own spearman needs scipy; Pearson of average ranks is its definition
            s = s.rank()
        out.append(s["f"].corr(s["y"]) if len(s) >= 2 else NAN)
    return np.array(out)


def test_factor_equal_to_label_and_monotone_transform():
    rng = np.random.default_rng(1)
    y = rng.standard_normal((12, 4))
    np.testing.assert_allclose(daily_ic(y, y), 1.0)
    np.testing.assert_allclose(daily_rank_ic(y, y), 1.0)
    # exp is monotone but not linear: RankIC stays exactly 1, IC drops below 1
    np.testing.assert_allclose(daily_rank_ic(np.exp(3 * y), y), 1.0)
    assert np.all(daily_ic(np.exp(3 * y), y) < 0.999)
    np.testing.assert_allclose(daily_rank_ic(-y, y), -1.0)
    z = y.copy()
    z[0] = np.inf  # inf counts as missing, not as the largest value
    np.testing.assert_allclose(daily_ic(z, y), 1.0)
    np.testing.assert_allclose(daily_rank_ic(z, y), 1.0)


def test_hand_computed_three_day_example():
    # 3 instruments, 3 days, min_pairs=3.
    # day 0: f=(1,2,3), y=(1,3,2): Pearson = (dx.dy)/(|dx||dy|) = ((-1)(-1)+0+(1)(0))/(sqrt2*sqrt2) = 0.5
    # day 1: f=(1,2,3), y=(3,2,1): -1
    # day 2: f=(1,2,4), y=(1,2,3): dx=(-4/3,-1/3,5/3), dy=(-1,0,1): 3/sqrt(42/9 * 2) = 3/sqrt(28/3)
    f = np.array([[1, 1, 1], [2, 2, 2], [3, 3, 4]], dtype=float)
    y = np.array([[1, 3, 1], [3, 2, 2], [2, 1, 3]], dtype=float)
    ic = daily_ic(f, y, min_pairs=3)
    np.testing.assert_allclose(ic, [0.5, -1.0, 3 / math.sqrt(28 / 3)])
    np.testing.assert_allclose(daily_rank_ic(f, y, min_pairs=3), [0.5, -1.0, 1.0])
    stats = ic_stats(ic)
    mean = (0.5 - 1 + 3 / math.sqrt(28 / 3)) / 3
    std = float(np.std(ic, ddof=1))
    assert stats.n_days == 3
    assert stats.mean == pytest.approx(mean)
    assert stats.icir == pytest.approx(mean / std)
    assert stats.t_stat == pytest.approx(mean / std * math.sqrt(3))


def test_nan_pairs_ties_and_skipped_days_match_pandas():
    rng = np.random.default_rng(7)
    f = rng.standard_normal((30, 40)).round(1)  # rounding makes ties
    y = rng.standard_normal((30, 40)).round(1)
    f[rng.random(f.shape) < 0.2] = NAN
    y[rng.random(y.shape) < 0.2] = NAN
    f[:25, 5] = NAN  # day 5: only <= 5 pairs left -> skipped
    y[:, 9] = 0.5  # day 9: constant label -> skipped
    for method, func in (("pearson", daily_ic), ("spearman", daily_rank_ic)):
        got = func(f, y, min_pairs=10)
        ref = _pandas_daily(f, y, method)
        both = (~np.isnan(f) & ~np.isnan(y)).sum(axis=0)
        ref[both < 10] = NAN
        ref[9] = NAN
        assert np.isnan(got[5]) and np.isnan(got[9])
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


def test_ranked_label_gives_the_same_rank_ic_bit_for_bit():
    rng = np.random.default_rng(11)
    f = rng.standard_normal((40, 30)).round(1)
    y = rng.standard_normal((40, 30)).round(1)
    y[rng.random(y.shape) < 0.1] = NAN
    y[3, 4] = np.inf  # inf is missing on either side
    f[:, :5] = NAN  # warm-up days: no pairs
    f[rng.random(f.shape) < 0.05] = NAN  # days where the common set is smaller than the label's
    ranked = daily_ranks(y)
    want = daily_rank_ic(f, y)
    assert np.array_equal(daily_rank_ic(f, ranked), want, equal_nan=True)
    assert np.array_equal(daily_rank_ic(daily_ranks(f), ranked), want, equal_nan=True)
    assert np.array_equal(daily_ic(f, ranked), daily_ic(f, y), equal_nan=True)
    y[:] = 0.0  # the ranks hold a copy: changing the source afterwards does not stale them
    assert np.array_equal(daily_rank_ic(f, ranked), want, equal_nan=True)


def test_a_ranked_label_aligns_and_reports_bit_for_bit_on_a_market_with_holes():
    """align and evaluate_arrays with the label ranked once (`daily_ranks`) equal ranking it for each
    factor, on a synthetic market with suspensions and late listings, for factors whose missing cells
    differ from the label's on most days (ties and warm-ups included)."""
    from quantcore.data.sources import load_market
    from quantcore.expr.evaluate import Evaluator

    panel = load_market("synthetic:60:400:0")
    ev = Evaluator(panel, threads=1)
    days = slice(20, 320)
    y = ev.evaluate({"y": DEFAULT_LABEL}, allow_future=True, dtype=np.float64)["y"][:, days]
    exprs = {
        "ma": "Mean($close, 5)/$close",
        "ref": "Ref($close, 20)/$close",
        "sign": "Sign($close - Ref($close, 1))",
        "cs": "CSRank($volume)",
        "corr": "Corr($close, $volume, 10)",
        "gap": "$open/Ref($close, 1) - 1",
    }
    factors = {k: v[:, days] for k, v in ev.evaluate(exprs, dtype=np.float64).items()}
    ranked = daily_ranks(y)
    subset_days = 0
    for name, x in factors.items():
        subset_days += int((np.isfinite(y) & ~np.isfinite(x)).any(axis=0).sum())  # label ranked over fewer cells
        a, b = align(x, y, name=name), align(x, ranked, name=name)
        for f in ("factor", "label", "factor_rank", "label_rank", "count", "days_used"):
            assert np.array_equal(getattr(a, f), getattr(b, f), equal_nan=True), (name, f)
        assert a.loss == b.loss
        plain, _ = evaluate_arrays(x, y, expression=name)
        once, _ = evaluate_arrays(x, ranked, expression=name)
        assert once.to_dict() == plain.to_dict(), name  # every statistic of the report, bit for bit
    assert subset_days > 300  # the holes were exercised, not only days where the label's cells all count


def test_quantile_returns_on_a_hand_example():
    # one day, 10 instruments: factor ranks 1..10 -> buckets of two; label = 10 * bucket + instrument
    f = np.arange(10, dtype=float)[:, None].repeat(3, axis=1)
    y = np.array([0, 1, 10, 11, 20, 21, 30, 31, 40, 41], dtype=float)[:, None].repeat(3, axis=1)
    y[:, 1] *= -1
    data = align(f, y, min_pairs=10)
    buckets = quantile_buckets(data, 5)
    np.testing.assert_array_equal(buckets[:, 0], [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    per_q = quantile_returns(data, buckets, 5)
    np.testing.assert_allclose(per_q[:, 0], [0.5, 10.5, 20.5, 30.5, 40.5])
    np.testing.assert_allclose(per_q[:, 1], [-0.5, -10.5, -20.5, -30.5, -40.5])
    report, _ = evaluate_arrays(f, y, min_pairs=10)
    assert report.quantile_returns == pytest.approx((0.5 / 3, 10.5 / 3, 20.5 / 3, 30.5 / 3, 40.5 / 3))
    assert report.long_short == pytest.approx(40 / 3)
    assert report.turnover_top == 0.0 and report.autocorr == pytest.approx(1.0)


@pytest.mark.parametrize("n, quantiles", [(7, 3), (10, 5), (23, 4), (50, 10)])
def test_buckets_match_pandas_qcut_of_distinct_values(n, quantiles):
    rng = np.random.default_rng(n)
    f = rng.standard_normal((n, 3))
    data = align(f, rng.standard_normal((n, 3)), min_pairs=2)
    got = quantile_buckets(data, quantiles)
    for t in range(3):
        np.testing.assert_array_equal(got[:, t], pd.qcut(f[:, t], quantiles, labels=False))


def test_turnover_counts_replaced_members():
    buckets = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1], [0, 0, 1]])
    got = bucket_turnover(buckets, 1, np.array([True, True, True]))
    # day 1: top {0, 2}, was {0, 1} -> half replaced; day 2: {2, 3} vs {0, 2} -> half
    np.testing.assert_allclose(got, [NAN, 0.5, 0.5])


def test_refusals_name_the_problem():
    f = np.arange(60, dtype=float).reshape(20, 3)
    y = f[::-1].copy()
    with pytest.raises(FactorEvaluationError, match="NaN on every"):
        align(np.full((20, 3), NAN), y)
    with pytest.raises(FactorEvaluationError, match="constant"):
        align(np.ones((20, 3)), y)
    with pytest.raises(FactorEvaluationError, match="no trading days"):
        align(np.ones((20, 0)), np.ones((20, 0)))
    with pytest.raises(FactorEvaluationError, match=r"only 2 of 3 days.*need 3"):
        g = f.copy()
        g[:15, 2] = NAN
        align(g, y, max_loss=1.0)
    with pytest.raises(FactorEvaluationError, match="max_loss"):
        h = y.copy()
        h[:, :2] = NAN  # label missing on two of three days -> two thirds of the factor dropped
        align(f, h, min_days=1)


@pytest.fixture(scope="module")
def synth():
    return synth_market(200, 1000, 0)


def test_planted_alphas_are_recovered(synth):
    for alpha in planted_alphas(0):
        report = evaluate_expression(synth, alpha.expression, decay_horizons=())
        assert abs(report.rank_ic.mean - alpha.target_rank_ic) < 0.02, alpha.name
        assert np.sign(report.rank_ic.mean) == np.sign(alpha.target_rank_ic)
        assert report.rank_ic.t_stat * np.sign(alpha.target_rank_ic) > 3


def test_decay_horizon_one_is_the_default_label_and_library_correlation(synth):
    assert decay_label(1).replace(" ", "") == DEFAULT_LABEL.replace(" ", "")
    expr = planted_alphas(0)[0].expression
    report = evaluate_expression(
        synth,
        expr,
        decay_horizons=(1, 5),
        library={"same": expr, "neg": f"-({expr})"},
        start="2011-01-01",
        end="2012-12-31",
    )
    assert report.decay[1] == pytest.approx(report.rank_ic.mean)
    assert report.start >= "2011-01-01" and report.end <= "2012-12-31"
    assert report.correlations["same"].daily_mean == pytest.approx(1.0)
    assert report.correlations["neg"].pooled == pytest.approx(-1.0)
    f = np.arange(24, dtype=float).reshape(12, 2)
    assert library_correlation(f, {"x2": 2 * f})["x2"].daily_mean == pytest.approx(1.0)


def test_cli_json_matches_library():
    res = runner.invoke(
        app,
        [
            "factor",
            "eval",
            "Ref($close, 5)/$close - 1",
            "--data",
            "synthetic:60:300:3",
            "--start",
            "2010-03-01",
            "--quantiles",
            "4",
            "--json",
            "--no-decay",
        ],
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    for key in (
        "ic",
        "rank_ic",
        "icir",
        "rank_icir",
        "ic_t",
        "rank_ic_t",
        "n_days",
        "long_short",
        "turnover",
        "autocorr",
        "decay",
    ):
        assert key in out
    expected = evaluate_expression(
        synth_market(60, 300, 3), "Ref($close, 5)/$close - 1", start="2010-03-01", quantiles=4, decay_horizons=()
    ).to_dict()
    assert out == json.loads(json.dumps(expected))
    assert len(out["quantile_returns"]) == 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["$close +"], "expected an operand"),
        (["Ref($close, -1)"], "future"),
        (["$close", "--start", "2031-01-01"], "no trading days"),
        (["$nope"], "nope"),
        (["2"], "constant"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(args, message):
    res = runner.invoke(app, ["factor", "eval", *args, "--data", "synthetic:40:120:0", "--json", "--no-decay"])
    assert res.exit_code == 2
    assert message in res.output
    assert "Traceback" not in res.output
