"""How much a new factor repeats factors we already have: value correlations, daily and pooled.

`library_correlation` scores one factor against a few others, one `daily_ic` each. For originality
checks against a whole feature set (Alpha158's 158 columns, for hundreds of candidates) the
references are prepared once as a `ReferenceStack` and `daily_correlations` scores a candidate against
all of them in one batched matrix product per day, with the same pairwise-complete rules as `daily_ic`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from quantcore import kernels
from quantcore.evaluate.ic import MIN_PAIRS, daily_ic, pooled_corr

__all__ = [
    "FactorCorrelation",
    "ReferenceStack",
    "StackBuilder",
    "daily_correlation_matrix",
    "daily_correlations",
    "library_correlation",
    "reference_stack",
    "stack_components",
]

#: A side whose spread over a day's joint cells is below this share of its own spread that day (both in
#: standard deviations) counts as constant there. `daily_ic` tests the spread against 1e-12 of the
#: mean, which a one-pass sum cannot resolve; this relative floor sits far above the rounding noise of
#: the sums (~1e-8 of the spread in float32) and far below any spread worth correlating.
FLAT_SPREAD = 1e-6

_WRITE_CHUNK = 32  # float32 references written into a stack at once


@dataclass(frozen=True)
class FactorCorrelation:
    """Correlation of two factors' values: mean of the daily cross-sectional correlations, and over
    all (instrument, day) cells at once (pooled, which also sees time-series co-movement)."""

    daily_mean: float
    pooled: float


def library_correlation(
    factor: np.ndarray, library: Mapping[str, np.ndarray], min_pairs: int = MIN_PAIRS
) -> dict[str, FactorCorrelation]:
    """Name -> correlation of `factor` with each (N, T) array of `library`, in the library's order."""
    out = {}
    for name, other in library.items():
        daily = daily_ic(factor, other, min_pairs)
        ok = ~np.isnan(daily)
        out[name] = FactorCorrelation(float(daily[ok].mean()) if ok.any() else float("nan"), pooled_corr(factor, other))
    return out


# ---- batch: one factor against a stack of references ------------------------------------------------


@dataclass(frozen=True, eq=False)
class ReferenceStack:
    """F reference factors on T days x N instruments, standardised per day and laid out (T, N, F).

    Layout (T, N, F): each day is one C-contiguous (N, F) matrix, so a candidate's day (N,) times it
    is one BLAS matrix-vector product over the instruments, and the T days are one batched `matmul`.
    Each reference is centred and scaled per day over its own valid cells (Pearson does not see a
    shift or a scale), which keeps the one-pass sums below free of cancellation even in float32.
    Invalid cells hold 0 (so they add nothing to a product); which cells those are is kept compactly:
    `dead` rows (every reference invalid: instruments outside their listing) plus a list of holes
    (invalid cells in other rows: look-back warm-ups, a division by zero), so no (T, N, F) validity
    array doubles the memory.
    """

    names: tuple[str, ...]
    z: np.ndarray  # (T, N, F) standardised values, 0 where invalid; float64 or float32 (half the memory)
    center: np.ndarray  # float64 (T, F): each reference's mean over its valid cells that day
    scale: np.ndarray  # float64 (T, F): its standard deviation there (1 where it is constant)
    dead: np.ndarray  # bool (T, N): rows where every reference is invalid
    # the invalid cells of live rows ("holes") as two index arrays, row t * N + i and (day, reference)
    # t * F + f: int32 unless the stack is huge (a flat cell index would need int64 and a division per query)
    hole_row: np.ndarray
    hole_day_ref: np.ndarray
    sum_z: np.ndarray  # float64 (T, F): sum of z over them (~0: standardised)
    sum_zz: np.ndarray  # float64 (T, F): sum of z * z over them (~ its valid cells)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(days, instruments, references)."""
        return self.z.shape  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        return sum(
            a.nbytes
            for a in (
                self.z,
                self.center,
                self.scale,
                self.dead,
                self.hole_row,
                self.hole_day_ref,
                self.sum_z,
                self.sum_zz,
            )
        )

    def take(self, days: np.ndarray | Sequence[int]) -> "ReferenceStack":
        """The stack on a subset of its days (distinct positions into its day axis, in the order given)."""
        days = np.asarray(days, dtype=np.int64)
        t, n, f = self.shape
        if days.ndim != 1 or (days.size and (days.min() < 0 or days.max() >= t)) or np.unique(days).size != days.size:
            raise ValueError(f"days must be distinct day positions in [0, {t}), got {days!r}")
        position = np.full(t, -1, dtype=np.int64)
        position[days] = np.arange(days.size)
        old_t, k = np.divmod(self.hole_day_ref, f)
        new_t = position[old_t]
        keep = new_t >= 0
        new_t = new_t[keep]
        i = self.hole_row[keep] - old_t[keep] * n
        k = k[keep]
        idx = _index_dtype(days.size, n, f)
        return ReferenceStack(
            self.names,
            np.ascontiguousarray(self.z[days]),
            self.center[days],
            self.scale[days],
            self.dead[days],
            (new_t * n + i).astype(idx),
            (new_t * f + k).astype(idx),
            self.sum_z[days],
            self.sum_zz[days],
        )


