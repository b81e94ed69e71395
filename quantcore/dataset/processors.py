"""qlib's data processors as frozen configs plus pure `fit` / `apply` functions over a `Block`.

A `Block` is the dataset's compact storage: features float32 (T, N, F), label float32 (T, N), `listed`
(T, N) in-span mask and `rows` (T, N) mask of the rows a segment yields (the in-span rows, minus the
rows a Dropna processor removed). Processors never see a DataFrame, so a per-day operator is a
vectorised reduction over the instrument axis rather than a pandas groupby.

`fit(proc, block, days)` looks only at `days` (the train segment) and returns the learned state;
`apply(proc, state, block)` transforms every day. Stateless processors (per-day or per-value) return
state None. Semantics follow qlib 0.9.7 `qlib/data/dataset/processor.py`, noted per processor.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from enum import Enum
from typing import Any, Callable, Union

import numpy as np

from quantcore import kernels
from quantcore.dataset.errors import ProcessorError

__all__ = [
    "Block",
    "FieldGroup",
    "DropnaLabel",
    "DropnaFeature",
    "Fillna",
    "ProcessInf",
    "CSZScoreNorm",
    "CSRankNorm",
    "RobustZScoreNorm",
    "ZScoreNorm",
    "FilterCol",
    "Processor",
    "PROCESSORS",
    "make_processor",
    "fit",
    "apply",
]

#: qlib.constant.EPS, added to the MAD so a constant column does not divide by zero.
EPS = 1e-12
#: 1 / std of a uniform rank on (0, 1) is sqrt(12) ~ 3.46; qlib rounds it to 3.46 (CSRankNorm).
RANK_SCALE = 3.46
#: MAD -> standard deviation for normal data (qlib RobustZScoreNorm).
MAD_TO_STD = 1.4826


class FieldGroup(str, Enum):
    """Which columns a processor touches (qlib's `fields_group`; None in qlib means ALL)."""

    FEATURE = "feature"
    LABEL = "label"
    ALL = "all"


@dataclass(frozen=True)
class Block:
    """Dataset storage for all days; arrays are shared between blocks until a processor rewrites them."""

    features: np.ndarray  # float32 (T, N, F)
    label: np.ndarray  # float32 (T, N)
    listed: np.ndarray  # bool (T, N): day inside the instrument's listing span
    rows: np.ndarray  # bool (T, N): rows this block yields (listed, minus dropped)
    feature_names: tuple[str, ...]


# ---- configs ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DropnaLabel:
    """Drop rows whose label is NaN. Learn-only in qlib: prediction rows never have a label."""


@dataclass(frozen=True)
class DropnaFeature:
    """Drop rows with any NaN feature (qlib DropnaProcessor(fields_group='feature'))."""


@dataclass(frozen=True)
class Fillna:
    """Replace NaN by `value`."""

    fields_group: FieldGroup = FieldGroup.ALL  # qlib's default (fields_group=None): every column
    value: float = 0.0  # qlib's default fill_value


@dataclass(frozen=True)
class ProcessInf:
    """Replace +-inf by the mean of the column's finite values on that day (qlib's quirk, kept as is)."""

    fields_group: FieldGroup = FieldGroup.ALL


@dataclass(frozen=True)
class CSZScoreNorm:
    """Per day: (x - mean) / std with pandas' ddof=1, over the day's rows."""

    fields_group: FieldGroup = FieldGroup.ALL


@dataclass(frozen=True)
class CSRankNorm:
    """Per day: (rank pct - 0.5) * 3.46 with average ties, over the day's rows."""

    fields_group: FieldGroup = FieldGroup.ALL


@dataclass(frozen=True)
class RobustZScoreNorm:
    """(x - median) / (MAD * 1.4826), statistics from the train segment; clipped to +-3 like qlib."""

    fields_group: FieldGroup = FieldGroup.ALL
    clip_outlier: bool = True  # qlib's default; the Alpha158/360 benchmark configs keep it on


@dataclass(frozen=True)
class ZScoreNorm:
    """(x - mean) / std (ddof=0, np.nanstd) fitted on train; a constant column is left unchanged."""

    fields_group: FieldGroup = FieldGroup.ALL


@dataclass(frozen=True)
class FilterCol:
    """Keep only the listed feature columns, in feature order (qlib FilterCol on the feature group)."""

    columns: tuple[str, ...] = field(default=())


Processor = Union[
    DropnaLabel, DropnaFeature, Fillna, ProcessInf, CSZScoreNorm, CSRankNorm, RobustZScoreNorm, ZScoreNorm, FilterCol
]

PROCESSORS: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        DropnaLabel,
        DropnaFeature,
        Fillna,
        ProcessInf,
        CSZScoreNorm,
        CSRankNorm,
        RobustZScoreNorm,
        ZScoreNorm,
        FilterCol,
    )
}


