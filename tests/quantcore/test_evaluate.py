"""The evaluator: span-aware whole-panel evaluation, shared sub-expressions, caches, errors.

Expected values come from pandas computations on each instrument's listed series (how qlib computes),
never from the evaluator itself."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest

from quantcore import kernels
from quantcore._ext import reference
from quantcore.data.panel import Panel
from quantcore.errors import ExpressionError, LookAheadError, UnknownFieldError
from quantcore.expr.cache import DiskCache, MemoryCache
from quantcore.expr.evaluate import Evaluator


@pytest.fixture()
def small_panel() -> Panel:
    """3 instruments x 12 days: A fully listed with a suspension, B listed from day 3, C delisted after day 8."""
    rng = np.random.default_rng(7)
    n, t = 3, 12
    close = 10 + np.cumsum(rng.normal(0, 0.5, size=(n, t)), axis=1)
    close[0, 5] = np.nan  # A suspended one day
    close[1, 6] = close[1, 5]  # B unchanged one day (an Eq case)
    fields = {
        "close": close,
        "open": close + rng.normal(0, 0.1, size=(n, t)),
        "volume": rng.uniform(1e5, 2e5, size=(n, t)),
    }
    fields["open"][np.isnan(close)] = np.nan
    fields["volume"][np.isnan(close)] = np.nan
    cal = pd.bdate_range("2020-01-01", periods=t)
    return Panel.from_arrays(cal, ["A", "B", "C"], fields, starts=np.array([0, 3, 0]), ends=np.array([12, 12, 9]))


def _span_series(panel: Panel, field: str, i: int) -> pd.Series:
    s, e = panel.starts[i], panel.ends[i]
    return pd.Series(panel.fields[field][i, s:e])


def test_values_outside_listing_spans_are_nan(small_panel):
    out = Evaluator(small_panel).evaluate({"cmp": "$close > Ref($close, 1)", "one": "1", "x": "$close * 2"})
    for arr in out.values():
        assert np.isnan(arr[small_panel.outside_span]).all()
    # comparisons with a NaN operand give 0, like qlib: first listed row has no previous close
    assert out["cmp"][1, 3] == 0.0
    assert out["one"][~small_panel.outside_span].tolist() == [1.0] * int((~small_panel.outside_span).sum())


def test_rolling_over_comparisons_only_counts_listed_rows(small_panel):
    got = Evaluator(small_panel).evaluate({"cntp": "Mean($close > Ref($close, 1), 5)"}, dtype=np.float64)["cntp"]
    for i in range(3):
        s = _span_series(small_panel, "close", i)
        expected = (s > s.shift(1)).astype(float).rolling(5, min_periods=1).mean().to_numpy()
        np.testing.assert_allclose(got[i, small_panel.starts[i] : small_panel.ends[i]], expected, rtol=1e-12)


def test_elementwise_semantics_match_numpy(small_panel):
    exprs = {
        "div": "($close - $open) / $open",
        "pow": "$close ** 2",
        "neg": "-$close + 1",
        "greater": "Greater($open, $close)",
        "if": "If($close > $open, $close, $open)",
        "log": "Log($volume)",
        "sign": "Sign($close - $open)",
        "and": "And($close > $open, $volume > 150000)",
        "not": "Not($close > $open)",
    }
    got = Evaluator(small_panel).evaluate(exprs, dtype=np.float64)
    c, o, v = (small_panel.fields[k] for k in ("close", "open", "volume"))
    inside = ~small_panel.outside_span
    expected = {
        "div": (c - o) / o,
        "pow": c**2,
        "neg": -c + 1,
        "greater": np.maximum(o, c),
        "if": np.where(c > o, c, o),
        "log": np.log(v),
        "sign": np.sign(c - o),
        "and": ((c > o) & (v > 150000)).astype(float),
        "not": (~(c > o)).astype(float),
    }
    for name, exp in expected.items():
        np.testing.assert_array_equal(got[name][inside], exp[inside], err_msg=name)


def test_kernels_and_pandas_twin_agree_on_alpha158():
    from quantcore.data.synthetic import synth_market
    from quantcore.features import alpha158

    panel = synth_market(n_instruments=12, n_days=150, seed=3)
    fast = Evaluator(panel).evaluate(alpha158(), dtype=np.float64)
    slow = Evaluator(panel, backend=reference).evaluate(alpha158(), dtype=np.float64)
    for name in fast:
        np.testing.assert_allclose(fast[name], slow[name], rtol=1e-7, atol=1e-10, equal_nan=True, err_msg=name)


def _counting_backend(calls: list):
    """The real kernels, recording each call (op name) so tests can see what was computed."""

    def wrap(fn_name):
        fn = getattr(kernels, fn_name)

        def inner(*args, **kwargs):
            calls.append((fn_name, args[0] if isinstance(args[0], str) else None))
            return fn(*args, **kwargs)

        return inner

    return types.SimpleNamespace(**{k: wrap(k) for k in ("rolling", "pair_rolling", "ema", "shift", "cross_section")})


def test_common_subexpressions_are_computed_once(small_panel):
    calls: list = []
    ev = Evaluator(small_panel, backend=_counting_backend(calls))
    out = ev.evaluate(
        {
            "a": "Mean($close, 5) / $close",
            "b": "Mean($close, 5) * 2",
            "c": "Mean( $close,5 )",  # same node, different spelling
            "d": "Mean($close, 5)",  # a root that is also inside other roots
        },
        dtype=np.float64,
    )
    assert calls.count(("rolling", "Mean")) == 1
    np.testing.assert_array_equal(out["c"], out["d"])
    np.testing.assert_allclose(out["b"], out["d"] * 2, equal_nan=True)


def test_memory_and_disk_cache(tmp_path, small_panel):
    calls: list = []
    backend = _counting_backend(calls)
    exprs = {"m": "Std($close, 4)", "r": "Rank($open, 3)"}
    first = Evaluator(small_panel, backend=backend, disk_cache=DiskCache(tmp_path)).evaluate(exprs)
    n_first = len(calls)
    assert n_first == 2
    mem = MemoryCache()
    again = Evaluator(small_panel, backend=backend, disk_cache=DiskCache(tmp_path), memory_cache=mem).evaluate(exprs)
    assert len(calls) == n_first  # served from disk
    for k in exprs:
        np.testing.assert_array_equal(first[k], again[k])
    Evaluator(small_panel, backend=backend, memory_cache=mem).evaluate(exprs)
    assert mem.hits == 2 and len(calls) == n_first

    # a corrupt entry is a miss, recomputed to the right value
    for f in tmp_path.rglob("*.npy"):
        f.write_bytes(b"not an npy file")
    fixed = Evaluator(small_panel, backend=backend, disk_cache=DiskCache(tmp_path)).evaluate(exprs)
    assert len(calls) == n_first + 2
    for k in exprs:
        np.testing.assert_array_equal(first[k], fixed[k])

    # different data -> different key -> recomputed
    changed = small_panel.with_fields(close=small_panel.fields["close"] * 2)
    Evaluator(changed, backend=backend, disk_cache=DiskCache(tmp_path)).evaluate({"m": "Std($close, 4)"})
    assert len(calls) == n_first + 3


def test_a_disk_cache_that_cannot_write_costs_the_entry_not_the_result(tmp_path, small_panel):
    """Model experiments share features through a disk cache: a full disk or an unwritable folder must
    not fail them. Here every entry's sub-folder (two hex digits) is taken by a file, so writes fail."""
    cache = DiskCache(tmp_path)
    exprs = {"m": "Std($close, 4)", "r": "Rank($open, 3)"}
    for i in range(256):
        (tmp_path / f"{i:02x}").write_bytes(b"in the way")
    got = Evaluator(small_panel, disk_cache=cache).evaluate(exprs)
    want = Evaluator(small_panel).evaluate(exprs)
    for k in exprs:
        np.testing.assert_array_equal(got[k], want[k])
    assert cache.write_failures == 2 and not list(tmp_path.rglob("*.npy")) and not list(tmp_path.rglob("*.tmp"))


