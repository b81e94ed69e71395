"""Significance building blocks against closed forms and independent references (scipy, statsmodels,
hand computation from the definitions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import signal, stats

from quantcore.evaluate.ic import daily_ranks
from quantcore.evaluate.significance import (
    FdrMethod,
    benjamini_hochberg,
    benjamini_yekutieli,
    label_horizon,
    lookahead_cut_points,
    newey_west_lags,
    newey_west_t,
    one_sided_p,
    principal_components,
    reject,
    residual_ic,
    residual_ics,
    two_sided_p,
)

# ---- Newey-West -----------------------------------------------------------------------------------


def _ar1(n: int, phi: float, mu: float, seed: int) -> np.ndarray:
    """x_t = mu + e_t, e_t = phi e_{t-1} + u_t, u ~ N(0, 1), started from the stationary law."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(n)
    e0 = rng.standard_normal() / math.sqrt(1 - phi**2)
    e, _ = signal.lfilter([1.0], [1.0, -phi], u, zi=[phi * e0])
    return mu + e


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_hac_se_matches_ar1_long_run_variance(seed):
    n, phi = 200_000, 0.5
    x = _ar1(n, phi, mu=0.1, seed=seed)
    hac = newey_west_t(x, lags=100)
    closed_form = math.sqrt(1.0 / (1 - phi) ** 2 / n)  # LRV = sigma_u^2 / (1 - phi)^2
    assert hac.n == n and hac.lags == 100
    assert hac.se == pytest.approx(closed_form, rel=0.05)
    assert hac.t == pytest.approx(hac.mean / hac.se)
    # the iid se understates by sqrt((1 - phi) / (1 + phi)) = 1/sqrt(3) for phi = 0.5
    iid = newey_west_t(x, lags=0)
    assert iid.se / hac.se == pytest.approx(math.sqrt((1 - phi) / (1 + phi)), rel=0.05)


def test_hac_with_no_lags_is_the_iid_se_and_drops_nan():
    rng = np.random.default_rng(7)
    x = rng.standard_normal(500) + 0.2
    with_nan = np.concatenate([x[:100], [np.nan, np.nan], x[100:], [np.nan]])
    hac = newey_west_t(with_nan, lags=0)
    assert hac.n == 500
    assert hac.mean == pytest.approx(np.mean(x), rel=1e-12)
    assert hac.se == pytest.approx(np.std(x) / math.sqrt(500), rel=1e-12)


def test_hac_one_lag_by_hand():
    x = np.array([1.0, 3.0, 2.0, 5.0, 4.0])
    e = x - 3.0
    g0, g1 = np.sum(e * e) / 5, np.sum(e[1:] * e[:-1]) / 5
    assert newey_west_t(x, lags=1).se == pytest.approx(math.sqrt((g0 + 2 * 0.5 * g1) / 5), rel=1e-12)


def test_hac_default_lags_and_degenerate_inputs():
    assert newey_west_lags(100) == 4
    assert newey_west_lags(1000) == math.floor(4 * 10 ** (2 / 9))  # 6
    assert newey_west_t(np.arange(1000.0)).lags == 6
    assert newey_west_t(np.arange(10.0), lags=50).lags == 9  # capped at n - 1
    empty = newey_west_t(np.array([np.nan, np.nan]))
    assert empty.n == 0 and math.isnan(empty.mean) and math.isnan(empty.t)
    flat = newey_west_t(np.full(30, 0.5))
    assert flat.se == 0.0 and math.isnan(flat.t)
    with pytest.raises(ValueError, match="lags"):
        newey_west_t(np.ones(5), lags=-1)


def test_normal_p_values():
    z975 = 1.959963984540054  # the 97.5% normal quantile
    assert two_sided_p(z975) == pytest.approx(0.05, rel=1e-12)
    assert two_sided_p(-z975) == pytest.approx(0.05, rel=1e-12)
    assert two_sided_p(0.0) == 1.0
    assert one_sided_p(z975) == pytest.approx(0.025, rel=1e-12)
    assert one_sided_p(-z975) == pytest.approx(0.975, rel=1e-12)
    for t in (0.3, 1.0, 2.5, 4.0):
        assert two_sided_p(t) == pytest.approx(2 * stats.norm.sf(t), rel=1e-10)
    assert math.isnan(two_sided_p(math.nan)) and math.isnan(one_sided_p(math.nan))


# ---- false discovery rate ------------------------------------------------------------------------


