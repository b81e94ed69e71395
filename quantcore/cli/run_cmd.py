"""`rdquant run WORKFLOW.yaml`: a declarative research workflow, recorded in MLflow (like qlib's qrun)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from quantcore.cli._common import console, user_errors
from quantcore.recording import Recorder
from quantcore.workflow.config import load_workflow
from quantcore.workflow.runner import run_workflow

__all__ = ["run_command"]


@user_errors
def run_command(
    workflow: Path = typer.Argument(..., help="Workflow YAML (see examples/)."),
    root: Optional[Path] = typer.Option(None, "--root", help="MLflow store folder (default: the workflow's record.root)."),
    as_json: bool = typer.Option(False, "--json", help="Print the headline metrics as one JSON object."),
) -> None:
    """Run data -> dataset -> model -> backtest -> analysis and record it all in MLflow."""
    cfg = load_workflow(workflow)
    recorder = Recorder.open(root or cfg.record.root, cfg.record.experiment)
    log = (lambda m: None) if as_json else (lambda m: console.print(f"  [dim]{m}[/]"))
    if not as_json:
        console.print(f"[bold]workflow[/] {cfg.name}: {cfg.data.market}, {cfg.model.family}, {cfg.backtest.strategy}")
    result = run_workflow(cfg, recorder, log=log)
    if as_json:
        print(json.dumps({"run_id": result.run_id, **result.metrics, "seconds": result.seconds}))
        return
    table = Table("metric", "value", title=f"{cfg.name} (test segment)")
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)
    console.print(f"run id: {result.run_id}  (mlflow ui --backend-store-uri {recorder.store.tracking_uri})")
