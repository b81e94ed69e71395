"""The `rdquant` command: the quant core's commands, the sandbox's, and the research loop's."""

from __future__ import annotations

import atexit
import os
import sys

from agents.cli_loop import loop_command, replay_command, report_command, runs_app
from quantcore.cli import app
from sandbox.cli import sandbox_app

app.add_typer(sandbox_app, name="sandbox")
app.add_typer(runs_app, name="runs")
app.command("loop")(loop_command)
app.command("replay")(replay_command)
app.command("report")(report_command)

__all__ = ["app", "main"]


def main() -> None:
    """Run the command, then end the process without tearing the interpreter down.

    After a workflow or a loop, Python's own shutdown (freeing every module, object and array, with
    a final garbage collection) takes ~0.75 s on a 2-core machine and does nothing anyone can see:
    the atexit handlers (logging, thread and process pools, MLflow, Ray) still run, and the standard
    streams are flushed, before `os._exit`. An exception other than SystemExit takes the normal path."""
    try:
        app()
    except SystemExit as done:
        _exit_now(done.code)
    _exit_now(0)


def _exit_now(code) -> None:
    if code is not None and not isinstance(code, int):  # SystemExit("message"): printed, status 1
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing left to deliver
            pass
    os._exit(code or 0)