def _entry_ages(cache: DiskCache, keys: list[str]) -> None:
    """Back-date entries in the order given (first = used longest ago), a minute apart."""
    import os
    import time

    now = time.time()
    for i, key in enumerate(keys):
        os.utime(cache._path(key), (now - 600 + 60 * i, now - 600 + 60 * i))


def test_a_bounded_disk_cache_evicts_the_least_recently_used_entries(tmp_path):
    """A long mining run writes one cache entry per new factor: past its bound the cache deletes the
    entries used longest ago (a read counts as a use), down to 80% of the bound."""
    arr = np.arange(1000, dtype=np.float64)  # 8,128 bytes as .npy
    entry = 8000 + 128
    cache = DiskCache(tmp_path, max_bytes=3 * entry + 10)
    for key in ("aa1", "bb2", "cc3"):
        cache.put(key, arr + len(key))
    assert cache.size() == 3 * entry and cache.evictions == 0
    _entry_ages(cache, ["aa1", "bb2", "cc3"])
    assert cache.get("aa1", arr.shape) is not None  # aa1 is now the most recently used
    cache.put("dd4", arr)  # 4 entries > bound: evict bb2 and cc3 (oldest first) down to 80%
    left = {p.stem for p in tmp_path.rglob("*.npy")}
    assert left == {"aa1", "dd4"} and cache.evictions == 2 and cache.size() <= 0.8 * cache.max_bytes
    assert cache.get("bb2", arr.shape) is None and cache.misses == 1
    np.testing.assert_array_equal(cache.get("aa1", arr.shape), arr + 3)
    # a result larger than the whole bound is not stored, and evicts nothing
    cache.put("big", np.zeros(10_000))
    assert not cache._path("big").exists() and {p.stem for p in tmp_path.rglob("*.npy")} == {"aa1", "dd4"}


