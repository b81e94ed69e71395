"""Open an MLflow store in a child process while the caller works, then replay a capture into it.

Importing mlflow and creating a fresh SQLite store take ~6 s of pure-Python work. On a thread of the
workflow's process that work holds the GIL and stalls the workflow beside it (loading a synthetic
market took 5.4 s instead of 1 s); a child process uses a core the workflow leaves idle instead. It
runs under Linux's SCHED_IDLE policy, not just a higher nice value: at nice 10 it still took ~10% of a
core from LightGBM's two threads, whose barriers then wait on the preempted one (the fit took 22-23.5 s
instead of 20.5-21; 300 x 2520 workflow, 2 cores). It gets the idle core while the workflow loads data
and writes its results, and the parent waits for it only at the end, if at all.

Protocol, one JSON line each way: the parent writes {"capture": FOLDER}, the child answers
{"run_id", "tracking_uri"} or {"error"}.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from quantcore.recording.errors import RecordingError

__all__ = ["StoreProcess"]

_NICE = 10  # where SCHED_IDLE is missing (not Linux)


class StoreProcess:
    """A child process that opens `Recorder.open(root, experiment)` right away and replays one capture."""

    def __init__(self, root: str | Path, experiment: str):
        args = json.dumps({"root": str(Path(root).absolute()), "experiment": experiment})
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from quantcore.recording.store_process import serve; serve()", args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.tracking_uri: str | None = None

    def replay(self, capture: str | Path) -> str:
        """Record the captured run in the store; returns its MLflow run id. Raises `RecordingError`."""
        try:
            self._proc.stdin.write(json.dumps({"capture": str(Path(capture).absolute())}) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        except (BrokenPipeError, OSError) as exc:
            raise RecordingError(f"the MLflow store process stopped: {exc}") from None
        if not line:
            raise RecordingError(f"the MLflow store process exited (code {self._proc.wait()}) without an answer")
        answer = json.loads(line)
        if "error" in answer:
            raise RecordingError(answer["error"])
        self.tracking_uri = answer["tracking_uri"]
        return answer["run_id"]

    def close(self) -> None:
        if self._proc.stdin and not self._proc.stdin.closed:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()

    def __enter__(self) -> "StoreProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def serve() -> None:
    """The child: open the store, then answer each capture folder read from stdin."""
    try:  # run only on a core nothing else wants: never slow down the workflow it records
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux
        try:
            os.nice(_NICE)
        except OSError:
            pass
    answers, sys.stdout = sys.stdout, sys.stderr  # anything mlflow prints must not break the protocol
    args = json.loads(sys.argv[1])
    recorder, error = None, None
    try:
        from quantcore.recording import Recorder

        recorder = Recorder.open(args["root"], args["experiment"])
    except Exception as exc:  # noqa: BLE001 - reported to the parent when it asks
        error = _describe(exc)
    for line in sys.stdin:
        if error is not None:
            answer = {"error": error}
        else:
            try:
                run_id = recorder.import_capture(json.loads(line)["capture"])
                answer = {"run_id": run_id, "tracking_uri": recorder.store.tracking_uri}
            except Exception as exc:  # noqa: BLE001
                answer = {"error": _describe(exc)}
        print(json.dumps(answer), file=answers, flush=True)
    # every run is committed by now: skip the interpreter's teardown of mlflow and SQLAlchemy (~1.5 s
    # that `rdquant run` would otherwise wait for at its end)
    sys.stderr.flush()
    os._exit(0)


def _describe(exc: Exception) -> str:
    return str(exc) if isinstance(exc, RecordingError) else f"{type(exc).__name__}: {exc}"
