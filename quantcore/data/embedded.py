"""The real S&P 500 sample shipped inside the package: 505 instruments x 1259 days, 2013-02-08..2018-02-07.

`load_sp500()` needs nothing outside the package. The file `_embedded/sp500_5yr.parquet` holds the
source's long-format bars sorted by (instrument, date): prices as int32 in units of 1/10000 dollar
(every source price has at most 4 decimals, so `int / 10000` gives back exactly the float64 that
parsing the CSV gives), volume as int32, delta-encoded and zstd-compressed. Loading runs the bars
through the same importer as a CSV import (defect report, vwap/factor derivation), so the panel is
identical to `import_bars(<source csv>, {"Name": "instrument"})`. Provenance and licence sit next to
the file (PROVENANCE.md, LICENSE); `build_embedded` regenerates it from the source CSV.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from quantcore.data.importer import DefectPolicy, bars_to_panel, import_bars
from quantcore.data.panel import Panel
from quantcore.errors import DataError

__all__ = ["load_sp500", "build_embedded", "SP500_FILE", "SP500_COLUMN_MAP"]

SP500_FILE = "sp500_5yr.parquet"
SP500_COLUMN_MAP = {"Name": "instrument"}
_PRICE_COLUMNS = ("open", "high", "low", "close")
_PRICE_SCALE = 10_000  # prices stored as integer 1/10000 dollars
_PROVENANCE = (
    "Kaggle 'S&P 500 stock data' (camnugent/sandp500), GitHub CNuge/kaggle-code "
    "f1109438d6cfb3ffdaa7d4480437cfbaaedd3236 stock_data/all_stocks_5yr.csv; MIT (c) 2017 Cam Nugent; "
    "quotes from IEX"
)


def load_sp500() -> Panel:
    """The embedded S&P 500 market as a Panel named "sp500" (vwap = (high+low+close)/3, factor = 1)."""
    ref = resources.files("quantcore.data") / "_embedded" / SP500_FILE
    with resources.as_file(ref) as path:
        if not Path(path).is_file():
            raise DataError(f"embedded market file {path} is missing; reinstall rdquant or run build_embedded()")
        table = pq.read_table(path)
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items() if not k.startswith(b"ARROW")}
    bars = _table_to_bars(table)
    panel, report = bars_to_panel(bars, source=f"embedded:{SP500_FILE}", name="sp500")
    return replace(
        panel,
        meta={
            "source": f"embedded:{SP500_FILE}",
            "provenance": _PROVENANCE,
            "source_sha256": meta.get("rdquant.source_sha256", ""),
            "derived": "; ".join(report.derived),
            "import_report": report.summary(),
        },
    )


def build_embedded(src_csv: str | os.PathLike, dst: str | os.PathLike | None = None) -> Path:
    """Import `src_csv` (the sp500_5yr.csv.gz sample) and write the compact package file to `dst`.

    Fails if a price is not exactly representable in 1/10000 units or a volume not an int32, so the
    stored file always reproduces the import bit for bit."""
    src = Path(src_csv)
    dst = Path(dst) if dst is not None else Path(__file__).parent / "_embedded" / SP500_FILE
    panel, report = import_bars(src, SP500_COLUMN_MAP, DefectPolicy.KEEP)
    extra = set(panel.fields) - {*_PRICE_COLUMNS, "volume", "vwap", "factor"}
    if extra or "vwap" not in " ".join(report.derived) or "factor" not in " ".join(report.derived):
        raise DataError(
            f"{src}: the embedded format stores open/high/low/close/volume only; found {sorted(panel.fields)}"
        )

    inside = ~panel.outside_span  # (N, T)
    traded = inside & _row_present(panel)
    inst_idx, day_idx = np.nonzero(traded)  # row-major: sorted by instrument, then date
    if len(inst_idx) != report.rows:
        raise DataError(f"{src}: {report.rows - len(inst_idx)} rows hold no value at all and cannot be embedded")
    cols: dict[str, pa.Array] = {
        "instrument": pa.DictionaryArray.from_arrays(
            pa.array(inst_idx.astype(np.int32)), pa.array(list(panel.instruments), pa.string())
        ),
        "date": pa.array(pd.DatetimeIndex(panel.calendar[day_idx]).date, pa.date32()),
    }
    for c in _PRICE_COLUMNS:
        x = panel.fields[c][inst_idx, day_idx]
        missing = np.isnan(x)
        scaled = np.round(np.where(missing, 0.0, x) * _PRICE_SCALE)
        if np.any(scaled / _PRICE_SCALE != np.where(missing, 0.0, x)) or np.abs(scaled).max() >= 2**31:
            raise DataError(f"{src}: column {c} has prices finer than 1/{_PRICE_SCALE} or too large for int32")
        cols[c] = pa.array(scaled.astype(np.int32), mask=missing)
    vol = panel.fields["volume"][inst_idx, day_idx]
    if np.any(np.isnan(vol)) or np.any(vol != np.round(vol)) or vol.max() >= 2**31 or vol.min() < 0:
        raise DataError(f"{src}: volume must be whole numbers below 2**31 to embed")
    cols["volume"] = pa.array(vol.astype(np.int32))

    table = pa.table(cols).replace_schema_metadata(
        {
            "rdquant.source": src.name,
            "rdquant.source_sha256": _sha256_uncompressed(src),
            "rdquant.price_scale": str(_PRICE_SCALE),
            "rdquant.provenance": _PROVENANCE,
        }
    )
    dst.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        table,
        dst,
        compression="zstd",
        compression_level=19,
        use_dictionary=["instrument"],
        column_encoding={c: "DELTA_BINARY_PACKED" for c in ("date", *_PRICE_COLUMNS, "volume")},
    )
    return dst


def _row_present(panel: Panel) -> np.ndarray:
    """(N, T) True where the source had a row: any stored column is non-NaN (suspended days are all-NaN)."""
    present = np.zeros((panel.n_instruments, panel.n_days), dtype=bool)
    for c in (*_PRICE_COLUMNS, "volume"):
        present |= ~np.isnan(panel.fields[c])
    return present


def _table_to_bars(table: pa.Table) -> pd.DataFrame:
    inst = table.column("instrument").combine_chunks()
    bars = {
        "date": table.column("date").cast(pa.timestamp("ns")).to_numpy(),
        "instrument": pd.Categorical.from_codes(inst.indices.to_numpy(), inst.dictionary.to_pylist()),
    }
    for c in _PRICE_COLUMNS:
        col = table.column(c).combine_chunks()
        vals = col.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> NaN
        bars[c] = vals / _PRICE_SCALE
    bars["volume"] = table.column("volume").to_numpy().astype(np.float64)
    return pd.DataFrame(bars)


def _sha256_uncompressed(path: Path) -> str:
    import gzip

    opener = gzip.open if path.suffix == ".gz" else open
    h = hashlib.sha256()
    with opener(path, "rb") as fp:
        for chunk in iter(lambda: fp.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
