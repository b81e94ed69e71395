"""qlib binary layout: hand-made directories byte by byte, round trips, corrupt files."""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantcore.data import Panel, read_qlib, synth_market, write_qlib
from quantcore.data.qlib_format import symbol_to_dirname
from quantcore.errors import DataError

DAYS = ["2020-01-02", "2020-01-03", "2020-01-06", "2020-01-07", "2020-01-08", "2020-01-09"]


def _bin(path: Path, start: int, values) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack(f"<{1 + len(values)}f", float(start), *values))


@pytest.fixture
def handmade(tmp_path: Path) -> Path:
    """Two instruments: AAA over the whole calendar with a suspended day, BBB listed on day 2..4."""
    (tmp_path / "calendars").mkdir()
    (tmp_path / "calendars" / "day.txt").write_text("\n".join(DAYS) + "\n")
    (tmp_path / "instruments").mkdir()
    (tmp_path / "instruments" / "all.txt").write_text("AAA\t2020-01-02\t2020-01-09\nBBB\t2020-01-06\t2020-01-08\n")
    nan = float("nan")
    _bin(tmp_path / "features" / "aaa" / "close.day.bin", 0, [1.5, 2.5, nan, 4.25, 5.0, 6.0])
    _bin(tmp_path / "features" / "aaa" / "volume.day.bin", 0, [100, 200, nan, 400, 500, 600])
    # BBB's close file is one value short of its span: the last listed day reads NaN.
    _bin(tmp_path / "features" / "bbb" / "close.day.bin", 2, [10.0, 11.0])
    _bin(tmp_path / "features" / "bbb" / "volume.day.bin", 2, [7, 8, 9])
    return tmp_path


def test_read_handmade_directory_value_by_value(handmade):
    p = read_qlib(handmade)
    assert p.instruments == ("AAA", "BBB")
    assert list(pd.DatetimeIndex(p.calendar).strftime("%Y-%m-%d")) == DAYS
    assert p.field_names == ("close", "volume")
    np.testing.assert_array_equal(p.starts, [0, 2])
    np.testing.assert_array_equal(p.ends, [6, 5])
    nan = np.nan
    np.testing.assert_array_equal(p.fields["close"][0], [1.5, 2.5, nan, 4.25, 5.0, 6.0])
    np.testing.assert_array_equal(p.fields["close"][1], [nan, nan, 10.0, 11.0, nan, nan])
    np.testing.assert_array_equal(p.fields["volume"][1], [nan, nan, 7, 8, 9, nan])
    assert p.fields["close"].dtype == np.float64


def test_read_subsets_and_case_insensitive_names(handmade):
    p = read_qlib(handmade, fields=["$volume"], instruments=["bbb"], start="2020-01-07", end="2020-01-08")
    assert p.instruments == ("BBB",)
    assert p.field_names == ("volume",)
    np.testing.assert_array_equal(p.fields["volume"], [[8.0, 9.0]])
    np.testing.assert_array_equal(p.starts, [0])
    np.testing.assert_array_equal(p.ends, [2])
    # BBB is not listed on the first two days, so a range before its listing leaves it out.
    early = read_qlib(handmade, start="2020-01-02", end="2020-01-03")
    assert early.instruments == ("AAA",)


def test_unknown_instrument_and_field_are_named(handmade):
    with pytest.raises(DataError, match=r"unknown instrument\(s\) ZZZ.*all\.txt"):
        read_qlib(handmade, instruments=["AAA", "ZZZ"])
    with pytest.raises(DataError, match=r"field\(s\) vwap not found.*available: close, volume"):
        read_qlib(handmade, fields=["vwap"])


def test_missing_calendar_is_named(handmade):
    (handmade / "calendars" / "day.txt").unlink()
    with pytest.raises(DataError, match=r"calendars/day\.txt is missing"):
        read_qlib(handmade)


@pytest.mark.parametrize(
    "payload, message",
    [
        (struct.pack("<3f", 0, 1, 2) + b"\x00\x01", "not a 4-byte start index"),
        (b"", "not a 4-byte start index"),
        (struct.pack("<3f", 17, 1, 2), "start index 17.0 is not a calendar index"),
        (struct.pack("<3f", 1.5, 1, 2), "start index 1.5 is not a calendar index"),
        (struct.pack("<8f", 0, *range(7)), "run past the calendar"),
    ],
)
def test_corrupt_bin_errors_name_the_file(handmade, payload, message):
    bad = handmade / "features" / "aaa" / "close.day.bin"
    bad.write_bytes(payload)
    with pytest.raises(DataError, match=message) as info:
        read_qlib(handmade)
    assert str(bad) in str(info.value)