def test_a_bounded_disk_cache_counts_entries_other_processes_wrote(tmp_path):
    """Workers share one cache folder: the first write of a cache scans it, so entries another
    process left count towards the bound, and a dead writer's stale temporary file is removed."""
    import os
    import time

    arr = np.ones(1000)
    other = DiskCache(tmp_path, max_bytes=None)
    for key in ("o1", "o2", "o3"):
        other.put(key, arr)
    _entry_ages(other, ["o1", "o2", "o3"])
    stale = tmp_path / "o1" / "dead.tmp"
    stale.write_bytes(b"half a write")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    fresh = tmp_path / "o1" / "live.tmp"
    fresh.write_bytes(b"a write in progress")
    mine = DiskCache(tmp_path, max_bytes=3 * 8128 + 10)
    mine.put("m1", arr)
    # four entries > bound: o1 and o2 (used longest ago) go, leaving 2 entries <= 80% of the bound
    assert {p.stem for p in tmp_path.rglob("*.npy")} == {"o3", "m1"} and mine.evictions == 2
    assert not stale.exists() and fresh.exists()
    assert mine.size() <= 0.8 * mine.max_bytes
    with pytest.raises(ValueError, match="max_bytes must be positive"):
        DiskCache(tmp_path, max_bytes=0)


def test_an_evaluator_on_a_small_disk_cache_gives_the_same_values(tmp_path, small_panel):
    """Evictions never change a result: a cache bounded to about two entries still serves and recomputes
    right, and never holds more than its bound."""
    exprs = {"m": "Std($close, 4)", "r": "Rank($open, 3)", "s": "Sum($volume, 5)", "c": "Corr($close, $open, 5)"}
    want = Evaluator(small_panel).evaluate(exprs)
    one = small_panel.n_instruments * small_panel.n_days * 8 + 128
    cache = DiskCache(tmp_path, max_bytes=2 * one + 10)
    for _ in range(3):
        got = Evaluator(small_panel, disk_cache=cache).evaluate(exprs)
        for k in exprs:
            np.testing.assert_array_equal(got[k], want[k])
        assert cache.size() <= cache.max_bytes
    assert cache.evictions > 0 and cache.hits + cache.misses > 0