def make_processor(name: str, **kwargs: Any) -> Processor:
    """Processor config from qlib's class name and kwargs (`fields_group`, `fill_value`, `col_list` accepted)."""
    cls = PROCESSORS.get(name)
    if cls is None:
        raise ProcessorError(f"unknown processor {name!r}; known: {', '.join(PROCESSORS)}")
    # qlib's spellings of the same options
    if "fill_value" in kwargs:
        kwargs["value"] = kwargs.pop("fill_value")
    if "col_list" in kwargs:
        kwargs["columns"] = kwargs.pop("col_list")
    allowed = {f.name for f in fields(cls)}
    if cls is DropnaLabel:
        kwargs.pop("fields_group", None)  # qlib passes fields_group='label'; it is the only meaning
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ProcessorError(
            f"{name} got unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(allowed)) or 'none'}"
        )
    if "fields_group" in kwargs:
        group = kwargs["fields_group"]
        try:
            kwargs["fields_group"] = FieldGroup.ALL if group is None else FieldGroup(group)
        except ValueError:
            raise ProcessorError(
                f"{name}: fields_group {group!r} is not one of {', '.join(g.value for g in FieldGroup)}"
            ) from None
    if "columns" in kwargs:
        kwargs["columns"] = tuple(kwargs["columns"])
    return cls(**kwargs)


# ---- group access -------------------------------------------------------------------------------
def _get(block: Block, group: FieldGroup) -> np.ndarray:
    """(T, N, K) float32 columns of the group (features first, then the label); read-only use: a view
    where possible, so a processor over Alpha158 does not double the dataset in float64."""
    if group is FieldGroup.FEATURE:
        return block.features
    if group is FieldGroup.LABEL:
        return block.label[:, :, None]
    return np.concatenate([block.features, block.label[:, :, None]], axis=2)


def _put(block: Block, group: FieldGroup, values: np.ndarray) -> Block:
    """A block with the group's columns replaced by `values` (T, N, K); other arrays stay shared."""
    out = block
    k = 0
    if group in (FieldGroup.FEATURE, FieldGroup.ALL):
        k = block.features.shape[2]
        out = replace(out, features=np.ascontiguousarray(values[:, :, :k], dtype=np.float32))
    if group in (FieldGroup.LABEL, FieldGroup.ALL):
        out = replace(out, label=np.ascontiguousarray(values[:, :, k], dtype=np.float32))
    return out


def _fit_rows(block: Block, group: FieldGroup, days: slice) -> np.ndarray:
    """(R, K) float64 values of the rows inside `days`: the sample a fitted processor learns from."""
    return _get(block, group)[days][block.rows[days]].astype(np.float64)


