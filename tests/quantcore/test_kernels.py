"""The compiled kernels (`quantcore.kernels`) against their slow pandas twin (`quantcore._ext.reference`).

One parametrised equivalence test runs every operator x window x compat mode over one panel whose
rows carry every NaN pattern that matters (scattered NaNs, suspensions, an all-NaN row, listing
mid-calendar with junk outside the span, spans of length 0 and 1, flat runs, ties, infinities). Then closed-form
spot checks of the qlib semantics, a numerical-stability check against a long-double two-pass
computation, argument validation, and thread-count independence. Expected values come from the
reference or from closed forms, never from the kernels.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from quantcore import kernels as K
from quantcore._ext import reference as R
from quantcore._ext import rolling as _roll
from quantcore.errors import KernelArgumentError

T = 260  # calendar length of the pattern panel
WINDOWS = (1, 2, 3, 5, 20, 300, 0)  # 300 > any span (pure partial windows); 0 = expanding
COMPAT_OPS = {"IdxMax", "IdxMin", "WMA", "Rsquare"}  # rolling ops whose result depends on compat
ORDERED_OPS = ("Med", "Quantile", "Rank", "Mad")
# Skewness and kurtosis of a short window are ill-conditioned (a spread that is small next to the
# window's level loses (level/spread)**k digits in any float64 method, pandas' included); against a
# long-double two-pass our kernels are at least as close as pandas (see test_moments_stay_accurate...).
LOOSE = {"Skew": 1e-7, "Kurt": 1e-7}
RTOL = 1e-9


def _pattern_panel():
    """(x, y, groups, starts, ends, row names): one row per NaN pattern."""
    rng = np.random.default_rng(20240917)
    rows, spans = {}, {}

    def walk(level=50.0, scale=1.0):
        return level + np.cumsum(rng.normal(0, scale, T))

    rows["none"] = walk()
    spans["none"] = (0, T)
    v = walk()
    v[rng.random(T) < 0.15] = np.nan
    rows["scattered"] = v
    spans["scattered"] = (0, T)
    v = walk()
    for a, b in ((10, 13), (40, 65), (100, 101), (150, 180)):
        v[a:b] = np.nan
    rows["suspensions"] = v
    spans["suspensions"] = (0, T)
    rows["all_nan"] = np.full(T, np.nan)
    spans["all_nan"] = (0, T)
    v = walk()  # junk outside the span must be ignored (and NaN in the output)
    v[70:75] = np.nan
    rows["mid_listing"] = v
    spans["mid_listing"] = (37, 201)
    rows["span_0"] = walk()
    spans["span_0"] = (120, 120)
    rows["span_1"] = walk()
    spans["span_1"] = (250, 251)
    v = walk()
    v[30:60] = 10.0  # a suspension at a fixed price: flat windows
    v[45:48] = np.nan
    v[200:230] = -3.25
    rows["flat_runs"] = v
    spans["flat_runs"] = (5, T)
    v = np.round(walk(5.0, 0.6))  # few distinct levels: ties everywhere
    v[rng.random(T) < 0.1] = np.nan
    rows["ties"] = v
    spans["ties"] = (0, T)
    v = walk()
    v[:3] = np.nan  # leading NaN rows inside the span
    rows["short"] = v
    spans["short"] = (0, 9)
    v = walk()  # pandas window functions (so qlib) treat +-inf as missing; Count and Delta keep it
    v[[12, 13, 90]] = np.inf
    v[[50, 140]] = -np.inf
    v[60:64] = np.nan
    rows["infinities"] = v
    spans["infinities"] = (0, T)
    names = tuple(rows)
    x = np.stack([rows[k] for k in names])
    starts = np.array([spans[k][0] for k in names], dtype=np.int64)
    ends = np.array([spans[k][1] for k in names], dtype=np.int64)
    y = 0.5 * np.nan_to_num(x, nan=0.0) + rng.normal(0, 3, x.shape)
    y[rng.random(x.shape) < 0.1] = np.nan
    y[names.index("flat_runs"), 100:130] = 7.0
    y[names.index("infinities"), [13, 77]] = np.inf
    groups = rng.integers(0, 3, x.shape).astype(float)
    groups[rng.random(x.shape) < 0.1] = np.nan
    return x, y, groups, starts, ends, names


X, Y, GROUPS, STARTS, ENDS, ROWS = _pattern_panel()


def _cases():
    for op in K.ROLLING_OPS:
        for w in WINDOWS:
            for compat in (True, False):
                yield pytest.param("rolling", op, w, compat, id=f"{op}-w{w}-{'qlib' if compat else 'fixed'}")
    for op in K.PAIR_OPS:
        for w in WINDOWS:
            for compat in (True, False):
                yield pytest.param("pair", op, w, compat, id=f"{op}-w{w}-{'qlib' if compat else 'fixed'}")
    for spec in (1, 2, 5, 20, 0.3, 0):
        yield pytest.param("ema", "EMA", spec, True, id=f"EMA-{spec}")
    for periods in (-300, -3, -1, 0, 1, 2, 5, 300):
        yield pytest.param("shift", "Ref", periods, True, id=f"Ref-{periods}")
    for op in K.CROSS_SECTION_OPS:
        for param in (0.0, 0.05, 0.25) if op == "CSWinsorize" else (None,):
            yield pytest.param("cs", op, param, True, id=f"{op}-{param}")


def _call(lib, api, op, arg, compat):
    if api == "rolling":
        param = 0.3 if op == "Quantile" else None
        return lib.rolling(op, X, arg, STARTS, ENDS, param=param, compat=compat)
    if api == "pair":
        return lib.pair_rolling(op, X, Y, arg, STARTS, ENDS, compat=compat)
    if api == "ema":
        return lib.ema(X, arg, STARTS, ENDS)
    if api == "shift":
        return lib.shift(X, arg, STARTS, ENDS)
    groups = GROUPS if op == "CSNeutralize" else None
    return lib.cross_section(op, X, STARTS, ENDS, groups=groups, param=arg)


@functools.lru_cache(maxsize=None)
def _reference(api, op, arg, compat):
    if api == "rolling" and op not in COMPAT_OPS:
        compat = True  # same numbers either way: compute once
    return _call(R, api, op, arg, compat)


def assert_same(got, want, rtol=RTOL, rows=ROWS):
    """Same NaN and infinity positions, finite values within rtol relative (absolute below 1)."""
    assert got.shape == want.shape and got.dtype == np.float64
    nan_diff = (np.isnan(got) != np.isnan(want)) | (np.isposinf(got) != np.isposinf(want))
    nan_diff |= np.isneginf(got) != np.isneginf(want)
    ok = np.isfinite(want) & np.isfinite(got)
    err = np.zeros(got.shape)
    err[ok] = np.abs(got[ok] - want[ok]) / np.maximum(1.0, np.abs(want[ok]))
    bad = nan_diff | (err > rtol)
    if bad.any():
        i, t = np.argwhere(bad)[0]
        where = sorted({rows[r] for r in np.flatnonzero(bad.any(axis=1))})
        raise AssertionError(
            f"{int(bad.sum())} mismatches in rows {where}; first at row {rows[i]!r}, day {t}: "
            f"got {got[i, t]!r}, want {want[i, t]!r} (max rel err {err[ok].max() if ok.any() else 0:.2e})"
        )


@pytest.mark.parametrize("api, op, arg, compat", list(_cases()))
def test_matches_reference(api, op, arg, compat):
    got = _call(K, api, op, arg, compat)
    assert_same(got, _reference(api, op, arg, compat), LOOSE.get(op, RTOL))
    assert np.isnan(got[np.arange(T)[None, :] < STARTS[:, None]]).all()
    assert np.isnan(got[np.arange(T)[None, :] >= ENDS[:, None]]).all()


@pytest.mark.parametrize("short_max", [0, 10**6], ids=["fenwick", "short-window"])
@pytest.mark.parametrize("w", WINDOWS)
@pytest.mark.parametrize("op", ORDERED_OPS)
def test_ordered_kernels_agree_on_both_paths(op, w, short_max):
    """Med/Quantile/Rank/Mad have a short-window path and a Fenwick-tree path; force each."""
    out = np.full(X.shape, np.nan)
    code = K.ROLLING_OPS.index(op)
    _roll.rolling(code, X, out, STARTS, ENDS, w, 0.3, True, 0, short_max)
    assert_same(out, _reference("rolling", op, w, True), RTOL)


def _vector_panel():
    """(x, y, starts, ends): rows of every pattern above plus random spans, signed zeros, 0/1 data,
    flat stretches and nearly flat ones (qlib's absolute std test), shuffled so that four-row
    vectors mix lengths (rows are grouped longest first, the rest finished one by one)."""
    rng = np.random.default_rng(11)
    n, days = 43, 300
    x = 100 + np.cumsum(rng.normal(0, 1, (n, days)), axis=1)
    x[rng.random(x.shape) < 0.05] = np.nan
    x[3] = np.where(rng.random(days) < 0.5, 0.0, -0.0)  # signed zeros: the sums' signs must match
    x[4] = (rng.random(days) < 0.5).astype(float)  # coin flips: equal-value runs start and end often
    x[5, 100:140] = 2.5
    x[6, 200] = np.inf  # a row holding inf takes the scalar way
    x[7] = np.nan
    x[[9, 12], 50:120] = 3.0 + rng.normal(0, 1e-6, (2, 70))  # own std below qlib's 2e-5, not flat
    x[13, :80] = 3.0 + rng.normal(0, 1e-6, 80)  # the same from the start: expanding windows too
    y = 0.3 * np.nan_to_num(x) + rng.normal(0, 1, x.shape)
    y[rng.random(y.shape) < 0.05] = np.nan
    y[10, 150:200] = 4.0
    y[11, 20] = -np.inf
    starts = rng.integers(0, 120, n).astype(np.int64)
    ends = np.minimum(days, starts + rng.integers(0, 260, n)).astype(np.int64)
    starts[:4], ends[:4] = 0, days
    starts[8], ends[8] = 50, 50
    starts[9:14], ends[9:14] = 0, days  # with rows 0-3: two vectors of whole rows, no infinities
    pad = ((0, 0), (0, days - T))
    x = np.vstack([x, np.pad(X, pad, constant_values=np.nan)])
    y = np.vstack([y, np.pad(Y, pad, constant_values=np.nan)])
    starts = np.concatenate([starts, STARTS])
    ends = np.concatenate([ends, ENDS])
    order = rng.permutation(len(x))
    return np.ascontiguousarray(x[order]), np.ascontiguousarray(y[order]), starts[order], ends[order]


@pytest.mark.skipif(not _roll.AVX2, reason="this CPU has no AVX2: the four-row kernels are not used")
@pytest.mark.parametrize("compat", [True, False], ids=["qlib", "fixed"])
@pytest.mark.parametrize("w", WINDOWS + (7, 250))
@pytest.mark.parametrize(
    "ops",
    [
        "Sum",
        "Mean",
        "Var",
        "Std",
        "Corr",
        "Cov",
        "Slope-Rsquare-Resi",
        "Resi",
        "Rsquare-Slope",
        "Med",
        "Quantile",
        "Quantile-Quantile-Quantile",
        "Max",
        "IdxMax",
        "Max-IdxMax",
        "IdxMin-Min",
        "Min",
    ],
)
def test_four_row_vector_kernels_equal_the_scalar_ones_bit_for_bit(ops, w, compat):
    x, y, starts, ends = _vector_panel()
    ops = ops.split("-")
    results = []
    for simd in (False, True):
        outs = [np.full(x.shape, 7.0) for _ in ops]
        if ops[0] in K.PAIR_OPS:
            _roll.pair_rolling(K.PAIR_OPS.index(ops[0]), x, y, outs[0], starts, ends, w, compat, 1, simd=simd)
        else:
            qs = np.array([0.8, 0.2, 0.5][: len(ops)])  # used by Quantile only
            _roll.rolling_group(
                np.array([K.ROLLING_OPS.index(op) for op in ops], dtype=np.intc),
                x,
                outs,
                qs,
                starts,
                ends,
                w,
                compat,
                1,
                simd=simd,
            )
        results.append(outs)
    inside = (np.arange(x.shape[1]) >= starts[:, None]) & (np.arange(x.shape[1]) < ends[:, None])
    for op, scalar, vector in zip(ops, *results):
        assert np.array_equal(scalar.view(np.int64), vector.view(np.int64)), op
        assert (vector[~inside] == 7.0).all()  # only span cells are written (blanking is the caller's)
        spread = op not in ("Sum", "Mean")
        assert np.isfinite(vector[inside]).any() or (w == 1 and spread)  # one value has no spread
    if ops == ["Corr"] and compat and w in (5, 20):  # qlib's own-std mask fired in the vector kernel
        fixed = np.full(x.shape, 7.0)
        _roll.pair_rolling(K.PAIR_OPS.index("Corr"), x, y, fixed, starts, ends, w, False, 1, simd=True)
        assert (np.isnan(results[1][0]) & ~np.isnan(fixed)).any()


@pytest.mark.parametrize("w", [3, 20, 0])
def test_quantile_edges_are_min_median_max(w):
    for q, op in ((0.0, "Min"), (0.5, "Med"), (1.0, "Max")):
        assert_same(K.rolling("Quantile", X, w, STARTS, ENDS, param=q), _reference("rolling", op, w, True))


def test_windows_and_shifts_beyond_the_calendar():
    assert_same(K.rolling("Mean", X, 10**30, STARTS, ENDS), _reference("rolling", "Mean", 300, True))
    assert_same(K.pair_rolling("Cov", X, Y, 10**30, STARTS, ENDS), _reference("pair", "Cov", 300, True))
    assert np.isnan(K.shift(X, -(10**30), STARTS, ENDS)).all()
    assert np.isnan(K.shift(X, 10**30, STARTS, ENDS)).all()


# ---- closed-form spot checks (qlib-semantics.md) ------------------------------------------------


def one(values):
    x = np.asarray(values, dtype=np.float64)[None, :]
    return x, np.array([0]), np.array([x.shape[1]])


def test_rank_example_from_qlib():
    x, s, e = one([1, 1, 2, np.nan, 2])
    np.testing.assert_allclose(K.rolling("Rank", x, 3, s, e)[0], [1, 0.75, 1, np.nan, 0.75])


def test_partial_windows_at_listing_start():
    x = np.array([[np.nan, np.nan, 5.0, 7.0, 6.0]])
    s, e = np.array([2]), np.array([5])
    assert K.rolling("Mean", x, 20, s, e)[0, 2] == 5.0
    assert np.isnan(K.rolling("Std", x, 20, s, e)[0, 2])
    assert K.rolling("Rank", x, 20, s, e)[0, 2] == 1.0
    assert K.rolling("IdxMax", x, 20, s, e)[0, 2] == 1.0
    np.testing.assert_array_equal(K.rolling("IdxMax", x, 20, s, e)[0, 2:], [1, 2, 2])  # from the span start


def test_idxmax_nan_behaviour():
    x, s, e = one([1, np.nan, 3, 2, 0])
    # qlib: np.argmax over the raw window, so a NaN in the window wins
    np.testing.assert_array_equal(K.rolling("IdxMax", x, 3, s, e)[0], [1, 2, 2, 1, 1])
    np.testing.assert_array_equal(K.rolling("IdxMin", x, 3, s, e)[0], [1, 2, 2, 1, 3])
    np.testing.assert_array_equal(K.rolling("IdxMax", x, 3, s, e, compat=False)[0], [1, 1, 3, 2, 1])
    np.testing.assert_array_equal(K.rolling("IdxMin", x, 3, s, e, compat=False)[0], [1, 1, 1, 3, 3])
    x, s, e = one([np.nan, np.nan, 4])
    np.testing.assert_array_equal(K.rolling("IdxMax", x, 2, s, e, compat=False)[0], [np.nan, np.nan, 2])


def test_wma_scale():
    x, s, e = one([2.0, 2.0, 2.0, np.nan, 2.0])
    # qlib: weights (1..L)/sum, then nanmean divides by the valid count again
    want = [2, 2 * (1 + 2) / 3 / 2, 2 * (1 + 2 + 3) / 6 / 3, 2 * (1 + 2) / 6 / 2, 2 * (1 + 3) / 6 / 2]
    np.testing.assert_allclose(K.rolling("WMA", x, 3, s, e)[0], want)
    np.testing.assert_allclose(K.rolling("WMA", x, 3, s, e, compat=False)[0], [2, 2, 2, 2, 2])
    x, s, e = one([1.0, 2.0, 3.0])
    np.testing.assert_allclose(K.rolling("WMA", x, 3, s, e, compat=False)[0, 2], (1 + 4 + 9) / 6)


def test_ema_through_gaps():
    x, s, e = one([1.0, np.nan, np.nan, 3.0, np.nan])
    a = 0.5  # span 3
    want_3 = ((1 - a) ** 3 * 1 + 3) / ((1 - a) ** 3 + 1)  # decay counts the NaN rows
    np.testing.assert_allclose(K.ema(x, 3, s, e)[0], [1, 1, 1, want_3, want_3])
    x, s, e = one([np.nan, 2.0, 4.0])
    np.testing.assert_allclose(K.ema(x, 0.25, s, e)[0], [np.nan, 2, (0.75 * 2 + 4) / 1.75])


def test_ema_expanding_is_qlibs_exp_weighted_mean():
    x, s, e = one([np.nan, 2.0, 4.0])
    a2, a3 = 1 - 2 / 3, 1 - 2 / 4  # a = 1 - 2/(1+L) for L rows
    want = [np.nan, 2 / (1 + a2), (a3 * 2 + 4) / (1 + a3 + a3**2)]
    np.testing.assert_allclose(K.ema(x, 0, s, e)[0], want)


def test_regression_one_and_two_points():
    x, s, e = one([np.nan, 1.0, np.nan, 5.0, np.nan])
    slope = K.rolling("Slope", x, 4, s, e)[0]
    assert np.isnan(slope[:3]).all()  # no point, then one point: NaN
    assert slope[3] == pytest.approx(2.0)  # (5 - 1) / (3 - 1): x is the row position
    assert K.rolling("Rsquare", x, 4, s, e)[0, 3] == pytest.approx(1.0)
    assert K.rolling("Resi", x, 4, s, e)[0, 3] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(K.rolling("Resi", x, 4, s, e)[0, 4])  # today is NaN
    x, s, e = one([1.0, 2.0, 4.0])
    assert K.rolling("Slope", x, 3, s, e)[0, 2] == pytest.approx(1.5)
    assert K.rolling("Resi", x, 3, s, e)[0, 2] == pytest.approx(4 - (7 / 3 + 1.5))


def test_rsquare_threshold_is_absolute_in_qlib_and_relative_when_fixed():
    base = np.array([0.0, 1e-6, 3e-6, 2e-6, 5e-6])  # std ~ 2e-6 < 2e-5
    x, s, e = one(base)
    assert np.isnan(K.rolling("Rsquare", x, 5, s, e)[0, 4])
    assert 0 < K.rolling("Rsquare", x, 5, s, e, compat=False)[0, 4] <= 1
    x, s, e = one(1000.0 + base * 1e-4)  # std / mean ~ 2e-13: numerically flat
    assert np.isnan(K.rolling("Rsquare", x, 5, s, e, compat=False)[0, 4])


def test_delta_first_and_ref():
    x = np.array([[np.nan, 3.0, 5.0, np.nan, 10.0, 99.0]])
    s, e = np.array([1]), np.array([5])
    np.testing.assert_array_equal(K.rolling("Delta", x, 1, s, e)[0], [np.nan, np.nan, 2, np.nan, np.nan, np.nan])
    np.testing.assert_array_equal(K.rolling("Delta", x, 0, s, e)[0], [np.nan, 0, 2, np.nan, 7, np.nan])
    np.testing.assert_array_equal(K.rolling("First", x, 0, s, e)[0], [np.nan, 3, 3, 3, 3, np.nan])
    np.testing.assert_array_equal(K.shift(x, 2, s, e)[0], [np.nan, np.nan, np.nan, 3, 5, np.nan])
    np.testing.assert_array_equal(K.shift(x, -1, s, e)[0], [np.nan, 5, np.nan, 10, np.nan, np.nan])
    np.testing.assert_array_equal(K.shift(x, 0, s, e)[0], [np.nan, 3, 3, 3, 3, np.nan])


def test_corr_and_cov_closed_forms():
    x, s, e = one([1.0, 2.0, np.nan, 4.0, 5.0, 5.0, 5.0])
    y = 3 * x[0] + 1
    y[1] = np.nan
    y = y[None, :]
    corr = K.pair_rolling("Corr", x, y, 3, s, e)[0]
    assert np.isnan(corr[:3]).all()  # at most one paired row
    assert corr[4] == pytest.approx(1.0)
    assert np.isnan(corr[6])  # a flat window
    cov = K.pair_rolling("Cov", x, y, 0, s, e)[0]
    px = np.array([1.0, 4, 5, 5, 5])
    assert cov[6] == pytest.approx(np.cov(px, 3 * px + 1)[0, 1])  # expanding, paired rows only
    assert K.pair_rolling("Corr", x, y, 0, s, e)[0, 6] == pytest.approx(1.0)


def test_cross_section_closed_forms():
    x = np.array([[1.0, 5.0], [2.0, np.nan], [2.0, 5.0], [4.0, 6.0]])
    s, e = np.zeros(4, dtype=np.int64), np.array([2, 2, 2, 1])  # row 3 delisted on day 1
    np.testing.assert_allclose(K.cross_section("CSRank", x, s, e)[:, 0], [0.25, 0.625, 0.625, 1.0])
    np.testing.assert_allclose(K.cross_section("CSRank", x, s, e)[:, 1], [0.75, np.nan, 0.75, np.nan])
    np.testing.assert_allclose(K.cross_section("CSDemean", x, s, e)[:, 0], [-1.25, -0.25, -0.25, 1.75])
    z = K.cross_section("CSZScore", x, s, e)
    np.testing.assert_allclose(z[:, 0], (x[:, 0] - 2.25) / np.std(x[:, 0], ddof=1))
    assert np.isnan(z[:, 1]).all()  # all values equal: std 0
    g = np.array([[0.0, 1], [1, 1], [0, np.nan], [1, 1]])
    np.testing.assert_allclose(K.cross_section("CSNeutralize", x, s, e, groups=g)[:, 0], [-0.5, -1, 0.5, 1])
    w = K.cross_section("CSWinsorize", x, s, e, param=0.25)[:, 0]
    np.testing.assert_allclose(w, np.clip(x[:, 0], *np.quantile(x[:, 0], [0.25, 0.75])))


@pytest.mark.parametrize("n, days", [(1, 1), (7, 3), (300, 130), (65, 64)])
def test_pearson_moments_equal_the_numpy_twin_bit_for_bit(n, days):
    rng = np.random.default_rng(n * 1000 + days)
    x = rng.normal(100.0, 5.0, (n, days)).round(1)  # a price level: the two-pass case
    y = rng.standard_normal((n, days))
    both = rng.random((n, days)) < 0.8
    both[:, 0] = False  # a day without pairs: NaN means, zero sums
    x[~both & (rng.random((n, days)) < 0.5)] = np.nan  # values outside `both` are never read
    want = R.pearson_moments(x, y, both)
    for threads in (None, 1, 2):
        assert np.array_equal(K.pearson_moments(x, y, both, threads=threads), want, equal_nan=True)


@pytest.mark.parametrize("n, days", [(1, 1), (7, 3), (300, 130), (40, 64)])
def test_rank_within_is_csrank_of_the_kept_cells_bit_for_bit(n, days):
    """Ranks of a subset walked from days sorted once equal CSRank of that subset: ties (signed zeros
    among them), infinities, NaN cells, days with nothing or one cell kept; cells outside the subset
    may sit anywhere in the order."""
    rng = np.random.default_rng(n * 1000 + days)
    x = rng.integers(-4, 5, (n, days)) * rng.choice([0.25, 1.0], (n, days))  # many ties
    x[rng.random(x.shape) < 0.1] = -0.0
    x[rng.random(x.shape) < 0.05] = np.inf
    x[rng.random(x.shape) < 0.05] = -np.inf
    x[rng.random(x.shape) < 0.15] = np.nan
    keep = rng.random(x.shape) < 0.7
    keep[:, 0] = False
    keep[1:, -1] = False
    want = K.cross_section("CSRank", np.where(keep, x, np.nan), np.zeros(n, np.int64), np.full(n, days, np.int64))
    sorted_all = np.argsort(x.T, axis=1, kind="stable")
    shuffled_rest = np.argsort(np.where(keep, x, rng.uniform(-5, 5, x.shape)).T, axis=1)
    for order in (sorted_all, shuffled_rest):
        keys = np.take_along_axis(x.T, order, axis=1)
        np.testing.assert_allclose(R.rank_within(keys, order, keep), want, rtol=1e-12, atol=0)  # pandas agrees
        for threads in (None, 1, 2):
            assert np.array_equal(K.rank_within(keys, order, keep, threads=threads), want, equal_nan=True)


def test_interleave_stores_features_as_days_by_instruments_by_features():
    rng = np.random.default_rng(5)
    arrays = [rng.standard_normal((7, 11)).astype(np.float32) for _ in range(5)]
    arrays[2][3, 4] = np.nan
    for threads in (None, 1, 2):
        out = np.full((11, 7, 8), -1.0, dtype=np.float32)
        K.interleave(arrays, out, 2, threads=threads)
        np.testing.assert_array_equal(out[:, :, 2:7], np.stack(arrays, axis=-1).transpose(1, 0, 2))
        assert (out[:, :, [0, 1, 7]] == -1.0).all()  # the other features are untouched
    with pytest.raises(KernelArgumentError, match="do not fit"):
        K.interleave(arrays, np.empty((11, 7, 6), np.float32), 2)
    with pytest.raises(KernelArgumentError, match="shape"):
        K.interleave([np.ones((11, 7), np.float32)], np.empty((11, 7, 6), np.float32), 0)


# ---- parity with qlib's own operator code (needs RDQUANT_QLIB_PYTHON) ----------------------------

_QLIB_SCRIPT = """
import sys, warnings
import numpy as np, pandas as pd
warnings.filterwarnings("ignore")
from qlib.data import ops

class Given(ops.Expression):  # a feature whose series is given: qlib's ops run unchanged on it
    def __init__(self, s): self.s = s
    def load(self, *a, **k): return self.s
    def _load_internal(self, *a, **k): return self.s
    def __str__(self): return "given"
    def get_longest_back_rolling(self): return 0
    def get_extended_window_size(self): return 0, 0

d = np.load(sys.argv[1], allow_pickle=False)
x, y, starts, ends = d["x"], d["y"], d["starts"], d["ends"]
out = {}
for key in d["keys"]:
    op, arg = str(key).split("|")
    arg = float(arg) if "." in arg else int(arg)
    res = np.full(x.shape, np.nan)
    for i in range(x.shape[0]):
        s, e = starts[i], ends[i]
        if e <= s:
            continue
        a, b = Given(pd.Series(x[i, s:e])), Given(pd.Series(y[i, s:e]))
        o = (ops.Quantile(a, arg, 0.3) if op == "Quantile" else ops.Ref(a, 0) if op == "First"
             else getattr(ops, op)(a, b, arg) if op in ("Corr", "Cov") else getattr(ops, op)(a, arg))
        res[i, s:e] = np.asarray(o._load_internal("given", 0, 0), dtype=float)
    out[str(key)] = res
np.savez(sys.argv[2], **out)
"""


@pytest.mark.qlib
def test_parity_with_qlib_operators(tmp_path):
    """qlib 0.9.7's ops.py/_libs code, fed our pattern rows, gives our compat numbers.

    Known, deliberate differences: qlib's running-sum Slope/Rsquare (_libs/rolling.pyx) return
    +-inf instead of NaN on some one-point windows, lose up to ~1e-5 relative precision in
    Rsquare on price-level series (we match the exact value), and turn NaN for good after an inf
    input (we treat inf as missing, like every pandas window function); Skew/Kurt windows below
    3/4 raise in qlib (we return NaN, like pandas); Corr(x, y, 0) raises in qlib.
    """
    import os
    import subprocess

    qlib_python = os.environ.get("RDQUANT_QLIB_PYTHON")
    if not qlib_python:
        pytest.skip("set RDQUANT_QLIB_PYTHON to a python with pyqlib")
    keys = [
        f"{op}|{w}"
        for op in K.ROLLING_OPS
        for w in WINDOWS
        if not ((op == "Skew" and 0 < w < 3) or (op == "Kurt" and 0 < w < 4))
    ]
    keys += [f"{op}|{w}" for op in K.PAIR_OPS for w in WINDOWS if not (op == "Corr" and w == 0)]
    keys += [f"EMA|{spec}" for spec in (1, 2, 5, 20, 0.3, 0)] + [f"Ref|{p}" for p in (-3, -1, 1, 5)]
    np.savez(tmp_path / "in.npz", x=X, y=Y, starts=STARTS, ends=ENDS, keys=np.array(keys))
    subprocess.run(
        [qlib_python, "-c", _QLIB_SCRIPT, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
        check=True,
        capture_output=True,
    )
    theirs = np.load(tmp_path / "out.npz")
    for key in keys:
        op, arg = key.split("|")
        arg = float(arg) if "." in arg else int(arg)
        if op in K.PAIR_OPS:
            ours = K.pair_rolling(op, X, Y, arg, STARTS, ENDS)
        elif op == "EMA":
            ours = K.ema(X, arg, STARTS, ENDS)
        elif op == "Ref":
            ours = K.shift(X, arg, STARTS, ENDS)
        else:
            ours = K.rolling(op, X, arg, STARTS, ENDS, param=0.3 if op == "Quantile" else None)
        q = theirs[key]
        if op in ("Slope", "Rsquare", "Resi"):
            # qlib's own Cython: +-inf instead of NaN on some one-point windows, and an inf input
            # poisons its running sums (NaN for the rest of the series); pandas-based ops, and we,
            # treat inf as missing
            q = np.where(np.isinf(q), np.nan, q)
            q[ROWS.index("infinities")] = ours[ROWS.index("infinities")]
        # pandas' corr uses raw moments: ~1e-8 off on ill-conditioned windows (ours: two-pass exact)
        assert_same(ours, q, {"Rsquare": 1e-4, "Corr": 1e-7, **LOOSE}.get(op, RTOL))


# ---- numerical stability --------------------------------------------------------------------------


def _exact_window_stats(x, y, ws, t):
    """Two-pass long-double statistics of the window rows [ws, t] (both series valid)."""
    a = x[ws : t + 1].astype(np.longdouble)
    b = y[ws : t + 1].astype(np.longdouble)
    n = len(a)
    da, db = a - a.mean(), b - b.mean()
    m2, m3, m4 = (da**2).mean(), (da**3).mean(), (da**4).mean()
    pos = np.arange(n, dtype=np.longdouble)
    dp = pos - pos.mean()
    return {
        "Var": da.dot(da) / (n - 1),
        "Std": np.sqrt(da.dot(da) / (n - 1)),
        "Skew": np.sqrt(n * (n - 1.0)) / (n - 2) * m3 / m2**1.5,
        "Kurt": ((n * n - 1.0) * m4 / m2**2 - 3 * (n - 1.0) ** 2) / ((n - 2.0) * (n - 3.0)),
        "Slope": dp.dot(da) / dp.dot(dp),
        "Rsquare": dp.dot(da) ** 2 / (dp.dot(dp) * da.dot(da)),
        "Corr": da.dot(db) / np.sqrt(da.dot(da) * db.dot(db)),
        "Cov": da.dot(db) / (n - 1),
    }


@pytest.mark.parametrize("window", [1000, 0])
def test_moments_stay_accurate_on_large_prices(window):
    """Prices ~1e6 with ~1e-2 noise: no catastrophic cancellation, long windows and expanding."""
    rng = np.random.default_rng(7)
    n = 3000
    x = 1e6 + np.cumsum(rng.normal(0, 1e-2, n)) + rng.normal(0, 1e-2, n)
    y = 2e6 - 0.5 * x + rng.normal(0, 1e-2, n)
    xs, s, e = one(x)
    singles = ("Var", "Std", "Skew", "Kurt", "Slope", "Rsquare")
    got = {op: K.rolling(op, xs, window, s, e, compat=False)[0] for op in singles}
    for op in ("Corr", "Cov"):
        got[op] = K.pair_rolling(op, xs, y[None, :], window, s, e, compat=False)[0]
    for t in range(40, n, 97):
        ws = 0 if window == 0 else max(0, t - window + 1)
        want = _exact_window_stats(x, y, ws, t)
        for op, value in got.items():
            assert value[t] == pytest.approx(float(want[op]), rel=1e-6), (op, t)


# ---- argument validation ------------------------------------------------------------------------


GROUPS_OF_ONE_PASS = [
    (("Slope", "Rsquare", "Resi"), None),
    (("Resi", "Slope"), None),
    (("Max", "IdxMax"), None),
    (("IdxMin", "Min"), None),
    (("Quantile", "Quantile", "Quantile"), (0.8, 0.2, 0.3)),
]


@pytest.mark.parametrize("short_max", [0, 10**6], ids=["fenwick", "short-window"])
@pytest.mark.parametrize("compat", [True, False], ids=["qlib", "fixed"])
@pytest.mark.parametrize("w", WINDOWS)
@pytest.mark.parametrize("ops, params", GROUPS_OF_ONE_PASS, ids=lambda v: "-".join(map(str, v)) if v else "")
def test_rolling_group_gives_each_operator_its_own_result(ops, params, w, compat, short_max):
    """One shared pass (QTLU/QTLD, BETA/RSQR/RESI, MAX/IMAX in Alpha158) = each operator alone, bit
    for bit, on every NaN/inf/span pattern; and each result matches the pandas reference."""
    params = params or (None,) * len(ops)
    outs = [np.full(X.shape, 7.0) for _ in ops]  # junk outside the spans must be blanked
    _roll.rolling_group(
        np.array([K.ROLLING_OPS.index(op) for op in ops], dtype=np.intc),
        X,
        [K._output(X.shape, STARTS, ENDS, o, X) for o in outs],
        np.array([np.nan if p is None else p for p in params]),
        STARTS,
        ENDS,
        w if w else 0,
        compat,
        1,
        short_max,
    )
    public = K.rolling_group(ops, X, w, STARTS, ENDS, params=params, compat=compat)
    for op, param, got, got_public in zip(ops, params, outs, public):
        alone = np.empty(X.shape)
        _roll.rolling(
            K.ROLLING_OPS.index(op),
            X,
            K._output(X.shape, STARTS, ENDS, alone, X),
            STARTS,
            ENDS,
            w,
            np.nan if param is None else param,
            compat,
            1,
            short_max,
        )
        assert np.array_equal(got.view(np.int64), alone.view(np.int64)), op
        public_alone = K.rolling(op, X, w, STARTS, ENDS, param=param, compat=compat)
        assert np.array_equal(got_public.view(np.int64), public_alone.view(np.int64)), op
        assert_same(got, R.rolling(op, X, w, STARTS, ENDS, param=param, compat=compat))


def test_compiled_group_entry_refuses_what_its_fixed_table_cannot_hold():
    """The Cython entry checks the few things that would make it write out of bounds, even though
    `kernels.rolling_group` validates everything before it."""
    s, e = np.zeros(len(X), np.int64), np.full(len(X), T, np.int64)
    mx = K.ROLLING_OPS.index("Max")
    with pytest.raises(ValueError, match="1 to 8 ops"):
        _roll.rolling_group(
            np.full(9, mx, dtype=np.intc), X, [np.empty_like(X) for _ in range(9)], np.zeros(9), s, e, 3, True, 1
        )
    with pytest.raises(ValueError, match="one out and one param"):
        _roll.rolling_group(np.full(2, mx, dtype=np.intc), X, [np.empty_like(X)], np.zeros(2), s, e, 3, True, 1)
    with pytest.raises(ValueError, match=r"out 0 has shape \(2, 260\)"):
        _roll.rolling_group(np.full(1, mx, dtype=np.intc), X, [np.empty((2, T))], np.zeros(1), s, e, 3, True, 1)


X3, S3, E3 = one([1.0, 2.0, 3.0])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: K.rolling("Mean", X3, -3, S3, E3), "window (-3) must be >= 0"),
        (lambda: K.rolling("Mean", X3, 2.5, S3, E3), "window must be an int, got 2.5"),
        (lambda: K.rolling("Median", X3, 3, S3, E3), "unknown rolling op 'Median'; expected one of: Sum, Mean"),
        (lambda: K.rolling("Quantile", X3, 3, S3, E3), "Quantile needs param=q, a quantile in [0, 1]"),
        (lambda: K.rolling("Quantile", X3, 3, S3, E3, param=1.5), "param (q=1.5) must be in [0, 1] for Quantile"),
        (lambda: K.rolling("Mean", X3, 3, S3, E3, param=0.5), "param is only used by Quantile; got param=0.5 for Mean"),
        (lambda: K.rolling("Mean", X3[0], 3, S3, E3), "x must be a 2-D (instruments, days) array, got shape (3,)"),
        (
            lambda: K.rolling("Mean", X3, 3, np.array([0, 0]), E3),
            "starts must have shape (1,), one entry per instrument",
        ),
        (
            lambda: K.rolling("Mean", X3, 3, S3, np.array([4])),
            "spans must satisfy 0 <= start <= end <= n_days (3); instrument 0 has [0, 4)",
        ),
        (lambda: K.rolling("Mean", X3, 3, np.array([0.0]), E3), "starts must be an integer array"),
        (
            lambda: K.rolling("Mean", X3, 3, S3, E3, threads=0),
            "threads (0) must be >= 1, or None for the OpenMP default",
        ),
        (lambda: K.rolling("Mean", X3, 3, S3, E3, compat=1), "compat must be True or False, got 1"),
        (lambda: K.pair_rolling("Beta", X3, X3, 3, S3, E3), "unknown pair_rolling op 'Beta'"),
        (
            lambda: K.pair_rolling("Corr", X3, np.ones((2, 3)), 3, S3, E3),
            "x and y must have the same shape, got (1, 3) and (2, 3)",
        ),
        (lambda: K.ema(X3, -1, S3, E3), "spec (-1) must be >= 0: a span >= 1, an alpha in (0, 1), or 0"),
        (lambda: K.ema(X3, float("nan"), S3, E3), "spec must not be NaN"),
        (lambda: K.shift(X3, 1.0, S3, E3), "periods must be an int, got 1.0"),
        (lambda: K.cross_section("CSNeutralize", X3, S3, E3), "CSNeutralize needs groups="),
        (lambda: K.cross_section("CSRank", X3, S3, E3, groups=X3), "groups is only used by CSNeutralize, not CSRank"),
        (
            lambda: K.cross_section("CSWinsorize", X3, S3, E3, param=0.5),
            "param (q=0.5) must be in [0, 0.5) for CSWinsorize",
        ),
        (lambda: K.cross_section("CSRank", X3, S3, E3, param=0.1), "param is only used by CSWinsorize"),
        (lambda: K.rolling_group(["Max", "Min"], X3, 3, S3, E3), "operators ['Max', 'Min'] do not share one pass"),
        (
            lambda: K.rank_within(X3.T, np.array([[0], [1], [0]]), X3 > 0),
            "order must hold instrument positions in [0, 1), got 0..1",
        ),
        (
            lambda: K.rank_within(X3.T, np.zeros((1, 3), int), X3 > 0),
            "order must be an integer array of the keys' shape (3, 1), got int64 (1, 3)",
        ),
        (lambda: K.rank_within(X3.T, np.zeros((3, 1), int), X3), "keep must be a bool (instruments, days) = (1, 3)"),
        (lambda: K.rank_within(X3.T > 0, np.zeros((3, 1), int), X3 > 0), "keys must be a float (days, instruments)"),
        (lambda: K.rolling_group(["Mean", "Sum"], X3, 3, S3, E3), "do not share one pass"),
        (lambda: K.rolling_group(["Slope", "Slope"], X3, 3, S3, E3), "an operator appears twice"),
        (lambda: K.rolling_group([], X3, 3, S3, E3), "rolling_group takes 1 to 8 operators, got 0"),
        (lambda: K.rolling_group(["Quantile"] * 2, X3, 3, S3, E3, params=[0.5]), "need one param and one out"),
        (lambda: K.rolling_group(["Quantile"] * 2, X3, 3, S3, E3, params=[0.5, 2.0]), "param (q=2.0) must be in"),
        (
            lambda: K.rolling_group(["Max", "IdxMax"], X3, 3, S3, E3, outs=[X3.copy()] * 2),
            "out must not overlap an input",
        ),
    ],
)
def test_argument_errors(call, message):
    with pytest.raises(KernelArgumentError) as info:
        call()
    assert message in str(info.value)


def test_inputs_are_converted_once():
    ints = np.arange(12).reshape(2, 6)[:, ::2]  # int, non-contiguous
    s, e = [0, 1], [3, 3]
    got = K.rolling("Sum", ints, 2, s, e)
    np.testing.assert_array_equal(got, [[0, 2, 6], [np.nan, 8, 18]])
    assert K.rolling("Mean", np.zeros((0, 5)), 3, np.zeros(0, int), np.zeros(0, int)).shape == (0, 5)


# ---- threads --------------------------------------------------------------------------------------


def test_thread_count_does_not_change_results():
    rng = np.random.default_rng(3)
    x = 20 + np.cumsum(rng.normal(size=(64, 400)), axis=1)
    x[rng.random(x.shape) < 0.05] = np.nan
    y = rng.normal(size=x.shape)
    s = rng.integers(0, 100, 64)
    e = 400 - rng.integers(0, 100, 64)
    g = rng.integers(0, 4, x.shape).astype(float)
    for op in K.ROLLING_OPS:
        p = 0.3 if op == "Quantile" else None
        for w in (5, 0):
            a = K.rolling(op, x, w, s, e, param=p, threads=1)
            assert np.array_equal(a, K.rolling(op, x, w, s, e, param=p), equal_nan=True), op
            assert np.array_equal(a, K.rolling(op, x, w, s, e, param=p, threads=2), equal_nan=True), op
    for op in K.PAIR_OPS:
        one = K.pair_rolling(op, x, y, 10, s, e, threads=1)
        assert np.array_equal(one, K.pair_rolling(op, x, y, 10, s, e), equal_nan=True)
    assert np.array_equal(K.ema(x, 0, s, e, threads=1), K.ema(x, 0, s, e), equal_nan=True)
    for op in K.CROSS_SECTION_OPS:
        kw = {"groups": g} if op == "CSNeutralize" else {}
        one = K.cross_section(op, x, s, e, threads=1, **kw)
        assert np.array_equal(one, K.cross_section(op, x, s, e, **kw), equal_nan=True)


# ---- timings (slow: `pytest -m slow -s tests/quantcore/test_kernels.py -k timings`) --------------


@pytest.mark.slow
def test_kernel_timings_on_300x2520():
    """Best-of-N wall time per kernel on a 300 x 2520 panel, default threads and one thread.

    The bounds are loose (shared CI machines); the printed table is the measurement.
    """
    import time

    rng = np.random.default_rng(0)
    n, t = 300, 2520
    x = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, (n, t)), axis=1))
    x[rng.random((n, t)) < 0.02] = np.nan
    y = rng.lognormal(10, 1, (n, t))
    s = rng.integers(0, 500, n)
    e = t - rng.integers(0, 200, n)
    g = rng.integers(0, 30, (n, t)).astype(float)

    def best(f, reps):
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return min(times) * 1e3

    rows = []
    for op in K.ROLLING_OPS:
        p = 0.25 if op == "Quantile" else None
        for w in (20, 60, 0):
            reps = 3 if (w == 0 and op in ORDERED_OPS) else 15
            times = [best(lambda: K.rolling(op, x, w, s, e, param=p, threads=th), reps) for th in (None, 1)]
            rows.append((op, w, *times))
    for op in K.PAIR_OPS:
        for w in (20, 60, 0):
            rows.append((op, w, *(best(lambda: K.pair_rolling(op, x, y, w, s, e, threads=th), 15) for th in (None, 1))))
    for spec in (20, 0.1, 0):
        times = [best(lambda: K.ema(x, spec, s, e, threads=th), 3 if spec == 0 else 15) for th in (None, 1)]
        rows.append((f"EMA({spec})", "", *times))
    rows.append(("Ref(5)", "", *(best(lambda: K.shift(x, 5, s, e, threads=th), 15) for th in (None, 1))))
    for op in K.CROSS_SECTION_OPS:
        kw = {"groups": g} if op == "CSNeutralize" else {}
        rows.append((op, "", *(best(lambda: K.cross_section(op, x, s, e, threads=th, **kw), 7) for th in (None, 1))))
    head = f"{'op':14s}{'window':>7s}{'default ms':>12s}{'1 thread ms':>13s}"
    print(f"\n{head}   ({_roll.openmp_threads()} OpenMP threads)")
    for op, w, ms_default, ms_one in rows:
        print(f"{op:14s}{w!s:>7s}{ms_default:12.2f}{ms_one:13.2f}")
    # the pandas twin runs qlib's per-instrument pandas calls: the speed-up the kernels buy
    twin = {
        "Mean": lambda: R.rolling("Mean", x, 20, s, e),
        "Std": lambda: R.rolling("Std", x, 20, s, e),
        "Max": lambda: R.rolling("Max", x, 20, s, e),
        "Rank": lambda: R.rolling("Rank", x, 20, s, e),
        "Quantile": lambda: R.rolling("Quantile", x, 20, s, e, param=0.25),
        "IdxMax": lambda: R.rolling("IdxMax", x, 20, s, e),
        "Corr": lambda: R.pandas_pair_rolling("Corr", x, y, 20, s, e),
    }
    ours = {(op, w): ms for op, w, ms, _ in rows}
    print(f"\n{'op (w=20)':14s}{'pandas twin ms':>16s}{'kernel ms':>11s}{'speed-up':>10s}")
    for op, f in twin.items():
        ms_twin = best(f, 1)
        print(f"{op:14s}{ms_twin:16.1f}{ours[(op, 20)]:11.2f}{ms_twin / ours[(op, 20)]:9.0f}x")
    for op, w, ms_default, ms_one in rows:
        limit = 3000 if op == "EMA(0)" else (400 if (op in ORDERED_OPS or op.startswith("CS")) else 100)
        assert min(ms_default, ms_one) < limit, (op, w)


@pytest.mark.parametrize("op, param", [("CSRank", None), ("CSZScore", None), ("CSDemean", None), ("CSWinsorize", 0.1)])
def test_cross_section_rows_runs_each_column_of_a_dataset_block(op, param):
    """The dataset processors' layout (days, instruments, columns) float32 with a row mask: equal to the
    pandas twin per column, and bit for bit to `cross_section` on the column cast to float64."""
    rng = np.random.default_rng(11)
    days, n, k = 37, 53, 6
    values = rng.standard_normal((days, n, k)).round(1).astype(np.float32)  # rounded: many ties
    values[rng.random(values.shape) < 0.1] = np.nan
    values[:, :, 5] = 2.5  # a constant column: z-score undefined
    rows = rng.random((days, n)) < 0.9
    rows[4] = False  # a day with no rows
    out = K.cross_section_rows(op, values, rows, param=param)
    assert out.dtype == np.float32 and out.shape == values.shape
    s, e = np.zeros(n, np.int64), np.full(n, days, np.int64)
    for j in range(k):
        col = np.where(rows, values[:, :, j], np.nan).T.astype(np.float64)
        want = R.cross_section(op, col, s, e, param=param).T
        np.testing.assert_allclose(out[:, :, j], want, rtol=1e-6, atol=1e-7, equal_nan=True)
        same = K.cross_section(op, col, s, e, param=param).T.astype(np.float32)
        assert np.array_equal(out[:, :, j], same, equal_nan=True)
    for threads in (1, 2):
        assert np.array_equal(K.cross_section_rows(op, values, rows, param=param, threads=threads), out, equal_nan=True)
    with pytest.raises(KernelArgumentError, match="float32"):
        K.cross_section_rows(op, values.astype(np.float64), rows)
    with pytest.raises(KernelArgumentError, match="rows must be"):
        K.cross_section_rows(op, values, rows[:-1])


def test_cross_section_rows_rank_orders_signed_zeros_infinities_and_extremes_like_float64():
    """CSRank's float32 path sorts 32-bit keys: -0.0 and +0.0 tie, infinities and subnormals keep their
    places, and wide days (more than 256 values: several radix digits) rank as in float64."""
    rng = np.random.default_rng(5)
    days, n = 9, 700
    values = (rng.standard_normal((days, n, 2)) * 10.0 ** rng.integers(-30, 30, (days, n, 2))).astype(np.float32)
    special = np.array([-0.0, 0.0, np.inf, -np.inf, 1e-45, -1e-45, 3.4e38, -3.4e38, np.nan, 0.0], np.float32)
    values[:, : special.size, 0] = special
    values[3, :, 1] = values[3, 0, 1]  # one value all day: every key shares every digit
    rows = np.ones((days, n), bool)
    out = K.cross_section_rows("CSRank", values, rows)
    s, e = np.zeros(n, np.int64), np.full(n, days, np.int64)
    for j in range(2):
        col = values[:, :, j].T.astype(np.float64)
        assert np.array_equal(out[:, :, j], K.cross_section("CSRank", col, s, e).T.astype(np.float32), equal_nan=True)
        want = R.cross_section("CSRank", col, s, e).T
        np.testing.assert_allclose(out[:, :, j], want, rtol=1e-6, equal_nan=True)
    assert out[0, 0, 0] == out[0, 1, 0]  # the signed zeros tie
    assert np.isnan(out[:, 8, 0]).all() and (out[3, :, 1] == out[3, 0, 1]).all()
