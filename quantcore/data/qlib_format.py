"""qlib's on-disk market layout, read into a `Panel` and written from one.

A qlib provider directory holds

    calendars/day.txt                      one trading date per line, YYYY-MM-DD
    instruments/all.txt                    SYMBOL<TAB>START<TAB>END, one listing span per line
    features/<symbol>/<field>.day.bin      little-endian float32: [first calendar index, v0, v1, ...]

Symbols are upper-case in `all.txt` and lower-case as folder names; field file names are lower-case.
A series covers the instrument's listing span only (qlib's `dump_bin` reindexes each symbol to the
calendar between its first and last date), so suspended days inside the span are stored as NaN.
On disk values are float32; in memory the panel holds float64.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from quantcore.data.panel import PRICE_FIELDS, Panel
from quantcore.errors import DataError

__all__ = ["read_qlib", "write_qlib", "is_qlib_dir", "symbol_to_dirname"]

FREQ = "day"
_BIN_DTYPE = np.dtype("<f4")
# Windows reserves these names for devices; qlib stores such symbols as "_qlib_<symbol>"
# (qlib/utils/__init__.py: code_to_fname), so we use the same folder names to stay readable by qlib.
_RESERVED = frozenset(["CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))])
_RESERVED_PREFIX = "_qlib_"


def symbol_to_dirname(symbol: str) -> str:
    """Folder name of a symbol under `features/`, exactly as qlib looks it up."""
    name = _RESERVED_PREFIX + symbol if symbol.upper() in _RESERVED else symbol
    return name.lower()


def is_qlib_dir(path: str | os.PathLike) -> bool:
    """True when `path` looks like a qlib provider directory (has calendars/day.txt)."""
    return (Path(path) / "calendars" / f"{FREQ}.txt").is_file()


# ---- reading ----------------------------------------------------------------------------------
def read_qlib(
    path: str | os.PathLike,
    fields: Sequence[str] | None = None,
    instruments: Iterable[str] | None = None,
    start=None,
    end=None,
    market: str = "all",
) -> Panel:
    """Read a qlib provider directory into a Panel.

    `fields=None` reads every field found under features/ (qlib's price fields first, then the rest
    sorted). `instruments=None` reads the whole market file; names match case-insensitively. `start` /
    `end` restrict the calendar (inclusive); instruments whose listing span misses that range are left
    out. Listing spans come from `instruments/<market>.txt`; a symbol with several spans is read over
    the hull of its spans. Values beyond the end of a field file, and fields an instrument has no file
    for, are NaN, as qlib returns them.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"qlib directory {root} does not exist")
    calendar = _read_calendar(root / "calendars" / f"{FREQ}.txt")
    market_file = root / "instruments" / f"{market.lower()}.txt"
    spans = _read_instruments(market_file, calendar)

    if instruments is not None:
        by_upper = {sym.upper(): sym for sym in spans}
        wanted = [str(i) for i in instruments]
        unknown = [w for w in wanted if w.upper() not in by_upper]
        if unknown:
            raise DataError(
                f"unknown instrument(s) {', '.join(unknown[:10])}: not listed in {market_file} "
                f"({len(spans)} instruments there)"
            )
        symbols = list(dict.fromkeys(by_upper[w.upper()] for w in wanted))
    else:
        symbols = list(spans)

    day_range = _date_range(calendar, start, end)
    i0, i1 = day_range.start, day_range.stop
    symbols = [s for s in symbols if spans[s][0] < i1 and spans[s][1] > i0]

    features = root / "features"
    field_names = _resolve_fields(features, symbols, fields)
    n, t = len(symbols), i1 - i0
    arrays = {f: np.full((n, t), np.nan, dtype=np.float64) for f in field_names}
    for row, sym in enumerate(symbols):
        folder = features / symbol_to_dirname(sym)
        for f in field_names:
            _read_bin_into(folder / f"{f.lower()}.{FREQ}.bin", len(calendar), i0, i1, arrays[f][row])

    starts = np.array([max(spans[s][0], i0) - i0 for s in symbols], dtype=np.int64)
    ends = np.array([min(spans[s][1], i1) - i0 for s in symbols], dtype=np.int64)
    return Panel.from_arrays(
        calendar[i0:i1],
        symbols,
        arrays,
        starts=starts,
        ends=ends,
        name=root.resolve().name,
        meta={"source": f"qlib:{root}", "market": market},
    )