def _per_day(op: str, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Cross-sectional kernel per column over each day's rows (values outside `rows` are ignored)."""
    return kernels.cross_section_rows(op, np.ascontiguousarray(values, dtype=np.float32), rows)


# ---- fit / apply --------------------------------------------------------------------------------
def _dropna_label(p, state, b: Block) -> Block:
    return replace(b, rows=b.rows & ~np.isnan(b.label))


def _dropna_feature(p, state, b: Block) -> Block:
    return replace(b, rows=b.rows & ~np.isnan(b.features).any(axis=2))


def _fillna(p: Fillna, state, b: Block) -> Block:
    v = _get(b, p.fields_group)
    return _put(b, p.fields_group, np.where(np.isnan(v), p.value, v))


def _process_inf(p: ProcessInf, state, b: Block) -> Block:
    v = _get(b, p.fields_group)
    inf = np.isinf(v)
    if not inf.any():
        return b
    finite = np.where(b.rows[:, :, None] & ~inf, v, np.nan)
    with np.errstate(invalid="ignore"), _quiet():
        day_mean = np.nanmean(finite, axis=1, keepdims=True)  # (T, 1, K); pandas mean skips NaN
    return _put(b, p.fields_group, np.where(inf, np.broadcast_to(day_mean, v.shape), v))


def _cs_zscore(p: CSZScoreNorm, state, b: Block) -> Block:
    return _put(b, p.fields_group, _per_day("CSZScore", _get(b, p.fields_group), b.rows))


def _cs_rank(p: CSRankNorm, state, b: Block) -> Block:
    pct = _per_day("CSRank", _get(b, p.fields_group), b.rows)
    pct -= 0.5  # in place: a (days, instruments, columns) temporary costs more in page faults than the maths
    pct *= RANK_SCALE
    return _put(b, p.fields_group, pct)


def _robust_fit(p: RobustZScoreNorm, b: Block, days: slice) -> dict:
    x = _fit_rows(b, p.fields_group, days)
    with _quiet():
        center = np.nanmedian(x, axis=0)
        scale = (np.nanmedian(np.abs(x - center), axis=0) + EPS) * MAD_TO_STD
    return {"center": center, "scale": scale}


def _robust_apply(p: RobustZScoreNorm, state: dict, b: Block) -> Block:
    center, scale = state["center"].astype(np.float32), state["scale"].astype(np.float32)
    z = (_get(b, p.fields_group) - center) / scale
    if p.clip_outlier:
        z = np.clip(z, -3.0, 3.0)  # NaN stays NaN
    return _put(b, p.fields_group, z)


def _zscore_fit(p: ZScoreNorm, b: Block, days: slice) -> dict:
    x = _fit_rows(b, p.fields_group, days)
    with _quiet():
        mean, std = np.nanmean(x, axis=0), np.nanstd(x, axis=0)
    constant = std == 0  # qlib leaves such columns as they are: mean 0, std 1
    return {"mean": np.where(constant, 0.0, mean), "std": np.where(constant, 1.0, std)}


def _zscore_apply(p: ZScoreNorm, state: dict, b: Block) -> Block:
    mean, std = state["mean"].astype(np.float32), state["std"].astype(np.float32)
    return _put(b, p.fields_group, (_get(b, p.fields_group) - mean) / std)


def _filter_col(p: FilterCol, state, b: Block) -> Block:
    wanted = set(p.columns)
    missing = [c for c in p.columns if c not in b.feature_names]
    if missing:
        raise ProcessorError(f"FilterCol: columns not among the features: {', '.join(missing[:10])}")
    keep = [j for j, name in enumerate(b.feature_names) if name in wanted]
    return replace(
        b, features=np.ascontiguousarray(b.features[:, :, keep]), feature_names=tuple(b.feature_names[j] for j in keep)
    )


# processor type -> (fit or None for stateless, apply)
_TABLE: dict[type, tuple[Callable | None, Callable]] = {
    DropnaLabel: (None, _dropna_label),
    DropnaFeature: (None, _dropna_feature),
    Fillna: (None, _fillna),
    ProcessInf: (None, _process_inf),
    CSZScoreNorm: (None, _cs_zscore),
    CSRankNorm: (None, _cs_rank),
    RobustZScoreNorm: (_robust_fit, _robust_apply),
    ZScoreNorm: (_zscore_fit, _zscore_apply),
    FilterCol: (None, _filter_col),
}


def _entry(proc: Processor) -> tuple[Callable | None, Callable]:
    try:
        return _TABLE[type(proc)]
    except KeyError:
        raise ProcessorError(f"{proc!r} is not a processor; known: {', '.join(PROCESSORS)}") from None


def fit(proc: Processor, block: Block, days: slice) -> dict | None:
    """Learn the processor's state from the rows of `block` inside `days` (the train segment) only."""
    fitter, _ = _entry(proc)
    return None if fitter is None else fitter(proc, block, days)


def apply(proc: Processor, state: dict | None, block: Block) -> Block:
    """Transform every day of `block` with a fitted state (None for stateless processors)."""
    fitter, applier = _entry(proc)
    if fitter is not None and state is None:
        raise ProcessorError(f"{type(proc).__name__} must be fitted before it is applied")
    return applier(proc, state, block)


class _quiet(np.errstate):
    """nanmean/nanmedian of an all-NaN column is NaN by design here; silence numpy's warning."""

    def __init__(self):
        super().__init__(invalid="ignore", divide="ignore")

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)
        return super().__enter__()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        return self._w.__exit__(*exc)
