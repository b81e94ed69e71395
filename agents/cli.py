"""The `rdquant` command: the quant core's commands, the sandbox's, and the research loop's."""

from __future__ import annotations

from agents.cli_loop import loop_command, replay_command, report_command, runs_app
from quantcore.cli import app
from quantcore.cli._common import run_and_exit
from sandbox.cli import sandbox_app

app.add_typer(sandbox_app, name="sandbox")
app.add_typer(runs_app, name="runs")
app.command("loop")(loop_command)
app.command("replay")(replay_command)
app.command("report")(report_command)

__all__ = ["app", "main"]


def main() -> None:
    """The `rdquant` console script (see `quantcore.cli._common.run_and_exit`)."""
    run_and_exit(app)