class StackBuilder:
    """Fills a `ReferenceStack` one reference at a time, so a caller can evaluate a large feature set
    in chunks and never hold all of it as (N, T_full) arrays."""

    def __init__(self, names: Sequence[str], n_instruments: int, n_days: int, dtype: np.dtype | type = np.float64):
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"a reference stack is float32 or float64, got {dtype}")
        self.names = tuple(names)
        if len(set(self.names)) != len(self.names):
            raise ValueError("reference names must be unique")
        f = len(self.names)
        self._z = np.zeros((n_days, n_instruments, f), dtype=dtype)
        self._live = np.zeros((n_instruments, n_days), dtype=bool)  # (N, T): some reference is valid
        self._holes: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # k -> its invalid cells (days, instruments)
        self._index = _index_dtype(n_days, n_instruments, f)
        self._pending: list[np.ndarray] = []  # float32 references waiting to be written, from _pending_start
        self._pending_start = 0
        self._center = np.zeros((n_days, f))
        self._scale = np.ones((n_days, f))
        self._sum_z = np.zeros((n_days, f))
        self._sum_zz = np.zeros((n_days, f))

    def add(self, k: int, values: np.ndarray) -> None:
        """Set reference `k` from its (N, T) values; +-inf counts as missing, like NaN."""
        t, n, _ = self._z.shape
        y = np.asarray(values, dtype=np.float64)
        if y.shape != (n, t):
            raise ValueError(
                f"reference {self.names[k]!r} has shape {y.shape}; expected (instruments, days) = {(n, t)}"
            )
        valid = np.isfinite(y)
        count = valid.sum(axis=0)
        safe = np.maximum(count, 1)
        invalid = ~valid
        d = np.where(valid, y, 0.0)
        center = d.sum(axis=0) / safe
        d -= center  # two-pass: the mean first, then the spread
        d[invalid] = 0.0
        scale = np.sqrt(np.einsum("nt,nt->t", d, d) / safe)
        scale[~(scale > 0)] = 1.0  # a constant (or empty) day: centred only, the flat test catches it
        d /= scale
        z = d.astype(self._z.dtype, copy=False)
        self._write(k, z)
        z = z.astype(np.float64, copy=False)  # the sums of exactly the stored values
        self._sum_z[:, k] = z.sum(axis=0)
        self._sum_zz[:, k] = np.einsum("nt,nt->t", z, z)
        self._center[:, k] = center
        self._scale[:, k] = scale
        self._live |= valid
        miss_i, miss_t = np.divmod(np.flatnonzero(invalid), t)  # (a 2-d nonzero is slower)
        self._holes[k] = (miss_t.astype(self._index), miss_i.astype(self._index))

    def _write(self, k: int, z: np.ndarray) -> None:
        """z (N, T) into reference k of the (T, N, F) store. A column of the store is strided (each
        value on its own cache line), so float32 references are written 32 at a time by the compiled
        interleave kernel, 3-5x faster; float64 stacks (small libraries) are written one by one."""
        if self._z.dtype != np.float32:
            self._z[:, :, k] = z.T
            return
        if self._pending and k != self._pending_start + len(self._pending):
            self._flush()
        if not self._pending:
            self._pending_start = k
        self._pending.append(z)
        if len(self._pending) == _WRITE_CHUNK:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            kernels.interleave(self._pending, self._z, self._pending_start, threads=1)
            self._pending = []

    def build(self) -> ReferenceStack:
        """The finished stack (the builder gives up its arrays to it)."""
        self._flush()
        missing = [name for k, name in enumerate(self.names) if k not in self._holes]
        if missing:
            raise ValueError(f"references never added: {', '.join(missing[:5])}")
        t, n, f = self._z.shape
        dead = np.ascontiguousarray(~self._live.T)
        rows, day_refs = [], []
        for k in range(f):
            miss_t, miss_i = self._holes.pop(k)
            keep = ~dead[miss_t, miss_i]  # a dead row's cells are accounted for by `dead`
            rows.append(miss_t[keep] * n + miss_i[keep])
            day_refs.append(miss_t[keep] * f + k)
        empty = np.zeros(0, dtype=self._index)
        return ReferenceStack(
            self.names,
            self._z,
            self._center,
            self._scale,
            dead,
            np.concatenate(rows or [empty]).astype(self._index),
            np.concatenate(day_refs or [empty]).astype(self._index),
            self._sum_z,
            self._sum_zz,
        )


