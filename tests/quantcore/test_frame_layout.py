"""The long (datetime, instrument) frame: its index, its tiled transpose and its pre-mapped block,
checked against plain pandas/numpy constructions of the same thing."""

from __future__ import annotations

import mmap
import platform
import re
import sys
import threading

import numpy as np
import pandas as pd
import pytest

from quantcore import kernels
from quantcore.data.panel import Panel, huge_empty, populate, prefaulted_empty
from quantcore.errors import UnknownFieldError
from quantcore.expr.evaluate import Evaluator


@pytest.fixture(scope="module")
def ragged_panel() -> Panel:
    """7 instruments (names not in sorted order) x 150 days, spans starting and ending inside the
    gather's 32-day tiles, one instrument listed only briefly, one never listed."""
    rng = np.random.default_rng(11)
    names = ["ZZ", "AA", "MM", "BB", "YY", "CC", "NEVER"]
    n, t = len(names), 150
    close = 20 + np.cumsum(rng.normal(0, 0.3, size=(n, t)), axis=1)
    close[2, 40:45] = np.nan  # a suspension inside MM's span
    spread = np.abs(rng.normal(0, 0.2, size=(n, t)))
    fields = {
        "close": close,
        "open": close * (1 + rng.normal(0, 0.01, size=(n, t))),
        "high": close + spread,
        "low": close - spread,
        "vwap": close + rng.normal(0, 0.05, size=(n, t)),
        "volume": rng.uniform(1e5, 3e5, size=(n, t)),
    }
    for name in ("open", "high", "low", "vwap", "volume"):
        fields[name][np.isnan(close)] = np.nan
    starts = np.array([0, 5, 31, 33, 0, 70, 0])
    ends = np.array([150, 97, 150, 64, 120, 75, 0])
    return Panel.from_arrays(pd.bdate_range("2021-01-04", periods=t), names, fields, starts=starts, ends=ends)


def _reference_index(panel: Panel, days: slice) -> pd.MultiIndex:
    inside = ~panel.outside_span[:, days].T
    day_idx, inst_idx = np.nonzero(inside)
    return pd.MultiIndex.from_arrays(
        [
            pd.DatetimeIndex(panel.calendar[days][day_idx]),
            pd.Index(np.asarray(panel.instruments, dtype=object)[inst_idx]),
        ],
        names=["datetime", "instrument"],
    )


@pytest.mark.parametrize("days", [slice(None), slice(3, 101), slice(64, 96), slice(71, 74), slice(149, 150)])
def test_frame_index_matches_a_factorised_index(ragged_panel, days):
    got = ragged_panel.frame_index(days)
    want = _reference_index(ragged_panel, days)
    assert got.equals(want)
    for level in range(2):
        assert got.levels[level].equals(want.levels[level])  # same sorted levels, none unused
        np.testing.assert_array_equal(got.codes[level], want.codes[level])
    assert got.names == want.names
    assert got.get_level_values("datetime").is_monotonic_increasing


@pytest.mark.parametrize("days", [slice(None), slice(3, 101), slice(31, 33), slice(100, 150)])
def test_gather_rows_transposes_in_span_cells(ragged_panel, days):
    x = np.random.default_rng(3).normal(size=(ragged_panel.n_instruments, ragged_panel.n_days))
    got = kernels.gather_rows(x, ragged_panel.starts, ragged_panel.ends, days, threads=2)
    inside = ~ragged_panel.outside_span[:, days]
    want = x[:, days].T[inside.T].astype(np.float32)  # (day, instrument) order
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gather_rows_with_span_edges_on_most_days(seed):
    """Many instruments whose spans start and end on random days (tile edges, neighbouring days,
    empty spans included): every tile is cut into several runs of days with the same listed set."""
    rng = np.random.default_rng(seed)
    n, t = 90, 200
    starts = rng.integers(0, t, size=n)
    ends = np.minimum(t, starts + rng.integers(0, t, size=n))
    starts[:6], ends[:6] = [0, 32, 31, 64, 5, 7], [t, 64, 33, 65, 5, 8]  # on, across and inside tile edges
    x = rng.normal(size=(n, t))
    inside = (np.arange(t) >= starts[:, None]) & (np.arange(t) < ends[:, None])
    for days in (slice(None), slice(1, 199), slice(32, 96), slice(50, 51)):
        want = x[:, days].T[inside[:, days].T].astype(np.float32)
        for threads in (1, 2):
            got = kernels.gather_rows(x, starts, ends, days, threads=threads)
            np.testing.assert_array_equal(got, want, err_msg=f"days {days}, {threads} threads")


