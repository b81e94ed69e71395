"""A generated model class (`class Model` with fit/predict on numpy arrays) as a quant-core model.

Its fit and predict run under the sandbox guard, exactly like a generated factor function."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quantcore.dataset import DataKey, Dataset
from quantcore.models.base import BaseModel, FitInfo, check_predictions, learn_arrays
from sandbox.failures import DegenerateOutput
from sandbox.guard import ForbiddenOperation, Guard, load_generated

__all__ = ["GeneratedModel"]


@dataclass(frozen=True)
class _NoConfig:
    pass


class GeneratedModel(BaseModel):
    """Wraps `class Model: fit(x_train, y_train, x_valid, y_valid); predict(x) -> (rows,)`."""

    family = "generated"
    Config = _NoConfig

    def __init__(self, source: str, guard: Guard, workdir: Path, output_chars: int = 1 << 20):
        super().__init__()
        self.source, self.guard, self.workdir, self.output_chars = source, guard, Path(workdir), output_chars
        self._impl = None

    def _guarded(self, fn, *args):
        with self.guard.active(self.workdir, self.output_chars):
            out = fn(*args)
        if self.guard.refusals:
            raise ForbiddenOperation(f"the sandbox refused {self.guard.refusals[0]}")
        return out

    def _fit(self, dataset: Dataset, info: FitInfo) -> None:
        def build_and_fit(xt, yt, xv, yv):
            cls = load_generated(self.source).get("Model")
            if not isinstance(cls, type):
                raise DegenerateOutput("the code defines no class `Model`")
            impl = cls()
            impl.fit(xt, yt, xv, yv)
            return impl

        xt, yt = learn_arrays(dataset, "train")
        xv, yv = learn_arrays(dataset, "valid")
        self._impl = self._guarded(build_and_fit, xt, yt, xv, yv)
        pv = self._scores(xv)
        info.valid_loss = [float(np.mean((pv - yv) ** 2))]
        info.best_iteration, info.best_valid_loss = 0, info.valid_loss[0]
        info.n_train, info.n_valid = len(yt), len(yv)
        check_predictions(self.family, pv, "the valid segment")

    def _scores(self, x: np.ndarray) -> np.ndarray:
        def predict(x):  # converted under the guard: a returned object's `__array__` is generated code too
            out = self._impl.predict(x)
            try:
                return np.asarray(out, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError) as e:
                raise DegenerateOutput(f"Model.predict returned a {type(out).__name__} that is not numeric: {e}") from None

        scores = self._guarded(predict, np.asarray(x, dtype=np.float32))
        if scores.shape[0] != len(x):
            raise DegenerateOutput(f"Model.predict returned {scores.shape[0]} scores for {len(x)} rows")
        return scores

    def _predict(self, dataset: Dataset, segment: str):
        x, _ = dataset.prepare(segment, DataKey.INFER)
        return self._scores(x.to_numpy()), x.index

    def _state(self) -> dict:
        return {"source": self.source}  # the code itself: a generated object is not saved by pickle

    def _set_state(self, state: dict) -> None:
        raise DegenerateOutput("a generated model is re-created from its spec, not loaded from a file")
