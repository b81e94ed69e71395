"""What every executor does around the workers: validate specs, export markets once, serve cached
results, give each experiment its own folder, and record results in MLflow (one writer: this process).

Subclasses (`LocalExecutor`, `RayExecutor`) only implement `_dispatch`: run prepared tasks on workers
and yield each task's result as it arrives."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from sandbox.export import export_limited
from sandbox.failures import classify
from sandbox.limits import Limits
from sandbox.market import MarketRefused, check_market
from sandbox.result import ExperimentResult, Failure, FailureCategory
from sandbox.spec import WorkflowSpec, parse_spec, spec_hash, spec_json
from sandbox.store import SandboxStore

__all__ = ["Task", "BaseExecutor", "market_of", "DEFAULT_SANDBOX_ROOT"]

DEFAULT_SANDBOX_ROOT = Path("runs") / "sandbox"


@dataclass
class Task:
    """One experiment ready for a worker."""

    task_id: int
    spec_json: str
    spec_hash: str
    kind: str
    workdir: str
    markets: dict[str, str]  # market spec -> exported folder
    key: str  # result cache key
    name: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    generated: bool = False  # runs generated Python (a factor's or a model's `code`), not only our own code

    def message(self) -> dict:
        """What a worker needs to run it (one entry of a "run" message, `sandbox.channel`)."""
        return {"task_id": self.task_id, "spec_json": self.spec_json, "workdir": self.workdir, "markets": self.markets}


def market_of(spec) -> str:
    """The market a spec runs on (a workflow names it in its `data` section; sp500 by default)."""
    if isinstance(spec, WorkflowSpec):
        data = spec.workflow.get("data")
        return str(data.get("market", "sp500")) if isinstance(data, dict) else "sp500"
    return spec.market


class BaseExecutor:
    """Shared parent-side logic. `recorder`: a quantcore `Recorder` to log every result to, or None.
    `market_roots`: folders whose market files and qlib folders a spec may name (besides the embedded
    market and bounded synthetic ones); a market outside them is refused before anything reads it."""

    n_workers: int  # set (or computed) by each subclass

    def __init__(
        self,
        *,
        root: str | Path = DEFAULT_SANDBOX_ROOT,
        limits: Limits | None = None,
        recorder=None,
        use_cache: bool = True,
        market_roots: Sequence[str | Path] = (),
    ):
        self.store = SandboxStore.at(root)
        self.market_roots = tuple(Path(r).absolute() for r in market_roots)
        self._export_jail: bool | None = None  # None: export markets in the jail where it runs
        self.limits = limits or Limits()
        self.recorder = recorder
        self.use_cache = use_cache
        self._markets: dict[str, tuple[str, str]] = {}  # market spec -> (folder, data version)
        self._next_id = 0
        self.stats = {"submitted": 0, "cached": 0, "run": 0, "worker_restarts": 0, "fresh_workers": 0}

    # ---- public API -----------------------------------------------------------------------------
    @property
    def workers(self) -> int:
        """How many experiments run at once: callers size their batches from it (a smaller batch
        leaves workers idle)."""
        return self.n_workers

    def run(self, spec: Any) -> ExperimentResult:
        """Run one spec (dict, JSON text or spec object); never raises for a bad experiment."""
        return self.run_many([spec])[0]

    def run_many(self, specs: Sequence[Any]) -> list[ExperimentResult]:
        """Run specs in parallel; results in input order. Identical specs run once."""
        return [r for _, r in sorted(self.iter_results(specs), key=lambda pair: pair[0])]

    def iter_results(self, specs: Iterable[Any]) -> Iterator[tuple[int, ExperimentResult]]:
        """(input index, result) pairs as results arrive."""
        owners: dict[str, list[int]] = {}  # cache key -> input indices sharing that experiment
        tasks: dict[str, Task] = {}
        for i, raw in enumerate(specs):
            self.stats["submitted"] += 1
            prepared = self._prepare(raw)
            if isinstance(prepared, ExperimentResult):
                yield i, prepared
            elif prepared.key in owners:
                owners[prepared.key].append(i)
            else:
                owners[prepared.key] = [i]
                tasks[prepared.key] = prepared
        to_run = []
        for key, task in tasks.items():
            cached = self.store.cached(key) if self.use_cache else None
            if cached is not None and self.recorder is not None and cached.ok and cached.mlflow_run_id is None:
                cached = None  # cached without a record (none was kept then): run it again, recorded this time
            if cached is None:
                to_run.append(task)
                continue
            self.stats["cached"] += len(owners[key])
            for i in owners[key]:
                yield i, cached
        by_id = {t.task_id: t for t in to_run}
        for task_id, result in self._dispatch(to_run):
            task = by_id[task_id]
            self.stats["run"] += 1
            result = _checked_artifacts(task, result)
            result = self._record(task, result)
            # a result whose recording failed is not kept: a later hit would carry no record to read back
            if self.use_cache and result.spec_hash and "recording_error" not in result.details:
                self.store.put(task.key, result)
            for n, i in enumerate(owners[task.key]):
                yield i, result if n == 0 else result.with_(cached=True)

    def use_exported(self, market: str, folder: str | Path, version: str) -> None:
        """Serve `market` from a folder already exported (by `sandbox.market.export_market`): a Ray
        actor's node-local copy of the driver's market; no spec-side check or load happens again."""
        self._markets[market] = (str(folder), version)

    def close(self) -> None:
        """Stop the workers."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- for subclasses --------------------------------------------------------------------------
    def _dispatch(self, tasks: list[Task]) -> Iterator[tuple[int, ExperimentResult]]:
        raise NotImplementedError

    # ---- internals -------------------------------------------------------------------------------
    def _prepare(self, raw: Any) -> Task | ExperimentResult:
        try:
            spec = parse_spec(raw)
            key_hash = spec_hash(spec)
        except Exception as exc:  # noqa: BLE001 - a bad spec is a result, not an exception
            return ExperimentResult(spec_hash="", kind=_kind_of(raw), failure=classify(exc))
        market = market_of(spec)
        try:
            if market not in self._markets:
                check_market(market, self.market_roots)
        except MarketRefused as exc:
            return ExperimentResult(
                spec_hash=key_hash, kind=spec.kind, failure=Failure(FailureCategory.INVALID_SPEC, str(exc))
            )
        try:
            folder, version = self._market(market)
        except Exception as exc:  # noqa: BLE001
            return ExperimentResult(
                spec_hash=key_hash,
                kind=spec.kind,
                failure=Failure(FailureCategory.INVALID_SPEC, f"market {market!r} cannot be loaded: {exc}"),
            )
        self._next_id += 1
        return Task(
            task_id=self._next_id,
            spec_json=spec_json(spec),
            spec_hash=key_hash,
            kind=spec.kind,
            workdir=str(self.store.workdir(key_hash)),
            markets={market: folder},
            key=self.store.result_key(key_hash, version),
            name=f"{spec.kind}-{key_hash[:8]}",
            generated=getattr(spec, "code", None) is not None,
        )

    def _market(self, market: str) -> tuple[str, str]:
        if market not in self._markets:
            folder, version = export_limited(
                self.store.root, market, self.limits, self.market_roots, jail=self._export_jail
            )
            self._markets[market] = (str(folder), version)
        return self._markets[market]

    def _record(self, task: Task, result: ExperimentResult) -> ExperimentResult:
        """Log the result to MLflow (if a recorder is set); a store error is noted, never fatal."""
        if self.recorder is None:
            return result
        try:
            capture = result.artifacts.get("mlflow_capture")
            if result.ok and capture and Path(capture, "capture.json").exists():
                run_id = self.recorder.import_capture(capture)
                self._tag(run_id, task, result)
                return result.with_(mlflow_run_id=run_id)
            with self.recorder.start_run(task.name, tags={"kind": task.kind, "spec_hash": task.spec_hash}) as run:
                run.log_params({"spec": json.loads(task.spec_json)})
                if result.metrics:
                    run.log_metrics(result.metrics)
                run.log_metrics({"sandbox.seconds": result.seconds})
                if result.failure is not None:
                    run.set_tags({"failure_category": result.failure.category.value})
                    run.log_text(result.failure.for_llm(), "failure.txt")
                    run.set_failed(f"{result.failure.category.value}: {result.failure.message}")
                return result.with_(mlflow_run_id=run.run_id)
        except Exception as exc:  # noqa: BLE001 - the result itself is still good
            return result.with_(details={**result.details, "recording_error": f"{type(exc).__name__}: {exc}"})

    def _tag(self, run_id: str, task: Task, result: ExperimentResult) -> None:
        self.recorder.client.set_tag(run_id, "spec_hash", task.spec_hash)
        self.recorder.client.set_tag(run_id, "kind", task.kind)


