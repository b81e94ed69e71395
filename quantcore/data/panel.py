"""The in-memory market panel: trading calendar x instrument universe x fields, numpy-backed.

Layout is (instrument, day) C-contiguous float64: each instrument's history is one contiguous row, so
the rolling kernels stream through memory and parallelise across instruments. Values outside an
instrument's listing span [start, end) are NaN; suspended days inside the span are NaN rows, as in qlib.
"""

from __future__ import annotations

import hashlib
import mmap
import threading
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from quantcore import kernels
from quantcore.errors import DataError

__all__ = ["Panel", "PRICE_FIELDS"]

#: qlib's standard daily fields; a panel may carry more (e.g. `industry`).
PRICE_FIELDS = ("open", "high", "low", "close", "volume", "vwap", "factor")


@dataclass(frozen=True, eq=False)
class Panel:
    """A market: `fields[name]` is a float64 array of shape (n_instruments, n_days)."""

    calendar: np.ndarray  # datetime64[ns], shape (T,), strictly increasing
    instruments: tuple[str, ...]  # shape (N,)
    fields: Mapping[str, np.ndarray]  # name -> float64 (N, T)
    starts: np.ndarray  # int64 (N,): first calendar index of each listing span
    ends: np.ndarray  # int64 (N,): one past the last calendar index of each listing span
    name: str = "panel"
    meta: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, t = len(self.instruments), len(self.calendar)
        if len(set(self.instruments)) != n:
            raise DataError("instrument names must be unique")
        if t > 1 and not np.all(np.diff(self.calendar.astype("datetime64[ns]").astype(np.int64)) > 0):
            raise DataError("calendar must be strictly increasing")
        for key, arr in self.fields.items():
            if arr.shape != (n, t):
                raise DataError(f"field {key!r} has shape {arr.shape}, expected ({n}, {t})")
        if self.starts.shape != (n,) or self.ends.shape != (n,):
            raise DataError("starts/ends must have one entry per instrument")
        if np.any(self.starts < 0) or np.any(self.ends > t) or np.any(self.starts > self.ends):
            raise DataError("listing spans must satisfy 0 <= start <= end <= n_days")

    @classmethod
    def from_arrays(
        cls,
        calendar: Iterable,
        instruments: Iterable[str],
        fields: Mapping[str, np.ndarray],
        starts: np.ndarray | None = None,
        ends: np.ndarray | None = None,
        name: str = "panel",
        meta: Mapping[str, str] | None = None,
    ) -> "Panel":
        """Build a panel, inferring listing spans from the first/last non-NaN close when not given,
        and blanking every value outside the spans so the NaN-outside-span invariant holds."""
        cal = pd.DatetimeIndex(pd.to_datetime(list(calendar) if not isinstance(calendar, np.ndarray) else calendar))
        cal_arr = cal.values.astype("datetime64[ns]")
        insts = tuple(str(i) for i in instruments)
        arrays = {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in fields.items()}
        n, t = len(insts), len(cal_arr)
        if starts is None or ends is None:
            anchor = arrays.get("close")
            if anchor is None:
                anchor = next(iter(arrays.values())) if arrays else np.full((n, t), np.nan)
            valid = ~np.isnan(anchor)
            has = valid.any(axis=1)
            first = np.where(has, valid.argmax(axis=1), 0)
            last = np.where(has, t - valid[:, ::-1].argmax(axis=1), 0)
            starts = first.astype(np.int64) if starts is None else starts
            ends = last.astype(np.int64) if ends is None else ends
        starts = np.asarray(starts, dtype=np.int64)
        ends = np.asarray(ends, dtype=np.int64)
        outside = outside_span_mask(starts, ends, t)
        for arr in arrays.values():
            arr[outside] = np.nan
        return cls(cal_arr, insts, arrays, starts, ends, name, dict(meta or {}))

    # ---- shape -------------------------------------------------------------------------------
    @property
    def n_instruments(self) -> int:
        return len(self.instruments)

    @property
    def n_days(self) -> int:
        return len(self.calendar)

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(self.fields)

    @cached_property
    def outside_span(self) -> np.ndarray:
        """Boolean (N, T): True where a day lies outside the instrument's listing span."""
        return outside_span_mask(self.starts, self.ends, self.n_days)

    @cached_property
    def version(self) -> str:
        """Content hash of calendar, universe, spans and every field: the data part of cache keys."""
        h = hashlib.blake2b(digest_size=16)
        h.update(self.calendar.astype("datetime64[ns]").tobytes())
        h.update("\x00".join(self.instruments).encode())
        h.update(self.starts.tobytes())
        h.update(self.ends.tobytes())
        for key in sorted(self.fields):
            h.update(key.encode())
            h.update(np.ascontiguousarray(self.fields[key]).tobytes())
        return h.hexdigest()

    def field(self, name: str) -> np.ndarray:
        try:
            return self.fields[name]
        except KeyError:
            raise DataError(
                f"field {name!r} is not in panel {self.name!r}; available: {', '.join(sorted(self.fields))}"
            ) from None

    # ---- slicing (views where possible) ------------------------------------------------------
    def date_index(self, start=None, end=None) -> slice:
        """Calendar slice covering [start, end] (inclusive, either may be None)."""
        cal = self.calendar
        i0 = 0 if start is None else int(np.searchsorted(cal, np.datetime64(pd.Timestamp(start), "ns"), "left"))
        i1 = len(cal) if end is None else int(np.searchsorted(cal, np.datetime64(pd.Timestamp(end), "ns"), "right"))
        return slice(i0, max(i0, i1))

    def slice_dates(self, start=None, end=None) -> "Panel":
        """Sub-panel for [start, end]; field arrays are views into this panel's arrays.

        Note: rolling features computed on a slice lose the look-back before `start`; compute on the
        full panel and slice the result when the left edge matters (qlib extends the left edge)."""
        s = self.date_index(start, end)
        i0, i1 = s.start, s.stop
        fields = {k: v[:, i0:i1] for k, v in self.fields.items()}
        starts = np.clip(self.starts - i0, 0, i1 - i0)
        ends = np.clip(self.ends - i0, 0, i1 - i0)
        return replace(self, calendar=self.calendar[i0:i1], fields=fields, starts=starts, ends=ends)

    def select(self, instruments: Iterable[str]) -> "Panel":
        """Sub-panel with the given instruments, in the given order."""
        pos = {name: i for i, name in enumerate(self.instruments)}
        wanted = list(instruments)
        missing = [w for w in wanted if w not in pos]
        if missing:
            raise DataError(f"instruments not in panel {self.name!r}: {', '.join(missing[:10])}")
        idx = np.array([pos[w] for w in wanted], dtype=np.int64)
        fields = {k: np.ascontiguousarray(v[idx]) for k, v in self.fields.items()}
        return replace(self, instruments=tuple(wanted), fields=fields, starts=self.starts[idx], ends=self.ends[idx])

    def with_fields(self, **new_fields: np.ndarray) -> "Panel":
        """A panel with extra/replaced fields (blanked outside listing spans)."""
        fields = dict(self.fields)
        for key, arr in new_fields.items():
            arr = np.array(arr, dtype=np.float64, copy=True)
            if arr.shape != (self.n_instruments, self.n_days):
                raise DataError(f"field {key!r} has shape {arr.shape}, expected {(self.n_instruments, self.n_days)}")
            arr[self.outside_span] = np.nan
            fields[key] = arr
        return replace(self, fields=fields)

    # ---- frames ------------------------------------------------------------------------------
    def frame_index(self, days: slice = slice(None)) -> pd.MultiIndex:
        """(datetime, instrument) index of in-span rows within `days`: by date, then in the panel's
        instrument order.

        Built from level codes, the index `MultiIndex.from_arrays` gives (sorted levels holding only
        the values that occur) without factorising 100k's of timestamps and strings."""
        inside = ~self.outside_span[:, days].T  # (T', N)
        day_idx, inst_idx = np.nonzero(inside)
        used_days = np.flatnonzero(inside.any(axis=1))
        day_code = np.empty(inside.shape[0], dtype=np.int64)
        day_code[used_days] = np.arange(len(used_days))
        names = np.asarray(self.instruments, dtype=object)
        used = np.flatnonzero(inside.any(axis=0))
        used = used[np.argsort(names[used], kind="stable")]  # level order: sorted names
        inst_code = np.empty(len(names), dtype=np.int64)
        inst_code[used] = np.arange(len(used))
        return pd.MultiIndex(
            levels=[pd.DatetimeIndex(self.calendar[days][used_days]), pd.Index(names[used])],
            codes=[day_code[day_idx], inst_code[inst_idx]],
            names=["datetime", "instrument"],
            verify_integrity=False,
        )

    def to_frame(self, columns: Mapping[str, np.ndarray], days: slice = slice(None), dtype=np.float32) -> pd.DataFrame:
        """Long frame indexed by (datetime, instrument): one row per in-span day within `days`, one
        column per (N, T) array. Built as a single column-major block so pandas does not copy it."""
        block = self.empty_block(len(columns), days, dtype)
        cells = None if block.dtype == np.float32 else self.frame_cells(days)  # once, not per column
        for j, arr in enumerate(columns.values()):
            self.fill_column(block, j, arr, days, cells)
        return pd.DataFrame(block, index=self.frame_index(days), columns=list(columns), copy=False)

    def empty_block(
        self, n_columns: int, days: slice = slice(None), dtype=np.float32, *, prefault: bool = True
    ) -> np.ndarray:
        """An uninitialised column-major (rows, n_columns) block for `to_frame`-shaped output, its
        memory mapped up front (`prefaulted_empty`) unless `prefault` is False (`huge_empty`)."""
        n_rows = int(kernels.listed_counts(self.starts, self.ends, self.n_days)[days].sum())
        return (prefaulted_empty if prefault else huge_empty)((n_rows, n_columns), dtype)

    def fill_column(
        self, block: np.ndarray, j: int, arr: np.ndarray, days: slice = slice(None), cells: np.ndarray | None = None
    ) -> None:
        """Write the in-span cells of an (N, T) array within `days` into column j of a frame block
        (`cells`: `frame_cells(days)`, if already at hand, for non-float32 blocks)."""
        if block.dtype == np.float32:
            # one thread: columns are filled while other work runs (the evaluator's DAG workers), and
            # an OpenMP team on busy cores waits at every barrier
            kernels.gather_rows(
                np.asarray(arr, dtype=np.float64), self.starts, self.ends, days, out=block[:, j], threads=1
            )
        else:
            cells = self.frame_cells(days) if cells is None else cells
            block[:, j] = np.ascontiguousarray(arr).reshape(-1)[cells]

    def frame_cells(self, days: slice = slice(None)) -> np.ndarray:
        """Flat positions in an (N, T) array of the frame's rows, in (datetime, instrument) order."""
        inside = ~self.outside_span[:, days].T  # (T', N)
        day_idx, inst_idx = np.nonzero(inside)
        return inst_idx * self.n_days + (day_idx + (days.start or 0))

    def describe(self) -> dict:
        """Summary used by `rdquant data info`."""
        close = self.fields.get("close")
        listed = int((~self.outside_span).sum())
        missing = int(np.isnan(close).sum() - self.outside_span.sum()) if close is not None else 0
        return {
            "name": self.name,
            "instruments": self.n_instruments,
            "days": self.n_days,
            "start": str(pd.Timestamp(self.calendar[0]).date()) if self.n_days else None,
            "end": str(pd.Timestamp(self.calendar[-1]).date()) if self.n_days else None,
            "fields": list(self.fields),
            "listed_rows": listed,
            "missing_close_in_span": missing,
            "version": self.version,
            **{f"meta.{k}": v for k, v in self.meta.items()},
        }