def test_write_layout_byte_by_byte(tmp_path):
    cal = pd.to_datetime(DAYS[:4])
    close = np.array([[1.0, 2.0, np.nan, 4.0], [np.nan, 5.0, 6.0, np.nan]])
    panel = Panel.from_arrays(
        cal,
        ["aaa", "CON"],
        {"close": close, "Industry": np.ones((2, 4))},
        starts=np.array([0, 1]),
        ends=np.array([4, 3]),
    )
    write_qlib(panel, tmp_path / "q")
    root = tmp_path / "q"
    assert (root / "calendars" / "day.txt").read_text() == "".join(d + "\n" for d in DAYS[:4])
    assert (root / "instruments" / "all.txt").read_text() == (
        "AAA\t2020-01-02\t2020-01-07\nCON\t2020-01-03\t2020-01-06\n"
    )
    raw = (root / "features" / "aaa" / "close.day.bin").read_bytes()
    assert len(raw) == 4 * 5
    got = struct.unpack("<5f", raw)
    assert got[0] == 0.0 and got[1:3] == (1.0, 2.0) and np.isnan(got[3]) and got[4] == 4.0
    # CON is a reserved device name on Windows: qlib keeps it under _qlib_con; only the span is stored.
    assert symbol_to_dirname("CON") == "_qlib_con"
    assert struct.unpack("<3f", (root / "features" / "_qlib_con" / "close.day.bin").read_bytes()) == (1.0, 5.0, 6.0)
    assert (root / "features" / "aaa" / "industry.day.bin").exists()
    back = read_qlib(root)
    assert back.instruments == ("AAA", "CON")
    np.testing.assert_array_equal(back.fields["close"], close)


def test_round_trip_synthetic_market(tmp_path):
    panel = synth_market(25, 160, seed=11)
    write_qlib(panel, tmp_path / "q")
    back = read_qlib(tmp_path / "q")
    assert back.instruments == panel.instruments
    np.testing.assert_array_equal(back.calendar, panel.calendar)
    np.testing.assert_array_equal(back.starts, panel.starts)
    np.testing.assert_array_equal(back.ends, panel.ends)
    assert back.field_names == panel.field_names  # industry, an extra field, comes back too
    for name, arr in panel.fields.items():
        np.testing.assert_array_equal(np.isnan(back.fields[name]), np.isnan(arr), err_msg=name)
        np.testing.assert_array_equal(back.fields[name], arr.astype(np.float32).astype(np.float64), err_msg=name)
    # suspended days inside spans stay NaN rows
    suspended = np.isnan(panel.fields["close"]) & ~panel.outside_span
    assert suspended.any()
    assert np.isnan(back.fields["open"][suspended]).all()


def test_write_refuses_to_clobber_and_case_clashes(tmp_path):
    panel = synth_market(4, 40, seed=1)
    write_qlib(panel, tmp_path / "q")
    with pytest.raises(DataError, match="already holds qlib data"):
        write_qlib(panel, tmp_path / "q")
    write_qlib(panel.select(panel.instruments[:2]), tmp_path / "q", overwrite=True)
    assert read_qlib(tmp_path / "q").n_instruments == 2
    clash = Panel.from_arrays(panel.calendar, ["abc", "ABC"], {"close": np.ones((2, 40))})
    with pytest.raises(DataError, match="differ only by case"):
        write_qlib(clash, tmp_path / "clash")


@pytest.mark.qlib
def test_qlib_itself_reads_what_we_write(tmp_path):
    """pyqlib's D.features on our directory returns exactly our panel's rows and float32 values."""
    qlib_python = os.environ.get("RDQUANT_QLIB_PYTHON")
    if not qlib_python:
        pytest.skip("set RDQUANT_QLIB_PYTHON to a python with pyqlib")
    panel = synth_market(20, 120, seed=4)
    write_qlib(panel, tmp_path / "q")
    script = (
        "import sys, qlib\nfrom qlib.data import D\n"
        "qlib.init(provider_uri=sys.argv[1], region='us', kernels=1)\n"
        "df = D.features(D.instruments('all'), ['$close', '$industry'], freq='day')\n"
        "df.swaplevel().sort_index().to_csv(sys.argv[2])\n"
    )
    out = tmp_path / "qlib.csv"
    subprocess.run([qlib_python, "-c", script, str(tmp_path / "q"), str(out)], check=True, capture_output=True)
    theirs = pd.read_csv(out, index_col=[0, 1], parse_dates=[0])
    ours = panel.to_frame({"$close": panel.fields["close"], "$industry": panel.fields["industry"]})
    assert list(theirs.index.get_level_values(1)) == list(ours.index.get_level_values(1))
    np.testing.assert_allclose(theirs.to_numpy(), ours.to_numpy(), rtol=1e-6, equal_nan=True)
