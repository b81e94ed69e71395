"""Experiment recording on MLflow through explicit `Recorder` objects (no global active run).

    recorder = Recorder.open("runs", experiment="alpha-search")
    with recorder.start_run("lgbm-topk50", tags={"seed": 0}) as run:
        run.log_params(config)                     # nested dicts -> dotted keys
        run.log_metrics(portfolio_analysis(report))
        run.log_frame(report, "report_normal")     # Parquet
        run.log_figure(cumulative_return_figure(report), "cumulative_return")

Browse the runs with:
    mlflow ui --backend-store-uri sqlite:///runs/mlflow.db --default-artifact-root runs/mlartifacts
"""

import importlib

from quantcore.recording.errors import RecordingError

__all__ = [
    "ARTIFACT_DIR",
    "DB_NAME",
    "DEFAULT_EXPERIMENT",
    "DEFAULT_ROOT",
    "FAILURE_TAG",
    "MODEL_TAG",
    "NONFINITE_TAG",
    "TRUNCATED_TAG",
    "Recorder",
    "RecordingError",
    "Run",
    "RunRecord",
    "RunStatus",
    "StoreLocation",
    "flatten",
    "resolve_store",
]


def __getattr__(name: str):
    # mlflow takes seconds to import: load the MLflow-backed names on first use, so that importing
    # `quantcore.recording.capture` (or a CLI that opens the store in the background) does not pay it
    if name in __all__:
        return getattr(importlib.import_module("quantcore.recording.recorder"), name)
    raise AttributeError(f"module 'quantcore.recording' has no attribute {name!r}")
