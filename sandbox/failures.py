"""Exceptions -> structured failures: a category, one line, and a short context an LLM can repair from."""

from __future__ import annotations

import traceback

from quantcore.errors import (
    ArityError,
    DataError,
    ExpressionError,
    LookAheadError,
    ParseError,
    UnknownFieldError,
    UnknownOperatorError,
)
from sandbox.guard import GENERATED_FILE, CodeRejected, ForbiddenOperation, LimitExceeded, OutputLimitExceeded
from sandbox.result import Failure, FailureCategory
from sandbox.spec import SpecError

__all__ = ["DegenerateOutput", "SpecNotRunnable", "CpuLimitExceeded", "classify", "GENERATED_FILE"]


class DegenerateOutput(Exception):
    """A factor or model output is unusable: all-NaN, constant, infinite, the wrong shape."""


class SpecNotRunnable(Exception):
    """A valid spec of a kind this version cannot run."""


class CpuLimitExceeded(LimitExceeded):
    """Raised by the worker's SIGXCPU handler when an experiment uses up its CPU time."""


_CATEGORY_OF = (
    (ParseError, FailureCategory.PARSE_ERROR),
    (LookAheadError, FailureCategory.LOOK_AHEAD),
    ((UnknownFieldError, UnknownOperatorError, ArityError, ExpressionError), FailureCategory.INVALID_SPEC),
    ((SpecError, SpecNotRunnable), FailureCategory.INVALID_SPEC),
    (ForbiddenOperation, FailureCategory.FORBIDDEN_OPERATION),
    ((DegenerateOutput, OutputLimitExceeded), FailureCategory.DEGENERATE_OUTPUT),
    (CpuLimitExceeded, FailureCategory.TIMEOUT),
    (MemoryError, FailureCategory.MEMORY_LIMIT),
)


def classify(exc: BaseException, *, refusals: list[str] | None = None, source: str | None = None) -> Failure:
    """The failure for `exc`. `refusals` (the guard's) win: code that swallowed a refused operation
    is still forbidden. `source` (generated code) lets the context quote the failing line. Never
    raises, even for an exception generated code built to break printing (`__str__` raising, say)."""
    try:
        return _classify(exc, refusals, source)
    except BaseException:  # noqa: BLE001 - isinstance itself runs code for an exception with a `__class__` property
        return Failure(FailureCategory.RUNTIME_ERROR, "the experiment raised an exception that cannot be inspected")


def _classify(exc: BaseException, refusals: list[str] | None, source: str | None) -> Failure:
    if refusals:
        return Failure(
            FailureCategory.FORBIDDEN_OPERATION,
            f"the sandbox refused {refusals[0]}",
            _code_context(exc, source) if source else "",
        )
    if isinstance(exc, CodeRejected):
        return Failure(FailureCategory(exc.category), str(exc), exc.context)
    if isinstance(exc, ImportError) and "not allowed in the sandbox" in _text(exc):
        return Failure(FailureCategory.FORBIDDEN_OPERATION, _text(exc), _code_context(exc, source))
    category = _category(exc)
    if category is FailureCategory.RUNTIME_ERROR and _quantcore_input_error(exc):
        category = FailureCategory.INVALID_SPEC
    message = _described(exc) if category is FailureCategory.RUNTIME_ERROR else _text(exc)
    if not message.strip():
        message = _name(exc)
    if isinstance(exc, (ExpressionError, SpecError)):
        context = str(exc)  # parse errors carry the expression with a caret; spec errors list every key
        message = context.splitlines()[0]
    else:
        context = _code_context(exc, source) if source else _trimmed_traceback(exc)
    return Failure(category, message, context)


def _text(exc: BaseException) -> str:
    """`str(exc)` as a plain str, or a placeholder when the exception cannot be printed."""
    try:
        text = str(exc)
        return text if type(text) is str else str.__str__(text)  # a str subclass could override strip() & co.
    except BaseException:  # noqa: BLE001 - __str__ is the experiment's code
        return f"<{_name(exc)} that cannot be printed>"


def _name(exc: BaseException) -> str:
    try:
        name = type(exc).__name__  # a metaclass can make even this run code
        return name if type(name) is str else "Exception"
    except BaseException:  # noqa: BLE001
        return "Exception"


def _described(exc: BaseException) -> str:
    return f"{_name(exc)}: {_text(exc)}"


def _category(exc: BaseException) -> FailureCategory:
    for types, category in _CATEGORY_OF:
        if isinstance(exc, types):
            return category
    if type(exc).__name__ == "FactorEvaluationError":
        return FailureCategory.DEGENERATE_OUTPUT
    return FailureCategory.RUNTIME_ERROR


def _quantcore_input_error(exc: BaseException) -> bool:
    """Config mistakes the quant core names (unknown model family or parameter, bad workflow, unknown market)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"ModelConfigError", "WorkflowConfigError", "SegmentError"}) or isinstance(exc, DataError)


def _trimmed_traceback(exc: BaseException, frames: int = 4) -> str:
    """The last few frames and the exception line: where it broke, without the executor's plumbing."""
    tb = traceback.extract_tb(exc.__traceback__)[-frames:]
    lines = [f'  File "{_short(f.filename)}", line {f.lineno}, in {f.name}\n    {f.line or ""}' for f in tb]
    return "\n".join(lines + [_described(exc)])


def _code_context(exc: BaseException, source: str | None) -> str:
    """For generated code: the deepest frame inside it, with the offending source line."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == GENERATED_FILE]
    if not frames or not source:
        return _trimmed_traceback(exc)
    f = frames[-1]
    lines = source.splitlines()
    text = lines[f.lineno - 1].rstrip() if f.lineno and 0 < f.lineno <= len(lines) else ""
    return f"line {f.lineno}, in {f.name}:\n    {text.strip()}\n{_described(exc)}"


def _short(path: str) -> str:
    for marker in ("/quantcore/", "/sandbox/", "/site-packages/"):
        if marker in path:
            return path[path.index(marker) + 1 :]
    return path
