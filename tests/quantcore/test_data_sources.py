"""load_market: every spec form, and a helpful error for the rest."""

from __future__ import annotations

import numpy as np
import pytest

from quantcore.data import load_market, synth_market, write_qlib
from quantcore.errors import DataError


def test_sp500_is_the_default():
    panel = load_market()
    assert panel.name == "sp500" and panel.n_instruments == 505


def test_synthetic_specs():
    assert load_market("synthetic:20:100:3").version == synth_market(20, 100, 3).version
    assert load_market("synthetic:20:100").version == synth_market(20, 100, 0).version
    assert load_market("synthetic", n_instruments=10, n_days=60).n_instruments == 10
    null = load_market("synthetic:20:100:3:0")  # K = 0 planted alphas: a null market
    assert null.version == synth_market(20, 100, 3, n_alphas=0).version != load_market("synthetic:20:100:3").version
    assert null.meta["n_alphas"] == "0" and load_market("synthetic:20:100:3:2").meta["n_alphas"] == "2"
    for bad in ("synthetic:ten", "synthetic:20:100:3:4:5"):
        with pytest.raises(DataError, match="synthetic:N:T:SEED:K"):
            load_market(bad)


def test_qlib_dir_and_bar_files(tmp_path):
    panel = synth_market(8, 80, seed=2)
    write_qlib(panel, tmp_path / "q")
    back = load_market(str(tmp_path / "q"), fields=["close"])
    assert back.field_names == ("close",) and back.instruments == panel.instruments

    csv = tmp_path / "bars.csv"
    frame = panel.to_frame({k: panel.fields[k] for k in ("open", "high", "low", "close", "volume")}, dtype=np.float64)
    frame.dropna().reset_index().rename(columns={"datetime": "date"}).to_csv(csv, index=False)
    imported = load_market(str(csv))
    assert imported.instruments == panel.instruments
    np.testing.assert_array_equal(imported.fields["close"], panel.fields["close"])


def test_unknown_spec_lists_valid_forms(tmp_path):
    with pytest.raises(DataError) as info:
        load_market("nasdaq")
    msg = str(info.value)
    for form in ("sp500", "synthetic:N:T:SEED:K", "qlib directory", "CSV or Parquet"):
        assert form in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a qlib one"):
        load_market(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="does not exist"):
        load_market(str(tmp_path / "missing.csv"))
