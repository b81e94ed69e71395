"""Import long-format daily bars (one row per date x instrument) from CSV or Parquet into a `Panel`.

Required columns after the column mapping: date, instrument, open, high, low, close, volume.
Optional: vwap, factor, and any extra numeric column (kept as a field, e.g. `industry`).
Column names are matched case-insensitively (`Open` is `open`).

Validation, in two tiers:

* Errors (raise `DataValidationError` listing every problem found): missing required columns,
  unparsable dates, intraday timestamps, empty instrument names, unparsable numbers, duplicate
  (date, instrument) rows, negative prices or volume.
* Reported defects (counted with examples in the `ImportReport`, never dropped): rows with missing
  open/high/low, rows with a missing close, OHLC-inconsistent rows (high < max(open, close),
  low > min(open, close) or high < low) and zero-volume rows. The policy is explicit:
  `DefectPolicy.KEEP` (default) keeps such rows exactly as found; `DefectPolicy.RAISE` turns them into
  a `DataValidationError` (`rdquant data import --strict`).

Derivations, always stated in the report: a missing vwap column becomes (high + low + close) / 3
(NaN where any of them is missing); a missing factor column becomes 1.0 on every row.

The calendar is the union of all dates; an instrument's listing span runs from its first to its last
row; days inside the span without a row are suspended and hold NaN in every field.
"""

from __future__ import annotations

import enum
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from quantcore.data.panel import Panel
from quantcore.errors import DataError, DataValidationError

__all__ = ["DefectPolicy", "Defect", "ImportReport", "import_bars", "read_bars", "bars_to_panel", "REQUIRED_COLUMNS"]

REQUIRED_COLUMNS = ("date", "instrument", "open", "high", "low", "close", "volume")
_PRICES = ("open", "high", "low", "close", "vwap")
_MAX_EXAMPLES = 5  # examples kept per reported defect
_MAX_ERRORS_PER_KIND = 50  # validation problems listed per kind before summarising the rest


class DefectPolicy(enum.Enum):
    """What to do with rows that are suspicious but not invalid (missing OHL, OHLC-inconsistent, zero volume)."""

    KEEP = "keep"  # keep the row exactly as found and report it
    RAISE = "raise"  # fail the import with a DataValidationError listing the rows


@dataclass(frozen=True)
class Defect:
    """One kind of reported defect: how many rows, and a few of them as 'INSTRUMENT DATE: detail'."""

    kind: str
    description: str
    count: int
    examples: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImportReport:
    """What an import found and did; `summary()` is the one-paragraph version stored in panel meta."""

    source: str
    rows: int
    instruments: int
    days: int
    start: str
    end: str
    fields: tuple[str, ...]
    suspended_days: int  # in-span (instrument, day) cells without a row
    defects: tuple[Defect, ...]
    derived: tuple[str, ...] = ()  # fields that were not in the input, and how they were made
    ignored_columns: tuple[str, ...] = ()  # non-numeric extra columns that were not imported
    policy: str = DefectPolicy.KEEP.value
    column_map: Mapping[str, str] = field(default_factory=dict)

    def defect(self, kind: str) -> Defect:
        for d in self.defects:
            if d.kind == kind:
                return d
        raise KeyError(kind)

    @property
    def defect_rows(self) -> int:
        return sum(d.count for d in self.defects)

    def summary(self) -> str:
        parts = [
            f"{self.rows} rows, {self.instruments} instruments, {self.days} days ({self.start}..{self.end})",
            f"{self.suspended_days} suspended instrument-days",
            "defects (kept as found): " if self.policy == DefectPolicy.KEEP.value else "defects: ",
        ]
        parts[-1] += ", ".join(f"{d.count} {d.kind}" for d in self.defects) or "none"
        parts += [f"derived {d}" for d in self.derived]
        if self.ignored_columns:
            parts.append(f"ignored non-numeric columns: {', '.join(self.ignored_columns)}")
        return "; ".join(parts)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["column_map"] = dict(self.column_map)
        return out


