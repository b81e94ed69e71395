"""`rdquant sandbox run SPEC.json`: run one experiment spec in the sandbox and print its result.
`rdquant sandbox doctor`: which OS containment layers work on this machine."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from sandbox.executor import DEFAULT_SANDBOX_ROOT
from sandbox.limits import Limits, LimitsError
from sandbox.local import LocalExecutor
from sandbox.result import ExperimentResult

__all__ = ["sandbox_app"]

sandbox_app = typer.Typer(help="Run experiment specs in the isolated sandbox.", no_args_is_help=True)
_out = Console()
_err = Console(stderr=True)


@sandbox_app.command("run")
def run_command(
    spec: Path = typer.Argument(..., help="Experiment spec (JSON); '-' reads standard input."),
    root: Path = typer.Option(
        DEFAULT_SANDBOX_ROOT, "--root", help="Sandbox folder (markets, experiment dirs, result cache)."
    ),
    # limits are read as text and checked here, so that every bad value gets the same one-line answer
    wall_seconds: str = typer.Option("120", "--wall-seconds", metavar="SECONDS", help="Wall-clock limit."),
    cpu_seconds: str = typer.Option("240", "--cpu-seconds", metavar="SECONDS", help="CPU-time limit."),
    memory_mb: str = typer.Option("4096", "--memory-mb", metavar="MIB", help="Memory the worker may grow by."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Serve an identical earlier result from the cache."),
    record: Optional[Path] = typer.Option(
        None, "--record", help="Also log the result to the MLflow store in this folder."
    ),
    market_root: list[Path] = typer.Option(
        [],
        "--market-root",
        metavar="DIR",
        help="A folder whose bars files and qlib folders a spec may name as its market "
        "(repeatable; the embedded and synthetic markets need none).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Run one spec; exit 0 if it succeeded, 1 if the experiment failed (the failure is printed), 2 for bad usage."""
    limits = _limits(wall_seconds=wall_seconds, cpu_seconds=cpu_seconds, memory_mb=memory_mb)
    text = _read_spec(spec)
    recorder = None
    if record is not None:
        from quantcore.recording import Recorder

        recorder = Recorder.open(record, "sandbox")
    with LocalExecutor(
        workers=1, root=root, limits=limits, recorder=recorder, use_cache=cache, market_roots=market_root
    ) as executor:
        result = executor.run(text)
    if as_json:
        print(json.dumps(result.to_dict(), sort_keys=True))
    else:
        _print(result)
    raise typer.Exit(0 if result.ok else 1)


@sandbox_app.command("doctor")
def doctor_command(as_json: bool = typer.Option(False, "--json", help="Print the layers as one JSON object.")) -> None:
    """Probe which containment layers (bwrap, namespaces, seccomp, cgroups v2, Landlock) work here; exit 0."""
    from sandbox.jail import jail_capabilities

    layers = jail_capabilities()
    summary = worker_layers(layers)
    if as_json:
        print(
            json.dumps(
                {**{layer.value: probe._asdict() for layer, probe in layers.items()}, "workers": summary},
                sort_keys=True,
            )
        )
        return
    for layer, probe in layers.items():
        mark = "[green]available[/]" if probe.available else "[red]missing[/]  "
        _out.print(f"{layer.value:<18} {mark} ", Text(probe.why), soft_wrap=True)
    _out.print(Text(f"\nLocal workers here: {summary}"), soft_wrap=True)


def worker_layers(layers: dict) -> str:
    """In a line: the layers a `LocalExecutor` with default settings gives its workers on this machine."""
    from sandbox.jail import Layer

    def ok(layer: Layer) -> bool:
        return layers[layer].available

    files = (
        "the bubblewrap jail (own user, PID, IPC and network namespaces; read-only view, one writable folder)"
        if ok(Layer.JAIL)
        else "Landlock (files: read-only view, one writable folder)"
        if ok(Layer.LANDLOCK)
        else "no OS file isolation (only the Python guard)"
    )
    calls = "a seccomp filter (no processes, programs, sockets or ptrace)" if ok(Layer.SECCOMP) else "no seccomp filter"
    limits = "cgroup v2 limits" if ok(Layer.CGROUP_V2) else "rlimits for CPU, memory and file size"
    return f"{files}; {calls}; {limits}; the Python guard on generated code"


def _limits(**options: str) -> Limits:
    """`Limits` from the command line's text, or a usage error naming the option."""
    values: dict[str, float | int] = {}
    for name, text in options.items():
        try:
            value = float(text)
        except ValueError:
            raise _usage_error(f"{_option(name)} takes a number, got {text!r}") from None
        values[name] = int(value) if name == "memory_mb" and value.is_integer() else value
    try:
        return Limits(**values)
    except LimitsError as e:
        raise _usage_error(f"{_option(e.field)} must be {e.requirement}, got {options[e.field]}") from None


def _read_spec(spec: Path) -> str:
    """The spec's text: UTF-8 holding a JSON object; anything else is a usage error (exit 2, one line).
    A JSON object with wrong fields goes on to the executor, whose `invalid_spec` failure names each."""
    name = "standard input" if str(spec) == "-" else str(spec)
    try:
        data = sys.stdin.buffer.read() if str(spec) == "-" else spec.read_bytes()
    except OSError as e:
        raise _usage_error(f"cannot read {name}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _usage_error(f"{name} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") from None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise _usage_error(f"{name} is not valid JSON: {e}") from None
    except RecursionError:
        raise _usage_error(f"{name} is nested too deeply to be a spec") from None
    if not isinstance(value, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
        raise _usage_error(f'{name} holds {kind}; a spec is a JSON object ({{"kind": ...}})')
    return text


def _option(field: str) -> str:
    return "--" + field.replace("_", "-")


def _usage_error(message: str) -> typer.Exit:
    """Print `message` as one line on standard error; the caller raises the returned exit (status 2)."""
    _err.print(Text.assemble(("error:", "bold red"), " ", message.replace("\n", " ")), soft_wrap=True)
    return typer.Exit(2)


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
