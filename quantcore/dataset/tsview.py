"""Lazy time-series windows over the dataset's (T, N, F) store, like qlib's TSDataSampler.

Sample i is row (day[i], inst[i]); its window is that instrument's features on days
day-step_len+1 .. day (calendar days, as qlib's TSDataSampler indexes the unstacked date axis). Days
before the calendar start or outside the listing span read as NaN, then `fill` applies within the
window (qlib's GRU/LSTM use "ffill+bfill"). Windows are gathered per batch by index arithmetic, so the
view holds only the shared store plus two int32 index arrays: O(data), independent of step_len.
"""

from __future__ import annotations

from enum import Enum
from typing import Iterator

import numpy as np

from quantcore.dataset.errors import DatasetError

__all__ = ["TSFill", "TSView"]


class TSFill(str, Enum):
    """How NaN inside a window is filled (qlib TSDataSampler's fillna_type)."""

    NONE = "none"
    FFILL = "ffill"
    FFILL_BFILL = "ffill+bfill"


class TSView:
    """Indexable like a torch Dataset: `view[i] -> (window (L, F) float32, label float32)`."""

    def __init__(self, features, label, listed, day, inst, step_len: int, fill: TSFill = TSFill.FFILL_BFILL):
        if int(step_len) < 1:
            raise DatasetError(f"step_len must be >= 1, got {step_len}")
        self.features = features  # float32 (T, N, F), shared with the dataset, never copied
        self.label = label  # float32 (T, N), shared
        self.listed = listed  # bool (T, N), shared
        self.day = np.asarray(day, dtype=np.int32)  # (S,)
        self.inst = np.asarray(inst, dtype=np.int32)  # (S,)
        self.step_len = int(step_len)
        self.fill = TSFill(fill)

    def __len__(self) -> int:
        return len(self.day)

    @property
    def n_features(self) -> int:
        return self.features.shape[2]

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.float32]:
        x, y = self.batch(np.array([i]))
        return x[0], y[0]

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Windows (B, L, F) float32 and labels (B,) for sample positions `idx`."""
        day, inst = self.day[idx].astype(np.int64), self.inst[idx].astype(np.int64)
        offsets = np.arange(1 - self.step_len, 1)  # (L,): oldest first, the sample's day last
        days = day[:, None] + offsets  # (B, L)
        safe = np.maximum(days, 0)
        present = (days >= 0) & self.listed[safe, inst[:, None]]  # (B, L): a real day of this instrument
        if self.fill is TSFill.NONE:
            x = self.features[safe, inst[:, None]]  # (B, L, F) gather: the only copy, one batch big
            x[~present] = np.nan
            return x, self.label[day, inst]
        # Fill whole padded days first, by choosing which day each window step reads (index arithmetic on
        # (B, L), not (B, L, F)); value-level NaN left inside real days is filled element-wise after. The
        # two steps give pandas' ffill(+bfill) of the NaN-padded window, since a padded day has no values.
        src = _ffill_index(present)
        if self.fill is TSFill.FFILL_BFILL:
            rev = _ffill_index(present[:, ::-1])[:, ::-1]  # positions counted from the window's end
            back = np.where(rev < 0, -1, self.step_len - 1 - rev)  # first present step at or after
            src = np.where(src < 0, back, src)
        ok = src >= 0  # False only for FFILL's leading padding, or a window with no real day
        src_days = np.take_along_axis(safe, np.maximum(src, 0), axis=1)
        x = self.features[src_days, inst[:, None]]
        if not ok.all():
            x[~ok] = np.nan
        if np.isnan(x).any():
            x = _ffill(x)
            if self.fill is TSFill.FFILL_BFILL:
                x = np.ascontiguousarray(_ffill(x[:, ::-1])[:, ::-1])
        return x, self.label[day, inst]

    def iter_batches(
        self, batch_size: int, shuffle: bool = False, seed: int = 0
    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(positions, windows, labels) per batch; a seeded permutation when shuffling."""
        order = np.random.default_rng(seed).permutation(len(self)) if shuffle else np.arange(len(self))
        for lo in range(0, len(order), batch_size):
            idx = order[lo : lo + batch_size]
            x, y = self.batch(idx)
            yield idx, x, y


def _ffill_index(present: np.ndarray) -> np.ndarray:
    """(B, L) position of the last present step at or before each step; -1 where there is none."""
    pos = np.where(present, np.arange(present.shape[1])[None, :], -1)
    return np.maximum.accumulate(pos, axis=1)


def _ffill(x: np.ndarray) -> np.ndarray:
    """Forward-fill NaN along axis 1 of (B, L, F), per (sample, feature)."""
    n_steps = x.shape[1]
    pos = np.where(np.isnan(x), 0, np.arange(n_steps)[None, :, None])
    np.maximum.accumulate(pos, axis=1, out=pos)
    out = np.take_along_axis(x, pos, axis=1)
    # a leading NaN run maps to position 0, which is NaN itself: it stays NaN, as in pandas
    return out
