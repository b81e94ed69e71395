"""Exception hierarchy of the quant core. Every message says what is wrong and how to fix it."""

from __future__ import annotations


class QuantcoreError(Exception):
    """Base class for every error the quant core raises on purpose."""


class DataError(QuantcoreError):
    """Market data is missing, malformed or inconsistent."""


class DataValidationError(DataError):
    """Imported bars failed validation; `problems` lists every problem found, not just the first."""

    def __init__(self, message: str, problems: list[str] | None = None):
        self.problems = list(problems or [])
        detail = "".join(f"\n  - {p}" for p in self.problems[:20])
        more = f"\n  ... and {len(self.problems) - 20} more" if len(self.problems) > 20 else ""
        super().__init__(message + detail + more)


class ExpressionError(QuantcoreError):
    """An expression could not be parsed, bound or evaluated."""


class ParseError(ExpressionError):
    """Syntax error in an expression; carries the 0-based character position."""

    def __init__(self, message: str, text: str, position: int):
        self.text = text
        self.position = position
        self.reason = message
        # show at most ~80 characters around the error so a 10,000-character input stays readable
        lo = max(0, position - 40)
        hi = min(len(text), position + 40)
        shown = ("..." if lo else "") + text[lo:hi] + ("..." if hi < len(text) else "")
        caret = " " * (position - lo + (3 if lo else 0)) + "^"
        super().__init__(f"{message} at position {position}:\n  {shown}\n  {caret}")


class UnknownFieldError(ExpressionError):
    """An expression names a field the panel does not have."""


class UnknownOperatorError(ExpressionError):
    """An expression calls an operator that does not exist."""


class ArityError(ExpressionError):
    """An operator was called with the wrong number or kind of arguments."""


class LookAheadError(ExpressionError):
    """A feature expression reads future data (e.g. `Ref($close, -1)`); only labels may."""


class KernelArgumentError(QuantcoreError, ValueError):
    """A compiled kernel was called with invalid arguments (caught once, in `quantcore.kernels`)."""
