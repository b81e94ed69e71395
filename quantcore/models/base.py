"""The model interface every family implements, the fit record, and the shared checks.

A model follows the skfolio pattern: `__init__(**params)` only validates and stores a frozen config,
`fit(dataset)` trains on the LEARN block of "train" (early-stopping on "valid") and returns self,
`predict(dataset, segment)` scores the INFER block. Learned state ends in `_`.
"""

from __future__ import annotations

import math
import pickle
import re
import time
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from quantcore.dataset import Dataset
from quantcore.kernels import available_cores
from quantcore.models.errors import ModelConfigError, ModelFitError, ModelInputError

__all__ = ["FitInfo", "Model", "BaseModel", "available_cores", "learn_arrays", "learn_columns", "check_predictions"]

#: bump when the saved layout changes; load refuses other versions rather than misreading them
FORMAT_VERSION = 1


@dataclass
class FitInfo:
    """What happened during fit: loss curves per iteration/epoch, the kept iteration, sizes, device."""

    train_loss: list[float] = field(default_factory=list)
    valid_loss: list[float] = field(default_factory=list)
    best_iteration: int = -1  # 0-based index into the curves of the kept model
    best_valid_loss: float = float("nan")
    n_train: int = 0
    n_valid: int = 0
    seconds: float = 0.0
    device: str = "cpu"
    seed: int = 0
    stopped_early: bool = False


@runtime_checkable
class Model(Protocol):
    """What the workflow runner relies on."""

    fit_info_: FitInfo

    def fit(self, dataset: Dataset) -> "Model": ...

    def predict(self, dataset: Dataset, segment: str = "test") -> pd.Series: ...

    def save(self, path: str | Path) -> None: ...

    @classmethod
    def load(cls, path: str | Path) -> "Model": ...


#: A string parameter is a plain word (an objective, a device): no spaces or "=", which a library
#: that builds "key=value" strings (LightGBM) would read as more parameters, and no paths.
_WORD = re.compile(r"[A-Za-z0-9_.:+-]{1,64}")


def check_values(config: type, family: str, params: dict[str, Any]) -> dict[str, Any]:
    """`params` with each value checked against its field's type (bool, int, finite float, a plain word,
    a tuple of ints, or None where allowed) and the field's `choices` metadata. A float written as text
    ("1e-3": YAML reads an exponent without a dot as a string) becomes the number."""
    hints = typing.get_type_hints(config)
    meta = {f.name: f.metadata for f in fields(config)}
    params = dict(params)
    for name, value in params.items():
        if hints[name] in (float, float | None) and isinstance(value, str):
            try:
                value = params[name] = float(value)
            except ValueError:
                pass
        problem = _type_problem(hints[name], value)
        choices = meta[name].get("choices")
        if problem is None and choices is not None and value is not None and value not in choices:
            problem = f"must be one of {', '.join(map(str, choices))}"
        if problem:
            raise ModelConfigError(f"{family}: parameter {name} {problem}, got {value!r}")
    return params


def _type_problem(hint: Any, value: Any) -> str | None:
    args = typing.get_args(hint)
    if type(None) in args:  # X | None
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be a whole number"
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else "must be a finite number"
    if hint is str:
        return (
            None
            if isinstance(value, str) and _WORD.fullmatch(value)
            else "must be a plain word (letters, digits, _ . : + -)"
        )
    if typing.get_origin(hint) is tuple:
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        return None if ok else "must be a list of whole numbers"
    return None