# ---- public entry points ----------------------------------------------------------------------
def import_bars(
    source: str | os.PathLike | pd.DataFrame,
    column_map: Mapping[str, str] | None = None,
    policy: DefectPolicy = DefectPolicy.KEEP,
    name: str | None = None,
) -> tuple[Panel, ImportReport]:
    """Read, validate and pivot long-format daily bars; returns the panel and what the import found."""
    policy = DefectPolicy(policy)
    label = "<DataFrame>" if isinstance(source, pd.DataFrame) else str(source)
    frame = source.copy() if isinstance(source, pd.DataFrame) else read_bars(source)
    row_label = _csv_line if _is_csv(label) else _row_number
    bars, ignored = _validate(frame, column_map or {}, label, row_label)
    if name is None:
        name = "bars" if isinstance(source, pd.DataFrame) else _stem(Path(label))
    return bars_to_panel(bars, label, name, policy, row_label, dict(column_map or {}), ignored)


def read_bars(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV (optionally compressed) or Parquet file as a raw frame, all CSV columns as text."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"bars file {p} does not exist")
    suffixes = [s.lower() for s in p.suffixes]
    try:
        if suffixes and suffixes[-1] in (".parquet", ".pq"):
            return pd.read_parquet(p)
        if _is_csv(str(p)):
            # Only empty cells are missing: a ticker such as "NA" must stay a name. Columns holding a bad
            # number come back as text and are parsed cell by cell in validation, naming the bad cells.
            return pd.read_csv(p, keep_default_na=False, na_values=[""])
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read {p}: {exc}") from None
    raise DataError(f"unsupported bars file {p}: expected .csv, .csv.gz/.bz2/.zip/.xz/.zst or .parquet")


def bars_to_panel(
    bars: pd.DataFrame,
    source: str = "<bars>",
    name: str = "bars",
    policy: DefectPolicy = DefectPolicy.KEEP,
    row_label=None,
    column_map: Mapping[str, str] | None = None,
    ignored: tuple[str, ...] = (),
) -> tuple[Panel, ImportReport]:
    """Pivot validated bars (datetime64 `date`, str `instrument`, float columns) into a Panel.

    Reports defects, applies `policy` and derives vwap/factor when absent."""
    row_label = row_label or _row_number
    defects = _find_defects(bars, row_label)
    if policy is DefectPolicy.RAISE and any(d.count for d in defects):
        problems = [
            f"{d.count} {d.kind} rows ({d.description}), e.g. {'; '.join(d.examples)}" for d in defects if d.count
        ]
        raise DataValidationError(f"{source}: defective rows and the policy is 'raise' (strict)", problems)

    derived = []
    columns = [c for c in bars.columns if c not in ("date", "instrument")]
    values = {c: bars[c].to_numpy(dtype=np.float64) for c in columns}
    if "vwap" not in values:
        values["vwap"] = (values["high"] + values["low"] + values["close"]) / 3.0
        derived.append("vwap = (high + low + close) / 3 (no vwap column)")
    if "factor" not in values:
        values["factor"] = np.ones(len(bars))
        derived.append("factor = 1.0 (no factor column)")
    order = ["open", "high", "low", "close", "volume", "vwap", "factor"]
    order += [c for c in columns if c not in order]

    # factorize hashes instead of sorting strings; sort=True gives instruments and calendar in order.
    inst_codes, insts = pd.factorize(bars["instrument"], sort=True)
    day_codes, calendar = pd.factorize(bars["date"], sort=True)
    insts = [str(i) for i in insts]
    calendar = np.asarray(calendar, dtype="datetime64[ns]")
    n, t = len(insts), len(calendar)
    arrays = {}
    for c in order:
        arr = np.full((n, t), np.nan)
        arr[inst_codes, day_codes] = values[c]
        arrays[c] = arr
    starts = np.full(n, t, dtype=np.int64)
    np.minimum.at(starts, inst_codes, day_codes)
    ends = np.zeros(n, dtype=np.int64)
    np.maximum.at(ends, inst_codes, day_codes + 1)
    present = np.bincount(inst_codes, minlength=n)
    suspended = int((ends - starts - present).sum())

    report = ImportReport(
        source=source,
        rows=len(bars),
        instruments=n,
        days=t,
        start=str(pd.Timestamp(calendar[0]).date()) if t else "",
        end=str(pd.Timestamp(calendar[-1]).date()) if t else "",
        fields=tuple(order),
        suspended_days=suspended,
        defects=defects,
        derived=tuple(derived),
        ignored_columns=tuple(ignored),
        policy=policy.value,
        column_map=dict(column_map or {}),
    )
    panel = Panel.from_arrays(
        calendar,
        insts,
        arrays,
        starts=starts,
        ends=ends,
        name=name,
        meta={"source": source, "import_report": report.summary()},
    )
    return panel, report


# ---- validation -------------------------------------------------------------------------------
def _validate(
    frame: pd.DataFrame, column_map: Mapping[str, str], source: str, row_label
) -> tuple[pd.DataFrame, tuple[str, ...]]:
    present = [str(c) for c in frame.columns]
    unknown_src = [s for s in column_map if s not in present]
    if unknown_src:
        raise DataValidationError(
            f"{source}: column map names column(s) not in the file: {', '.join(unknown_src)}; "
            f"columns present: {', '.join(present)}"
        )
    frame = frame.rename(columns={**{c: c.strip().lower() for c in present if c not in column_map}, **column_map})
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    dupes = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if dupes:
        raise DataValidationError(
            f"{source}: several columns map to {', '.join(dupes)}; columns present: {', '.join(present)}"
        )
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        hint = " (map them with --map SRC=DST, e.g. --map Name=instrument)"
        raise DataValidationError(
            f"{source}: missing required column(s) {', '.join(missing)}; columns present: {', '.join(present)}{hint}"
        )

    if len(frame) == 0:
        raise DataValidationError(f"{source}: no rows")

    problems: list[str] = []
    out = {}
    date_raw = frame["date"]
    if pd.api.types.is_datetime64_any_dtype(date_raw):
        dates = pd.to_datetime(date_raw)
    else:
        text = date_raw.astype("string").str.strip()
        dates = pd.to_datetime(text, errors="coerce", format="ISO8601")
        if dates.isna().any():  # not ISO: let pandas infer, still per-cell
            dates = pd.to_datetime(text, errors="coerce", format="mixed")
    if getattr(dates.dt, "tz", None) is not None:
        dates = dates.dt.tz_localize(None)
    bad = dates.isna().to_numpy()
    _collect(problems, bad, lambda i: f"{row_label(i)}: unparsable date {date_raw.iloc[i]!r}", "unparsable dates")
    intraday = (~bad) & (dates != dates.dt.normalize()).to_numpy()
    _collect(
        problems,
        intraday,
        lambda i: f"{row_label(i)}: timestamp {dates.iloc[i]} has a time of day; daily bars expected",
        "intraday timestamps",
    )
    out["date"] = dates.to_numpy(dtype="datetime64[ns]")

    inst = frame["instrument"].astype("string").str.strip()
    empty = (inst.isna() | (inst == "")).to_numpy(dtype=bool)
    _collect(problems, empty, lambda i: f"{row_label(i)}: empty instrument name", "empty instrument names")
    out["instrument"] = inst.fillna("").to_numpy(dtype=object)

    ignored = []
    for col in frame.columns:
        if col in ("date", "instrument"):
            continue
        raw = frame[col]
        if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
            num, unparsable = raw, np.zeros(len(raw), dtype=bool)
        else:
            num = pd.to_numeric(raw.astype("string").str.strip(), errors="coerce")
            unparsable = (num.isna() & raw.notna() & (raw.astype("string").str.strip() != "")).to_numpy(dtype=bool)
        if col not in REQUIRED_COLUMNS and col not in ("vwap", "factor") and unparsable.all():
            ignored.append(col)  # a text column (sector name, exchange ...): not a numeric field
            continue
        _collect(
            problems,
            unparsable,
            lambda i, c=col, r=raw: f"{row_label(i)}: column {c}: unparsable number {r.iloc[i]!r}",
            f"unparsable {col} values",
        )
        vals = num.to_numpy(dtype=np.float64, na_value=np.nan)
        if col in _PRICES or col == "volume":
            neg = vals < 0
            what = "price" if col in _PRICES else "volume"
            _collect(
                problems,
                neg,
                lambda i, c=col, v=vals: f"{row_label(i)} ({out['instrument'][i]}): negative {what} {c}={v[i]:g}",
                f"negative {col} values",
            )
        out[col] = vals

    ok = ~(bad | empty)
    key = pd.DataFrame({"date": out["date"], "instrument": out["instrument"]})
    dup = key.duplicated(keep=False).to_numpy() & ok
    if dup.any():
        positions = np.flatnonzero(dup)
        groups = key[dup].groupby(["instrument", "date"], sort=True).indices
        for k, ((sym, day), idx) in enumerate(groups.items()):
            if k == _MAX_ERRORS_PER_KIND:
                problems.append(f"... and {len(groups) - k} more duplicated (date, instrument) pairs")
                break
            rows = ", ".join(row_label(int(positions[j])) for j in idx[:5])
            problems.append(f"duplicate rows for {sym} on {pd.Timestamp(day).date()}: {rows}")
    if problems:
        raise DataValidationError(f"{source}: invalid bars, fix the rows below and import again", problems)
    return pd.DataFrame(out), tuple(ignored)


def _collect(problems: list[str], mask: np.ndarray, describe, kind: str) -> None:
    idx = np.flatnonzero(mask)
    problems.extend(describe(int(i)) for i in idx[:_MAX_ERRORS_PER_KIND])
    if len(idx) > _MAX_ERRORS_PER_KIND:
        problems.append(f"... and {len(idx) - _MAX_ERRORS_PER_KIND} more rows with {kind}")


def _find_defects(bars: pd.DataFrame, row_label) -> tuple[Defect, ...]:
    o, h, lo, c = (bars[k].to_numpy(dtype=np.float64) for k in ("open", "high", "low", "close"))
    v = bars["volume"].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        # NaN compares False, so rows with a missing price count only under missing_ohl / missing_close.
        inconsistent = (h < np.fmax(o, c)) | (lo > np.fmin(o, c)) | (h < lo)
        inconsistent &= ~(np.isnan(o) | np.isnan(h) | np.isnan(lo) | np.isnan(c))
    checks = [
        ("missing_ohl", "open, high or low is empty", np.isnan(o) | np.isnan(h) | np.isnan(lo)),
        ("missing_close", "close is empty", np.isnan(c)),
        ("ohlc_inconsistent", "high < max(open, close), low > min(open, close) or high < low", inconsistent),
        ("zero_volume", "volume is 0", v == 0),
    ]
    inst, dates = bars["instrument"], bars["date"]
    defects = []
    for kind, desc, mask in checks:
        idx = np.flatnonzero(mask)
        ex = tuple(
            f"{inst.iloc[i]} {pd.Timestamp(dates.iloc[i]).date()} ({row_label(i)}): "
            f"o={o[i]:.10g} h={h[i]:.10g} l={lo[i]:.10g} c={c[i]:.10g} v={v[i]:.12g}"
            for i in idx[:_MAX_EXAMPLES]
        )
        defects.append(Defect(kind, desc, int(len(idx)), ex))
    return tuple(defects)


def _is_csv(name: str) -> bool:
    low = name.lower()
    return any(low.endswith(".csv" + z) for z in ("", ".gz", ".bz2", ".zip", ".xz", ".zst"))


def _csv_line(i: int) -> str:
    return f"line {i + 2}"  # line 1 is the header


def _row_number(i: int) -> str:
    return f"row {i}"


def _stem(p: Path) -> str:
    name = p.name
    for ext in (".gz", ".bz2", ".zip", ".xz", ".zst", ".csv", ".parquet", ".pq"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
    return name or "bars"
