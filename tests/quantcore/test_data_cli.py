"""`rdquant data synth|import|info` through typer's test runner, including bad input."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from quantcore.cli import app
from quantcore.data import read_qlib, synth_market

runner = CliRunner()


def _text(result) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(result.output.split())


BARS = """date,Ticker,open,high,low,close,volume
2021-03-01,AAA,10,9.5,9,10,100
2021-03-02,AAA,10,11,9,10.5,0
2021-03-01,BBB,20,21,19,20,500
2021-03-02,BBB,20,22,20,21,700
"""


def test_synth_writes_qlib_directory(tmp_path):
    out = tmp_path / "syn"
    result = runner.invoke(
        app, ["data", "synth", "--out", str(out), "--instruments", "12", "--days", "90", "--seed", "5"]
    )
    assert result.exit_code == 0, result.output
    assert "4 planted alphas are hidden" in _text(result) and "--reveal" in _text(result)
    panel = read_qlib(out)
    assert (panel.n_instruments, panel.n_days) == (12, 90)
    expected = synth_market(12, 90, 5)
    np.testing.assert_array_equal(panel.fields["close"], expected.fields["close"].astype(np.float32).astype(float))
    again = runner.invoke(app, ["data", "synth", "--out", str(out), "--instruments", "12", "--days", "90"])
    assert again.exit_code == 2 and "already holds qlib data" in _text(again)
    assert "Traceback" not in _text(again)


def test_synth_rejects_bad_sizes(tmp_path):
    result = runner.invoke(app, ["data", "synth", "--out", str(tmp_path / "x"), "--instruments", "1"])
    assert result.exit_code == 2


def test_import_prints_report_and_writes(tmp_path):
    src = tmp_path / "bars.csv"
    src.write_text(BARS)
    out = tmp_path / "q"
    result = runner.invoke(app, ["data", "import", str(src), "--out", str(out), "--map", "Ticker=instrument"])
    assert result.exit_code == 0, result.output
    assert "ohlc_inconsistent" in _text(result) and "zero_volume" in _text(result)
    assert "vwap = (high + low + close) / 3" in _text(result)
    assert read_qlib(out).instruments == ("AAA", "BBB")


def test_import_strict_and_bad_input(tmp_path):
    src = tmp_path / "bars.csv"
    src.write_text(BARS)
    strict = runner.invoke(
        app, ["data", "import", str(src), "--out", str(tmp_path / "q"), "--map", "Ticker=instrument", "--strict"]
    )
    assert strict.exit_code == 2 and "ohlc_inconsistent" in _text(strict)
    assert not (tmp_path / "q").exists()
    unmapped = runner.invoke(app, ["data", "import", str(src), "--out", str(tmp_path / "q")])
    assert unmapped.exit_code == 2 and "missing required column(s) instrument" in _text(unmapped)
    bad_map = runner.invoke(app, ["data", "import", str(src), "--out", str(tmp_path / "q"), "--map", "Ticker"])
    assert bad_map.exit_code == 2 and "SRC=DST" in _text(bad_map)
    missing = runner.invoke(app, ["data", "import", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "q")])
    assert missing.exit_code == 2 and "does not exist" in _text(missing)
    for r in (strict, unmapped, bad_map, missing):
        assert "Traceback" not in r.output


def test_info_table_and_json(tmp_path):
    result = runner.invoke(app, ["data", "info", "sp500", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["instruments"] == 505 and info["days"] == 1259
    assert (info["start"], info["end"]) == ("2013-02-08", "2018-02-07")
    assert info["fields"] == ["open", "high", "low", "close", "volume", "vwap", "factor"]
    assert 0 < info["missing_share"] < 0.001 and len(info["version"]) == 32

    table = runner.invoke(app, ["data", "info", "synthetic:10:60:1"])
    assert table.exit_code == 0 and "industry" in _text(table) and "missing share" in _text(table)

    bad = runner.invoke(app, ["data", "info", "nowhere"])
    assert bad.exit_code == 2 and "valid markets" in _text(bad) and "Traceback" not in _text(bad)
