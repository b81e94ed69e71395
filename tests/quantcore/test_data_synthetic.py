"""Synthetic market: determinism, structure, and the planted alphas' rank ICs measured by hand in pandas."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from quantcore.data import PLANTED_ALPHAS, SynthConfig, synth_market


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
    o, h, l, c, w, v = (f[k][ok] for k in ("open", "high", "low", "close", "vwap", "volume"))
    assert (h >= np.maximum(o, c)).all() and (l <= np.minimum(o, c)).all()
    assert (w >= l).all() and (w <= h).all()
    assert (v > 0).all() and (v == np.round(v)).all()
    assert (f["factor"][ok] == 1.0).all()
    assert (h > l).mean() > 0.99  # real ranges, not flat bars
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


# ---- planted alphas: signals written by hand in pandas, not with the expression engine --------------
def _frames(panel):
    idx = pd.DatetimeIndex(panel.calendar)
    return {k: pd.DataFrame(v.T, index=idx, columns=list(panel.instruments)) for k, v in panel.fields.items()}


def _hand_signals(f: dict) -> dict[str, pd.DataFrame]:
    c, o, v = f["close"], f["open"], f["volume"]
    return {
        "Ref($close, 5)/$close - 1": c.shift(5) / c - 1,
        "$volume/Mean($volume, 20)": v / v.rolling(20, min_periods=1).mean(),
        "($close-$open)/$open": (c - o) / o,
        "Corr($close, $volume, 10)": c.rolling(10, min_periods=1).corr(v),
    }


def _mean_rank_ic(signal: pd.DataFrame, label: pd.DataFrame) -> float:
    both = signal.notna() & label.notna()
    a = signal.where(both).rank(axis=1)
    b = label.where(both).rank(axis=1)
    a = a.sub(a.mean(axis=1), axis=0)
    b = b.sub(b.mean(axis=1), axis=0)
    ic = (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    return float(ic[both.sum(axis=1) >= 20].mean())


@pytest.fixture(scope="module")
def measured(panel):
    f = _frames(panel)
    label = f["close"].shift(-2) / f["close"].shift(-1) - 1  # Ref($close, -2)/Ref($close, -1) - 1
    ics = {expr: _mean_rank_ic(sig, label) for expr, sig in _hand_signals(f).items()}
    control = f["close"].shift(20) / f["close"].shift(60) - 1  # Ref($close, 20)/Ref($close, 60) - 1
    ics["control"] = _mean_rank_ic(control, label)
    return ics


@pytest.mark.parametrize("alpha", PLANTED_ALPHAS, ids=lambda a: a.name)
def test_planted_alpha_rank_ic(measured, alpha):
    ic = measured[alpha.expression]
    assert 0.02 <= abs(alpha.expected_rank_ic) <= 0.06
    assert abs(ic - alpha.expected_rank_ic) < 0.01, (alpha.name, ic)


def test_control_expression_has_no_ic(measured):
    assert abs(measured["control"]) < 0.01


def test_zero_coefficients_remove_the_alphas():
    panel = synth_market(300, 600, seed=3, config=SynthConfig(alpha_coefficients=(0.0, 0.0, 0.0, 0.0)))
    f = _frames(panel)
    label = f["close"].shift(-2) / f["close"].shift(-1) - 1
    for expr, sig in _hand_signals(f).items():
        assert abs(_mean_rank_ic(sig, label)) < 0.012, expr