#: The most a capture folder may hold: a model's report and predictions are tens of MB at most.
MAX_CAPTURE_BYTES = 1 << 30


def _checked_artifacts(task: Task, result: ExperimentResult) -> ExperimentResult:
    """The parent reads what a worker wrote, so a result's artifacts must be files the experiment made
    in its own folder: a path elsewhere, a link (to a host file the worker could not read, for the
    parent to copy into MLflow), a device or an oversized capture makes the experiment a
    `forbidden_operation`, and nothing of it is read."""
    if not result.artifacts:
        return result
    workdir = Path(os.path.realpath(task.workdir))
    problem = None
    for name, raw in result.artifacts.items():
        path = Path(str(raw))
        inside = _inside(path, Path(task.workdir))
        # realpath resolves every link on the way: it differs from the plain path if there is one
        if not inside or Path(os.path.realpath(path)) != workdir / path.relative_to(task.workdir):
            problem = f"artifact {name!r} is not in the experiment's own folder, or is reached through a link ({raw})"
        else:
            problem = _tree_problem(path)
            problem = problem and f"artifact {name!r}: {problem}"
        if problem:
            break
    if problem is None:
        return result
    failure = Failure(FailureCategory.FORBIDDEN_OPERATION, f"the sandbox refused the experiment's output: {problem}")
    return ExperimentResult(
        spec_hash=result.spec_hash,
        kind=result.kind,
        failure=failure,
        seconds=result.seconds,
        data_version=result.data_version,
    )


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return ".." not in path.parts


def _tree_problem(root: Path) -> str | None:
    """Why the tree at `root` is not plain folders and files of bounded total size, or None."""
    if root.exists() and not root.is_dir():
        return (
            None
            if stat.S_ISREG(root.lstat().st_mode) and root.lstat().st_size <= MAX_CAPTURE_BYTES
            else f"{root} is not a plain file of at most {MAX_CAPTURE_BYTES >> 20} MiB"
        )
    total = 0
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            entry = Path(folder, name)
            st = entry.lstat()
            if stat.S_ISLNK(st.st_mode):
                return f"{entry} is a symbolic link"
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                return f"{entry} is not a plain file or folder"
            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
            if total > MAX_CAPTURE_BYTES:
                return f"holds more than {MAX_CAPTURE_BYTES >> 20} MiB"
    return None


def _kind_of(raw: Any) -> str:
    if isinstance(raw, dict):
        return str(raw.get("kind", "?"))
    return str(getattr(raw, "kind", "?"))