def _index_dtype(t: int, n: int, f: int) -> type:
    return np.int32 if max(t * n, t * f) < 2**31 else np.int64


def reference_stack(
    references: Mapping[str, np.ndarray] | np.ndarray, *, dtype: np.dtype | type = np.float64
) -> ReferenceStack:
    """A `ReferenceStack` from name -> (N, T) arrays, or from an already stacked (T, N, F) array
    (references then named "0", "1", ...)."""
    if isinstance(references, np.ndarray):
        if references.ndim != 3:
            raise ValueError(
                f"a stacked reference array is (days, instruments, references), got shape {references.shape}"
            )
        t, n, f = references.shape
        builder = StackBuilder([str(k) for k in range(f)], n, t, dtype)
        for k in range(f):
            builder.add(k, references[:, :, k].T)
        return builder.build()
    names = list(references)
    if not names:
        raise ValueError("no references to stack")
    n, t = np.shape(references[names[0]])
    builder = StackBuilder(names, n, t, dtype)
    for k, name in enumerate(names):
        builder.add(k, references[name])
    return builder.build()


def daily_correlation_matrix(
    x: np.ndarray, stack: ReferenceStack | np.ndarray, days: np.ndarray | None = None, min_pairs: int = MIN_PAIRS
) -> np.ndarray:
    """(T, F) daily cross-sectional Pearson correlation of the (N, T) factor `x` with each reference,
    equal to `daily_ic(x, reference_k)` day by day: a day counts only with >= `min_pairs` instruments
    valid on both sides (pairwise complete; +-inf is missing) and some spread on each, else NaN.

    `stack`: a `ReferenceStack` on the same T days as `x`, or a (T, N, F) array (stacked here, float64).
    `days`: positions into that day axis to score only those days (a subsample for bulk screening)."""
    if not isinstance(stack, ReferenceStack):
        stack = reference_stack(np.asarray(stack, dtype=np.float64))
    x = np.asarray(x, dtype=np.float64)
    t, n, f = stack.shape
    if x.shape != (n, t):
        raise ValueError(f"x has shape {x.shape}; the references are (instruments, days) = {(n, t)}")
    if days is not None:
        days = np.asarray(days, dtype=np.int64)
        stack, x = stack.take(days), x[:, days]
        t = days.size
    xt = x.T  # (T, N)
    vx = np.isfinite(xt)
    cnt_x = np.maximum(vx.sum(axis=1), 1)
    with np.errstate(invalid="ignore"):
        cx = np.where(vx, xt, 0.0).sum(axis=1) / cnt_x
        dx = np.where(vx, xt - cx[:, None], 0.0)
    sx = np.sqrt((dx * dx).sum(axis=1) / cnt_x)
    sx[~(sx > 0)] = 1.0
    x0 = (dx / sx[:, None]).astype(stack.z.dtype)  # (T, N), 0 where x is invalid
    x64 = x0.astype(np.float64)  # the sums below see exactly the values the product sees

    # candidate-side sums over rows where some reference is valid, minus the reference's holes
    live = vx & ~stack.dead
    xl = np.where(live, x64, 0.0)
    n_j = np.repeat(live.sum(axis=1).astype(np.float64)[:, None], f, axis=1)
    s_x = np.repeat(xl.sum(axis=1)[:, None], f, axis=1)
    s_xx = np.repeat((xl * xl).sum(axis=1)[:, None], f, axis=1)
    if stack.hole_row.size:
        on = vx.ravel()[stack.hole_row]
        tf = stack.hole_day_ref[on]
        vals = x64.ravel()[stack.hole_row[on]]
        n_j -= np.bincount(tf, minlength=t * f).reshape(t, f)
        s_x -= np.bincount(tf, weights=vals, minlength=t * f).reshape(t, f)
        s_xx -= np.bincount(tf, weights=vals * vals, minlength=t * f).reshape(t, f)

    # reference-side sums: over all its valid cells, minus the live rows where x is missing (few, usually)
    s_y, s_yy = stack.sum_z.copy(), stack.sum_zz.copy()
    t_m, i_m = np.nonzero(~vx & ~stack.dead)
    if t_m.size:
        g = stack.z[t_m, i_m, :].astype(np.float64)  # (K, F)
        tf = (t_m[:, None] * f + np.arange(f)).ravel()  # bincount: a reduceat over axis 0 is slower
        s_y -= np.bincount(tf, weights=g.ravel(), minlength=t * f).reshape(t, f)
        s_yy -= np.bincount(tf, weights=(g * g).ravel(), minlength=t * f).reshape(t, f)

    # the one product over instruments: (T, 1, N) @ (T, N, F)
    s_xy = np.matmul(x0[:, None, :], stack.z)[:, 0, :].astype(np.float64)

    with np.errstate(invalid="ignore", divide="ignore"):
        c_xx = s_xx - s_x * s_x / n_j
        c_yy = s_yy - s_y * s_y / n_j
        c_xy = s_xy - s_x * s_y / n_j
        r = c_xy / np.sqrt(c_xx * c_yy)
        # daily_ic's constant-day test (spread vs 1e-12 of the mean, in the original units) ...
        mx = cx[:, None] + sx[:, None] * s_x / n_j
        my = stack.center + stack.scale * s_y / n_j
        flat = (c_xx * sx[:, None] ** 2 <= n_j * (1e-12 * mx) ** 2) | (c_yy * stack.scale**2 <= n_j * (1e-12 * my) ** 2)
        # ... and a floor the one-pass sums can resolve (see FLAT_SPREAD)
        flat |= (c_xx <= n_j * FLAT_SPREAD**2) | (c_yy <= n_j * FLAT_SPREAD**2)
    r[(n_j < min_pairs) | flat | ~np.isfinite(r)] = np.nan
    return np.clip(r, -1.0, 1.0)


