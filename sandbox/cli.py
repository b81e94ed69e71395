"""`rdquant sandbox run SPEC.json`: run one experiment spec in the sandbox and print its result."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from sandbox.executor import DEFAULT_SANDBOX_ROOT
from sandbox.limits import Limits
from sandbox.local import LocalExecutor
from sandbox.result import ExperimentResult

__all__ = ["sandbox_app"]

sandbox_app = typer.Typer(help="Run experiment specs in the isolated sandbox.", no_args_is_help=True)
_out = Console()
_err = Console(stderr=True)


@sandbox_app.command("run")
def run_command(
    spec: Path = typer.Argument(..., help="Experiment spec (JSON); '-' reads standard input."),
    root: Path = typer.Option(DEFAULT_SANDBOX_ROOT, "--root", help="Sandbox folder (markets, experiment dirs, result cache)."),
    wall_seconds: float = typer.Option(120.0, "--wall-seconds", help="Wall-clock limit."),
    cpu_seconds: float = typer.Option(240.0, "--cpu-seconds", help="CPU-time limit."),
    memory_mb: int = typer.Option(4096, "--memory-mb", help="Memory the worker may grow by."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Serve an identical earlier result from the cache."),
    record: Optional[Path] = typer.Option(None, "--record", help="Also log the result to the MLflow store in this folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Run one spec; exit 0 if it succeeded, 1 if the experiment failed (the failure is printed), 2 for bad usage."""
    try:
        text = sys.stdin.read() if str(spec) == "-" else spec.read_text()
    except OSError as e:
        _err.print(f"[bold red]error:[/] cannot read {spec}: {e.strerror or e}")
        raise typer.Exit(2) from None
    recorder = None
    if record is not None:
        from quantcore.recording import Recorder

        recorder = Recorder.open(record, "sandbox")
    limits = Limits(wall_seconds=wall_seconds, cpu_seconds=cpu_seconds, memory_mb=memory_mb)
    with LocalExecutor(workers=1, root=root, limits=limits, recorder=recorder, use_cache=cache) as executor:
        result = executor.run(text)
    if as_json:
        print(json.dumps(result.to_dict(), sort_keys=True))
    else:
        _print(result)
    raise typer.Exit(0 if result.ok else 1)


def _print(result: ExperimentResult) -> None:
    head = f"[bold]{result.kind}[/] experiment {result.spec_hash[:12] or '(invalid)'}"
    if result.cached:
        head += " [dim](cached)[/]"
    _out.print(head)
    if result.failure is not None:
        _out.print(f"[bold red]{result.failure.category.value}[/]: {result.failure.message}", highlight=False)
        if result.failure.context:
            _out.print(result.failure.context, highlight=False, markup=False)
        return
    table = Table("metric", "value")
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.6g}")
    _out.print(table)
    for name, path in result.artifacts.items():
        _out.print(f"{name}: {path}")
    if result.mlflow_run_id:
        _out.print(f"mlflow run id: {result.mlflow_run_id}")
    _out.print(f"[dim]{result.seconds:.3f} s in the worker[/]")
