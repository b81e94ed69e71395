"""Recording on a real MLflow SQLite store in tmp_path, read back through a fresh MlflowClient.

Creating an MLflow SQLite schema runs its migrations (seconds), so one empty store is built per module
and copied for each test; every test still gets its own database file."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mlflow import MlflowClient

from quantcore.errors import QuantcoreError
from quantcore.recording import (
    FAILURE_TAG,
    MODEL_TAG,
    NONFINITE_TAG,
    TRUNCATED_TAG,
    Recorder,
    RecordingError,
    RunStatus,
    flatten,
    resolve_store,
)

PNG = b"\x89PNG\r\n\x1a\n"
# MLflow's own SQLAlchemy mappings trigger this deprecation when a store opens; nothing of ours
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


@pytest.fixture(autouse=True)
def _mlflow_env(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()  # runs the schema migrations once
    return path


def _store(empty_db: Path, root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(empty_db, root / "mlflow.db")
    return root


def _figure() -> Figure:
    fig = Figure(figsize=(3, 2))
    FigureCanvasAgg(fig)
    fig.subplots().plot([0, 1, 2], [0.0, 0.5, 0.2])
    return fig


def test_default_store_is_sqlite_under_the_root_with_absolute_artifacts(tmp_path, empty_db, monkeypatch):
    root = _store(empty_db, tmp_path / "runs")
    monkeypatch.chdir(tmp_path)
    rec = Recorder.open("runs", experiment="alpha")
    assert rec.store.tracking_uri == f"sqlite:///{root / 'mlflow.db'}"
    assert rec.store.artifact_location == (root / "mlartifacts").as_uri()
    exp = MlflowClient(tracking_uri=rec.store.tracking_uri).get_experiment_by_name("alpha")
    assert exp.artifact_location == (root / "mlartifacts").as_uri()
    assert Recorder.open(root, experiment="alpha").experiment_id == rec.experiment_id  # reopened, not duplicated


def test_run_is_readable_back_through_a_fresh_client(tmp_path, empty_db):
    root = _store(empty_db, tmp_path / "runs")
    rec = Recorder.open(root, experiment="e1")
    frame = pd.DataFrame(
        {"return": [0.01, -0.02], "bench": [0.0, 0.01]},
        index=pd.DatetimeIndex(["2021-01-04", "2021-01-05"], name="datetime"),
    )
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "extra").mkdir()
    (tmp_path / "extra" / "a.csv").write_text("x\n1\n")
    model_dir = tmp_path / "saved_model"
    (model_dir / "sub").mkdir(parents=True)
    (model_dir / "model.txt").write_text("tree")
    (model_dir / "sub" / "meta.json").write_text("{}")
    with rec.start_run("first", tags={"seed": 7}) as run:
        logged = run.log_params({"model": {"lr": 0.05, "depth": 6, "kind": "lgbm"}, "topk": 50, "fields": ["a", "b"]})
        run.log_metrics({"ic": 0.031, "risk": {"ir": 1.25}})
        for step, loss in enumerate([0.9, 0.7, 0.6]):
            run.log_metrics({"loss": loss}, step=step)
        run.log_frame(frame, "report_normal")
        run.log_figure(_figure(), "plots/cumulative_return")
        run.log_text("<html></html>", "report.html")
        run.log_dict({"a": 1, "b": float("nan")}, "analysis")
        run.log_artifact(tmp_path / "notes.txt")
        run.log_artifact(tmp_path / "extra")
        assert run.log_model(model_dir) == "model"
        assert run.log_model(tmp_path / "notes.txt", name="single") == "single"  # a one-file save
    assert logged == {
        "model.lr": "0.05",
        "model.depth": "6",
        "model.kind": "lgbm",
        "topk": "50",
        "fields": '["a", "b"]',
    }

    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "first"
    assert got.data.params == logged
    assert got.data.metrics == {"ic": 0.031, "risk.ir": 1.25, "loss": 0.6}
    history = sorted(client.get_metric_history(run.run_id, "loss"), key=lambda m: m.step)
    assert [m.value for m in history] == [0.9, 0.7, 0.6]
    assert got.data.tags["seed"] == "7" and got.data.tags[MODEL_TAG] == "single"  # the last model logged
    assert got.info.artifact_uri.startswith((root / "mlartifacts").as_uri())

    assert rec.list_artifacts(run.run_id) == sorted(
        [
            "report_normal.parquet",
            "plots/cumulative_return.png",
            "report.html",
            "analysis.json",
            "notes.txt",
            "extra/a.csv",
            "model/model.txt",
            "model/sub/meta.json",
            "single/notes.txt",
        ]
    )
    back = pd.read_parquet(rec.download_artifact(run.run_id, "report_normal.parquet", tmp_path / "dl"))
    pd.testing.assert_frame_equal(back, frame, check_freq=False)
    png = rec.download_artifact(run.run_id, "plots/cumulative_return.png", tmp_path / "dl").read_bytes()
    assert png.startswith(PNG) and len(png) > 1000
    assert '"b": null' in rec.download_artifact(run.run_id, "analysis.json", tmp_path / "dl").read_text()

    record = rec.get_run(run.run_id)
    assert record.status == RunStatus.FINISHED and record.params["topk"] == "50" and record.failure_reason is None
    assert record.start_time is not None and record.end_time >= record.start_time
    assert rec.metric_history(run.run_id, "loss") == [(0, 0.9), (1, 0.7), (2, 0.6)]


def test_an_escaping_exception_marks_the_run_failed_and_propagates(tmp_path, empty_db):
    rec = Recorder.open(_store(empty_db, tmp_path / "runs"), experiment="e")
    with pytest.raises(ZeroDivisionError, match="division by zero"):
        with rec.start_run("broken") as run:
            run.log_metrics({"ic": 0.01})
            1 / 0
    assert run.status is RunStatus.FAILED
    got = MlflowClient(tracking_uri=rec.store.tracking_uri).get_run(run.run_id)
    assert got.info.status == "FAILED"
    assert got.data.tags[FAILURE_TAG] == "ZeroDivisionError: division by zero"
    assert got.data.metrics == {"ic": 0.01}
    trace = rec.download_artifact(run.run_id, "failure/traceback.txt", tmp_path / "dl").read_text()
    assert "ZeroDivisionError" in trace and "1 / 0" in trace

    with rec.start_run("gave up") as run2:  # failing on purpose without raising keeps FAILED
        run2.set_failed("no trades in range")
    record = rec.get_run(run2.run_id)
    assert record.status == "FAILED" and record.failure_reason == "no trades in range"
    with pytest.raises(KeyboardInterrupt):
        with rec.start_run("interrupted"):
            raise KeyboardInterrupt
    assert rec.list_runs()[-1].status == "KILLED" and rec.list_runs()[-1].failure_reason == "KeyboardInterrupt: "
    assert [r.name for r in rec.list_runs()] == ["broken", "gave up", "interrupted"]
    assert [r.name for r in rec.list_runs("attributes.status = 'FAILED'", max_results=1)] == ["broken"]


def test_nonfinite_metrics_become_tags_and_bad_types_are_refused(tmp_path, empty_db):
    rec = Recorder.open(_store(empty_db, tmp_path / "runs"))
    with rec.start_run("nan") as run:
        skipped = run.log_metrics(
            {"ok": 1.5, "np": np.float32(2.0), "ir": math.nan, "up": math.inf, "down": -np.inf, "none": None}, step=3
        )
        with pytest.raises(RecordingError, match="must be numbers"):
            run.log_metrics({"name": "abc"})
    assert skipped == {"ir": "nan", "up": "inf", "down": "-inf", "none": "None"}
    got = MlflowClient(tracking_uri=rec.store.tracking_uri).get_run(run.run_id)
    assert got.data.metrics == {"ok": 1.5, "np": 2.0}
    assert got.data.tags[f"{NONFINITE_TAG}ir"] == "nan at step 3; not logged as a metric"
    assert {k for k in got.data.tags if k.startswith(NONFINITE_TAG)} == {f"{NONFINITE_TAG}{k}" for k in skipped}
    assert got.info.status == "FINISHED"


def test_params_respect_mlflow_limits(tmp_path, empty_db):
    rec = Recorder.open(_store(empty_db, tmp_path / "runs"))
    long = "x" * 7000
    with rec.start_run("params") as run:
        logged = run.log_params({"expr": long, "short": 1})
        assert len(logged["expr"]) == 6000 and logged["expr"].endswith("...[7000 chars]")
        with pytest.raises(RecordingError, match="over MLflow's 250"):
            run.log_params({"k" * 251: 1})
        with pytest.raises(RecordingError, match="could not log params"):
            run.log_params({"short": 2})  # MLflow params are immutable within a run
    got = rec.get_run(run.run_id)
    assert got.params["expr"] == logged["expr"] and f"{TRUNCATED_TAG}expr" in got.tags
    assert rec.download_artifact(run.run_id, "params/expr.txt", tmp_path / "dl").read_text() == long


def test_two_stores_coexist_in_one_process(tmp_path, empty_db):
    a = Recorder.open(_store(empty_db, tmp_path / "a"), experiment="same-name")
    b = Recorder.open(_store(empty_db, tmp_path / "b"), experiment="same-name")
    with a.start_run("in-a") as ra:
        with b.start_run("in-b") as rb:
            rb.log_metrics({"x": 2.0})
            rb.log_text("b", "b.txt")
        ra.log_metrics({"x": 1.0})
        ra.log_text("a", "a.txt")
    assert [(r.name, r.metrics) for r in a.list_runs()] == [("in-a", {"x": 1.0})]
    assert [(r.name, r.metrics) for r in b.list_runs()] == [("in-b", {"x": 2.0})]
    assert (tmp_path / "a" / "mlartifacts" / ra.run_id / "artifacts" / "a.txt").read_text() == "a"
    assert (tmp_path / "b" / "mlartifacts" / rb.run_id / "artifacts" / "b.txt").read_text() == "b"


def test_tracking_uri_environment_variable_is_honoured_once(tmp_path, empty_db, monkeypatch):
    other = _store(empty_db, tmp_path / "elsewhere")
    uri = f"sqlite:///{other / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    rec = Recorder.open(tmp_path / "runs", experiment="env")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////nonexistent/never.db")  # read once: no effect now
    assert rec.store.tracking_uri == uri and rec.store.artifact_location == (other / "mlartifacts").as_uri()
    with rec.start_run("via-env") as run:
        run.log_metrics({"m": 1.0})
    assert not (tmp_path / "runs" / "mlflow.db").exists()
    assert MlflowClient(tracking_uri=uri).get_run(run.run_id).data.metrics == {"m": 1.0}
    # an explicit URI beats the environment; a relative sqlite path is made absolute
    monkeypatch.chdir(tmp_path)
    explicit = resolve_store(tmp_path, tracking_uri="sqlite:///rel/x.db", environ={"MLFLOW_TRACKING_URI": uri})
    assert explicit.tracking_uri == f"sqlite:///{Path.cwd() / 'rel' / 'x.db'}"
    assert resolve_store(tmp_path, environ={"MLFLOW_TRACKING_URI": "http://host:5000"}).artifact_location is None
    assert not (tmp_path / "rel").exists()  # resolving touches no files


def test_reader_errors_name_the_fix(tmp_path, empty_db):
    root = _store(empty_db, tmp_path / "runs")
    with pytest.raises(RecordingError, match="experiment 'missing' not found"):
        Recorder.open(root, experiment="missing", create=False)
    rec = Recorder.open(root)
    with pytest.raises(RecordingError, match="no run"):
        rec.get_run("0" * 32)
    with rec.start_run("bad paths") as run:
        with pytest.raises(RecordingError, match="no such file"):
            run.log_artifact(tmp_path / "nope.txt")
        with pytest.raises(RecordingError, match="no saved model"):
            run.log_model(tmp_path / "nope")
        (tmp_path / "empty").mkdir()
        with pytest.raises(RecordingError, match="has no files"):
            run.log_model(tmp_path / "empty")
        with pytest.raises(RecordingError, match="needs a DataFrame"):
            run.log_frame(pd.Series([1.0]), "s")
    assert issubclass(RecordingError, QuantcoreError)
    with pytest.raises(RecordingError, match="cannot open the MLflow store"):
        Recorder.open(tmp_path, tracking_uri=f"file://{tmp_path / 'filestore'}")


def test_flatten_nests_with_dots():
    assert flatten({"a": {"b": {"c": 1}, "d": 2}, "e": [1]}) == {"a.b.c": 1, "a.d": 2, "e": [1]}


def test_a_store_process_replays_a_capture_and_reports_a_store_it_cannot_open(tmp_path, empty_db, monkeypatch):
    """`rdquant run` opens the store in a child process: the captured run lands in the store under the
    id it answers; a store MLflow refuses comes back as a RecordingError that names it."""
    from quantcore.recording.capture import CaptureRecorder
    from quantcore.recording.store_process import StoreProcess

    capture = CaptureRecorder(tmp_path / "capture")
    with capture.start_run("captured", tags={"kind": "test"}) as run:
        run.log_params({"model": {"family": "linear"}})
        run.log_metrics({"IC": 0.05})
    root = _store(empty_db, tmp_path / "runs")
    with StoreProcess(root, "child") as store:
        run_id = store.replay(tmp_path / "capture")
        assert store.tracking_uri == f"sqlite:///{root / 'mlflow.db'}"
    got = Recorder.open(root, "child", create=False).get_run(run_id)
    assert got.metrics["IC"] == 0.05 and got.params["model.family"] == "linear" and got.status == "FINISHED"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{tmp_path / 'filestore'}")
    with StoreProcess(tmp_path / "elsewhere", "child") as store:
        with pytest.raises(RecordingError, match="cannot open the MLflow store file://"):
            store.replay(tmp_path / "capture")
