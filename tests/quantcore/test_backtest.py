"""Backtest: hand-made tiny markets with closed-form results, TopkDropout by hand, the CLI contract."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from quantcore.backtest import (
    REPORT_COLUMNS,
    BacktestError,
    CostModel,
    Exchange,
    SignalError,
    TopkDropout,
    WeightStrategy,
    align_signal,
    equal_weight_benchmark,
    simulate,
)
from quantcore.cli import app
from quantcore.data.panel import Panel

NAN = np.nan
CAL = pd.bdate_range("2020-01-01", periods=4).values


def market(close: list[list[float]], **extra: list[list[float]]) -> Panel:
    """A panel from per-instrument close rows (instruments A, B, ...), factor 1."""
    c = np.array(close, dtype=float)
    names = [chr(ord("A") + i) for i in range(len(c))]
    fields = {"close": c, "factor": np.ones_like(c), **{k: np.array(v, dtype=float) for k, v in extra.items()}}
    return Panel.from_arrays(
        CAL[: c.shape[1]], names, fields, starts=np.zeros(len(c), int), ends=np.full(len(c), c.shape[1])
    )


def run(panel: Panel, scores: list[list[float]], topk=1, n_drop=1, account=10_000.0, start=1, end=None):
    """Backtest with scores given per day (rows) x instrument (columns)."""
    s = np.array(scores, dtype=float)
    end = panel.n_days - 1 if end is None else end
    return simulate(Exchange.from_panel(panel), TopkDropout(topk, n_drop), s, panel.calendar, start, end, account)


# --- exchange arithmetic -------------------------------------------------------------------------------------


def test_round_amount_floors_to_whole_lots_of_raw_shares():
    ex = Exchange.from_panel(market([[10.0, 10.0]]))
    assert ex.round_amount(950.0, 1.0) == 900.0
    assert ex.round_amount(99.95, 1.0) == 100.0  # +0.1 absorbs float error, as qlib
    assert ex.round_amount(130.0, 2.0) == 100.0  # factor 2: a lot of 100 raw shares is 50 adjusted ones
    assert ex.round_amount(49.0, 2.0) == 0.0


def test_costs_have_a_floor_and_nothing_for_empty_orders():
    c = CostModel()
    assert c.cost(9000.0, c.open_cost) == 5.0  # 4.5 < min cost
    assert c.cost(100_000.0, c.open_cost) == pytest.approx(50.0)
    assert c.cost(10800.0, c.close_cost) == pytest.approx(16.2)
    assert c.cost(0.0, c.open_cost) == 0.0
    assert c.max_buy_amount(4.0, 10.0) == 0.0
    assert c.max_buy_amount(1005.0, 10.0) == pytest.approx(100.0)  # below the floor's break-even: cash - 5
    assert c.max_buy_amount(100_050.0, 10.0) == pytest.approx(100_050.0 / 1.0005 / 10.0)


def test_limits_and_suspension_masks():
    ex = Exchange.from_panel(market([[10.0, 11.0, 9.95, NAN], [10.0, 10.5, 10.0, 10.0]]))
    np.testing.assert_array_equal(ex.limit_buy[:, 0], [False, True, False, True])  # +10% is limit up
    np.testing.assert_array_equal(ex.limit_sell[:, 0], [False, False, True, True])  # -9.545% is limit down
    np.testing.assert_array_equal(ex.suspended[:, 1], [False] * 4)


# --- the daily loop, closed form -----------------------------------------------------------------------------


def test_buy_then_switch_costs_rounding_and_report_columns():
    # A: 10, 10, 10.5; B: 20 throughout. Day 1 trades on day 0's scores (A best), day 2 on day 1's (B best).
    panel = market([[10, 10, 10.5], [20, 20, 20]])
    rep = run(panel, [[2, 1], [1, 2], [1, 2]])
    assert list(rep.columns) == list(REPORT_COLUMNS) and rep.index.name == "datetime"
    # Day 1: 0.95 x 10000 / 10 = 950 -> 900 shares (lots of 100); cost max(9000 x 5bp, 5) = 5.
    d1 = rep.iloc[0]
    assert d1["cash"] == pytest.approx(10_000 - 9000 - 5)
    assert d1["value"] == pytest.approx(9000) and d1["account"] == pytest.approx(9995)
    assert d1["return"] == pytest.approx(0.0, abs=1e-12)  # return is gross of cost, as qlib
    assert d1["cost"] == pytest.approx(5 / 10_000) and d1["turnover"] == pytest.approx(0.9)
    # Day 2: sell 900 A at 10.5 (cost 9450 x 15bp = 14.175); buy B with 0.95 x cash: 495.5 -> 400 shares,
    # cost max(8000 x 5bp, 5) = 5.
    cash = 995 + 9450 - 14.175 - (400 * 20 + 5)
    d2 = rep.iloc[1]
    assert d2["cash"] == pytest.approx(cash) and d2["value"] == pytest.approx(8000)
    assert d2["return"] == pytest.approx((cash + 8000 - 9995 + 19.175) / 9995)
    assert d2["cost"] == pytest.approx(19.175 / 9995) and d2["turnover"] == pytest.approx(17_450 / 9995)
    assert d2["total_cost"] == pytest.approx(24.175) and d2["total_turnover"] == pytest.approx(26_450)


def test_limit_up_day_is_not_bought():
    panel = market([[10, 11, 11], [20, 20, 20]])  # A closes +10% on day 1: limit up
    rep = run(panel, [[2, 1], [2, 1], [2, 1]])
    assert rep.iloc[0]["value"] == 0 and rep.iloc[0]["cash"] == 10_000  # the only pick was blocked
    assert rep.iloc[1]["value"] == pytest.approx(800 * 11)  # bought the next day: 9500 / 11 -> 800 shares


def test_suspended_holding_is_neither_sold_nor_revalued():
    panel = market([[10, 10, NAN, 13], [20, 20, 20, 20]])
    rep = run(panel, [[2, 1], [1, 2], [1, 2], [1, 2]])
    # Day 2: A (held) is suspended -> not sold, marked at its last close; B gets 0.95 of the spare cash.
    assert rep.iloc[1]["value"] == pytest.approx(9000)
    assert rep.iloc[1]["cash"] == pytest.approx(995) and rep.iloc[1]["turnover"] == 0
    # Day 3: A trades again and is sold at 13; B is bought.
    assert rep.iloc[2]["total_turnover"] == pytest.approx(9000 + 900 * 13 + rep.iloc[2]["value"])


def test_cash_is_conserved_on_a_synthetic_market():
    from quantcore.data.synthetic import synth_market

    panel = synth_market(40, 120, seed=3)
    scores = np.random.default_rng(3).normal(size=(panel.n_days, panel.n_instruments))
    rep = simulate(Exchange.from_panel(panel), TopkDropout(10, 2), scores, panel.calendar, 1, 119, 1e6)
    acc = rep["account"].to_numpy()
    prev = np.concatenate([[1e6], acc[:-1]])
    np.testing.assert_allclose(acc, prev * (1 + rep["return"] - rep["cost"]), rtol=1e-12)
    np.testing.assert_allclose(acc, rep["cash"] + rep["value"], rtol=1e-12)
    np.testing.assert_allclose(rep["total_cost"], np.cumsum(rep["cost"] * prev), rtol=1e-9)
    assert (rep["cash"] >= 0).all() and rep["turnover"].iloc[0] > 0.9


def test_strategy_sees_only_rows_before_t():
    seen = []

    class Spy:
        def decide(self, past, held):
            seen.append(len(past))
            assert not np.isnan(past).any()  # the future rows (NaN below) are never handed over
            return None

    panel = market([[10, 10, 10, 10]])
    scores = np.array([[1.0], [1.0], [NAN], [NAN]])
    rep = simulate(Exchange.from_panel(panel), Spy(), scores, panel.calendar, 1, 2, 1e4)
    assert seen == [1, 2] and (rep["account"] == 1e4).all()


def test_weight_strategy_rebalances_to_target_weights_in_lots():
    panel = market([[10, 10, 10], [20, 20, 20]])
    scores = np.array([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]])  # day 1: half each; day 2: all in A
    rep = simulate(Exchange.from_panel(panel), WeightStrategy(), scores, panel.calendar, 1, 2, 10_000.0)
    # Day 1: 0.475 x 10000 -> A 475 -> 400 shares (4000), B 237.5 -> 200 shares (4000); 5 + 5 cost.
    assert rep.iloc[0]["value"] == pytest.approx(8000) and rep.iloc[0]["cash"] == pytest.approx(1990)
    # Day 2: target A = 0.95 x 9990 / 10 = 949 -> 900 shares: sell all B (4000, cost 6), buy 500 A (cost 5).
    assert rep.iloc[1]["value"] == pytest.approx(9000)
    assert rep.iloc[1]["cash"] == pytest.approx(1990 + 4000 - 6 - 5000 - 5)
    with pytest.raises(BacktestError, match="long-only"):
        WeightStrategy().decide(np.array([[-1.0, 2.0]]), np.zeros(2, bool))


# --- TopkDropout by hand -------------------------------------------------------------------------------------

#                  A    B    C    D    E    F
SCORES = np.array([0.9, 0.1, 0.5, 0.8, 0.3, NAN])


def test_topk_dropout_replaces_the_worst_held_name():
    held = np.array([1, 1, 1, 0, 0, 0], bool)  # A B C held, topk 3
    d = TopkDropout(3, 1).decide(SCORES[None], held)
    # held ranked A C B; one candidate D; worst of {A D C B} is B -> sell B, buy D.
    assert d.sell.tolist() == [1] and d.buy.tolist() == [3] and d.buy_fraction == pytest.approx(0.95)


def test_topk_dropout_candidates_can_fill_the_drop_slots():
    held = np.array([1, 1, 1, 0, 0, 0], bool)
    d = TopkDropout(3, 2).decide(SCORES[None], held)
    # candidates D E; worst two of {A D C E B} are E B -> only B is held, so one sale and one buy (D).
    assert d.sell.tolist() == [1] and d.buy.tolist() == [3]


def test_topk_dropout_sells_unscored_holdings_first_and_fills_from_empty():
    held = np.array([1, 0, 1, 0, 0, 1], bool)  # F has no score: ranked last
    d = TopkDropout(3, 1).decide(SCORES[None], held)
    assert d.sell.tolist() == [5] and d.buy.tolist() == [3]
    d = TopkDropout(3, 1).decide(SCORES[None], np.zeros(6, bool))
    assert d.sell.tolist() == [] and d.buy.tolist() == [0, 3, 2]  # the top 3 of the scored names
    assert TopkDropout(3, 1).decide(np.full((1, 6), NAN), held) is None  # no signal: no trade


def test_bad_settings_and_signals():
    with pytest.raises(BacktestError, match="topk"):
        TopkDropout(0, 1)
    panel = market([[10, 10]])
    with pytest.raises(SignalError, match="no \\(datetime, instrument\\)"):
        align_signal(pd.Series([1.0], index=pd.MultiIndex.from_tuples([(CAL[0], "ZZZ")])), panel)
    with pytest.raises(BacktestError, match="outside the calendar"):
        simulate(Exchange.from_panel(panel), TopkDropout(), np.zeros((2, 1)), panel.calendar, 1, 5)


def test_equal_weight_benchmark_skips_missing_instruments():
    bench = equal_weight_benchmark(market([[10, 11, NAN], [10, 9, 9.9]]))
    np.testing.assert_allclose(bench, [0.0, 0.0, 0.1], atol=1e-12)


# --- CLI -----------------------------------------------------------------------------------------------------

runner = CliRunner()


@pytest.fixture(scope="module")
def signal_file(tmp_path_factory) -> Path:
    from quantcore.data.synthetic import synth_market

    panel = synth_market(30, 80, seed=5)
    idx = pd.MultiIndex.from_product(
        [pd.DatetimeIndex(panel.calendar), list(panel.instruments)], names=["datetime", "instrument"]
    )
    score = np.random.default_rng(5).normal(size=len(idx))
    path = tmp_path_factory.mktemp("sig") / "signal.parquet"
    pd.DataFrame({"score": score}, index=idx).to_parquet(path)
    return path


def test_cli_writes_qlib_report(signal_file, tmp_path):
    out = tmp_path / "report.parquet"
    res = runner.invoke(
        app,
        [
            "backtest",
            "--data",
            "synthetic:30:80:5",
            "--signal",
            str(signal_file),
            "--topk",
            "5",
            "--n-drop",
            "1",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    rep = pd.read_parquet(out)
    assert list(rep.columns) == list(REPORT_COLUMNS) and rep.index.name == "datetime"
    assert len(rep) == 79 and rep["turnover"].iloc[0] > 0.5  # some picks may be suspended or at a limit


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "does not exist"),
        ("not_parquet", "cannot read"),
        ("no_score", "no 'score' column"),
        ("no_overlap", "shares no"),
        ("bad_benchmark", "benchmark instrument"),
    ],
)
def test_cli_bad_inputs_exit_2_with_one_line(case, message, signal_file, tmp_path):
    sig, extra = signal_file, []
    if case == "missing":
        sig = tmp_path / "nope.parquet"
    elif case == "not_parquet":
        sig = tmp_path / "x.parquet"
        sig.write_text("not parquet")
    elif case == "no_score":
        sig = tmp_path / "x.parquet"
        pd.read_parquet(signal_file).rename(columns={"score": "pred"}).to_parquet(sig)
    elif case == "no_overlap":
        sig = tmp_path / "x.parquet"
        f = pd.read_parquet(signal_file).reset_index()
        f["instrument"] = "OTHER" + f["instrument"]
        f.set_index(["datetime", "instrument"]).to_parquet(sig)
    else:
        extra = ["--benchmark", "NOPE"]
    res = runner.invoke(
        app,
        ["backtest", "--data", "synthetic:30:80:5", "--signal", str(sig), "--out", str(tmp_path / "r.parquet"), *extra],
    )
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output


# --- parity with pyqlib (opt-in) -----------------------------------------------------------------------------

QLIB_PYTHON = Path(os.environ.get("RDQUANT_QLIB_PYTHON", Path.home() / "qlibref" / "bin" / "python"))


@pytest.mark.qlib
def test_topk_dropout_matches_pyqlib(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from backtest_parity import DEFAULT_REFERENCE, parity

    if not QLIB_PYTHON.exists() or not DEFAULT_REFERENCE.exists():
        pytest.skip(f"needs pyqlib at {QLIB_PYTHON} and {DEFAULT_REFERENCE}")
    r = parity(60, 250, 2, QLIB_PYTHON, DEFAULT_REFERENCE, tmp_path, topk=20, n_drop=3)
    assert max(r.max_abs[c] for c in ("return", "cost", "turnover")) < 1e-9, r.max_abs
    assert r.max_abs["bench"] < 1e-6  # qlib computes the benchmark in float32
    assert r.cum_return_ours == pytest.approx(r.cum_return_qlib, abs=1e-9)
