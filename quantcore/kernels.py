"""Public entry to the compiled kernels: validate once, convert once, pick the kernel.

Every function takes a float64 (instruments, days) array and the listing spans `starts`/`ends`
(int64, one per instrument) and returns a new (instruments, days) float64 array that is NaN outside
each row's span [start, end). Each row's series is x[i, start:end], exactly the series qlib computes
on for an instrument, so partial windows at listing start are partial windows and positions count
from the span's first row; values outside the span are ignored.

`compat=True` (the default) reproduces qlib 0.9.7 numbers, quirks included; `compat=False` gives the
corrected definition where qlib is plainly wrong (see `rolling`). As in pandas' window functions (which
qlib's operators are), +-inf counts as missing in rolling, pair and EMA kernels, except in Count (which
counts it), Delta and First; cross-sectional operators treat it as a value. `threads=None` uses OpenMP's
default thread count; rows (or days) are independent, so results never depend on `threads`.
The slow twin with the same API lives in `quantcore._ext.reference` (all but `rolling_group`, which
only saves passes: each of its results is `rolling`'s).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Sequence

import numpy as np

from quantcore._ext import cross_section as _cs
from quantcore._ext import rolling as _roll
from quantcore.errors import KernelArgumentError

__all__ = [
    "ROLLING_OPS",
    "PAIR_OPS",
    "CROSS_SECTION_OPS",
    "cross_section_rows",
    "rolling",
    "rolling_group",
    "SHARED_PASS",
    "MAX_GROUP",
    "pair_rolling",
    "gather_rows",
    "populate_write",
    "available_cores",
    "listed_counts",
    "ema",
    "shift",
    "cross_section",
    "rank_within",
    "pearson_moments",
    "interleave",
]

#: Operators accepted by `rolling`, `pair_rolling` and `cross_section`.
ROLLING_OPS: tuple[str, ...] = tuple(_roll.ROLLING_OPS)
PAIR_OPS: tuple[str, ...] = tuple(_roll.PAIR_OPS)
CROSS_SECTION_OPS: tuple[str, ...] = tuple(_cs.CROSS_SECTION_OPS)


def rolling(
    op: str,
    x: np.ndarray,
    window: int,
    starts: np.ndarray,
    ends: np.ndarray,
    *,
    param: float | None = None,
    compat: bool = True,
    threads: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Rolling (window > 0) or expanding (window == 0) operator `op` over each row's span.

    Windows are pandas `rolling(window, min_periods=1)`: they count NaN rows and skip NaN values.
    `param` is Quantile's q in [0, 1]. compat=False changes three qlib quirks: IdxMax/IdxMin ignore
    NaNs (qlib returns the first NaN's position), WMA is the true weighted mean over valid values
    (qlib divides it again by the valid count), and Rsquare treats a window as flat when its std is
    <= 1e-10 * |mean| (qlib: std within 2e-5 of 0, rolling form only). `out` (here and in the other
    panel kernels) is an optional float64 (N, T) buffer to fill instead of a new one; it must not
    overlap the input.
    """
    return rolling_group([op], x, window, starts, ends, params=[param], compat=compat, threads=threads, outs=[out])[0]


#: Most operators one `rolling_group` call takes.
MAX_GROUP: int = _roll.MAX_GROUP
#: Operators that `rolling_group` computes together in one pass, by the state they share.
SHARED_PASS: dict[str, str] = {
    "Slope": "regression",
    "Rsquare": "regression",
    "Resi": "regression",
    "Max": "max",
    "IdxMax": "max",
    "Min": "min",
    "IdxMin": "min",
    "Quantile": "quantile",
}


