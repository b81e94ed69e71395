"""The embedded S&P 500 market: self-contained, identical to a fresh import of the shared source."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from quantcore.data import build_embedded, import_bars, load_sp500
from quantcore.data.embedded import SP500_FILE

SP500_CSV = Path(__file__).resolve().parents[3] / "shared" / "data" / "sp500_5yr.csv.gz"  # ../shared beside the repo
EMBEDDED_DIR = Path(__file__).resolve().parents[2] / "quantcore" / "data" / "_embedded"


def test_package_files_present_and_small():
    data = EMBEDDED_DIR / SP500_FILE
    assert data.stat().st_size <= 12 * 2**20
    provenance = (EMBEDDED_DIR / "PROVENANCE.md").read_text()
    assert "f1109438d6cfb3ffdaa7d4480437cfbaaedd3236" in provenance
    assert "vwap = (high + low + close) / 3" in provenance and "factor = 1" in provenance
    assert "Copyright (c) 2017 Cam Nugent" in (EMBEDDED_DIR / "LICENSE").read_text()


def test_load_sp500_shape_and_meta():
    panel = load_sp500()
    assert panel.name == "sp500"
    assert (panel.n_instruments, panel.n_days) == (505, 1259)
    assert panel.field_names == ("open", "high", "low", "close", "volume", "vwap", "factor")
    assert panel.meta["source_sha256"] == "6aea253cd19de60b568143991aaf1fa482456565c389205658d236e595e716cf"
    assert "Cam Nugent" in panel.meta["provenance"]
    assert "11 missing_ohl" in panel.meta["import_report"] and "12 ohlc_inconsistent" in panel.meta["import_report"]


def test_embedded_equals_fresh_import_of_shared_file():
    if not SP500_CSV.exists():
        pytest.skip("shared S&P 500 sample not available")
    fresh, _ = import_bars(SP500_CSV, {"Name": "instrument"})
    embedded = load_sp500()
    assert embedded.instruments == fresh.instruments
    np.testing.assert_array_equal(embedded.calendar, fresh.calendar)
    np.testing.assert_array_equal(embedded.starts, fresh.starts)
    np.testing.assert_array_equal(embedded.ends, fresh.ends)
    for name in fresh.fields:  # bit-identical, NaNs included
        np.testing.assert_array_equal(embedded.fields[name], fresh.fields[name], err_msg=name)
    assert embedded.version == fresh.version


def test_load_needs_no_csv_and_no_shared_files():
    """The product default reads only package data: CSV reading is disabled in the child process."""
    code = (
        "import pandas\n"
        "def refuse(*a, **k): raise AssertionError('load_sp500 must not read CSV')\n"
        "pandas.read_csv = refuse\n"
        "from quantcore.data import embedded\n"
        "p = embedded.load_sp500(); print(p.n_instruments)\n"
        "import quantcore, pathlib\n"
        "assert pathlib.Path(embedded.__file__).is_relative_to(pathlib.Path(quantcore.__file__).parent)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "505"


@pytest.mark.slow
def test_build_embedded_reproduces_package_file(tmp_path):
    if not SP500_CSV.exists():
        pytest.skip("shared S&P 500 sample not available")
    import pyarrow.parquet as pq

    built = pq.read_table(build_embedded(SP500_CSV, tmp_path / SP500_FILE))
    shipped = pq.read_table(EMBEDDED_DIR / SP500_FILE)
    assert built.equals(shipped)
    assert built.schema.metadata == shipped.schema.metadata