def test_parallel_frame_equals_arrays_laid_out_by_numpy(ragged_panel):
    """Enough expressions for the two-worker DAG path, whose workers write the block's columns."""
    exprs = {f"m{w}": f"Mean($close, {w}) / $close" for w in (2, 3, 5, 10, 20, 30)}
    exprs |= {f"q{w}": f"Quantile($close, {w}, 0.8) / $close" for w in (5, 20)}
    exprs |= {"corr": "Corr($close, Log($volume + 1), 10)", "ref": "Ref($open, 2) / $close", "c": "$close"}
    ev = Evaluator(ragged_panel)
    arrays = ev.evaluate(exprs, dtype=np.float64)
    for window in (slice(None), ragged_panel.date_index("2021-02-15", "2021-04-30")):
        start = None if window == slice(None) else ragged_panel.calendar[window.start]
        end = None if window == slice(None) else ragged_panel.calendar[window.stop - 1]
        frame = ev.frame(exprs, start=start, end=end)
        inside = ~ragged_panel.outside_span[:, window]
        assert frame.index.equals(_reference_index(ragged_panel, window))
        for name, arr in arrays.items():
            assert np.isnan(arr[ragged_panel.outside_span]).all(), name  # kernels blank outside spans
            want = arr[:, window].T[inside.T].astype(np.float32)
            np.testing.assert_array_equal(frame[name].to_numpy(), want, err_msg=name)


def test_prefaulted_block_is_a_writable_column_major_array():
    shape = (4_300_000, 4)  # 66 MiB of float32: the mapped path
    before = _resident_bytes()
    block = prefaulted_empty(shape)
    if sys.platform.startswith("linux"):
        assert _resident_bytes() - before >= 0.9 * block.nbytes  # mapped before any write
    assert block.shape == shape and block.dtype == np.float32 and block.flags.f_contiguous
    assert block.flags.writeable
    block[:, 3] = 1.5
    block[-1, 0] = 2.0
    assert block[:, 3].sum() == 1.5 * shape[0] and block[-1, 0] == 2.0
    small = prefaulted_empty((10, 3), np.float64)
    assert small.shape == (10, 3) and small.dtype == np.float64 and small.flags.f_contiguous


def test_block_written_while_it_is_populated_keeps_every_write():
    """The evaluator populates the frame block on a thread while workers fill columns: pages a write
    reaches first are not zeroed again by the populating call."""
    from concurrent.futures import ThreadPoolExecutor

    block = huge_empty((4_300_000, 4))  # 66 MiB of float32: a mapping, not np.empty
    with ThreadPoolExecutor(max_workers=1) as mapper:
        populated = mapper.submit(populate, block)
        for j in (3, 0, 2, 1):
            block[:, j] = j + 0.5
        assert populated.result() is _populate_write_supported()
    for j in range(4):
        assert (block[:, j] == j + 0.5).all()
    assert populate(np.empty((10, 3))) is False  # not a mapping of its own: left alone


def test_populate_stops_when_asked_and_a_failed_frame_stops_it():
    """A set `stop` leaves the block unmapped (a frame whose expression fails stops populating its
    block, so the error is not held up by hundreds of MB of mapping)."""
    import threading

    block = huge_empty((4_300_000, 16))  # 262 MiB of float32
    stop = threading.Event()
    stop.set()
    before = _resident_bytes()
    assert populate(block, stop) is False
    assert _resident_bytes() - before < 64 << 20  # at most what the call started before looking
    if _populate_write_supported():
        assert populate(block) is True and _resident_bytes() - before >= 0.9 * block.nbytes


def test_frame_with_a_bad_expression_raises_its_error(ragged_panel):
    with pytest.raises(UnknownFieldError, match=r"\$clsoe"):
        Evaluator(ragged_panel).frame({"ok": "Mean($close, 5)", "bad": "Mean($clsoe, 5)"})
    assert not [
        t
        for t in threading.enumerate()
        if t is not threading.main_thread() and t.is_alive() and t.name.startswith(("quantcore", "ThreadPoolExecutor"))
    ]


def _populate_write_supported() -> bool:
    release = tuple(int(p) for p in re.findall(r"\d+", platform.release())[:2])
    return sys.platform.startswith("linux") and release >= (5, 14)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * mmap.PAGESIZE


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_POPULATE_WRITE is Linux's")
def test_populate_write_maps_an_anonymous_buffer_up_front():
    release = tuple(int(p) for p in re.findall(r"\d+", platform.release())[:2])
    size = (32 << 20) + 3 * mmap.PAGESIZE  # populated in 4 MiB calls: eight whole ones and a short tail
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    before = _resident_bytes()
    rc = kernels.populate_write(buf)
    if release < (5, 14):
        assert rc != 0  # the kernel lacks the call: an errno, and prefaulted_empty falls back
        return
    assert rc == 0
    assert _resident_bytes() - before >= size * 0.9  # mapped now, not at first write
    view = np.frombuffer(buf, dtype=np.uint8)
    assert not view[:: mmap.PAGESIZE].any() and not view[-1]  # fresh pages read as zeros, to the last
    del view
    buf.close()