def rolling_group(
    ops: Sequence[str],
    x: np.ndarray,
    window: int,
    starts: np.ndarray,
    ends: np.ndarray,
    *,
    params: Sequence[float | None] | None = None,
    compat: bool = True,
    threads: int | None = None,
    outs: Sequence[np.ndarray | None] | None = None,
) -> list[np.ndarray]:
    """`rolling` of several operators of one input and window in one pass, where they share their
    state (SHARED_PASS: Slope/Rsquare/Resi; Max/IdxMax; Min/IdxMin; Quantiles at any q): one result
    per operator, each bit for bit what `rolling` gives. Alpha158 asks for all of these in pairs or
    threes (QTLU/QTLD, BETA/RSQR/RESI, MAX/IMAX)."""
    ops = list(ops)
    if not 1 <= len(ops) <= MAX_GROUP:
        raise KernelArgumentError(f"rolling_group takes 1 to {MAX_GROUP} operators, got {len(ops)}")
    codes = [_op_code(op, ROLLING_OPS, "rolling") for op in ops]
    families = {SHARED_PASS.get(op) for op in ops}
    if len(ops) > 1 and (None in families or len(families) > 1):
        raise KernelArgumentError(
            f"operators {ops} do not share one pass; groups: Slope/Rsquare/Resi, Max/IdxMax, Min/IdxMin, Quantile"
        )
    if families != {"quantile"} and len(set(ops)) < len(ops):
        raise KernelArgumentError(f"an operator appears twice in {ops}")
    params = [None] * len(ops) if params is None else list(params)
    outs = [None] * len(ops) if outs is None else list(outs)
    if len(params) != len(ops) or len(outs) != len(ops):
        raise KernelArgumentError(f"need one param and one out per operator ({len(ops)})")
    xa = _panel_array(x, "x")
    st, en = _spans(starts, ends, xa.shape)
    w = _window(window)
    _flag(compat, "compat")
    nth = _threads(threads)
    qs = np.array([_param(op, p) for op, p in zip(ops, params)])
    results = []
    for out in outs:
        results.append(_output(xa.shape, st, en, out, xa, *results))
    _roll.rolling_group(
        np.array(codes, dtype=np.intc), xa, results, qs, st, en, min(w, xa.shape[1] + 1), compat, nth
    )  # a window longer than the calendar gives the same as one just past it
    return results


def _param(op: str, param) -> float:
    """Quantile's q, checked (NaN for the operators without a parameter)."""
    if op == "Quantile":
        if param is None:
            raise KernelArgumentError("Quantile needs param=q, a quantile in [0, 1]")
        q = _real(param, "param")
        if not 0.0 <= q <= 1.0:
            raise KernelArgumentError(f"param (q={param}) must be in [0, 1] for Quantile")
        return q
    if param is not None:
        raise KernelArgumentError(f"param is only used by Quantile; got param={param!r} for {op}")
    return math.nan


