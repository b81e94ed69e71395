"""An explicit experiment recorder over `mlflow.MlflowClient`: no fluent API, no active-run stack,
no process-wide tracking URI. Each `Recorder` owns its client, store and experiment, so two recorders
on two stores work side by side in one process.

Default store, under a root folder (`runs/`):
    tracking  sqlite:///<root>/mlflow.db      (MLflow 3 refuses the plain file store)
    artifacts <root>/mlartifacts              (absolute file URI, set on each experiment we create)
MLFLOW_TRACKING_URI, read once when the recorder opens, replaces the tracking store; artifacts of a
SQLite store then sit beside its database file.

Browse the runs with:
    mlflow ui --backend-store-uri sqlite:///runs/mlflow.db --default-artifact-root runs/mlartifacts
"""

from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import (
    MAX_ENTITY_KEY_LENGTH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from quantcore.recording.capture import CAPTURE_FILE
from quantcore.recording.errors import RecordingError
from quantcore.recording.jsonable import flatten
from quantcore.recording.jsonable import jsonable as _jsonable
from quantcore.recording.store_template import keep_template, seed_store, template_path

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
    "Run",
    "RunRecord",
    "RunStatus",
    "StoreLocation",
    "flatten",
    "resolve_store",
]

DEFAULT_ROOT = "runs"
DEFAULT_EXPERIMENT = "default"
DB_NAME = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
#: Tag holding "<ExceptionType>: <message>" (or the reason given to `Run.set_failed`) of a failed run.
FAILURE_TAG = "failure_reason"
#: Tag prefix recording a metric that was not logged because its value is NaN, +-inf or None.
NONFINITE_TAG = "nonfinite_metric."
#: Tag prefix marking a parameter whose value was cut to MLflow's limit; the full text is an artifact.
TRUNCATED_TAG = "truncated_param."
#: Tag naming the artifact folder `Run.log_model` wrote.
MODEL_TAG = "model_artifact_path"
_ENV = "MLFLOW_TRACKING_URI"
_REMOTE = ("http://", "https://", "databricks")


class RunStatus(str, Enum):
    """MLflow's terminal and live run states."""

    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


@dataclass(frozen=True)
class StoreLocation:
    """Where runs go: a tracking URI and the artifact location given to experiments we create."""

    tracking_uri: str
    artifact_location: str | None  # file URI; None lets a remote tracking server choose


