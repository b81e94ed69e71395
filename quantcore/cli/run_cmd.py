"""`rdquant run WORKFLOW.yaml`: a declarative research workflow, recorded in MLflow (like qlib's qrun)."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from quantcore.cli._common import console, user_errors
from quantcore.models.lightgbm_import import import_lightgbm_without_sklearn
from quantcore.recording.capture import CaptureRecorder
from quantcore.recording.store_process import StoreProcess
from quantcore.workflow.config import load_workflow
from quantcore.workflow.runner import run_workflow

__all__ = ["run_command"]


@user_errors
def run_command(
    workflow: Path = typer.Argument(..., help="Workflow YAML (see examples/)."),
    root: Optional[Path] = typer.Option(
        None, "--root", help="MLflow store folder (default: the workflow's record.root)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the headline metrics as one JSON object."),
) -> None:
    """Run data -> dataset -> model -> backtest -> analysis and record it all in MLflow."""
    cfg = load_workflow(workflow)
    if cfg.model.family == "lightgbm":
        import_lightgbm_without_sklearn()  # this process trains a booster and never needs the estimators
    log = (lambda m: None) if as_json else (lambda m: console.print(f"  [dim]{m}[/]"))
    if not as_json:
        console.print(f"[bold]workflow[/] {cfg.name}: {cfg.data.market}, {cfg.model.family}, {cfg.backtest.strategy}")
    # importing mlflow and opening its store take seconds: a child process does both while the workflow
    # runs into a capture folder, then replays the capture as the MLflow run (a failed run is replayed
    # too, marked FAILED with its traceback, before the error propagates)
    with StoreProcess(root or cfg.record.root, cfg.record.experiment) as store, tempfile.TemporaryDirectory() as tmp:
        try:
            result = run_workflow(cfg, CaptureRecorder(tmp), log=log)
        except BaseException as exc:
            try:
                store.replay(tmp)
            except Exception as record_error:  # never hide the workflow's error behind a store error
                exc.add_note(f"also, the failed run could not be recorded: {record_error}")
            raise
        t0 = time.perf_counter()
        run_id = store.replay(tmp)
        seconds = {**result.seconds, "mlflow": time.perf_counter() - t0}
        log(f"mlflow: {seconds['mlflow']:.2f}s")
    if as_json:
        print(json.dumps({"run_id": run_id, **result.metrics, "seconds": seconds}))
        return
    table = Table("metric", "value", title=f"{cfg.name} (test segment)")
    for key, value in result.metrics.items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)
    console.print(f"run id: {run_id}  (mlflow ui --backend-store-uri {store.tracking_uri})")