def pair_rolling(
    op: str,
    x: np.ndarray,
    y: np.ndarray,
    window: int,
    starts: np.ndarray,
    ends: np.ndarray,
    *,
    compat: bool = True,
    threads: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Rolling/expanding Corr or Cov (ddof=1) over rows where both x and y are valid.

    A window with fewer than 2 such rows is NaN. Corr is NaN where either side is flat over the
    paired rows (std <= 1e-10 * |mean|, both modes); compat=True also masks it, like qlib, where
    either side's own rolling std (its own valid rows) is within 2e-5 of 0. window == 0 is the
    natural expanding form (qlib's own Corr(x, y, 0) raises inside pandas).
    """
    code = _op_code(op, PAIR_OPS, "pair_rolling")
    xa = _panel_array(x, "x")
    ya = _panel_array(y, "y")
    if ya.shape != xa.shape:
        raise KernelArgumentError(f"x and y must have the same shape, got {xa.shape} and {ya.shape}")
    st, en = _spans(starts, ends, xa.shape)
    w = _window(window)
    _flag(compat, "compat")
    nth = _threads(threads)
    out = _output(xa.shape, st, en, out, xa, ya)
    _roll.pair_rolling(code, xa, ya, out, st, en, min(w, xa.shape[1] + 1), compat, nth)
    return out


def ema(
    x: np.ndarray,
    spec: float,
    starts: np.ndarray,
    ends: np.ndarray,
    *,
    threads: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Exponential moving average, qlib EMA(x, spec).

    spec >= 1 is a span and 0 < spec < 1 an alpha, both pandas `ewm(..., adjust=True,
    ignore_na=False, min_periods=1).mean()` (NaN rows still decay the weights; the value carries
    through them). spec == 0 is qlib's expanding variant: weights a**k with a = 1 - 2/(1+L) over the
    L rows so far, normalised over all L rows, NaN values left out of the sum (O(L) per row).
    """
    s = _real(spec, "spec")
    if not (s >= 0.0) or math.isinf(s):
        raise KernelArgumentError(
            f"spec ({spec}) must be >= 0: a span >= 1, an alpha in (0, 1), or 0 for qlib's expanding EMA"
        )
    xa = _panel_array(x, "x")
    st, en = _spans(starts, ends, xa.shape)
    nth = _threads(threads)
    if s == 0.0:
        alpha = 0.0
    else:
        # same arithmetic as pandas: span/alpha -> centre of mass -> alpha
        com = (s - 1.0) / 2.0 if s >= 1.0 else (1.0 - s) / s
        alpha = 1.0 / (1.0 + com)
    out = _output(xa.shape, st, en, out, xa)
    _roll.ema(xa, out, st, en, alpha, nth)
    return out


def shift(
    x: np.ndarray,
    periods: int,
    starts: np.ndarray,
    ends: np.ndarray,
    *,
    threads: int | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """qlib Ref(x, periods) within each span: positive reads the past, negative the future.

    Rows shifted in from outside the span are NaN. periods == 0 is qlib's Ref(x, 0): the span's
    first value on every row (same as rolling("First", ...)).
    """
    p = _integer(periods, "periods")
    xa = _panel_array(x, "x")
    st, en = _spans(starts, ends, xa.shape)
    nth = _threads(threads)
    out = _output(xa.shape, st, en, out, xa)
    t = xa.shape[1]
    _roll.shift(xa, out, st, en, max(-t - 1, min(p, t + 1)), nth)  # further is all-NaN all the same
    return out


def cross_section(
    op: str,
    x: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    param: float | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Per-day operator over the day's listed, non-NaN values; a day with none stays NaN.

    CSRank: pct rank, average ties (pandas rank(pct=True)). CSZScore: (x - mean) / std, ddof=1;
    NaN when the day has < 2 values or all are equal. CSDemean: x - mean. CSWinsorize: clip to the
    day's [q, 1-q] quantiles (numpy linear), param q in [0, 0.5), default 0.05. CSNeutralize: x minus
    the mean of its group that day; `groups` is a float (instruments, days) array of group codes,
    NaN group -> NaN.
    """
    code = _op_code(op, CROSS_SECTION_OPS, "cross_section")
    xa = _panel_array(x, "x")
    st, en = _spans(starts, ends, xa.shape)
    nth = _threads(threads)
    q = _cs_param(op, param)
    if op == "CSNeutralize":
        if groups is None:
            raise KernelArgumentError("CSNeutralize needs groups=, a float (instruments, days) array of group codes")
        ga = _panel_array(groups, "groups")
        if ga.shape != xa.shape:
            raise KernelArgumentError(f"groups must have the shape of x {xa.shape}, got {ga.shape}")
    elif groups is not None:
        raise KernelArgumentError(f"groups is only used by CSNeutralize, not {op}")
    else:
        ga = xa  # unused by the kernel
    out = np.full(xa.shape, np.nan)  # days without values are skipped, not written
    _cs.cross_section(code, xa, out, st, en, ga, q, nth)
    return out


def rank_within(keys: np.ndarray, order: np.ndarray, keep: np.ndarray, *, threads: int | None = None) -> np.ndarray:
    """CSRank over each day's kept cells (keep, bool (N, T), with a non-NaN value), NaN elsewhere, of a
    panel x sorted once per day: keys (T, N) holds each day's values in ascending order and order
    (T, N) their instruments (order = np.argsort(x.T, axis=1), keys = np.take_along_axis(x.T, order, 1)).

    No sort per call, so ranking one panel over many subsets (a label over each factor's valid cells)
    is an O(N) walk a day; equal bit for bit to cross_section("CSRank", np.where(keep, x, nan), ...).
    Keys that are not sorted give wrong ranks, never a bad read: only shapes and bounds are checked."""
    k = np.asarray(keys)
    if k.ndim != 2 or not np.issubdtype(k.dtype, np.floating):
        raise KernelArgumentError(f"keys must be a float (days, instruments) array, got {k.dtype} {k.shape}")
    t, n = k.shape
    o = np.asarray(order)
    if o.shape != (t, n) or (o.size and not np.issubdtype(o.dtype, np.integer)):
        raise KernelArgumentError(
            f"order must be an integer array of the keys' shape {(t, n)}, got {o.dtype} {o.shape}"
        )
    o = np.ascontiguousarray(o, dtype=np.int64)
    if o.size and (o.min() < 0 or o.max() >= n):
        raise KernelArgumentError(f"order must hold instrument positions in [0, {n}), got {o.min()}..{o.max()}")
    mask = np.asarray(keep)
    if mask.dtype != bool or mask.shape != (n, t):
        raise KernelArgumentError(
            f"keep must be a bool (instruments, days) = {(n, t)} array, got {mask.dtype} {mask.shape}"
        )
    out = np.full((n, t), np.nan)
    _cs.rank_within(
        np.ascontiguousarray(k, dtype=np.float64), o, np.ascontiguousarray(mask).view(np.uint8), out, _threads(threads)
    )
    return out


def cross_section_rows(
    op: str, values: np.ndarray, rows: np.ndarray, *, param: float | None = None, threads: int | None = None
) -> np.ndarray:
    """`cross_section` over a dataset block: values float32 (days, instruments, columns), each column
    on its own, with the cells where `rows` (days, instruments) is False treated as missing.
    float32 out, equal to running `cross_section` per column in float64 and casting back.
    CSRank, CSZScore, CSDemean, CSWinsorize (no groups here)."""
    if op == "CSNeutralize":
        raise KernelArgumentError("cross_section_rows does not take groups; use cross_section for CSNeutralize")
    code = _op_code(op, CROSS_SECTION_OPS, "cross_section_rows")
    v = np.asarray(values)
    if v.ndim != 3 or v.dtype != np.float32:
        raise KernelArgumentError(
            f"values must be a float32 (days, instruments, columns) array, got {v.dtype} {v.shape}"
        )
    mask = np.asarray(rows)
    if mask.dtype != bool or mask.shape != v.shape[:2]:
        raise KernelArgumentError(
            f"rows must be a bool (days, instruments) array of shape {v.shape[:2]}, got {mask.dtype} {mask.shape}"
        )
    q = _cs_param(op, param)
    out = np.empty(v.shape, np.float32)
    _cs.cross_section_rows(
        code, np.ascontiguousarray(v), np.ascontiguousarray(mask).view(np.uint8), out, q, _threads(threads)
    )
    return out


def pearson_moments(x: np.ndarray, y: np.ndarray, both: np.ndarray, *, threads: int | None = None) -> np.ndarray:
    """Per-day moments over the cells where `both` is True, float64 (6, days): count, mean of x,
    mean of y, and the centred sums xx, yy, xy (two-pass, summed in instrument order, so equal to
    the NumPy expressions of the reference twin bit for bit). A day without cells has NaN means."""
    xa = _panel_array(x, "x")
    ya = _panel_array(y, "y")
    mask = np.asarray(both)
    if mask.dtype != bool:
        raise KernelArgumentError(f"both must be a bool (instruments, days) array, got dtype {mask.dtype}")
    if ya.shape != xa.shape or mask.shape != xa.shape:
        raise KernelArgumentError(f"x, y and both must have one shape, got {xa.shape}, {ya.shape} and {mask.shape}")
    out = np.empty((6, xa.shape[1]))
    _cs.pearson_moments(xa, ya, np.ascontiguousarray(mask).view(np.uint8), out, _threads(threads))
    return out


def interleave(arrays, out: np.ndarray, start: int, *, threads: int | None = None) -> None:
    """Write float32 (instruments, days) arrays into features start, start+1, ... of a C-contiguous
    float32 (days, instruments, features) store `out`, in place: out[t, i, start + k] = arrays[k][i, t]."""
    if not (
        isinstance(out, np.ndarray)
        and out.dtype == np.float32
        and out.ndim == 3
        and out.flags.c_contiguous
        and out.flags.writeable
    ):
        raise KernelArgumentError("out must be a writeable C-contiguous float32 (days, instruments, features) array")
    t, n, f = out.shape
    start = _integer(start, "start")
    arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]
    if not 0 <= start <= f - len(arrays):
        raise KernelArgumentError(f"features {start}..{start + len(arrays) - 1} do not fit a store of {f} features")
    for k, a in enumerate(arrays):
        if a.shape != (n, t):
            raise KernelArgumentError(f"arrays[{k}] must have shape (instruments, days) = {(n, t)}, got {a.shape}")
    _cs.interleave(arrays, out, start, _threads(threads))


# ---- argument checks (the only ones: kernels trust their inputs) ----------------------------------


def _cs_param(op: str, param) -> float:
    """A cross-section operator's parameter: CSWinsorize's q in [0, 0.5) (default 0.05), NaN for the rest."""
    if op == "CSWinsorize":
        q = 0.05 if param is None else _real(param, "param")
        if not 0.0 <= q < 0.5:
            raise KernelArgumentError(f"param (q={param}) must be in [0, 0.5) for CSWinsorize")
        return q
    if param is not None:
        raise KernelArgumentError(f"param is only used by CSWinsorize; got param={param!r} for {op}")
    return math.nan


def _op_code(op: str, names: tuple[str, ...], func: str) -> int:
    if not isinstance(op, str) or op not in names:
        raise KernelArgumentError(f"unknown {func} op {op!r}; expected one of: {', '.join(names)}")
    return names.index(op)


def _panel_array(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 2:
        raise KernelArgumentError(f"{name} must be a 2-D (instruments, days) array, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise KernelArgumentError(f"{name} must hold numbers, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float64)


def _spans(starts, ends, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    n, t = shape
    out = []
    for name, a in (("starts", starts), ("ends", ends)):
        arr = np.asarray(a)
        if arr.shape != (n,):
            raise KernelArgumentError(f"{name} must have shape ({n},), one entry per instrument, got {arr.shape}")
        if n and not np.issubdtype(arr.dtype, np.integer):
            raise KernelArgumentError(f"{name} must be an integer array, got dtype {arr.dtype}")
        out.append(np.ascontiguousarray(arr, dtype=np.int64))
    st, en = out
    bad = np.flatnonzero((st < 0) | (st > en) | (en > t))
    if bad.size:
        i = int(bad[0])
        raise KernelArgumentError(
            f"spans must satisfy 0 <= start <= end <= n_days ({t}); instrument {i} has [{st[i]}, {en[i]})"
        )
    return st, en


def _integer(v, name: str) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        raise KernelArgumentError(f"{name} must be an int, got {v!r}")
    return int(v)


def _window(window) -> int:
    w = _integer(window, "window")
    if w < 0:
        raise KernelArgumentError(f"window ({w}) must be >= 0")
    return w


def _real(v, name: str) -> float:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        raise KernelArgumentError(f"{name} must be a number, got {v!r}")
    f = float(v)
    if math.isnan(f):
        raise KernelArgumentError(f"{name} must not be NaN")
    return f


def _flag(v, name: str) -> None:
    if not isinstance(v, (bool, np.bool_)):
        raise KernelArgumentError(f"{name} must be True or False, got {v!r}")


def _threads(threads) -> int:
    if threads is None:
        return 0
    t = _integer(threads, "threads")
    if t < 1:
        raise KernelArgumentError(f"threads ({t}) must be >= 1, or None for the OpenMP default")
    return t


def _output(
    shape: tuple[int, int], starts: np.ndarray, ends: np.ndarray, out: np.ndarray | None = None, *inputs: np.ndarray
) -> np.ndarray:
    """The output panel (`out` if given: a caller's recycled buffer, never one of the inputs) with its
    outside-of-span cells set to NaN; the kernels write every in-span cell, so the rest is left as it
    is (filling all of it first would double the memory traffic)."""
    if out is None:
        out = np.empty(shape)
    elif not (
        isinstance(out, np.ndarray)
        and out.shape == shape
        and out.dtype == np.float64
        and out.flags.c_contiguous
        and out.flags.writeable
    ):
        raise KernelArgumentError(f"out must be a writable C-contiguous float64 array of shape {shape}")
    elif any(np.may_share_memory(out, a) for a in inputs):
        raise KernelArgumentError("out must not overlap an input: kernels read their input after writing out")
    _roll.blank_outside(out, starts, ends)
    return out


def listed_counts(starts: np.ndarray, ends: np.ndarray, n_days: int) -> np.ndarray:
    """Number of instruments inside their listing span on each day, (T,) int64."""
    events = np.zeros(n_days + 1, dtype=np.int64)
    np.add.at(events, np.clip(starts, 0, n_days), 1)
    np.add.at(events, np.clip(ends, 0, n_days), -1)
    return np.cumsum(events[:-1])


def gather_rows(
    x: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    days: slice,
    out: np.ndarray | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """The in-span cells of x (N, T) for calendar slice `days`, in (day, instrument) order, as float32:
    one column of a long (datetime, instrument) frame. `out` (float32, contiguous) may be given."""
    xa = _panel_array(x, "x")
    st, en = _spans(starts, ends, xa.shape)
    day0, day1, _ = days.indices(xa.shape[1])
    counts = listed_counts(st, en, xa.shape[1])[day0:day1]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    if out is None:
        out = np.empty(int(offsets[-1]), dtype=np.float32)
    elif out.dtype != np.float32 or out.ndim != 1 or out.shape[0] != offsets[-1] or not out.flags.c_contiguous:
        raise KernelArgumentError(f"out must be a contiguous float32 vector of {int(offsets[-1])} rows")
    _cs.gather_rows(xa, out, st, en, offsets, day0, _threads(threads))
    return out


def populate_write(buffer) -> int:
    """Map (and zero) every page of a writable buffer now, without holding the GIL, in calls of 4 MiB
    so that other threads' allocations are not held up: 0 on success, else an errno, or -1 where the
    platform lacks the call (not Linux >= 5.14)."""
    return _cs.populate_write(memoryview(buffer).cast("B"))


def available_cores() -> int:
    """CPU cores this process may run on (affinity-aware, unlike os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)