def _read_calendar(file: Path) -> np.ndarray:
    if not file.is_file():
        raise DataError(f"qlib calendar {file} is missing; a qlib directory needs calendars/{FREQ}.txt")
    lines = [ln.strip() for ln in file.read_text().splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise DataError(f"qlib calendar {file} is empty")
    dates = pd.to_datetime(pd.Series(lines), errors="coerce", format="mixed")
    bad = np.flatnonzero(dates.isna().to_numpy())
    if len(bad):
        raise DataError(f"qlib calendar {file}: unparsable date {lines[bad[0]]!r} on line {bad[0] + 1}")
    cal = dates.to_numpy().astype("datetime64[ns]")
    steps = np.diff(cal.astype(np.int64))
    if np.any(steps <= 0):
        k = int(np.flatnonzero(steps <= 0)[0])
        raise DataError(f"qlib calendar {file} is not strictly increasing at line {k + 2} ({lines[k + 1]!r})")
    return cal


def _read_instruments(file: Path, calendar: np.ndarray) -> dict[str, tuple[int, int]]:
    """Symbol -> [start, end) calendar indices, in file order."""
    if not file.is_file():
        raise DataError(f"qlib instrument file {file} is missing")
    spans: dict[str, tuple[int, int]] = {}
    for lineno, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.rstrip("\r\n").split("\t")
        if len(parts) < 3:
            raise DataError(f"{file} line {lineno}: expected SYMBOL<TAB>START<TAB>END, got {line!r}")
        sym = parts[0].strip()
        try:
            lo, hi = pd.Timestamp(parts[1].strip()), pd.Timestamp(parts[2].strip())
        except (ValueError, TypeError):
            raise DataError(f"{file} line {lineno}: unparsable dates in {line!r}") from None
        if hi < lo:
            raise DataError(f"{file} line {lineno}: end {parts[2]} is before start {parts[1]}")
        s = int(np.searchsorted(calendar, np.datetime64(lo, "ns"), "left"))
        e = int(np.searchsorted(calendar, np.datetime64(hi, "ns"), "right"))
        if sym in spans:  # several spans (index membership files): read over their hull
            s, e = min(s, spans[sym][0]), max(e, spans[sym][1])
        spans[sym] = (s, e)
    return spans


def _date_range(calendar: np.ndarray, start, end) -> slice:
    i0 = 0 if start is None else int(np.searchsorted(calendar, np.datetime64(pd.Timestamp(start), "ns"), "left"))
    i1 = (
        len(calendar)
        if end is None
        else int(np.searchsorted(calendar, np.datetime64(pd.Timestamp(end), "ns"), "right"))
    )
    if i1 <= i0:
        raise DataError(f"no trading days between {start} and {end} in the qlib calendar")
    return slice(i0, i1)


def _resolve_fields(features: Path, symbols: list[str], fields: Sequence[str] | None) -> list[str]:
    suffix = f".{FREQ}.bin"
    found: set[str] = set()
    for sym in symbols:
        folder = features / symbol_to_dirname(sym)
        if folder.is_dir():
            found.update(p.name[: -len(suffix)] for p in folder.iterdir() if p.name.endswith(suffix))
    if fields is None:
        if symbols and not found:
            raise DataError(f"no feature files (*{suffix}) under {features}")
        return [f for f in PRICE_FIELDS if f in found] + sorted(found - set(PRICE_FIELDS))
    names = [str(f).lstrip("$") for f in fields]
    missing = [f for f in names if f.lower() not in found]
    if symbols and missing:
        raise DataError(
            f"field(s) {', '.join(missing)} not found under {features} (no <symbol>/<field>{suffix}); "
            f"available: {', '.join(sorted(found)) or 'none'}"
        )
    return names


def _read_bin_into(file: Path, n_calendar: int, i0: int, i1: int, out: np.ndarray) -> None:
    """Fill out[:] (calendar days i0..i1) from one qlib .bin file; a missing file leaves NaN."""
    try:
        size = file.stat().st_size
    except FileNotFoundError:
        return
    if size % 4 or size < 4:
        raise DataError(
            f"corrupt qlib file {file}: {size} bytes is not a 4-byte start index plus float32 values "
            "(truncated or not a qlib .bin)"
        )
    with open(file, "rb") as fp:
        head = np.fromfile(fp, dtype=_BIN_DTYPE, count=1)[0]
        n_values = size // 4 - 1
        if not np.isfinite(head) or head != np.floor(head) or head < 0 or head >= n_calendar:
            raise DataError(
                f"corrupt qlib file {file}: start index {head} is not a calendar index (calendar has {n_calendar} days)"
            )
        first = int(head)
        if first + n_values > n_calendar:
            raise DataError(
                f"corrupt qlib file {file}: {n_values} values from calendar index {first} run past the "
                f"calendar's {n_calendar} days"
            )
        lo, hi = max(first, i0), min(first + n_values, i1)
        if hi <= lo:
            return
        fp.seek(4 * (1 + lo - first))
        out[lo - i0 : hi - i0] = np.fromfile(fp, dtype=_BIN_DTYPE, count=hi - lo)


# ---- writing ----------------------------------------------------------------------------------
def write_qlib(panel: Panel, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write `panel` as a qlib provider directory that qlib's `D.features` reads directly.

    Each instrument's fields are stored over its listing span only, like qlib's `dump_bin`;
    instruments with an empty span are left out. An existing qlib directory is replaced only with
    `overwrite=True` (its calendars/, instruments/ and features/ are removed first).
    """
    root = Path(path)
    _check_writable(panel, root, overwrite)
    cal = pd.DatetimeIndex(panel.calendar)
    if len(cal) and not (cal == cal.normalize()).all():
        raise DataError("qlib's daily format stores dates only; the panel calendar has intraday timestamps")
    days = cal.strftime("%Y-%m-%d")

    for sub in ("calendars", "instruments", "features"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "calendars" / f"{FREQ}.txt").write_text("".join(d + "\n" for d in days))

    lines = []
    header = np.empty(1, dtype=_BIN_DTYPE)
    for i, sym in enumerate(panel.instruments):
        s, e = int(panel.starts[i]), int(panel.ends[i])
        if e <= s:
            continue
        lines.append(f"{sym.upper()}\t{days[s]}\t{days[e - 1]}\n")
        folder = root / "features" / symbol_to_dirname(sym)
        folder.mkdir(exist_ok=True)
        header[0] = s
        for name, arr in panel.fields.items():
            with open(folder / f"{name.lower()}.{FREQ}.bin", "wb") as fp:
                fp.write(header.tobytes())
                fp.write(arr[i, s:e].astype(_BIN_DTYPE).tobytes())
    (root / "instruments" / "all.txt").write_text("".join(lines))
    return root


def _check_writable(panel: Panel, root: Path, overwrite: bool) -> None:
    dirs = {}
    for sym in panel.instruments:
        if not sym or any(c in sym for c in "\t\n\r/\\") or sym in (".", ".."):
            raise DataError(f"instrument name {sym!r} cannot be stored in qlib format")
        d = symbol_to_dirname(sym)
        if d in dirs:
            raise DataError(f"instruments {dirs[d]!r} and {sym!r} differ only by case; qlib cannot tell them apart")
        dirs[d] = sym
    lowered: dict[str, str] = {}
    for name in panel.fields:
        if not name or any(c in name for c in "/\\.\t\n") or name.lower() in lowered:
            raise DataError(
                f"field name {name!r} cannot be stored in qlib format (names must be distinct when lower-cased)"
            )
        lowered[name.lower()] = name
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} exists and is not a directory")
    existing = [sub for sub in ("calendars", "instruments", "features") if (root / sub).exists()]
    if existing:
        if not overwrite:
            raise DataError(
                f"{root} already holds qlib data ({', '.join(existing)}); pass overwrite=True (--force) to replace it"
            )
        for sub in existing:
            shutil.rmtree(root / sub)