def _bh_by_definition(p: np.ndarray, c: float = 1.0) -> np.ndarray:
    """q_i = min over p_j >= p_i of min(1, c m p_j / r_j), r_j = #{p <= p_j}, NaN not counted."""
    ok = ~np.isnan(p)
    m = ok.sum()
    q = np.full(p.shape, np.nan)
    for i in np.flatnonzero(ok):
        q[i] = min(min(1.0, c * m * pj / np.sum(p[ok] <= pj)) for pj in p[ok] if pj >= p[i])
    return q


def test_bh_by_hand():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4p/k = 0.02, 0.02, 0.04, 0.04, already monotone
    np.testing.assert_allclose(benjamini_hochberg(p), [0.02, 0.04, 0.04, 0.02], rtol=1e-12)
    np.testing.assert_allclose(benjamini_hochberg(p), _bh_by_definition(p), rtol=1e-12)
    c4 = 1 + 1 / 2 + 1 / 3 + 1 / 4
    np.testing.assert_allclose(benjamini_yekutieli(p), np.array([0.02, 0.04, 0.04, 0.02]) * c4, rtol=1e-12)


def test_bh_monotone_capped_ties_and_nan():
    rng = np.random.default_rng(3)
    p = np.concatenate([rng.uniform(size=40) ** 3, [0.2, 0.2, 0.9, 1.0, np.nan, 0.0]])
    q = benjamini_hochberg(p)
    np.testing.assert_allclose(q, _bh_by_definition(p), rtol=1e-12)
    np.testing.assert_allclose(benjamini_yekutieli(p), _bh_by_definition(p, c=np.sum(1 / np.arange(1, 46))), rtol=1e-12)
    assert np.isnan(q[-2]) and q[-1] == 0.0
    ok = ~np.isnan(p)
    order = np.argsort(p[ok])
    assert np.all(np.diff(q[ok][order]) >= 0) and np.nanmax(q) <= 1.0
    # the NaN is not a hypothesis: dropping it changes nothing
    np.testing.assert_allclose(benjamini_hochberg(p[ok]), q[ok], rtol=1e-12)
    assert np.isnan(benjamini_hochberg([np.nan, np.nan])).all()
    with pytest.raises(ValueError, match="p-values"):
        benjamini_hochberg([0.1, 1.5])


def test_reject_uses_the_adjusted_values():
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan])
    # BH q = 0.02, 0.04, 0.04, 0.02; BY q = those * 25/12 = 0.0417, 0.0833, 0.0833, 0.0417
    assert reject(p, 0.03, FdrMethod.BH).tolist() == [True, False, False, True, False]
    assert reject(p, 0.05, "bh").tolist() == [True, True, True, True, False]
    assert reject(p, 0.05, FdrMethod.BY).tolist() == [True, False, False, True, False]
    with pytest.raises(ValueError, match="false discovery rate"):
        reject(p, 0.0)


def test_fdr_against_scipy():
    p = np.random.default_rng(12).uniform(size=300) ** 3
    np.testing.assert_allclose(benjamini_hochberg(p), stats.false_discovery_control(p, method="bh"), rtol=1e-12)
    np.testing.assert_allclose(benjamini_yekutieli(p), stats.false_discovery_control(p, method="by"), rtol=1e-12)


def test_fdr_against_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(11).uniform(size=200) ** 4
    for ours, theirs in ((benjamini_hochberg, "fdr_bh"), (benjamini_yekutieli, "fdr_by")):
        rej, q, _, _ = multitest.multipletests(p, alpha=0.1, method=theirs)
        np.testing.assert_allclose(ours(p), q, rtol=1e-12)
        assert (reject(p, 0.1, "bh" if theirs == "fdr_bh" else "by") == rej).all()


# ---- residual IC ---------------------------------------------------------------------------------


