"""Errors of dataset building; each message names the segment, column or processor at fault."""

from __future__ import annotations

from quantcore.errors import QuantcoreError

__all__ = ["DatasetError", "SegmentError", "ProcessorError"]


class DatasetError(QuantcoreError, ValueError):
    """A dataset cannot be built or read: empty universe, all-NaN features or label in train, ..."""


class SegmentError(DatasetError):
    """A segment is missing, empty, reversed, out of the calendar's range or overlaps another."""


class ProcessorError(DatasetError):
    """A processor is unknown, misconfigured, or was applied before it was fitted."""
