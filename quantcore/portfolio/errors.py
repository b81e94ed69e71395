"""Portfolio errors; each message says how to fix the input."""

from __future__ import annotations

from quantcore.errors import QuantcoreError

__all__ = ["PortfolioError", "RiskModelError", "OptimizerConfigError"]


class PortfolioError(QuantcoreError):
    """The portfolio optimiser or a risk model cannot run with the given inputs or settings."""


class RiskModelError(PortfolioError):
    """A risk model cannot be estimated from the given returns (shape, too little data)."""


class OptimizerConfigError(PortfolioError):
    """An optimiser setting or input array is invalid (wrong shape, negative limits, missing benchmark)."""
