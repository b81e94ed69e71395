"""The metrics a decision reads, read back from the MLflow run that recorded each experiment: one source
of truth, so the decision, the store and the MLflow UI cannot disagree. A result whose record is missing
or differs from what the sandbox measured becomes a `record` failure, never a silent fallback."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from quantcore.recording.errors import RecordingError
from sandbox.result import ExperimentResult, Failure, FailureCategory

if TYPE_CHECKING:
    from quantcore.recording.recorder import Recorder

__all__ = ["read_back", "recorded", "cite", "uncited"]

_CITED = "(MLflow run"  # how every citation of `cite` starts


def read_back(results: dict[str, ExperimentResult], recorder: Recorder | None) -> dict[str, ExperimentResult]:
    """Each result with its metrics as read back from its MLflow run (see `recorded`). Without a
    recorder there is nothing to read them from: our setup's bug, raised."""
    if recorder is None and results:
        raise ValueError(
            "the critic reads every metric back from MLflow, and this executor records nowhere: set "
            "executor.recorder = Recorder.open(root, experiment) before the loop runs"
        )
    return {key: recorded(r, recorder) for key, r in results.items()}


def recorded(result: ExperimentResult, recorder: Recorder) -> ExperimentResult:
    """`result` with `metrics` read from its MLflow run: the sandbox's keys, each the value the run holds
    (NaN where the run tagged it non-finite). A result the sandbox failed stays that failure; a run that
    is missing, unreadable, of another spec, or holding another value of a key is a `record` failure."""
    from quantcore.recording.recorder import NONFINITE_TAG

    if not result.ok:
        return result
    run_id = result.mlflow_run_id
    if run_id is None:
        why = result.details.get("recording_error")
        return _failed(result, "no MLflow run recorded this result" + (f" ({why})" if why else ""))
    try:
        record = recorder.get_run(run_id)
    except RecordingError as e:
        return _failed(result, f"MLflow run {run_id} cannot be read", str(e))
    if record.tags.get("spec_hash") != result.spec_hash:
        return _failed(
            result,
            f"MLflow run {run_id} records spec {record.tags.get('spec_hash')!r}, the sandbox ran {result.spec_hash!r}",
        )
    metrics: dict[str, float] = {}
    for key, measured in result.metrics.items():
        if key in record.metrics:
            stored = float(record.metrics[key])
        elif f"{NONFINITE_TAG}{key}" in record.tags:
            stored = math.nan  # MLflow keeps no NaN/inf metric: `Run.log_metrics` tags it instead
        else:
            return _failed(result, f"metric {key!r} (sandbox {measured!r}) is missing from MLflow run {run_id}")
        # exact: MLflow stores the double the sandbox logged, so any difference is a different record
        if not (stored == measured or (math.isnan(stored) and math.isnan(measured))):
            return _failed(
                result, f"metric {key!r} is {stored!r} in MLflow run {run_id} but {measured!r} in the sandbox result"
            )
        metrics[key] = stored
    return result.with_(metrics=metrics)


def cite(results: list[ExperimentResult]) -> str:
    """The MLflow runs a verdict read, as the last of its reasons: "(MLflow run <id>)", or for a model's
    walk-forward folds "(MLflow runs <id> (fold 0), <id> (fold 1))". Empty when none was recorded."""
    ids = [r.mlflow_run_id for r in results]
    if len(ids) == 1:
        return f"{_CITED} {ids[0]})" if ids[0] else ""
    named = [f"{run_id} (fold {j})" for j, run_id in enumerate(ids) if run_id]
    return f"{_CITED}s {', '.join(named)})" if named else ""


def uncited(reasons: list[str]) -> list[str]:
    """A verdict's reasons without the MLflow runs it cites (a replay's runs are new ones)."""
    return [r for r in reasons if not r.startswith(_CITED)]


def _failed(result: ExperimentResult, message: str, context: str = "") -> ExperimentResult:
    """A `record` failure in place of `result` (no metrics: neither copy can be trusted), its run id kept."""
    return result.with_(metrics={}, failure=Failure(FailureCategory.RECORD, message, context))
