"""Return-prediction models over a `quantcore.dataset.Dataset`: LightGBM, ridge, MLP and GRU behind one
interface (fit(dataset) -> self, predict(dataset, segment) -> "score" Series, save/load, fit_info_).

Families are imported on first use (`FAMILIES`, or an attribute of this package): the torch-based
MLP and GRU cost seconds of import time that a LightGBM run does not need."""

import importlib

from quantcore.models.base import BaseModel, FitInfo, Model
from quantcore.models.errors import ModelConfigError, ModelError, ModelFitError, ModelInputError
from quantcore.models.registry import FAMILIES, load_model, make_model

__all__ = [
    "Model",
    "BaseModel",
    "FitInfo",
    "FAMILIES",
    "make_model",
    "load_model",
    "LGBModel",
    "LGBConfig",
    "RidgeModel",
    "RidgeConfig",
    "MLPModel",
    "MLPConfig",
    "GRUModel",
    "GRUConfig",
    "ModelError",
    "ModelConfigError",
    "ModelFitError",
    "ModelInputError",
]

_LAZY = {
    "LGBModel": "lightgbm_model",
    "LGBConfig": "lightgbm_model",
    "RidgeModel": "linear",
    "RidgeConfig": "linear",
    "MLPModel": "mlp",
    "MLPConfig": "mlp",
    "GRUModel": "gru",
    "GRUConfig": "gru",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"quantcore.models.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'quantcore.models' has no attribute {name!r}")
