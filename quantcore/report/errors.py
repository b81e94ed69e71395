"""Errors of risk analysis and report rendering; each message says what to pass instead."""

from __future__ import annotations

from quantcore.errors import QuantcoreError

__all__ = ["ReportError"]


class ReportError(QuantcoreError, ValueError):
    """A return series or daily report cannot be analysed or drawn: empty, all-NaN, missing columns."""
