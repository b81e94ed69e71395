"""What the research loop's commands report as the user's problem, and everything else.

A `UserError` (or one of the quant core's and the sandbox's own user-facing errors, `user_error_types`) is
a mistake of the person at the keyboard or of their data and environment: a run id that is not in
the project, a label that reads no future day, a market too short for a fold, Ray missing, an LLM
endpoint that does not answer. The command prints it as one line and exits 2. Any other exception is
our bug: it is not dressed up as the user's mistake, but shows its traceback (`user_errors`).
"""

from __future__ import annotations

import functools
from typing import Callable, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["UserError", "RunNotFound", "LabelError", "ExperimentFailed", "user_error_types", "user_errors", "fail"]


class UserError(Exception):
    """The user's mistake (input, data, environment): one line, exit 2."""


class RunNotFound(UserError, KeyError):
    """No run with that id (or an ambiguous prefix) in the project. A KeyError too, for lookups."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class LabelError(UserError, ValueError):
    """`--label` does not parse, names a missing field, or reads no future day."""


class ExperimentFailed(UserError, RuntimeError):
    """An experiment the run cannot go on without (the baseline, every screening chunk, the final model)
    failed in the sandbox; the message carries the sandbox's failure (category, message, its context)."""


@functools.cache
def user_error_types() -> tuple[type[BaseException], ...]:
    """Every exception a loop command shows as the user's problem: ours, the quant core's and the
    sandbox's (bad data, expressions, segments, markets, limits; no jail, no Ray) and the LLM client's
    (the endpoint's). Imported when first asked for, so that a command's start-up stays light."""
    from agents.llm import LLMError
    from quantcore.errors import QuantcoreError
    from sandbox.jail import JailUnavailable
    from sandbox.limits import LimitsError
    from sandbox.market import MarketRefused
    from sandbox.ray_executor import RayUnavailable
    from sandbox.spec import SpecError

    return (UserError, QuantcoreError, JailUnavailable, LimitsError, MarketRefused, RayUnavailable, SpecError, LLMError)


_err = Console(stderr=True)
F = TypeVar("F", bound=Callable)


def fail(message: str) -> NoReturn:
    """The user's mistake: one line on stderr (never wrapped, never read as markup), exit 2."""
    _err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(2)


def user_errors(func: F) -> F:
    """Decorate a command: `user_error_types` become `fail`; anything else (our bug) propagates with
    its traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except Exception as e:
            if isinstance(e, user_error_types()):
                fail(str(e))
            raise

    return wrapper  # type: ignore[return-value]
