"""Ridge regression baseline, closed form in numpy (qlib's LinearModel with estimator="ridge")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantcore.dataset import DataKey, Dataset
from quantcore.models.base import BaseModel, FitInfo, check_predictions, learn_arrays
from quantcore.models.errors import ModelConfigError

__all__ = ["RidgeConfig", "RidgeModel"]


@dataclass(frozen=True)
class RidgeConfig:
    alpha: float = 1.0  # L2 penalty on the weights (not the intercept); sklearn Ridge's default
    fill_value: float = 0.0  # NaN features left by the processors count as this (the mean after z-scoring)
    fit_intercept: bool = True


class RidgeModel(BaseModel):
    family = "linear"
    Config = RidgeConfig

    def __init__(self, **params):
        super().__init__(**params)
        if self.config.alpha < 0:
            raise ModelConfigError(f"linear: alpha must be >= 0, got {self.config.alpha}")

    def _x(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return np.where(np.isfinite(x), x, self.config.fill_value)

    def _fit(self, dataset: Dataset, info: FitInfo) -> None:
        x, y = learn_arrays(dataset, "train")
        x, y = self._x(x), y.astype(np.float64)
        if self.config.fit_intercept:
            x_mean, y_mean = x.mean(axis=0), y.mean()
        else:
            x_mean, y_mean = np.zeros(x.shape[1]), 0.0
        xc = x - x_mean
        gram = xc.T @ xc + self.config.alpha * np.eye(x.shape[1])
        # lstsq rather than solve: a constant column with alpha=0 leaves the Gram matrix singular
        coef = np.linalg.lstsq(gram, xc.T @ (y - y_mean), rcond=None)[0]
        self.coef_ = coef
        self.intercept_ = float(y_mean - x_mean @ coef)
        xv, yv = learn_arrays(dataset, "valid")
        pv = self._x(xv) @ coef + self.intercept_
        info.train_loss = [float(np.mean((x @ coef + self.intercept_ - y) ** 2))]
        info.valid_loss = [float(np.mean((pv - yv) ** 2))]
        info.best_iteration, info.best_valid_loss = 0, info.valid_loss[0]
        info.n_train, info.n_valid = len(y), len(yv)
        check_predictions(self.family, pv, "the valid segment")

    def _predict(self, dataset: Dataset, segment: str):
        x, _ = dataset.prepare(segment, DataKey.INFER)
        return self._x(x.to_numpy()) @ self.coef_ + self.intercept_, x.index

    def _state(self) -> dict:
        return {"coef": self.coef_, "intercept": self.intercept_}

    def _set_state(self, state: dict) -> None:
        self.coef_, self.intercept_ = np.asarray(state["coef"]), float(state["intercept"])