def daily_correlations(
    x: np.ndarray, stack: ReferenceStack | np.ndarray, days: np.ndarray | None = None, min_pairs: int = MIN_PAIRS
) -> np.ndarray:
    """(F,) mean over the counted days of `daily_correlation_matrix(x, stack, days, min_pairs)`: for
    each reference what `library_correlation(x, {...})[name].daily_mean` gives; NaN with no day counted."""
    r = daily_correlation_matrix(x, stack, days, min_pairs)
    ok = ~np.isnan(r)
    used = ok.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, r, 0.0).sum(axis=0) / used
    mean[used == 0] = np.nan
    return mean


def stack_components(stack: ReferenceStack, k: int, chunk_days: int = 64) -> np.ndarray:
    """Top-`k` pooled principal-component scores of a reference stack, as (k, N, T) float64 controls
    (NaN on rows where every reference is invalid).

    The stack is already centred and scaled per day and reference (what the IC sees), so its pooled
    covariance over live cells is one F x F product, accumulated `chunk_days` days at a time in float64
    rather than copying the (T, N, F) stack to the (F, N, T) float64 layout
    `quantcore.evaluate.significance.principal_components` takes (~300 MB for Alpha158 on a validation
    segment). Holes (a reference invalid in a live row: a look-back warm-up) hold 0, the day's mean:
    mean imputation, which only shrinks their cell's score towards the centre."""
    t, n, f = stack.shape
    if not 1 <= k <= f:
        raise ValueError(f"k must lie in [1, {f}] references, got {k}")
    cov = np.zeros((f, f))
    for lo in range(0, t, chunk_days):
        z = stack.z[lo : lo + chunk_days].reshape(-1, f).astype(np.float64)
        cov += z.T @ z
    live = int((~stack.dead).sum())
    if live == 0:
        raise ValueError("the reference stack has no live (instrument, day) cell")
    values, vectors = np.linalg.eigh(cov / live)
    loadings = vectors[:, np.argsort(values)[::-1][:k]]  # (F, k)
    scores = np.empty((k, n, t))
    for lo in range(0, t, chunk_days):
        part = stack.z[lo : lo + chunk_days].astype(np.float64) @ loadings  # (days, N, k)
        scores[:, :, lo : lo + part.shape[0]] = part.transpose(2, 1, 0)
    scores[:, stack.dead.T] = np.nan
    return scores
