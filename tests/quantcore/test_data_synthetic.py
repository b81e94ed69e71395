"""Synthetic market: determinism, structure, and the random planted alphas: their realised rank ICs
(measured by hand in pandas), the null market, and that the panel hides them."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from quantcore.cli import app
from quantcore.data import SynthConfig, planted_alphas, synth_market
from quantcore.data.alpha_grammar import MAX_WINDOW, MIN_WINDOW, draw_alpha
from quantcore.errors import DataError
from quantcore.expr import parse
from quantcore.expr.ast import EMA, Ref, Rolling, walk
from quantcore.expr.evaluate import Evaluator


@pytest.fixture(scope="module")
def panel():
    return synth_market()  # the default 300 x 2520, seed 0


def test_default_size(panel):
    assert (panel.n_instruments, panel.n_days) == (300, 2520)
    assert panel.field_names == ("open", "high", "low", "close", "volume", "vwap", "factor", "industry")


def test_same_seed_same_market_other_seed_differs():
    a, b = synth_market(40, 250, seed=7), synth_market(40, 250, seed=7)
    c = synth_market(40, 250, seed=8)
    assert a.version == b.version
    for name in a.fields:
        np.testing.assert_array_equal(a.fields[name], b.fields[name])
    assert c.version != a.version
    assert not np.allclose(np.nan_to_num(a.fields["close"]), np.nan_to_num(c.fields["close"]))


def test_listings_delistings_suspensions(panel):
    t = panel.n_days
    assert 20 <= int((panel.starts > 0).sum()) <= 80  # late listings
    assert 10 <= int((panel.ends < t).sum()) <= 50  # early delistings
    close = panel.fields["close"]
    inside = ~panel.outside_span
    suspended = np.isnan(close) & inside
    assert suspended.sum() > 1000 and suspended.any(axis=1).sum() > 100
    for name, arr in panel.fields.items():  # suspended days are whole NaN rows
        assert np.isnan(arr[suspended]).all(), name
        assert not np.isnan(arr[inside & ~suspended]).any(), name
    rows = np.arange(panel.n_instruments)
    assert not np.isnan(close[rows, panel.starts]).any()  # spans start and end on trading days
    assert not np.isnan(close[rows, panel.ends - 1]).any()


def test_bars_are_consistent(panel):
    f = panel.fields
    ok = ~np.isnan(f["close"])
    o, h, lo, c, w, v = (f[k][ok] for k in ("open", "high", "low", "close", "vwap", "volume"))
    assert (h >= np.maximum(o, c)).all() and (lo <= np.minimum(o, c)).all()
    assert (w >= lo).all() and (w <= h).all()
    assert (v > 0).all() and (v == np.round(v)).all()
    assert (f["factor"][ok] == 1.0).all()
    assert (h > lo).mean() > 0.99  # real ranges, not flat bars
    assert (o != c).mean() > 0.99


def test_price_limits_cap_moves_and_are_hit(panel):
    close = pd.DataFrame(panel.fields["close"].T)
    moves = close / close.ffill().shift(1) - 1  # vs the last traded close, across suspensions too
    assert np.nanmax(np.abs(moves.to_numpy())) <= 0.095 + 1e-12
    at_limit = (moves.abs() >= 0.095 - 1e-9).to_numpy()
    assert at_limit.sum() > 500
    assert (at_limit.sum(axis=0) > 0).sum() > 50  # many instruments hit the cap
    assert (moves.to_numpy() >= 0.095 - 1e-9).any() and (moves.to_numpy() <= -0.095 + 1e-9).any()


def test_industries(panel):
    ind = panel.fields["industry"]
    codes = np.unique(ind[~np.isnan(ind)])
    np.testing.assert_array_equal(codes, np.arange(10.0))
    per_instrument = pd.DataFrame(ind.T).nunique()
    assert (per_instrument == 1).all()


# ---- the planted alphas -------------------------------------------------------------------------
def test_planted_alphas_are_random_per_seed_and_fixed_by_it():
    drawn = {seed: planted_alphas(seed) for seed in range(6)}
    assert planted_alphas(3) == drawn[3]  # same seed, same alphas (and coefficients)
    for alphas in drawn.values():
        assert len(alphas) == 4 and len({a.name for a in alphas}) == 4
        for a in alphas:
            assert 0.03 <= abs(a.target_rank_ic) <= 0.05
            assert np.sign(a.coefficient) == np.sign(a.target_rank_ic)
            assert ("higher returns" in a.description) == (a.target_rank_ic > 0)
    expressions = [a.expression for alphas in drawn.values() for a in alphas]
    assert len(set(expressions)) == len(expressions)  # 24 draws, no repeat
    assert {a.expression for a in planted_alphas(3, 2)} <= {a.expression for a in drawn[3]}
    assert planted_alphas(3, 0) == ()


def test_the_grammar_is_broad_and_its_windows_in_range():
    rng = np.random.default_rng(11)
    drawn = [draw_alpha(rng) for _ in range(400)]
    operators, fields = set(), set()
    for alpha in drawn:
        node = parse(alpha.expression)
        for sub in walk(node):
            if isinstance(sub, (Rolling, EMA)):
                window = sub.window if isinstance(sub, Rolling) else sub.spec
                assert MIN_WINDOW <= window <= MAX_WINDOW, alpha.expression
            if isinstance(sub, Ref):  # one-day returns and gaps, or a w-day change
                assert sub.periods == 1 or MIN_WINDOW <= sub.periods <= MAX_WINDOW, alpha.expression
        operators |= set(re.findall(r"([A-Z][A-Za-z]*)\(", alpha.expression))
        fields |= set(re.findall(r"\$(\w+)", alpha.expression))
        assert alpha.name.isidentifier(), alpha.name
    rolling = {
        "Mean",
        "EMA",
        "WMA",
        "Std",
        "Skew",
        "Kurt",
        "Max",
        "Min",
        "Med",
        "Quantile",
        "Rank",
        "IdxMax",
        "IdxMin",
        "Slope",
        "Rsquare",
        "Resi",
        "Sum",
        "Delta",
        "Corr",
        "Cov",
    }
    assert rolling <= operators
    assert fields == {"close", "open", "high", "low", "vwap", "volume"}
    assert len({a.expression for a in drawn}) > 350  # repeats: only the ten plain series


def _frames(panel) -> dict[str, pd.DataFrame]:
    idx = pd.DatetimeIndex(panel.calendar)
    return {k: pd.DataFrame(v.T, index=idx, columns=list(panel.instruments)) for k, v in panel.fields.items()}


def _mean_rank_ic(signal: pd.DataFrame, label: pd.DataFrame) -> float:
    """Mean daily Spearman correlation, from pandas ranks (independent of quantcore.evaluate)."""
    both = signal.notna() & label.notna() & np.isfinite(signal)
    a = signal.where(both).rank(axis=1)
    b = label.where(both).rank(axis=1)
    a = a.sub(a.mean(axis=1), axis=0)
    b = b.sub(b.mean(axis=1), axis=0)
    ic = (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    return float(ic[both.sum(axis=1) >= 20].mean())


def _realised(panel, alphas) -> dict[str, float]:
    """Each alpha's rank IC vs Ref($close, -2)/Ref($close, -1) - 1, the label built by hand."""
    close = _frames(panel)["close"]
    label = close.shift(-2) / close.shift(-1) - 1
    values = Evaluator(panel).evaluate({a.name: a.expression for a in alphas}, dtype=np.float64)
    return {
        name: _mean_rank_ic(pd.DataFrame(v.T, index=close.index, columns=close.columns), label)
        for name, v in values.items()
    }


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_planted_alphas_have_their_target_rank_ic(seed):
    # 200 x 1000: the daily rank IC's sampling error is ~0.002 and calibration error ~0.002 (see the
    # module docstring), so 0.01 is a 3-4 sigma band; every sign must come out as drawn
    alphas = planted_alphas(seed)
    realised = _realised(synth_market(200, 1000, seed), alphas)
    for a in alphas:
        ic = realised[a.name]
        assert np.sign(ic) == np.sign(a.target_rank_ic), (a.expression, ic)
        assert abs(ic - a.target_rank_ic) < 0.01, (a.expression, a.target_rank_ic, ic)