def _spearman_days(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.array([stats.spearmanr(a[:, d], b[:, d])[0] for d in range(a.shape[1])])


def test_residual_ic_of_a_mix_of_controls_is_zero():
    rng = np.random.default_rng(5)
    n, t = 150, 30
    controls = rng.standard_normal((2, n, t))
    label = controls[0] + rng.standard_normal((n, t))  # the raw factor does predict the label
    factor = 0.7 * controls[0] - 1.3 * controls[1] + 2.0
    out = residual_ic(factor, label, controls)
    assert out.spanned_days == t and out.skipped_days == 0
    assert abs(out.mean) < 1e-10
    assert np.all(out.daily == 0.0)
    label[:, -2:] = np.nan  # no label on the last days (a forward label at the calendar's end)
    tail = residual_ic(factor, label, controls)
    assert tail.spanned_days == t - 2 and np.isnan(tail.daily[-2:]).all() and tail.hac.n == t - 2


def test_residual_ic_keeps_the_independent_signal():
    rng = np.random.default_rng(6)
    n, t = 400, 40
    controls = rng.standard_normal((3, n, t))
    sig = rng.standard_normal((n, t))
    label = sig + 1.5 * rng.standard_normal((n, t))
    factor = 3.0 * controls[0] + sig  # the control swamps the signal in the raw factor
    out = residual_ic(factor, label, controls)
    signal_ic = np.mean(_spearman_days(sig, label))
    raw_ic = np.mean(_spearman_days(factor, label))
    assert signal_ic > 0.3 and raw_ic < 0.5 * signal_ic  # the test has teeth
    assert out.mean == pytest.approx(signal_ic, abs=0.02)
    assert out.t > 10 and out.hac.n == t


def test_residual_ic_skips_thin_days_and_selects_days():
    rng = np.random.default_rng(8)
    n, t = 60, 12
    controls = rng.standard_normal((2, n, t))
    factor = rng.standard_normal((n, t))
    label = factor + rng.standard_normal((n, t))
    factor[19:, 3] = np.nan  # 19 finite instruments < max(2 + 5, 20)
    controls[1, 25:, 5] = np.nan  # 25 where all are finite: kept
    out = residual_ic(factor, label, controls)
    assert out.skipped_days == 1 and np.isnan(out.daily[3]) and np.isfinite(out.daily[5])
    part = residual_ic(factor, label, controls, days=slice(4, 9))
    np.testing.assert_allclose(part.daily, out.daily[4:9], rtol=1e-12)
    with pytest.raises(ValueError, match="controls"):
        residual_ic(factor, label, controls[:, :, :5])


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_residual_ics_equal_residual_ic_per_factor(seed):
    """The batched screen path (one fit for factors finite wherever the controls are, the rest alone)
    gives each factor what `residual_ic` gives it: thin days, holes, spanned and constant factors."""
    rng = np.random.default_rng(seed)
    n, t = 90, 25
    controls = rng.standard_normal((3, n, t))
    controls[2, :7, 4] = np.nan  # rows no factor is fitted on that day
    label = rng.standard_normal((n, t))
    factors = [rng.standard_normal((n, t)) + k * controls[0] for k in range(4)]
    factors[1][rng.random((n, t)) < 0.05] = np.nan  # its own holes: fitted alone on most days
    factors[2][30:, 6] = np.nan  # a thin day: 30 rows, fewer where a control is NaN too
    factors.append(0.5 * controls[1] - controls[0] + 1.0)  # spanned every day
    factors.append(np.ones((n, t)))  # constant: no cross-section
    label[:, -1] = np.nan
    batched = residual_ics(factors, label, controls, days=slice(1, t))
    for f, got in zip(factors, batched):
        one = residual_ic(f, label, controls, days=slice(1, t))
        np.testing.assert_allclose(got.daily, one.daily, rtol=1e-9, atol=1e-12)
        assert (got.skipped_days, got.spanned_days) == (one.skipped_days, one.spanned_days)
    assert batched[4].spanned_days == t - 2 and np.isnan(batched[5].daily).all()
    assert residual_ics([], label, controls) == []


@pytest.mark.parametrize("seed", [21, 22])
def test_residual_ics_fit_each_factor_on_its_own_controls(seed):
    """`uses` gives each factor its own subset of the controls (a screen leaves out the library factors
    a candidate repeats): the same as fitting it on that subset alone, including where a control the
    subset leaves out is missing; a ranked label (`daily_ranks`) gives the same ICs as the raw one."""
    rng = np.random.default_rng(seed)
    n, t = 80, 40
    controls = rng.standard_normal((4, n, t))
    controls[3, :15, 5:9] = np.nan  # left out by some factors: their rows there are wider
    controls[1, :, :2] = np.nan  # a warm-up: thin days for the sets that use it
    label = rng.standard_normal((n, t))
    factors = [rng.standard_normal((n, t)) + 0.5 * controls[k % 4] for k in range(7)]
    factors[2][rng.random((n, t)) < 0.05] = np.nan
    factors[6] = 2.0 * np.nan_to_num(controls[0]) - 1.0  # spanned where it is fitted on control 0
    uses = [[0, 1, 2, 3], [0, 2], [1, 3], [], [2], [0, 1, 2], [0, 2]]
    batched = residual_ics(factors, daily_ranks(label), controls, days=slice(1, t), block=8, uses=uses)
    for f, used, got in zip(factors, uses, batched):
        one = residual_ic(f, label, controls[used] if used else np.empty((0, n, t)), days=slice(1, t))
        np.testing.assert_allclose(got.daily, one.daily, rtol=1e-9, atol=1e-12)
        assert (got.skipped_days, got.spanned_days) == (one.skipped_days, one.spanned_days)
    assert batched[6].spanned_days > 0 and batched[4].skipped_days == 0 and batched[0].skipped_days == 1
    with pytest.raises(ValueError, match="uses\\[1\\]"):
        residual_ics(factors[:2], label, controls, uses=[[0], [4]])


def test_principal_components_recover_latent_factors():
    rng = np.random.default_rng(9)
    n, t, k, f = 80, 25, 2, 6
    latent = rng.standard_normal((k, n, t))
    mix = rng.standard_normal((f, k))
    stack = np.einsum("fk,knt->fnt", mix, latent) + rng.standard_normal((f, 1, t))  # + per-day offsets
    stack[2, 3, 4] = np.nan
    pcs = principal_components(stack, k)
    assert pcs.scores.shape == (k, n, t) and np.isnan(pcs.scores[:, 3, 4]).all()
    assert pcs.explained.sum() == pytest.approx(1.0, abs=1e-10)
    np.testing.assert_allclose(pcs.loadings @ pcs.loadings.T, np.eye(k), atol=1e-12)
    # every factor of the stack lies in the components' span: nothing left to add
    for i in range(f):
        assert residual_ic(stack[i], latent[0], pcs.scores).spanned_days == t
    assert principal_components(stack, 1).explained[0] < 1 - 1e-3  # one component does not suffice


# ---- look-ahead helpers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expr, horizon",
    [
        ("Ref($close, -2) / Ref($close, -1) - 1", 2),  # qlib's default label
        ("$close", 0),
        ("Ref($close, 3)", 0),
        ("Ref($close, -5) / $close - 1", 5),
        ("Mean(Ref($close, -3), 5) / $close", 3),  # a window only looks back
        ("Ref(Ref($close, -1), -1)", 2),
        ("Ref(Ref($close, 2), -3)", 1),
        ("CSRank(Ref($close, -4))", 4),
    ],
)
def test_label_horizon(expr, horizon):
    assert label_horizon(expr) == horizon