def test_batch_with_recycled_buffers_equals_each_expression_alone(ragged_panel):
    """Alpha158 as one batch (intermediates recycled as outputs, two workers) gives, bit for bit,
    what each feature gives evaluated on its own."""
    from quantcore.features import alpha158

    features = alpha158()
    batch = Evaluator(ragged_panel).evaluate(features, dtype=np.float64)
    alone = Evaluator(ragged_panel, threads=1)
    for name, expr in features.items():
        np.testing.assert_array_equal(batch[name], alone.evaluate({name: expr}, dtype=np.float64)[name], err_msg=name)


def test_kernels_fill_a_given_output_buffer(ragged_panel):
    x = ragged_panel.field("close")
    st, en = ragged_panel.starts, ragged_panel.ends
    want = kernels.rolling("Std", x, 5, st, en)
    out = np.full(x.shape, 123.0)  # stale values everywhere, as in a recycled buffer
    got = kernels.rolling("Std", x, 5, st, en, out=out)
    assert got is out
    np.testing.assert_array_equal(got, want)  # outside spans blanked to NaN too
    y = ragged_panel.field("volume")
    for fn, args in (
        (kernels.pair_rolling, ("Corr", x, y, 10, st, en)),
        (kernels.shift, (x, 3, st, en)),
        (kernels.ema, (x, 10, st, en)),
    ):
        out = np.full(x.shape, -7.0)
        np.testing.assert_array_equal(fn(*args, out=out), fn(*args), err_msg=fn.__name__)
    with pytest.raises(kernels.KernelArgumentError, match="overlap"):
        kernels.rolling("Mean", out, 5, st, en, out=out)
    with pytest.raises(kernels.KernelArgumentError, match="shape"):
        kernels.rolling("Mean", x, 5, st, en, out=np.empty((2, 2)))
    with pytest.raises(kernels.KernelArgumentError, match="float64"):
        kernels.shift(x, 1, st, en, out=np.empty(x.shape, dtype=np.float32))


SHARED_PASS_FEATURES = {
    "QTLU5": "Quantile($close, 5, 0.8)/$close",
    "QTLD5": "Quantile($close, 5, 0.2)/$close",
    "QMID5": "Quantile($close, 5, 0.5)",
    "BETA10": "Slope($close, 10)/$close",
    "RSQR10": "Rsquare($close, 10)",
    "RESI10": "Resi($close, 10)/$close",
    "MAX5": "Max($high, 5)/$close",
    "IMAX5": "IdxMax($high, 5)/5",
    "MIN5": "Min($low, 5)/$close",  # alone in its family for $low: computed on its own
    "QTLU10": "Quantile($close, 10, 0.8)/$close",  # another window: its own pass
}


@pytest.mark.parametrize("threads", [1, None], ids=["sequential", "two-workers"])
def test_operators_sharing_a_pass_give_what_each_gives_alone(ragged_panel, threads):
    """Window operators of one input and window are computed in one kernel pass (three groups here),
    in the sequential and the two-worker schedule alike, with the same bits as each feature alone."""
    from quantcore.expr.evaluate import _plan

    evaluator = Evaluator(ragged_panel, threads=threads)
    nodes = [item.node for item in evaluator.compile(SHARED_PASS_FEATURES)]
    groups = set(_plan(nodes, (ragged_panel.n_instruments, ragged_panel.n_days)).groups.values())
    assert sorted(sorted(m.op for m in g) for g in groups) == [
        ["IdxMax", "Max"],
        ["Quantile", "Quantile", "Quantile"],
        ["Resi", "Rsquare", "Slope"],
    ]
    batch = evaluator.evaluate(SHARED_PASS_FEATURES, dtype=np.float64)
    frame = Evaluator(ragged_panel, threads=threads).frame(SHARED_PASS_FEATURES)
    for name, expr in SHARED_PASS_FEATURES.items():
        alone = Evaluator(ragged_panel, threads=1).evaluate({name: expr}, dtype=np.float64)[name]
        assert np.array_equal(batch[name].view(np.int64), alone.view(np.int64)), name
        inside = ~ragged_panel.outside_span
        want = alone.T[inside.T].astype(np.float32)
        assert np.array_equal(frame[name].to_numpy().view(np.int32), want.view(np.int32)), name


