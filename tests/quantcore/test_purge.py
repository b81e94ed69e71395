"""Purged segments on a business-day calendar; expected dates come from pandas' BDay arithmetic and a
label evaluated by the expression engine, not from the purge code."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from quantcore.data.panel import Panel
from quantcore.dataset.errors import SegmentError
from quantcore.dataset.purge import purge_segments
from quantcore.evaluate.significance import label_horizon
from quantcore.expr.evaluate import evaluate
from quantcore.features import DEFAULT_LABEL

CAL = pd.bdate_range("2020-01-01", "2020-12-31").values
SEGMENTS = {
    "train": ("2020-01-01", "2020-06-30"),
    "valid": ("2020-07-01", "2020-09-30"),
    "test": ("2020-10-01", "2020-12-31"),
}
BDAY = pd.offsets.BDay()


def _days(bounds) -> int:
    return len(pd.bdate_range(*bounds))


def test_horizon_and_embargo_drop_exact_days_from_all_but_the_last():
    out = purge_segments(CAL, SEGMENTS, horizon=2, embargo=3)
    assert list(out) == ["train", "valid", "test"]
    assert out["train"] == ("2020-01-01", (pd.Timestamp("2020-06-30") - 5 * BDAY).date().isoformat())
    assert out["train"][1] == "2020-06-23"
    assert out["valid"] == ("2020-07-01", "2020-09-23")
    assert out["test"] == ("2020-10-01", "2020-12-31")
    for name in ("train", "valid"):
        assert _days(SEGMENTS[name]) - _days(out[name]) == 5
    assert purge_segments(CAL, SEGMENTS, horizon=0) == {k: v for k, v in SEGMENTS.items()}


def test_order_is_by_date_and_ends_snap_to_trading_days():
    segs = {
        "test": ("2020-10-01", "2020-12-31"),
        "train": ("2020-01-01", "2020-07-05"),
        "valid": ("2020-08-01", "2020-09-30"),
    }
    out = purge_segments(CAL, segs, horizon=2)
    assert list(out) == ["test", "train", "valid"]  # the input's key order is kept
    # 2020-07-05 is a Sunday: the segment's last day is Friday 07-03; a gap before valid does not count
    assert out["train"] == ("2020-01-01", "2020-07-01")
    assert out["valid"] == ("2020-08-03", "2020-09-28")  # 08-01 is a Saturday
    assert out["test"] == ("2020-10-01", "2020-12-31")


def test_errors_name_the_segment():
    short = {"train": ("2020-01-01", "2020-01-03"), "valid": ("2020-01-06", "2020-02-28")}  # 3 days
    with pytest.raises(SegmentError, match="'train'") as err:
        purge_segments(CAL, short, horizon=2, embargo=1)
    assert isinstance(err.value, ValueError)
    assert purge_segments(CAL, short, horizon=2)["train"] == ("2020-01-01", "2020-01-01")
    with pytest.raises(SegmentError, match="'train' overlaps segment 'valid'"):
        purge_segments(CAL, {"train": ("2020-01-01", "2020-03-31"), "valid": ("2020-01-01", "2020-06-30")}, 1)
    with pytest.raises(SegmentError, match="'test'"):
        purge_segments(CAL, {"train": ("2020-01-01", "2020-03-31"), "test": ("2021-01-01", "2021-02-01")}, 1)
    with pytest.raises(ValueError, match="embargo"):
        purge_segments(CAL, SEGMENTS, horizon=2, embargo=-1)


@pytest.mark.parametrize("embargo", [0, 3])
def test_default_label_of_the_last_kept_train_day_reads_no_valid_price(embargo):
    horizon = label_horizon(DEFAULT_LABEL)
    out = purge_segments(CAL, SEGMENTS, horizon=horizon, embargo=embargo)
    cal = pd.DatetimeIndex(CAL)
    valid_start = cal.get_loc(pd.Timestamp(SEGMENTS["valid"][0]))
    last_kept = cal.get_loc(pd.Timestamp(out["train"][1]))
    close = np.exp(np.random.default_rng(0).standard_normal((3, len(cal))).cumsum(axis=1) * 0.01)
    close[:, valid_start:] = np.nan  # hide every valid/test price: a label reading one is NaN
    n, t = close.shape
    panel = Panel.from_arrays(CAL, ["A", "B", "C"], {"close": close}, np.zeros(n, np.int64), np.full(n, t, np.int64))
    label = evaluate(panel, {"label": DEFAULT_LABEL}, allow_future=True)["label"]
    assert np.isfinite(label[:, : last_kept + 1]).all()
    # the purge is tight: without the embargo the first dropped day's label already reads valid
    assert np.isnan(label[:, last_kept + 1 + embargo]).all()