class BaseModel:
    """Shared plumbing: config from kwargs, feature-name checks, save/load of (config, state, record)."""

    family: ClassVar[str]
    Config: ClassVar[type]

    def __init__(self, **params: Any):
        valid = {f.name for f in fields(self.Config)}
        unknown = sorted(set(params) - valid)
        if unknown:
            raise ModelConfigError(
                f"{self.family}: unknown parameter(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}"
            )
        self.config = self.Config(**check_values(self.Config, self.family, params))
        self.feature_names_: tuple[str, ...] | None = None
        self.fit_info_ = FitInfo()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

    # ---- subclasses implement ----------------------------------------------------------------
    def _fit(self, dataset: Dataset, info: FitInfo) -> None:
        raise NotImplementedError

    def _predict(self, dataset: Dataset, segment: str) -> tuple[np.ndarray, pd.MultiIndex]:
        raise NotImplementedError

    def _state(self) -> dict:
        raise NotImplementedError

    def _set_state(self, state: dict) -> None:
        raise NotImplementedError

    # ---- public API --------------------------------------------------------------------------
    def fit(self, dataset: Dataset) -> "BaseModel":
        """Train on the LEARN block's "train" rows, early-stop on "valid"; returns self."""
        info = FitInfo(seed=getattr(self.config, "seed", 0))
        start = time.perf_counter()
        self._fit(dataset, info)
        info.seconds = time.perf_counter() - start
        self.feature_names_ = dataset.feature_names
        self.fit_info_ = info
        return self

    def predict(self, dataset: Dataset, segment: str = "test") -> pd.Series:
        """Scores for the segment's INFER rows as a Series named "score" indexed by (datetime, instrument)."""
        if self.feature_names_ is None:
            raise ModelInputError(f"{self.family} model is not fitted; call fit(dataset) first")
        if tuple(dataset.feature_names) != tuple(self.feature_names_):
            raise ModelInputError(
                f"dataset features {list(dataset.feature_names)[:5]}... differ from the "
                f"{len(self.feature_names_)} features the model was fitted on {list(self.feature_names_)[:5]}..."
            )
        scores, index = self._predict(dataset, segment)
        return pd.Series(np.asarray(scores, dtype=np.float64), index=index, name="score")

    def save(self, path: str | Path) -> None:
        """One file holding the family, config, learned state and fit record (a pickle: load trusted files only)."""
        if self.feature_names_ is None:
            raise ModelInputError(f"{self.family} model is not fitted; nothing to save")
        payload = {
            "format": FORMAT_VERSION,
            "family": self.family,
            "config": asdict(self.config),
            "feature_names": list(self.feature_names_),
            "fit_info": asdict(self.fit_info_),
            "state": self._state(),
        }
        with open(path, "wb") as fh:
            pickle.dump(payload, fh, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def load(cls, path: str | Path) -> "BaseModel":
        """A model saved by `save`; on BaseModel itself, the family recorded in the file is used."""
        with open(path, "rb") as fh:
            payload = pickle.load(fh)
        if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
            raise ModelInputError(f"{path} is not a saved quantcore model (format {FORMAT_VERSION})")
        target = cls
        if cls is BaseModel:
            from quantcore.models.registry import FAMILIES

            target = FAMILIES[payload["family"]]
        elif payload["family"] != cls.family:
            raise ModelInputError(f"{path} holds a {payload['family']!r} model, not {cls.family!r}")
        config = dict(payload["config"])
        for key, value in config.items():  # tuples come back from asdict as tuples; lists stay lists
            if isinstance(value, list):
                config[key] = tuple(value)
        model = target(**config)
        model.feature_names_ = tuple(payload["feature_names"])
        model.fit_info_ = FitInfo(**payload["fit_info"])
        model._set_state(payload["state"])
        return model


def learn_arrays(dataset: Dataset, segment: str) -> tuple[np.ndarray, np.ndarray]:
    """(X (R, F) float32, y (R,) float32) of the segment's LEARN rows with a finite label."""
    features, label, keep = _learn_rows(dataset, segment)
    # one boolean gather of whole rows, in (day, instrument) order as `Dataset.rows`
    return features[keep], label[keep]


def learn_columns(dataset: Dataset, segment: str, day_chunk: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """`learn_arrays` with X transposed: (F, R) float32, each feature's rows contiguous (what a
    column-major consumer such as LightGBM's Arrow input wants). Gathered a few days at a time, so
    each chunk is transposed while it is in cache: about 5x faster than gathering (R, F) and then
    transposing 400k rows x 158 features."""
    features, label, keep = _learn_rows(dataset, segment)
    offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))])
    out = np.empty((features.shape[2], int(offsets[-1])), dtype=np.float32)
    for d0 in range(0, features.shape[0], day_chunk):
        d1 = min(d0 + day_chunk, features.shape[0])
        out[:, offsets[d0] : offsets[d1]] = features[d0:d1][keep[d0:d1]].T
    return out, label[keep]


def _learn_rows(dataset: Dataset, segment: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The segment's LEARN features (T', N, F) and label (T', N), and which (day, instrument) rows to
    learn from: yielded by the dataset and with a finite label. Refuses a segment with none."""
    b = dataset.learn
    days = dataset.days(segment)
    features, label = b.features[days], b.label[days]
    keep = b.rows[days] & np.isfinite(label)
    if not keep.any():
        raise ModelInputError(f"segment {segment!r} has no rows with a finite label to learn from")
    return features, label, keep


def check_predictions(family: str, scores: np.ndarray, where: str) -> None:
    """Refuse a degenerate model: NaN/inf or constant scores mean it learned nothing usable."""
    scores = np.asarray(scores, dtype=np.float64)
    bad = int((~np.isfinite(scores)).sum())
    if bad:
        raise ModelFitError(
            f"{family}: {bad} of {scores.size} predictions on {where} are NaN/inf; the fit diverged "
            "(lower the learning rate, normalise features/label, or fill NaN features)"
        )
    if scores.size > 1 and np.ptp(scores) == 0:
        raise ModelFitError(
            f"{family}: predictions on {where} are constant ({scores[0]:.6g}); the model learned nothing "
            "(a label too small for the regularisation, e.g. LightGBM's lambda_l1=205.7 on raw returns: "
            "normalise the label with CSRankNorm/CSZScoreNorm, or lower the penalties)"
        )
