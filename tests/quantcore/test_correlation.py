"""Batch value correlations (`daily_correlations`) against a slow per-day pandas twin and against
`library_correlation` (one `daily_ic` per reference), on data with holes, +-inf, unlisted rows,
constant days and price-like offsets."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantcore.evaluate.correlation import (
    daily_correlation_matrix,
    daily_correlations,
    library_correlation,
    reference_stack,
)
from quantcore.evaluate.ic import MIN_PAIRS

N, T, F = 40, 30, 7


def _pandas_daily(x: np.ndarray, y: np.ndarray, min_pairs: int) -> np.ndarray:
    """Reference: per day, pandas' pairwise-complete Pearson over instruments, +-inf as NaN, NaN with
    fewer than `min_pairs` common instruments or a constant side."""
    out = np.full(x.shape[1], np.nan)
    for t in range(x.shape[1]):
        day = pd.DataFrame({"x": x[:, t], "y": y[:, t]}).replace([np.inf, -np.inf], np.nan).dropna()
        if len(day) >= min_pairs and day["x"].nunique() > 1 and day["y"].nunique() > 1:
            out[t] = day["x"].corr(day["y"])
    return out


def _twin_mean(x: np.ndarray, refs: dict[str, np.ndarray], min_pairs: int = MIN_PAIRS) -> np.ndarray:
    return np.array(
        [
            np.nanmean(d) if np.isfinite(d).any() else np.nan
            for d in (_pandas_daily(x, y, min_pairs) for y in refs.values())
        ]
    )


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    common = rng.standard_normal((N, T))
    x = 1e4 + 3.0 * (common + rng.standard_normal((N, T)))  # a price-like level: cancellation bait
    refs = {}
    for k in range(F):
        y = rng.uniform(-2, 2) * common + rng.standard_normal((N, T)) * rng.uniform(0.2, 3) + rng.uniform(-50, 50)
        y[rng.random((N, T)) < 0.1] = np.nan  # holes
        refs[f"r{k}"] = y
    refs["r1"][:, 5] = 2.5  # a constant day
    refs["r2"][3:9, 4] = np.inf  # a division by zero
    refs["r3"][: N - MIN_PAIRS + 2, 6] = np.nan  # too few valid names that day
    for y in refs.values():
        y[30:, :8] = np.nan  # instruments not listed yet: every reference dead there
    x[rng.random((N, T)) < 0.08] = np.nan
    x[:5, 10] = -np.inf
    x[30:, :8] = np.nan
    x[:, 12] = np.nan  # a day without the factor
    # x constant where r4 is valid on day 14 (and spread elsewhere): no cross-section to correlate
    refs["r4"][20:, 14] = np.nan
    x[:20, 14] = 7.0
    return x, refs


def test_matches_the_pandas_twin_and_library_correlation(data):
    x, refs = data
    got = daily_correlations(x, reference_stack(refs))
    np.testing.assert_allclose(got, _twin_mean(x, refs), rtol=0, atol=1e-9)
    lib = library_correlation(x, refs)
    np.testing.assert_allclose(got, [lib[k].daily_mean for k in refs], rtol=0, atol=1e-9)


def test_each_day_matches_the_twin_including_skipped_days(data):
    x, refs = data
    got = daily_correlation_matrix(x, reference_stack(refs))  # (T, F)
    want = np.stack([_pandas_daily(x, y, MIN_PAIRS) for y in refs.values()], axis=1)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=0, atol=1e-9)
    assert np.isnan(got[12]).all() and np.isnan(got[5, 1]) and np.isnan(got[6, 3]) and np.isnan(got[14, 4])


def test_a_day_subsample_scores_only_those_days(data):
    x, refs = data
    days = np.array([0, 3, 9, 14, 20, 29])
    got = daily_correlations(x, reference_stack(refs), days=days)
    np.testing.assert_allclose(got, _twin_mean(x[:, days], {k: v[:, days] for k, v in refs.items()}), atol=1e-9)


def test_a_stacked_days_instruments_references_array_is_accepted(data):
    x, refs = data
    stacked = np.stack([refs[k].T for k in refs], axis=-1)  # (T, N, F)
    np.testing.assert_allclose(daily_correlations(x, stacked), _twin_mean(x, refs), atol=1e-9)


def test_a_float32_stack_is_close(data):
    x, refs = data
    got = daily_correlations(x, reference_stack(refs, dtype=np.float32))
    np.testing.assert_allclose(got, _twin_mean(x, refs), atol=1e-5)


def test_min_pairs_is_honoured(data):
    x, refs = data
    got = daily_correlations(x, reference_stack(refs), min_pairs=30)
    np.testing.assert_allclose(got, _twin_mean(x, refs, 30), atol=1e-9, equal_nan=True)


def test_no_day_in_common_gives_nan():
    x = np.full((20, 4), np.nan)
    x[:, 0] = np.arange(20.0)
    y = np.arange(80.0).reshape(20, 4)
    y[:, 0] = np.nan
    assert np.isnan(daily_correlations(x, reference_stack({"y": y}))).all()


def test_shapes_are_checked(data):
    x, refs = data
    with pytest.raises(ValueError, match="instruments, days"):
        daily_correlations(x[:, :-1], reference_stack(refs))
