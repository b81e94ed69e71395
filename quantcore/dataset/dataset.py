"""A learning dataset over a `Panel`: features + label evaluated once, processed, split into segments.

Build: `build_dataset(panel, DatasetConfig(features, segments=...))`. Features and the label are
evaluated over the full history (so look-backs before the train start are warm) and stored as
float32 (T, N, F) + (T, N); a row is an in-span (day, instrument) pair.

Processors follow qlib's DataHandlerLP: `infer_processors` are fitted on the train segment of the raw
data and applied to every day, giving the INFER block (what models predict from); `learn_processors`
are fitted on the train segment of the INFER block and applied on top of it, giving the LEARN block
(what models train and early-stop on; e.g. DropnaLabel and a label normaliser). Fitted processors see
only train rows, so valid/test data cannot leak into the statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from quantcore import kernels
from quantcore.data.panel import Panel
from quantcore.dataset import processors as P
from quantcore.dataset.errors import DatasetError, SegmentError
from quantcore.dataset.tsview import TSFill, TSView
from quantcore.expr.evaluate import Evaluator
from quantcore.features import DEFAULT_LABEL

__all__ = [
    "DataKey",
    "DatasetConfig",
    "dataset_config",
    "Dataset",
    "build_dataset",
    "process",
    "resolve_segments",
    "TRAIN",
    "VALID",
    "TEST",
]

TRAIN, VALID, TEST = "train", "valid", "test"
_EVAL_CHUNK = 64  # features per evaluator batch when building
_CHECK_DAYS = 128  # train days per chunk when looking for all-NaN features


class DataKey(str, Enum):
    """Which processed block to read (qlib's DataHandlerLP.DK_I / DK_L)."""

    INFER = "infer"  # infer processors only: every row, for prediction
    LEARN = "learn"  # infer then learn processors: for fitting and early stopping


@dataclass(frozen=True)
class DatasetConfig:
    """What to compute and how to split it; dates are inclusive, like qlib's segments."""

    features: Mapping[str, str]  # name -> expression, e.g. quantcore.features.alpha158()
    segments: Mapping[str, tuple]  # e.g. {"train": ("2008-01-01", "2014-12-31"), "valid": ..., "test": ...}
    label: str = DEFAULT_LABEL  # qlib's default label: next-day-to-day-after close return
    infer_processors: Sequence[P.Processor] = ()  # qlib's Alpha158 handler default: none
    # qlib's Alpha158 handler default learn processors (contrib/data/handler.py): drop NaN labels, then
    # z-score the label per day (a unit-scale label also keeps LightGBM's large L1/L2 penalties from
    # flattening the trees)
    learn_processors: Sequence[P.Processor] = (P.DropnaLabel(), P.CSZScoreNorm(P.FieldGroup.LABEL))


def dataset_config(
    features: str | Mapping[str, str],
    segments: Mapping[str, Sequence],
    label: str = DEFAULT_LABEL,
    infer_processors: Sequence | None = None,
    learn_processors: Sequence | None = None,
) -> DatasetConfig:
    """A config from plain (YAML-shaped) data: `features` a named set ("alpha158") or name -> expression;
    processors as configs, names, or qlib-style {"class": name, "kwargs": {...}} entries."""
    from quantcore.features import feature_set

    feats = feature_set(features) if isinstance(features, str) else dict(features)
    segs = {name: tuple(bounds) if isinstance(bounds, (list, tuple)) else bounds for name, bounds in segments.items()}
    out = DatasetConfig(feats, segs, label, infer_processors=_processors(infer_processors or ()))
    if learn_processors is not None:
        out = DatasetConfig(feats, segs, label, out.infer_processors, _processors(learn_processors))
    return out


def _processors(specs: Sequence) -> tuple[P.Processor, ...]:
    out = []
    for i, spec in enumerate(specs):
        if isinstance(spec, str):
            out.append(P.make_processor(spec))
        elif isinstance(spec, Mapping):
            extra = sorted(set(spec) - {"class", "kwargs"})
            if "class" not in spec or extra:
                raise DatasetError(f"processor #{i} must be {{class: NAME, kwargs: {{...}}}}, got keys {sorted(spec)}")
            out.append(P.make_processor(spec["class"], **dict(spec.get("kwargs") or {})))
        elif type(spec) in P.PROCESSORS.values():
            out.append(spec)
        else:
            raise DatasetError(f"processor #{i} is {spec!r}; use a processor config, a name or a {{class, kwargs}} map")
    return tuple(out)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Processed, segmented storage. Read it through `prepare` (tabular) or `ts_view` (windows)."""

    config: DatasetConfig
    calendar: np.ndarray  # datetime64[ns] (T,)
    instruments: tuple[str, ...]  # (N,)
    segment_days: Mapping[str, slice]  # segment -> calendar slice
    infer: P.Block
    learn: P.Block
    infer_states_: tuple = field(default=())  # fitted state per infer processor (None if stateless)
    learn_states_: tuple = field(default=())

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.infer.feature_names

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.segment_days)

    def block(self, data_key: DataKey | str) -> P.Block:
        return self.learn if DataKey(data_key) is DataKey.LEARN else self.infer

    def days(self, segment: str) -> slice:
        try:
            return self.segment_days[segment]
        except KeyError:
            raise SegmentError(
                f"segment {segment!r} is not in this dataset; defined: {', '.join(self.segment_days)}"
            ) from None

    def rows(self, segment: str, data_key: DataKey | str = DataKey.INFER) -> tuple[np.ndarray, np.ndarray]:
        """(day, instrument) integer positions of the segment's rows, sorted by day then instrument."""
        s = self.days(segment)
        day, inst = np.nonzero(self.block(data_key).rows[s])
        return day + s.start, inst

    def index(self, segment: str, data_key: DataKey | str = DataKey.INFER) -> pd.MultiIndex:
        day, inst = self.rows(segment, data_key)
        return _index(self.calendar, self.instruments, day, inst)

    def prepare(self, segment: str, data_key: DataKey | str = DataKey.INFER) -> tuple[pd.DataFrame, pd.Series]:
        """Tabular view: X (rows, F) float32 and y (rows,) indexed by (datetime, instrument)."""
        b = self.block(data_key)
        day, inst = self.rows(segment, data_key)
        idx = _index(self.calendar, self.instruments, day, inst)
        x = pd.DataFrame(b.features[day, inst], index=idx, columns=list(b.feature_names), copy=False)
        return x, pd.Series(b.label[day, inst], index=idx, name="label")

    def ts_view(
        self,
        segment: str,
        step_len: int = 20,
        data_key: DataKey | str = DataKey.INFER,
        fill: TSFill = TSFill.FFILL_BFILL,
    ) -> TSView:
        """Time-series view: per row, the instrument's last `step_len` days of features (lazy)."""
        b = self.block(data_key)
        day, inst = self.rows(segment, data_key)
        return TSView(b.features, b.label, b.listed, day, inst, step_len, fill)


def _index(calendar, instruments, day, inst) -> pd.MultiIndex:
    return pd.MultiIndex.from_arrays(
        [pd.DatetimeIndex(calendar[day]), pd.Index(np.asarray(instruments, dtype=object)[inst])],
        names=["datetime", "instrument"],
    )


def resolve_segments(panel: Panel, segments: Mapping[str, tuple]) -> dict[str, slice]:
    """Calendar slices of each segment; refuses a missing train, reversed, empty, out-of-range or
    overlapping segment, naming it."""
    if not segments or TRAIN not in segments:
        raise SegmentError(f"segments must include {TRAIN!r}; got {', '.join(segments) or 'none'}")
    cal = pd.DatetimeIndex(panel.calendar)
    if len(cal) == 0:
        raise SegmentError("the panel has an empty calendar")
    out: dict[str, slice] = {}
    for name, bounds in segments.items():
        try:
            start, end = (pd.Timestamp(b) for b in bounds)
        except (TypeError, ValueError):
            raise SegmentError(f"segment {name!r} must be a (start, end) pair of dates, got {bounds!r}") from None
        if start > end:
            raise SegmentError(f"segment {name!r} starts ({start.date()}) after it ends ({end.date()})")
        if end < cal[0] or start > cal[-1]:
            raise SegmentError(
                f"segment {name!r} [{start.date()}, {end.date()}] lies outside the panel's calendar "
                f"[{cal[0].date()}, {cal[-1].date()}]"
            )
        s = panel.date_index(start, end)
        if s.stop <= s.start:
            raise SegmentError(f"segment {name!r} [{start.date()}, {end.date()}] holds no trading day")
        out[name] = s
    ordered = sorted(out.items(), key=lambda kv: kv[1].start)
    for (a, sa), (b, sb) in zip(ordered, ordered[1:]):
        if sb.start < sa.stop:
            raise SegmentError(
                f"segments {a!r} and {b!r} overlap on {pd.Timestamp(panel.calendar[sb.start]).date()}; "
                "make them disjoint so evaluation data cannot leak into training"
            )
    return out


def build_dataset(panel: Panel, config: DatasetConfig, evaluator: Evaluator | None = None) -> Dataset:
    """Evaluate, store, fit processors on train and process every day; see the module docstring."""
    if panel.n_instruments == 0 or not (~panel.outside_span).any():
        raise DatasetError(f"panel {panel.name!r} has an empty universe: no instrument has a listed day")
    if not config.features:
        raise DatasetError("the dataset needs at least one feature expression")
    segment_days = resolve_segments(panel, config.segments)
    ev = evaluator or Evaluator(panel)
    names = list(config.features)
    n, t, f = panel.n_instruments, panel.n_days, len(names)
    feats = np.empty((t, n, f), dtype=np.float32)
    # evaluate in chunks: peak memory is the store plus one chunk of (N, T) outputs, while a chunk
    # still shares its common sub-expressions (Alpha158's 158 features in three evaluator batches)
    for lo in range(0, f, _EVAL_CHUNK):
        chunk = {k: config.features[k] for k in names[lo : lo + _EVAL_CHUNK]}
        kernels.interleave(list(ev.evaluate(chunk, dtype=np.float32).values()), feats, lo)
    label = np.ascontiguousarray(ev.evaluate({"label": config.label}, allow_future=True, dtype=np.float32)["label"].T)
    listed = np.ascontiguousarray(~panel.outside_span.T)
    # days after the last segment are never read: process up to there only (every processor is
    # per-day or fitted on train, so the kept days come out the same)
    stop = max(s.stop for s in segment_days.values())
    raw = P.Block(feats[:stop], label[:stop], listed[:stop], listed[:stop], tuple(names))

    train = segment_days[TRAIN]
    _check_train(raw, train)
    infer, learn, infer_states, learn_states = process(raw, config.infer_processors, config.learn_processors, train)
    for seg in segment_days:
        if seg in (TRAIN, VALID) and not learn.rows[segment_days[seg]].any():
            raise SegmentError(f"segment {seg!r} has no rows left after the learn processors")
    return Dataset(
        config, panel.calendar[:stop], panel.instruments, segment_days, infer, learn, infer_states, learn_states
    )


def _check_train(raw: P.Block, train: slice) -> None:
    rows = raw.rows[train]
    if not rows.any():
        raise SegmentError("segment 'train' has no listed (day, instrument) rows")
    # a feature is alive once any listed train row has a value: walk the days in chunks of whole rows
    # (features contiguous) and stop as soon as every feature is, usually within the first chunk
    feats = raw.features[train]
    alive = np.zeros(feats.shape[2], dtype=bool)
    for lo in range(0, feats.shape[0], _CHECK_DAYS):
        alive |= ~np.isnan(feats[lo : lo + _CHECK_DAYS][rows[lo : lo + _CHECK_DAYS]]).all(axis=0)
        if alive.all():
            break
    dead = [name for name, ok in zip(raw.feature_names, alive) if not ok]
    if dead:
        raise DatasetError(f"feature(s) all-NaN in the train segment: {', '.join(dead[:10])}; check their look-back")
    if np.isnan(raw.label[train][rows]).all():
        raise DatasetError("the label is all-NaN in the train segment; check the label expression")


def process(
    raw: P.Block, infer_processors: Sequence[P.Processor], learn_processors: Sequence[P.Processor], train: slice
) -> tuple[P.Block, P.Block, tuple, tuple]:
    """(infer block, learn block, infer states, learn states): qlib DataHandlerLP's "append" order, each
    fitted processor seeing only the train days."""
    infer, infer_states = _run(infer_processors, raw, train)
    learn, learn_states = _run(learn_processors, infer, train)
    return infer, learn, infer_states, learn_states


def _run(procs: Sequence[P.Processor], block: P.Block, train: slice) -> tuple[P.Block, tuple]:
    """Fit each processor on the train rows of the block so far, then apply it to all days."""
    states = []
    for proc in procs:
        state = P.fit(proc, block, train)
        block = P.apply(proc, state, block)
        states.append(state)
    return block, tuple(states)
