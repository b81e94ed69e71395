"""Backtest errors; each message says how to fix the input."""

from __future__ import annotations

from quantcore.errors import QuantcoreError

__all__ = ["BacktestError", "SignalError"]


class BacktestError(QuantcoreError):
    """A backtest cannot run with the given market, dates or settings."""


class SignalError(BacktestError):
    """The signal cannot be aligned with the market (bad file, missing `score`, no overlap)."""
