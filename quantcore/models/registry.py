"""Model families by name: `make_model("lightgbm", learning_rate=0.1)`."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from typing import Any

from quantcore.models.base import BaseModel
from quantcore.models.errors import ModelConfigError

__all__ = ["FAMILIES", "make_model", "load_model"]

#: family name -> (module, class). Modules are imported on first use: the torch families cost seconds
#: of import time that a LightGBM or ridge run should not pay.
_PLACES: dict[str, tuple[str, str]] = {
    "lightgbm": ("quantcore.models.lightgbm_model", "LGBModel"),
    "linear": ("quantcore.models.linear", "RidgeModel"),
    "mlp": ("quantcore.models.mlp", "MLPModel"),
    "gru": ("quantcore.models.gru", "GRUModel"),
}


class _Families(Mapping[str, type[BaseModel]]):
    """Read-only name -> model class mapping that imports a family's module when it is looked up."""

    def __getitem__(self, name: str) -> type[BaseModel]:
        module, cls = _PLACES[name]
        return getattr(importlib.import_module(module), cls)

    def __iter__(self) -> Iterator[str]:
        return iter(_PLACES)

    def __len__(self) -> int:
        return len(_PLACES)


FAMILIES: Mapping[str, type[BaseModel]] = _Families()


def make_model(name: str, **params: Any) -> BaseModel:
    """An unfitted model of family `name`; unknown names or parameters list the valid ones."""
    cls = FAMILIES.get(str(name).lower())
    if cls is None:
        raise ModelConfigError(f"unknown model family {name!r}; valid: {', '.join(FAMILIES)}")
    return cls(**params)


def load_model(path) -> BaseModel:
    """Any saved model; the family is read from the file."""
    return BaseModel.load(path)
