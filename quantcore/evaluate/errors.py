"""Errors of factor evaluation; each message names what is wrong with the factor, label or range."""

from __future__ import annotations

from quantcore.errors import QuantcoreError

__all__ = ["FactorEvaluationError"]


class FactorEvaluationError(QuantcoreError, ValueError):
    """A factor cannot be scored: constant or all-NaN, an empty date range, or too few usable days."""