@pytest.mark.parametrize("seed", [0, 4])
def test_null_market_has_no_signal(seed):
    alphas = planted_alphas(seed)
    realised = _realised(synth_market(300, 600, seed, n_alphas=0), alphas)
    for a in alphas:  # the same expressions, not planted: sampling error ~0.003 at 300 x 600
        assert abs(realised[a.name]) < 0.012, (a.expression, realised[a.name])


def test_null_market_is_the_same_market_without_planted_returns():
    planted, null = synth_market(60, 300, 5), synth_market(60, 300, 5, n_alphas=0)
    np.testing.assert_array_equal(planted.fields["volume"], null.fields["volume"])  # volume is exogenous
    np.testing.assert_array_equal(planted.starts, null.starts)
    close_p, close_n = planted.fields["close"], null.fields["close"]
    np.testing.assert_array_equal(np.isnan(close_p), np.isnan(close_n))
    ok = ~np.isnan(close_p)
    # a signal on day d moves the return of day d + 2: the first two closes are the null market's
    np.testing.assert_array_equal(close_p[:, :2][ok[:, :2]], close_n[:, :2][ok[:, :2]])
    assert not np.array_equal(close_p[ok], close_n[ok])


def test_the_panel_carries_no_trace_of_the_alphas():
    seed = 2
    panel = synth_market(50, 200, seed)
    assert panel.field_names == ("open", "high", "low", "close", "volume", "vwap", "factor", "industry")
    assert panel.meta == {"generator": "quantcore.data.synthetic/2", "seed": "2", "size": "50x200", "n_alphas": "4"}
    text = " ".join([*panel.meta.keys(), *panel.meta.values()])
    for a in planted_alphas(seed):
        assert a.expression not in text and a.name not in text
        assert a.expression.replace(" ", "") not in text.replace(" ", "")


def test_bad_arguments():
    with pytest.raises(DataError, match="n_alphas must be >= 0"):
        synth_market(20, 100, n_alphas=-1)
    with pytest.raises(DataError, match="at least 2 instruments and 30 days"):
        synth_market(1, 100)
    assert synth_market(20, 60, config=SynthConfig(price_limit=0.05)).n_days == 60


def test_cli_hides_the_alphas_unless_revealed(tmp_path):
    runner = CliRunner()
    seed = 3
    args = ["data", "synth", "--out", str(tmp_path / "a"), "--instruments", "60", "--days", "300", "--seed", str(seed)]
    hidden = runner.invoke(app, args)
    assert hidden.exit_code == 0, hidden.output
    alphas = planted_alphas(seed)
    assert "--reveal" in hidden.output
    assert not any(a.expression in hidden.output for a in alphas)
    shown = runner.invoke(app, args[:3] + [str(tmp_path / "b")] + args[4:] + ["--reveal", "--alphas", "3"])
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    for a in planted_alphas(seed, 3):
        assert f"    {a.expression}" in lines  # whole, on a line of its own: copy-pasteable
        assert a.name in shown.output
    assert planted_alphas(seed)[3].expression not in shown.output
    null = runner.invoke(app, args[:3] + [str(tmp_path / "c")] + args[4:] + ["--reveal", "--alphas", "0"])
    assert null.exit_code == 0 and "null market" in null.output
