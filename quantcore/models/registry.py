"""Model families by name: `make_model("lightgbm", learning_rate=0.1)`."""

from __future__ import annotations

from typing import Any

from quantcore.models.base import BaseModel
from quantcore.models.errors import ModelConfigError
from quantcore.models.gru import GRUModel
from quantcore.models.lightgbm_model import LGBModel
from quantcore.models.linear import RidgeModel
from quantcore.models.mlp import MLPModel

__all__ = ["FAMILIES", "make_model", "load_model"]

FAMILIES: dict[str, type[BaseModel]] = {
    LGBModel.family: LGBModel,
    RidgeModel.family: RidgeModel,
    MLPModel.family: MLPModel,
    GRUModel.family: GRUModel,
}


def make_model(name: str, **params: Any) -> BaseModel:
    """An unfitted model of family `name`; unknown names or parameters list the valid ones."""
    cls = FAMILIES.get(str(name).lower())
    if cls is None:
        raise ModelConfigError(f"unknown model family {name!r}; valid: {', '.join(FAMILIES)}")
    return cls(**params)


def load_model(path) -> BaseModel:
    """Any saved model; the family is read from the file."""
    return BaseModel.load(path)
