"""Purged segments: cut the last days of each segment whose labels would read the next one's prices.

A label such as `Ref($close, -2)/Ref($close, -1) - 1` at day t reads t+1 and t+2, so the last two train
days carry labels made of validation prices: a model selected on valid has then seen part of it.
Dropping `horizon` days (`quantcore.evaluate.significance.label_horizon`) from the end of every segment
followed by another, plus an `embargo` against slower leaks (autocorrelated features), removes that
(Lopez de Prado, "Advances in Financial Machine Learning", 2018, ch. 7: purging and embargo).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from quantcore.dataset.errors import SegmentError

__all__ = ["purge_segments"]


def _day_span(cal: pd.DatetimeIndex, name: str, bounds: Sequence) -> tuple[int, int]:
    try:
        start, end = (pd.Timestamp(b) for b in bounds)
    except (TypeError, ValueError):
        raise SegmentError(f"segment {name!r} must be a (start, end) pair of dates, got {bounds!r}") from None
    first = int(cal.searchsorted(start, side="left"))
    last = int(cal.searchsorted(end, side="right")) - 1  # inclusive, like qlib's segments
    if last < first:
        raise SegmentError(f"segment {name!r} [{start.date()}, {end.date()}] holds no trading day of the calendar")
    return first, last


def purge_segments(
    calendar: np.ndarray | Sequence, segments: Mapping[str, Sequence], horizon: int, embargo: int = 0
) -> dict[str, tuple[str, str]]:
    """Segments {name: (start, end)} (inclusive dates) with `horizon + embargo` trading days of
    `calendar` dropped from the end of every segment that another one follows in time; the last
    segment keeps its end. Returns {name: (first ISO day, last ISO day)} in the input's key order.

    Exactly `horizon + embargo` days go, whatever gap already separates two segments: the rule stays
    one number a reader can check. Raises SegmentError (a ValueError) naming a segment that would
    become empty or that overlaps the next."""
    if horizon < 0 or embargo < 0:
        raise ValueError(f"horizon and embargo must be >= 0 trading days, got {horizon} and {embargo}")
    cal = pd.DatetimeIndex(pd.to_datetime(np.asarray(calendar)))
    if not cal.is_monotonic_increasing or not cal.is_unique:
        raise ValueError("calendar must be strictly increasing")
    spans = {name: _day_span(cal, name, bounds) for name, bounds in segments.items()}
    in_time = sorted(spans, key=lambda name: spans[name][0])
    drop = horizon + embargo
    out = dict(spans)
    for name, following in zip(in_time, in_time[1:]):
        first, last = spans[name]
        if last >= spans[following][0]:
            raise SegmentError(f"segment {name!r} overlaps segment {following!r}; purging needs disjoint segments")
        if last - drop < first:
            raise SegmentError(
                f"segment {name!r} holds {last - first + 1} trading days, not more than the {drop} to purge "
                f"(horizon {horizon} + embargo {embargo}) before segment {following!r}; lengthen it"
            )
        out[name] = (first, last - drop)
    return {name: (cal[a].date().isoformat(), cal[b].date().isoformat()) for name, (a, b) in out.items()}