def resolve_store(
    root: str | Path = DEFAULT_ROOT,
    *,
    tracking_uri: str | None = None,
    artifact_location: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> StoreLocation:
    """The store a recorder opens: `tracking_uri` if given, else MLFLOW_TRACKING_URI from `environ`
    (default `os.environ`, read now and only now), else SQLite under `root`. Touches no files."""
    env = os.environ if environ is None else environ
    uri = tracking_uri or env.get(_ENV) or None
    root = Path(root).absolute()
    if uri is None:
        uri = f"sqlite:///{root / DB_NAME}"
        default_art: Path | None = root / ARTIFACT_DIR
    elif (db := _sqlite_file(uri)) is not None:
        db = db.absolute()  # sqlite:////abs (4 slashes) or sqlite:///relative
        uri = f"sqlite:///{db}"
        default_art = db.parent / ARTIFACT_DIR
    elif uri.startswith(_REMOTE):
        default_art = None
    else:
        default_art = root / ARTIFACT_DIR
    if artifact_location is not None:
        art = str(artifact_location)
        art = art if "://" in art else Path(art).absolute().as_uri()
    else:
        art = default_art.as_uri() if default_art is not None else None
    return StoreLocation(uri, art)


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a SQLite tracking URI (None for any other store, in-memory SQLite included)."""
    if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        return Path(uri[len("sqlite:///") :])
    return None


@dataclass(frozen=True)
class RunRecord:
    """One run as read back from the store (latest value of each metric)."""

    run_id: str
    name: str
    experiment_id: str
    status: str
    params: Mapping[str, str] = field(hash=False)
    metrics: Mapping[str, float] = field(hash=False)
    tags: Mapping[str, str] = field(hash=False)
    artifact_uri: str
    start_time: datetime | None
    end_time: datetime | None

    @property
    def failure_reason(self) -> str | None:
        return self.tags.get(FAILURE_TAG)


class Run:
    """A live run. Every method writes to the store immediately through the recorder's client."""

    def __init__(self, client: MlflowClient, run_id: str, experiment_id: str, name: str, artifact_uri: str):
        self.client, self.run_id, self.experiment_id, self.name = client, run_id, experiment_id, name
        self.artifact_uri = artifact_uri
        self.status = RunStatus.RUNNING

    def __repr__(self) -> str:
        return f"Run(name={self.name!r}, run_id={self.run_id!r}, status={self.status.value})"

    # ---- params, metrics, tags ------------------------------------------------------------------

    def log_params(self, params: Mapping[str, Any]) -> dict[str, str]:
        """Log parameters, nested mappings flattened to dotted keys and values stringified. A value
        longer than MLflow's limit is cut, tagged `truncated_param.<key>`, and kept in full as the
        artifact `params/<key>.txt`. Returns what was logged."""
        logged: dict[str, str] = {}
        for key, value in flatten(params).items():
            _check_key(key, "param")
            text = _param_text(value)
            if len(text) > MAX_PARAM_VAL_LENGTH:
                self.log_text(text, f"params/{key}.txt")
                self.set_tags({f"{TRUNCATED_TAG}{key}": f"{len(text)} characters; full value in params/{key}.txt"})
                marker = f"...[{len(text)} chars]"
                text = text[: MAX_PARAM_VAL_LENGTH - len(marker)] + marker
            logged[key] = text
        items = [Param(k, v) for k, v in logged.items()]
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            batch = items[i : i + MAX_PARAMS_TAGS_PER_BATCH]
            self._call("log params", self.client.log_batch, self.run_id, params=batch)
        return logged

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> dict[str, str]:
        """Log numeric metrics (nested mappings flattened). NaN, +-inf and None are not logged as
        metrics (MLflow stores inf as the largest float and NaN inconsistently across stores): each is
        recorded as the tag `nonfinite_metric.<key>` instead. Returns {key: value text} of those."""
        stamp = int(time.time() * 1000)
        good: list[Metric] = []
        skipped: dict[str, str] = {}
        for key, value in flatten(metrics).items():
            _check_key(key, "metric")
            if value is None:
                skipped[key] = "None"
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise RecordingError(
                    f"metric {key!r} is a {type(value).__name__} ({value!r:.80}); metrics must be numbers - "
                    "log text with log_params, set_tags or log_text"
                )
            x = float(value)
            if math.isfinite(x):
                good.append(Metric(key, x, stamp, int(step or 0)))
            else:
                skipped[key] = str(x)
        for i in range(0, len(good), MAX_METRICS_PER_BATCH):
            self._call("log metrics", self.client.log_batch, self.run_id, metrics=good[i : i + MAX_METRICS_PER_BATCH])
        if skipped:
            where = "" if step is None else f" at step {step}"
            self.set_tags({f"{NONFINITE_TAG}{k}": f"{v}{where}; not logged as a metric" for k, v in skipped.items()})
        return skipped

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set string tags (values cut to MLflow's tag length limit)."""
        items = []
        for key, value in tags.items():
            key = str(key)[:MAX_ENTITY_KEY_LENGTH]
            items.append(RunTag(key, str(value)[:MAX_TAG_VAL_LENGTH]))
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            self._call("set tags", self.client.log_batch, self.run_id, tags=items[i : i + MAX_PARAMS_TAGS_PER_BATCH])

    # ---- artifacts -----------------------------------------------------------------------------

    def log_frame(self, frame: pd.DataFrame, name: str) -> str:
        """Store a DataFrame (index included) as the Parquet artifact `name` (".parquet" added if
        missing; "a/b" puts it in folder a). Returns the artifact path."""
        if not isinstance(frame, pd.DataFrame):
            raise RecordingError(f"log_frame needs a DataFrame, got {type(frame).__name__}; use .to_frame()")
        name = name if name.endswith(".parquet") else f"{name}.parquet"
        if not all(isinstance(c, str) for c in frame.columns):
            frame = frame.set_axis([str(c) for c in frame.columns], axis=1)  # Parquet needs string names
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(name).name
            try:
                frame.to_parquet(local)
            except (ValueError, TypeError, ImportError) as e:
                raise RecordingError(f"cannot write frame {name!r} as Parquet: {e}") from e
            self._put(local, name)
        return name

    def log_figure(self, fig: Figure, name: str, dpi: int = 100) -> str:
        """Store a matplotlib Figure as the PNG artifact `name` (".png" added if missing)."""
        if not isinstance(fig, Figure):
            raise RecordingError(f"log_figure needs a matplotlib Figure, got {type(fig).__name__}")
        name = name if name.lower().endswith(".png") else f"{name}.png"
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(name).name
            fig.savefig(local, format="png", dpi=dpi)
            self._put(local, name)
        return name

    def log_text(self, text: str, name: str) -> str:
        """Store text as the artifact `name` (e.g. "config.yaml", "report.html")."""
        self._call("log text", self.client.log_text, self.run_id, str(text), name)
        return name

    def log_dict(self, values: Mapping[str, Any], name: str) -> str:
        """Store a mapping as a JSON artifact (NaN/inf written as null)."""
        name = name if name.endswith(".json") else f"{name}.json"
        return self.log_text(json.dumps(_jsonable(values), indent=2, sort_keys=True), name)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> str:
        """Copy a file or a whole directory into the run's artifacts. A file lands in `artifact_path`
        (default: the top level); a directory lands as `artifact_path` (default: its own name)."""
        path = Path(path)
        if path.is_dir():
            dest = artifact_path or path.name
            self._call("log artifacts", self.client.log_artifacts, self.run_id, str(path), dest)
            return dest
        if path.is_file():
            self._call("log artifact", self.client.log_artifact, self.run_id, str(path), artifact_path)
            return f"{artifact_path}/{path.name}" if artifact_path else path.name
        raise RecordingError(f"cannot log {path}: no such file or directory")

    def log_model(self, path: str | Path, name: str = "model") -> str:
        """Store what a model's `save` wrote (one file, or a directory) under the artifact folder
        `name` and tag the run with it (`model_artifact_path`). Returns the artifact folder."""
        path = Path(path)
        if path.is_file():
            self._call("log model", self.client.log_artifact, self.run_id, str(path), name)
        elif path.is_dir():
            if not any(p.is_file() for p in path.rglob("*")):
                raise RecordingError(f"model directory {path} has no files; call the model's save first")
            self._call("log model", self.client.log_artifacts, self.run_id, str(path), name)
        else:
            raise RecordingError(f"no saved model at {path}; call the model's save(path) first and pass that path")
        self.set_tags({MODEL_TAG: name})
        return name

    # ---- status --------------------------------------------------------------------------------

    def set_failed(self, reason: str, status: RunStatus = RunStatus.FAILED) -> None:
        """End the run as FAILED (or KILLED) with `reason` in the `failure_reason` tag."""
        self.set_tags({FAILURE_TAG: reason})
        self._call("end run", self.client.set_terminated, self.run_id, status.value)
        self.status = status

    def _finish(self) -> None:
        if self.status is RunStatus.RUNNING:
            self._call("end run", self.client.set_terminated, self.run_id, RunStatus.FINISHED.value)
            self.status = RunStatus.FINISHED

    def _put(self, local: Path, name: str) -> None:
        folder = str(Path(name).parent)
        self._call("log artifact", self.client.log_artifact, self.run_id, str(local), None if folder == "." else folder)

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MlflowException as e:
            raise RecordingError(f"could not {what} for run {self.name!r} ({self.run_id}): {e.message}") from e


@dataclass(frozen=True)
class Recorder:
    """Records runs of one experiment in one store; build it with `Recorder.open`."""

    client: MlflowClient = field(repr=False)
    store: StoreLocation
    experiment: str
    experiment_id: str

    @classmethod
    def open(
        cls,
        root: str | Path = DEFAULT_ROOT,
        experiment: str = DEFAULT_EXPERIMENT,
        *,
        tracking_uri: str | None = None,
        artifact_location: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
        create: bool = True,
    ) -> Recorder:
        """Open (creating if needed) the store of `resolve_store(root, ...)` and the experiment
        `experiment` in it. With create=False a missing experiment is an error (for readers)."""
        store = resolve_store(root, tracking_uri=tracking_uri, artifact_location=artifact_location, environ=environ)
        new_db = template = None
        db = _sqlite_file(store.tracking_uri)
        if db is not None and create:
            db.parent.mkdir(parents=True, exist_ok=True)
            if not db.exists():  # a new store: start from the pristine copy, or make one (store_template)
                template = template_path(os.environ if environ is None else environ)
                new_db = None if seed_store(db, template) else db
        try:
            client = MlflowClient(tracking_uri=store.tracking_uri, registry_uri=store.tracking_uri)
            exp = client.get_experiment_by_name(experiment)
            if new_db is not None:
                keep_template(new_db, template)
            if exp is None and create:
                try:
                    exp_id = client.create_experiment(experiment, artifact_location=store.artifact_location)
                except MlflowException:  # created meanwhile by another process
                    exp = client.get_experiment_by_name(experiment)
                    if exp is None:
                        raise
                    exp_id = exp.experiment_id
            elif exp is None:
                raise RecordingError(
                    f"experiment {experiment!r} not found in {store.tracking_uri}; check the name or the root"
                )
            else:
                if exp.lifecycle_stage == "deleted":
                    raise RecordingError(
                        f"experiment {experiment!r} in {store.tracking_uri} is deleted; restore it "
                        "(mlflow experiments restore) or pick another name"
                    )
                exp_id = exp.experiment_id
        except MlflowException as e:
            raise RecordingError(
                f"cannot open the MLflow store {store.tracking_uri}: {e.message}; use a database URI such as "
                "sqlite:///runs/mlflow.db"
            ) from e
        return cls(client, store, experiment, exp_id)

    @contextmanager
    def start_run(self, name: str | None = None, tags: Mapping[str, Any] | None = None) -> Iterator[Run]:
        """A run that ends FINISHED when the block exits normally. If an exception escapes, the run
        ends FAILED (KILLED for Ctrl-C) with the exception in `failure_reason` and its traceback as
        the artifact `failure/traceback.txt`, and the exception propagates unchanged."""
        try:
            tags = {str(k): str(v)[:MAX_TAG_VAL_LENGTH] for k, v in (tags or {}).items()}
            info = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info
        except MlflowException as e:
            raise RecordingError(f"cannot start run {name!r} in {self.store.tracking_uri}: {e.message}") from e
        run = Run(self.client, info.run_id, self.experiment_id, info.run_name, info.artifact_uri)
        try:
            yield run
        except BaseException as exc:
            status = RunStatus.KILLED if isinstance(exc, KeyboardInterrupt) else RunStatus.FAILED
            try:
                run.log_text("".join(traceback.format_exception(exc)), "failure/traceback.txt")
                if run.status is RunStatus.RUNNING:
                    run.set_failed(f"{type(exc).__name__}: {exc}", status)
            except Exception as record_error:  # never hide the original exception behind a store error
                exc.add_note(f"also, the run could not be marked {status.value}: {record_error}")
            raise
        else:
            run._finish()

    def import_capture(self, folder: str | Path) -> str:
        """Replay a folder written by `CaptureRecorder` as a new run of this experiment; returns its id.
        A folder without a finished capture (its writer was killed) is refused, not half-imported."""
        folder = Path(folder)
        doc_path = folder / CAPTURE_FILE
        if not doc_path.is_file():
            raise RecordingError(f"{folder} holds no finished capture ({CAPTURE_FILE} is missing)")
        try:
            doc = json.loads(doc_path.read_text())
        except (OSError, ValueError) as e:
            raise RecordingError(f"{doc_path} is unreadable: {e}") from e
        tags = {k: v for k, v in doc.get("tags", {}).items() if k != FAILURE_TAG}
        with self.start_run(doc.get("name"), tags=tags) as run:
            if doc.get("params"):
                run.log_params(doc["params"])
            for entry in doc.get("metrics", []):
                values = {k: (float(v) if isinstance(v, str) else v) for k, v in entry["values"].items()}
                run.log_metrics(values, step=entry.get("step"))
            artifacts = folder / "artifacts"
            if artifacts.is_dir() and any(artifacts.iterdir()):
                run._call("log artifacts", run.client.log_artifacts, run.run_id, str(artifacts), None)
            if doc.get("model"):
                run.set_tags({MODEL_TAG: doc["model"]})
            if doc.get("status") in (RunStatus.FAILED.value, RunStatus.KILLED.value):
                run.set_failed(doc.get("tags", {}).get(FAILURE_TAG, "failed"), RunStatus(doc["status"]))
        return run.run_id

    # ---- reading back --------------------------------------------------------------------------

    def list_runs(self, filter_string: str = "", max_results: int | None = None) -> list[RunRecord]:
        """Runs of this experiment, oldest first; `filter_string` is MLflow's search syntax, e.g.
        "metrics.`excess_return_with_cost.information_ratio` > 1"."""
        out: list[RunRecord] = []
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=filter_string,
                run_view_type=ViewType.ACTIVE_ONLY,
                max_results=min(max_results or 1000, 1000),
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
            out.extend(_record(r) for r in page)
            token = page.token
            if not token or (max_results is not None and len(out) >= max_results):
                return out[:max_results] if max_results is not None else out

    def get_run(self, run_id: str) -> RunRecord:
        """One run by id."""
        try:
            return _record(self.client.get_run(run_id))
        except MlflowException as e:
            raise RecordingError(f"no run {run_id!r} in {self.store.tracking_uri}: {e.message}") from e

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """Every (step, value) logged for one metric, in step order."""
        hist = self.client.get_metric_history(run_id, key)
        return sorted((m.step, m.value) for m in hist)

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[str]:
        """Artifact file paths of a run, recursively, relative to its artifact root."""
        out: list[str] = []
        for info in self.client.list_artifacts(run_id, path):
            out.extend(self.list_artifacts(run_id, info.path) if info.is_dir else [info.path])
        return sorted(out)

    def download_artifact(self, run_id: str, path: str, dst: str | Path) -> Path:
        """Copy one artifact file or folder into `dst` and return its local path."""
        Path(dst).mkdir(parents=True, exist_ok=True)
        try:
            return Path(self.client.download_artifacts(run_id, path, str(dst)))
        except (MlflowException, OSError) as e:
            raise RecordingError(f"cannot fetch artifact {path!r} of run {run_id}: {e}") from e


def _record(run) -> RunRecord:
    info, data = run.info, run.data
    return RunRecord(
        run_id=info.run_id,
        name=info.run_name,
        experiment_id=info.experiment_id,
        status=info.status,
        params=dict(data.params),
        metrics=dict(data.metrics),
        tags=dict(data.tags),
        artifact_uri=info.artifact_uri,
        start_time=_ms(info.start_time),
        end_time=_ms(info.end_time),
    )


def _ms(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def _check_key(key: str, kind: str) -> None:
    if not key:
        raise RecordingError(f"a {kind} has an empty name")
    if len(key) > MAX_ENTITY_KEY_LENGTH:
        raise RecordingError(
            f"{kind} name {key[:60]!r}... has {len(key)} characters, over MLflow's {MAX_ENTITY_KEY_LENGTH}; "
            "shorten the key or the nesting"
        )


def _param_text(value: Any) -> str:
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, (list, tuple)):
        return json.dumps(_jsonable(list(value)), default=str)
    return str(value)
