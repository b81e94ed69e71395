"""Errors of model fitting and prediction; each message says what to change."""

from __future__ import annotations

from quantcore.errors import QuantcoreError

__all__ = ["ModelError", "ModelConfigError", "ModelFitError", "ModelInputError"]


class ModelError(QuantcoreError):
    """Base class of model errors."""


class ModelConfigError(ModelError, ValueError):
    """An unknown model family or parameter, or a parameter out of range; the message lists valid ones."""


class ModelFitError(ModelError, RuntimeError):
    """Training failed or produced a degenerate model (NaN or constant predictions)."""


class ModelInputError(ModelError, ValueError):
    """The dataset does not fit the model: unfitted model, other feature columns, no usable rows."""
