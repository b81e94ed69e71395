"""Shared CLI plumbing: user errors become one red line and exit code 2, never a traceback."""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import typer
from rich.console import Console

from quantcore.errors import QuantcoreError

F = TypeVar("F", bound=Callable)

console = Console()
err_console = Console(stderr=True)


def user_errors(func: F) -> F:
    """Decorate a command so that expected errors (bad input, bad data) print cleanly and exit 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (QuantcoreError, FileNotFoundError, ValueError) as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(code=2) from None

    return wrapper  # type: ignore[return-value]


def parse_pairs(items: list[str], option: str, form: str) -> dict[str, str]:
    """Parse repeated `KEY=VALUE` options (split at the first '='); `form` is shown in the error."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{option} takes {form}, got {item!r}")
        out[key.strip()] = value.strip()
    return out