def test_look_ahead_is_refused_in_features_and_allowed_in_labels(small_panel):
    ev = Evaluator(small_panel)
    with pytest.raises(LookAheadError, match="'fut'"):
        ev.evaluate({"fut": "Mean(Ref($close, -2), 3)"})
    label = ev.evaluate({"label": "Ref($close, -2) / Ref($close, -1) - 1"}, allow_future=True, dtype=np.float64)[
        "label"
    ]
    s = _span_series(small_panel, "close", 2)  # C is delisted: the last two rows have no future
    expected = (s.shift(-2) / s.shift(-1) - 1).to_numpy()
    np.testing.assert_allclose(label[2, :9], expected, equal_nan=True)
    assert np.isnan(label[2, 7:9]).all()


def test_errors_name_the_feature_and_the_problem(small_panel):
    ev = Evaluator(small_panel)
    with pytest.raises(UnknownFieldError, match="(?s)'bad'.*close"):
        ev.evaluate({"bad": "$clsoe / $open"})
    with pytest.raises(ExpressionError, match="'broken'"):
        ev.evaluate({"broken": "Mean($close, 5"})
    with pytest.raises(ExpressionError, match="NOPE"):
        ev.evaluate({"m": 'Mask($close, "NOPE")'})


def test_mask_reads_another_instrument(small_panel):
    out = Evaluator(small_panel).evaluate({"m": 'Mask($close, "A")'}, dtype=np.float64)["m"]
    inside = ~small_panel.outside_span
    expected = np.broadcast_to(small_panel.fields["close"][0], out.shape)
    np.testing.assert_array_equal(out[inside], expected[inside])


def test_frame_rows_columns_and_date_window(small_panel):
    ev = Evaluator(small_panel)
    exprs = {"ma": "Mean($close, 3)", "ret": "$close / Ref($close, 1) - 1"}
    full = ev.frame(exprs)
    assert list(full.columns) == ["ma", "ret"]
    assert full.index.names == ["datetime", "instrument"]
    assert full.index.is_monotonic_increasing
    assert len(full) == int((~small_panel.outside_span).sum())
    window = ev.frame(exprs, start="2020-01-06", end="2020-01-10")
    dates = full.index.get_level_values("datetime")
    expected = full[(dates >= "2020-01-06") & (dates <= "2020-01-10")]
    pd.testing.assert_frame_equal(window, expected)
    assert window.dtypes.tolist() == [np.float32, np.float32]


def test_float32_arithmetic_reproduces_numpy_float32_steps(small_panel):
    """qlib keeps element-wise results on its float32 fields in float32; window operators give float64."""
    exprs = {"x": "($close - $open) * 3 / $open", "m": "Mean($close, 3) / $close", "l": "Log($volume + 1)"}
    got = Evaluator(small_panel, float32_arithmetic=True).evaluate(exprs, dtype=np.float64)
    c, o, v = (small_panel.fields[k].astype(np.float32) for k in ("close", "open", "volume"))
    inside = ~small_panel.outside_span
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(got["x"][inside], ((c - o) * 3 / o)[inside].astype(np.float64))
        np.testing.assert_array_equal(got["l"][inside], np.log(v + 1)[inside].astype(np.float64))
        s = _span_series(small_panel, "close", 0)
        s32 = s.astype(np.float32)  # qlib's series
        mean64 = s32.rolling(3, min_periods=1).mean().to_numpy()  # pandas: float64 result
        np.testing.assert_allclose(got["m"][0], mean64 / c[0].astype(np.float64), rtol=1e-15)
    default = Evaluator(small_panel).evaluate(exprs, dtype=np.float64)
    assert not np.array_equal(default["x"][inside], got["x"][inside])  # float64 differs in the last bits
