"""Errors of experiment recording; each message says how to fix the call or the store."""

from __future__ import annotations

from quantcore.errors import QuantcoreError

__all__ = ["RecordingError"]


class RecordingError(QuantcoreError):
    """A run could not be recorded or read back: a bad key or value, a missing file, a store error."""
