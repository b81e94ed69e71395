"""The `rdquant` command: the quant core's commands, the sandbox's, and the research loop's."""

from __future__ import annotations

from quantcore.cli import app
from sandbox.cli import sandbox_app

app.add_typer(sandbox_app, name="sandbox")

__all__ = ["app", "main"]


def main() -> None:
    app()
