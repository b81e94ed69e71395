"""Record a run into a folder now, import it into MLflow later: `CaptureRecorder` + `import_capture`.

A sandbox worker records through a `CaptureRecorder` (same methods as `Recorder`/`Run`, no MLflow
import, no database), and the one process that owns the MLflow store replays the folder with
`Recorder.import_capture`. So many workers never contend for one SQLite file, and a worker killed
mid-run leaves a folder that is simply not imported - never a half-written run in the store.
"""

from __future__ import annotations

import json
import math
import numbers
import shutil
import traceback
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from quantcore.recording.errors import RecordingError
from quantcore.recording.jsonable import flatten, jsonable

__all__ = ["CaptureRecorder", "CapturedRun", "CAPTURE_FILE"]

CAPTURE_FILE = "capture.json"


class CapturedRun:
    """A run being written to `folder`: params/metrics/tags in capture.json, artifacts under artifacts/."""

    def __init__(self, folder: Path, name: str | None, tags: Mapping[str, Any] | None):
        self.folder = folder
        self.artifacts = folder / "artifacts"
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.run_id = f"capture-{uuid.uuid4().hex[:12]}"
        self.name = name
        self._doc: dict[str, Any] = {
            "name": name,
            "tags": {str(k): str(v) for k, v in (tags or {}).items()},
            "params": {},
            "metrics": [],
            "status": "RUNNING",
            "model": None,
        }

    # ---- the Run interface -----------------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        self._doc["params"].update(jsonable(dict(params)))

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        values = {}
        for key, value in flatten(metrics).items():
            if value is None:
                values[key] = None
            elif isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise RecordingError(f"metric {key!r} is a {type(value).__name__}; metrics must be numbers")
            else:
                x = float(value)
                values[key] = x if math.isfinite(x) else repr(x)  # "nan"/"inf" survive JSON as text
        self._doc["metrics"].append({"values": values, "step": step})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._doc["tags"].update({str(k): str(v) for k, v in tags.items()})

    def log_frame(self, frame: pd.DataFrame, name: str) -> str:
        name = name if name.endswith(".parquet") else f"{name}.parquet"
        if not isinstance(frame, pd.DataFrame):
            raise RecordingError(f"log_frame needs a DataFrame, got {type(frame).__name__}")
        frame = frame.set_axis([str(c) for c in frame.columns], axis=1)
        frame.to_parquet(self._path(name))
        return name

    def log_figure(self, fig, name: str, dpi: int = 100) -> str:
        name = name if name.lower().endswith(".png") else f"{name}.png"
        fig.savefig(self._path(name), format="png", dpi=dpi)
        return name

    def log_text(self, text: str, name: str) -> str:
        self._path(name).write_text(str(text))
        return name

    def log_dict(self, values: Mapping[str, Any], name: str) -> str:
        name = name if name.endswith(".json") else f"{name}.json"
        return self.log_text(json.dumps(jsonable(values), indent=2, sort_keys=True), name)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> str:
        path = Path(path)
        if path.is_dir():
            dest = artifact_path or path.name
            shutil.copytree(path, self._path(dest), dirs_exist_ok=True)
            return dest
        if path.is_file():
            dest = f"{artifact_path}/{path.name}" if artifact_path else path.name
            shutil.copy2(path, self._path(dest))
            return dest
        raise RecordingError(f"cannot log {path}: no such file or directory")

    def log_model(self, path: str | Path, name: str = "model") -> str:
        self.log_artifact(path, name)
        self._doc["model"] = name
        return name

    def set_failed(self, reason: str, status: str = "FAILED") -> None:
        self._doc["status"] = getattr(status, "value", status)
        self._doc["tags"]["failure_reason"] = reason

    # ---- internals -----------------------------------------------------------------------------
    def _path(self, name: str) -> Path:
        target = (self.artifacts / name).resolve()
        if not target.is_relative_to(self.artifacts.resolve()):
            raise RecordingError(f"artifact name {name!r} leaves the run's artifact folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def _finish(self, status: str) -> None:
        if self._doc["status"] == "RUNNING":
            self._doc["status"] = status
        tmp = self.folder / (CAPTURE_FILE + ".tmp")
        tmp.write_text(json.dumps(self._doc, indent=1))
        tmp.replace(self.folder / CAPTURE_FILE)  # the file appears complete or not at all


class CaptureRecorder:
    """`Recorder`-shaped: `start_run` yields a `CapturedRun` writing into `folder`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    @contextmanager
    def start_run(self, name: str | None = None, tags: Mapping[str, Any] | None = None) -> Iterator[CapturedRun]:
        run = CapturedRun(self.folder, name, tags)
        try:
            yield run
        except BaseException as exc:
            run.log_text("".join(traceback.format_exception(exc)), "failure/traceback.txt")
            run.set_failed(f"{type(exc).__name__}: {exc}", "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            run._finish("FAILED")
            raise
        else:
            run._finish("FINISHED")
