"""Return-prediction models over a `quantcore.dataset.Dataset`: LightGBM, ridge, MLP and GRU behind one
interface (fit(dataset) -> self, predict(dataset, segment) -> "score" Series, save/load, fit_info_)."""

from quantcore.models.base import BaseModel, FitInfo, Model
from quantcore.models.errors import ModelConfigError, ModelError, ModelFitError, ModelInputError
from quantcore.models.gru import GRUConfig, GRUModel
from quantcore.models.lightgbm_model import LGBConfig, LGBModel
from quantcore.models.linear import RidgeConfig, RidgeModel
from quantcore.models.mlp import MLPConfig, MLPModel
from quantcore.models.registry import FAMILIES, load_model, make_model

__all__ = [
    "Model", "BaseModel", "FitInfo", "FAMILIES", "make_model", "load_model",
    "LGBModel", "LGBConfig", "RidgeModel", "RidgeConfig", "MLPModel", "MLPConfig", "GRUModel", "GRUConfig",
    "ModelError", "ModelConfigError", "ModelFitError", "ModelInputError",
]