def test_a_failing_feature_stops_both_workers_and_raises_its_error(ragged_panel):
    """An error inside one worker (here an unknown instrument in Mask) ends the batch with that error,
    raised in the caller's thread, whichever worker met it, and leaves no worker thread behind."""
    import threading

    from quantcore.errors import ExpressionError
    from quantcore.features import alpha158

    features = dict(alpha158())
    features["BAD"] = 'Mask($close, "NOPE") / Mean($close, 5)'
    before = threading.active_count()
    for threads in (None, 1):
        with pytest.raises(ExpressionError, match="NOPE"):
            Evaluator(ragged_panel, threads=threads).frame(features)
    assert threading.active_count() == before


def test_frame_of_no_expressions_still_has_the_panels_rows(ragged_panel):
    frame = Evaluator(ragged_panel).frame({}, start="2021-02-01")
    days = ragged_panel.date_index("2021-02-01", None)
    assert frame.shape[1] == 0
    assert frame.index.equals(_reference_index(ragged_panel, days))


def test_features_reading_one_shared_pass_are_scheduled_together(ragged_panel):
    """QTLD5 reads the pass QTLU5 made; asked for after QTLU10, it is still planned before it, so the
    sibling's panel does not wait (in Alpha158's order twenty such panels waited)."""
    from quantcore.expr.evaluate import _plan

    features = {
        "QTLU5": "Quantile($close, 5, 0.8)/$close",
        "QTLU10": "Quantile($close, 10, 0.8)/$close",
        "QTLD5": "Quantile($close, 5, 0.2)/$close",
        "QTLD10": "Quantile($close, 10, 0.2)/$close",
    }
    nodes = [item.node for item in Evaluator(ragged_panel).compile(features)]
    plan = _plan(nodes, (ragged_panel.n_instruments, ragged_panel.n_days))
    at = {node: i for i, node in enumerate(plan.order)}
    assert at[nodes[2]] < at[nodes[1]]  # QTLD5 before QTLU10
    assert [plan.positions[n] for n in nodes] == [[0], [1], [2], [3]]  # output columns keep their places
    assert _plan(nodes, (ragged_panel.n_instruments, ragged_panel.n_days), shared_passes=False).order.index(
        nodes[2]
    ) > _plan(nodes, (ragged_panel.n_instruments, ragged_panel.n_days), shared_passes=False).order.index(nodes[1])


def test_features_reading_one_window_result_are_scheduled_together(ragged_panel):
    """Roots that share a window result, directly (SUMP/SUMN/SUMD's sums) or through another root
    (RSV reads MAX's and MIN's), are planned one window after the other instead of in the order asked
    (which kept every window's panels alive until the last family), and results do not change."""
    from quantcore.expr.evaluate import _plan

    d = "$close - Ref($close, 1)"
    features = {}
    for name, expr in [
        ("SUMP", f"Sum(Greater({d}, 0), {{w}})/(Sum(Abs({d}), {{w}})+1e-12)"),
        ("SUMN", f"Sum(Greater(-({d}), 0), {{w}})/(Sum(Abs({d}), {{w}})+1e-12)"),
        ("SUMD", f"(Sum(Greater({d}, 0), {{w}})-Sum(Greater(-({d}), 0), {{w}}))/(Sum(Abs({d}), {{w}})+1e-12)"),
        ("MAX", "Max($high, {w})/$close"),
        ("MIN", "Min($low, {w})/$close"),
        ("RSV", "($close-Min($low, {w}))/(Max($high, {w})-Min($low, {w})+1e-12)"),
    ]:
        for w in (3, 5, 10):
            features[f"{name}{w}"] = expr.format(w=w)
    ev = Evaluator(ragged_panel)
    nodes = [item.node for item in ev.compile(features)]
    names = list(features)
    for shared in (True, False):
        order = _plan(nodes, (ragged_panel.n_instruments, ragged_panel.n_days), shared_passes=shared).order
        done = {name: order.index(node) for name, node in zip(names, nodes)}
        for family in (("SUMP", "SUMN", "SUMD"), ("MAX", "MIN", "RSV")):
            for w, later in ((3, 5), (5, 10)):
                assert max(done[f"{f}{w}"] for f in family) < min(done[f"{f}{later}"] for f in family), (family, w)
    frame = ev.frame(features)
    arrays = Evaluator(ragged_panel, threads=1).evaluate(features, dtype=np.float64)
    inside = ~ragged_panel.outside_span
    for name, arr in arrays.items():
        np.testing.assert_array_equal(frame[name].to_numpy(), arr.T[inside.T].astype(np.float32), err_msg=name)
