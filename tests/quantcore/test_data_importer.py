"""Bar import: validation errors on hand-made files, reported defects, the real S&P 500 sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from quantcore.data import DefectPolicy, import_bars
from quantcore.errors import DataValidationError

SP500_CSV = Path(__file__).resolve().parents[3] / "shared" / "data" / "sp500_5yr.csv.gz"  # ../shared beside the repo

GOOD = """date,Name,open,high,low,close,volume
2021-03-01,AAA,10,11,9,10.5,1000
2021-03-02,AAA,10.5,12,10,11,1200
2021-03-04,AAA,11,11.5,10.5,11.2,900
2021-03-01,BBB,20,21,19,20,500
2021-03-03,BBB,20,22,20,21,700
2021-03-04,BBB,21,21.5,20.5,21,600
"""


def _csv(tmp_path: Path, text: str, name: str = "bars.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_good_file_pivots_to_panel_with_spans_and_suspensions(tmp_path):
    panel, report = import_bars(_csv(tmp_path, GOOD), {"Name": "instrument"})
    assert panel.instruments == ("AAA", "BBB")
    assert list(pd.DatetimeIndex(panel.calendar).day) == [1, 2, 3, 4]  # union of dates
    np.testing.assert_array_equal(panel.starts, [0, 0])
    np.testing.assert_array_equal(panel.ends, [4, 4])
    # AAA has no row on 03-03 and BBB none on 03-02: suspended, NaN in every field
    assert np.isnan(panel.fields["close"][0, 2]) and np.isnan(panel.fields["factor"][0, 2])
    assert np.isnan(panel.fields["close"][1, 1])
    assert report.suspended_days == 2
    np.testing.assert_allclose(panel.fields["vwap"][0, 0], (11 + 9 + 10.5) / 3)
    np.testing.assert_array_equal(panel.fields["factor"][0, [0, 1, 3]], 1.0)
    assert any("vwap = (high + low + close) / 3" in d for d in report.derived)
    assert any("factor = 1.0" in d for d in report.derived)
    assert all(d.count == 0 for d in report.defects)


def test_span_is_first_to_last_row(tmp_path):
    text = "date,instrument,open,high,low,close,volume\n" + "\n".join(
        [f"2021-03-0{d},LATE,1,1,1,1,1" for d in (3, 4)] + [f"2021-03-0{d},FULL,1,1,1,1,1" for d in (1, 2, 3, 4, 5)]
    )
    panel, _ = import_bars(_csv(tmp_path, text))
    assert panel.instruments == ("FULL", "LATE")
    np.testing.assert_array_equal(panel.starts, [0, 2])
    np.testing.assert_array_equal(panel.ends, [5, 4])
    assert np.isnan(panel.fields["close"][1, [0, 1, 4]]).all()


def test_vwap_factor_and_extra_numeric_columns_are_kept(tmp_path):
    text = (
        "Date,Symbol,Open,High,Low,Close,Volume,VWAP,Factor,industry,sector\n"
        "2021-03-01,AAA,10,11,9,10,100,10.2,0.5,3,Tech\n"
        "2021-03-02,AAA,10,11,9,10,100,10.4,0.5,3,Tech\n"
    )
    panel, report = import_bars(_csv(tmp_path, text), {"Symbol": "instrument"})
    assert panel.field_names == ("open", "high", "low", "close", "volume", "vwap", "factor", "industry")
    np.testing.assert_array_equal(panel.fields["vwap"][0], [10.2, 10.4])
    np.testing.assert_array_equal(panel.fields["factor"][0], [0.5, 0.5])
    np.testing.assert_array_equal(panel.fields["industry"][0], [3.0, 3.0])
    assert report.derived == ()
    assert report.ignored_columns == ("sector",)


def test_missing_required_columns_are_named_with_columns_present(tmp_path):
    with pytest.raises(DataValidationError) as info:
        import_bars(_csv(tmp_path, GOOD))  # Name not mapped
    msg = str(info.value)
    assert "missing required column(s) instrument" in msg
    assert "columns present: date, Name, open, high, low, close, volume" in msg
    with pytest.raises(DataValidationError, match="column map names column"):
        import_bars(_csv(tmp_path, GOOD), {"Ticker": "instrument"})


def test_all_validation_problems_listed_with_rows(tmp_path):
    text = (
        "date,instrument,open,high,low,close,volume\n"
        "2021-03-01,AAA,10,11,9,10,100\n"
        "2021-03-01,AAA,10,11,9,10,100\n"  # duplicate of line 2
        "not-a-date,AAA,10,11,9,10,100\n"
        "2021-03-02,BBB,-1,11,9,10,100\n"
        "2021-03-03,BBB,10,11,9,abc,100\n"
        "2021-03-04,,10,11,9,10,100\n"
        "2021-03-05,BBB,10,11,9,10,-5\n"
    )
    with pytest.raises(DataValidationError) as info:
        import_bars(_csv(tmp_path, text))
    problems = info.value.problems
    joined = "\n".join(problems)
    assert "line 4: unparsable date 'not-a-date'" in joined
    assert "duplicate rows for AAA on 2021-03-01: line 2, line 3" in joined
    assert "line 5 (BBB): negative price open=-1" in joined
    assert "line 6: column close: unparsable number 'abc'" in joined
    assert "line 7: empty instrument name" in joined
    assert "line 8 (BBB): negative volume volume=-5" in joined
    assert len(problems) == 6


def test_defects_are_reported_and_kept(tmp_path):
    text = (
        "date,instrument,open,high,low,close,volume\n"
        "2021-03-01,AAA,10,9.5,9,10,100\n"  # high < max(open, close)
        "2021-03-02,AAA,10,11,10.5,10.2,100\n"  # low > min(open, close)
        "2021-03-03,AAA,,,,10,0\n"  # missing OHL and zero volume
        "2021-03-04,AAA,10,11,9,10,0\n"  # zero volume
    )
    panel, report = import_bars(_csv(tmp_path, text))
    assert report.defect("ohlc_inconsistent").count == 2
    assert report.defect("missing_ohl").count == 1
    assert report.defect("zero_volume").count == 2
    assert report.defect("ohlc_inconsistent").examples[0].startswith("AAA 2021-03-01 (line 2)")
    # kept exactly as found
    np.testing.assert_array_equal(panel.fields["high"][0], [9.5, 11, np.nan, 11])
    np.testing.assert_array_equal(panel.fields["volume"][0], [100, 100, 0, 0])
    assert "2 ohlc_inconsistent" in panel.meta["import_report"]
    with pytest.raises(DataValidationError, match="strict") as info:
        import_bars(_csv(tmp_path, text), policy=DefectPolicy.RAISE)
    assert any(p.startswith("2 ohlc_inconsistent rows") for p in info.value.problems)


def test_parquet_and_dataframe_inputs(tmp_path):
    frame = pd.read_csv(_csv(tmp_path, GOOD))
    frame["date"] = pd.to_datetime(frame["date"])
    frame.to_parquet(tmp_path / "bars.parquet")
    from_parquet, _ = import_bars(tmp_path / "bars.parquet", {"Name": "instrument"})
    from_frame, _ = import_bars(frame, {"Name": "instrument"})
    from_csv, _ = import_bars(_csv(tmp_path, GOOD), {"Name": "instrument"})
    assert from_parquet.version == from_csv.version == from_frame.version


@pytest.fixture(scope="module")
def sp500_import():
    if not SP500_CSV.exists():
        pytest.skip("shared S&P 500 sample not available")
    return import_bars(SP500_CSV, {"Name": "instrument"})


def test_real_sample_report_matches_documented_defects(sp500_import):
    panel, report = sp500_import
    assert (report.rows, report.instruments, report.days) == (619_040, 505, 1259)
    assert (panel.n_instruments, panel.n_days) == (505, 1259)
    assert (report.start, report.end) == ("2013-02-08", "2018-02-07")
    assert report.defect("missing_ohl").count == 11
    assert report.defect("ohlc_inconsistent").count == 12
    assert report.defect("zero_volume").count == 4
    assert report.defect("missing_close").count == 0
    # 470 tickers trade on every one of the 1259 days
    rows_per_ticker = (~np.isnan(panel.fields["close"])).sum(axis=1)
    assert int((rows_per_ticker == 1259).sum()) == 470
    # every source row is in the panel: in-span cells minus suspended cells
    assert int((~panel.outside_span).sum()) - report.suspended_days == 619_040


def test_real_sample_values_match_source_rows(sp500_import):
    panel, _ = sp500_import
    raw = pd.read_csv(SP500_CSV, keep_default_na=False, na_values=[""])
    i = panel.instruments.index("AAL")
    aal = raw[raw["Name"] == "AAL"].iloc[0]  # 2013-02-08,15.07,15.12,14.63,14.75,8407500
    assert panel.fields["close"][i, 0] == aal["close"] == 14.75
    assert panel.fields["volume"][i, 0] == 8407500
    # a missing-OHL row keeps its close and stays in the panel
    j = panel.instruments.index("BHF")
    day = int(np.searchsorted(panel.calendar, np.datetime64("2017-07-26")))
    assert np.isnan(panel.fields["open"][j, day]) and panel.fields["close"][j, day] == 69.0842