def test_cut_points_are_stratified_and_seeded():
    start, stop, k = 100, 350, 5
    bins = [(100, 150), (150, 200), (200, 250), (250, 300), (300, 350)]  # 250 days in 5 bins of 50
    a = lookahead_cut_points(start, stop, k, seed=42)
    assert a == lookahead_cut_points(start, stop, k, seed=42)
    assert a == sorted(a) and len(a) == k
    assert all(lo <= c < hi for c, (lo, hi) in zip(a, bins))
    draws = np.array([lookahead_cut_points(start, stop, k, seed=s) for s in range(400)])
    assert len({tuple(d) for d in draws}) > 390  # seeds differ
    # within a bin every day is reachable, including the segment's first and last
    assert draws[:, 0].min() == start and draws[:, -1].max() == stop - 1
    assert len(set(draws[:, 2])) == 50
    assert lookahead_cut_points(0, 3, 3, seed=1) == [0, 1, 2]
    with pytest.raises(ValueError, match="fewer than"):
        lookahead_cut_points(0, 2, 3, seed=0)


def test_stack_components_span_a_latent_structure_like_principal_components():
    from quantcore.evaluate.correlation import reference_stack, stack_components

    rng = np.random.default_rng(4)
    n, t, k, f = 90, 30, 2, 7
    latent = rng.standard_normal((k, n, t))
    stack = np.einsum("fk,knt->fnt", rng.standard_normal((f, k)), latent) + 0.01 * rng.standard_normal((f, n, t))
    stack[:, 5, :] = np.nan  # an instrument outside its listing: a dead row
    scores = stack_components(reference_stack({f"r{i}": stack[i] for i in range(f)}), k, chunk_days=7)
    assert scores.shape == (k, n, t) and np.isnan(scores[:, 5, :]).all()
    live = np.isfinite(scores[0, :, 0])
    # the two latent factors lie in the components' span, day by day (R^2 of a per-day regression:
    # the stack is standardised per day, so the mix's coefficients differ from day to day)
    for j in range(k):
        for d in range(t):
            y = latent[j][live, d]
            x = np.column_stack([np.ones(y.size), scores[:, live, d].T])
            r = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
            assert 1 - (r @ r) / ((y - y.mean()) @ (y - y.mean())) > 0.99
    with pytest.raises(ValueError, match="k must lie"):
        stack_components(reference_stack({"a": stack[0]}), 2)