def outside_span_mask(starts: np.ndarray, ends: np.ndarray, n_days: int) -> np.ndarray:
    """Boolean (N, T) mask that is True outside each [start, end) listing span."""
    days = np.arange(n_days)[None, :]
    return (days < starts[:, None]) | (days >= ends[:, None])


def huge_empty(shape: tuple[int, int], dtype=np.float32) -> np.ndarray:
    """An uninitialised column-major array on fresh anonymous memory, asking Linux for 2 MiB pages
    (MADV_HUGEPAGE) when it is large (64 MB or more); elsewhere `np.empty`. Pages are mapped at
    first write, or all at once by `populate`."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if getattr(mmap, "MAP_POPULATE", None) is None or nbytes < (64 << 20):
        return np.empty(shape, dtype=dtype, order="F")
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        buf.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError):  # a kernel without transparent huge pages: 4 KiB pages
        pass
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order="F")


def populate(arr: np.ndarray, stop: threading.Event | None = None) -> bool:
    """Map (and zero) every page of a `huge_empty` mapping now, in GIL-free 4 MiB calls, so it may
    run on a thread while others write into the array (a write that gets to a page first maps that
    page itself; values written are kept). `stop`, once set, ends it early (checked every 32 MiB).
    False where it cannot or was stopped: Linux before 5.14 (no MADV_POPULATE_WRITE), other
    systems, or an array `huge_empty` left to `np.empty`."""
    mapping = _mapping(arr)
    if mapping is None or arr.size == 0:
        return False
    view, step = memoryview(mapping), 32 << 20
    for offset in range(0, len(view), step):
        if (stop is not None and stop.is_set()) or kernels.populate_write(view[offset : offset + step]) != 0:
            return False
    return True


def _mapping(arr: np.ndarray) -> mmap.mmap | None:
    """The mmap an array's memory comes from (through NumPy's and memoryview's bases), if any."""
    base = arr
    while base is not None and not isinstance(base, mmap.mmap):
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
    return base


def prefaulted_empty(shape: tuple[int, int], dtype=np.float32) -> np.ndarray:
    """`huge_empty`, with its memory mapped before it returns.

    A wide feature frame is hundreds of MB written once; faulting its 4 KiB pages in one at a time
    costs about twice as long as populating them in one call (MAP_POPULATE), and populating 2 MiB
    pages (MADV_HUGEPAGE, then MADV_POPULATE_WRITE) is quicker again (2-core VM, 428 MB: 0.48 s
    faulted, 0.22 s populated, 0.06 s on huge pages)."""
    arr = huge_empty(shape, dtype)
    if populate(arr) or _mapping(arr) is None:  # populated, or a plain np.empty
        return arr
    # a kernel before 5.14: populate 4 KiB pages at mapping time instead
    buf = mmap.mmap(-1, arr.nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE)
    return np.frombuffer(buf, dtype=arr.dtype).reshape(arr.shape, order="F")
