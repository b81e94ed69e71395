"""Start, resume and finish a research run: the glue between the CLI, the store, the sandbox and the graph."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Callable

from agents.backend import Backend, OfflineBackend
from agents.config import LoopConfig, stored_config
from agents.graph import budget_left, build_graph
from agents.decide import merge_folds
from agents.nodes import IterationState, RunMemory, Services, _model_spec, candidate_specs, experiment_rows
from agents.store import DecisionRow, ExperimentRow, HypothesisRow, RunRow, Store, dumps
from quantcore.data.sources import load_market
from quantcore.expr.canonical import canonical
from quantcore.expr.parser import parse
from sandbox.executor import BaseExecutor
from sandbox.limits import Limits
from sandbox.local import LocalExecutor
from sandbox.result import ExperimentResult
from sandbox.spec import default_segments

__all__ = ["open_project", "start_run", "resume_run", "make_backend", "project_paths"]

DB_NAME = "rdquant.db"


def project_paths(root: str | Path) -> dict[str, Path]:
    root = Path(root)
    return {"root": root, "db": root / DB_NAME, "sandbox": root / "sandbox", "mlflow": root}


def open_project(root: str | Path) -> Store:
    return Store.open(project_paths(root)["db"])


def make_backend(config: LoopConfig, replay_calls: list | None = None, tokens_used: int = 0) -> Backend:
    """The configured back-end; `tokens_used` (a resumed run's total so far) counts against --max-tokens."""
    if config.backend == "offline":
        return OfflineBackend(config.seed)
    from agents.llm import LLMBackend

    backend = LLMBackend.from_env(config, replay_calls=replay_calls)
    backend.tokens_used = tokens_used
    return backend


def make_executor(config: LoopConfig, root: Path, recorder=None, use_cache: bool = True) -> BaseExecutor:
    limits = Limits(wall_seconds=config.wall_seconds, cpu_seconds=config.wall_seconds * config.workers * 2)
    return LocalExecutor(workers=config.workers, root=root, limits=limits, recorder=recorder, use_cache=use_cache)


def start_run(config: LoopConfig, root: str | Path, *, backend: Backend | None = None, reviewer=None,
              on_event: Callable[[str, dict], None] = lambda k, d: None, executor: BaseExecutor | None = None,
              record: bool = True, run_id: str | None = None, library: dict[str, str] | None = None) -> str:
    """A new run: store its settings (and the library it starts from, by default the project's), run
    the baseline, loop."""
    store = open_project(root)
    panel = load_market(config.data)
    segments = dict(config.segments) if config.segments else default_segments(panel.calendar)
    if library is None:
        library = {row.name: row.expression for row in store.library()}
    run_id = run_id or uuid.uuid4().hex[:12]
    with store.session() as db:
        db.add(RunRow(id=run_id, config_json=dumps({"loop": config.model_dump(mode="json"), "segments": segments,
                                                     "library_at_start": library})))
    return _drive(run_id, store, root, config, panel, segments, backend, reviewer, on_event, executor, record)


def resume_run(run_id: str, root: str | Path, *, backend: Backend | None = None, reviewer=None,
               on_event: Callable[[str, dict], None] = lambda k, d: None, executor: BaseExecutor | None = None,
               record: bool = True, budget: int | None = None) -> str:
    """Continue a run from its last committed iteration (an interrupted iteration is redone)."""
    store = open_project(root)
    run = store.find_run(run_id)
    raw = json.loads(run.config_json)
    config = stored_config(raw["loop"])
    if budget is not None:
        config = config.model_copy(update={"budget": budget})
    panel = load_market(config.data)
    with store.session() as db:
        row = db.get(RunRow, run.id)
        row.status = "running"
        db.add(row)
    return _drive(run.id, store, root, config, panel, raw["segments"], backend, reviewer, on_event, executor, record)


def _drive(run_id, store, root, config, panel, segments, backend, reviewer, on_event, executor, record) -> str:
    paths = project_paths(root)
    memory = _memory(store, run_id)
    own_executor = executor is None
    if executor is None:
        recorder = None
        if record:
            from quantcore.recording import Recorder

            recorder = Recorder.open(paths["mlflow"], f"loop-{run_id}")
        executor = make_executor(config, paths["sandbox"], recorder)
    services = Services(config=config, store=store, executor=executor, backend=backend or make_backend(config, tokens_used=memory.tokens),
                        panel=panel, segments={k: tuple(v) for k, v in segments.items()}, memory=memory,
                        reviewer=reviewer, on_event=on_event)
    status = "failed"
    try:
        if not memory.best:
            _baseline(services)
        if budget_left(services) is None:
            graph = build_graph(services)
            graph.invoke(IterationState(iteration=memory.iterations_done + 1),
                         config={"recursion_limit": 12 * config.budget + 50})
        status = "stopped" if memory.stopped else "finished"
        on_event("done", {"run_id": run_id, "reason": budget_left(services)})
    finally:
        with store.session() as db:
            row = db.get(RunRow, run_id)
            row.status = status if status != "failed" or row.status != "stopped" else row.status
            db.add(row)
        if own_executor:
            executor.close()
    return run_id


def _baseline(s: Services) -> None:
    """Iteration 0: the base feature set + library with the default model, scored on validation; it
    is the first "best" every model candidate must beat."""
    coded = _model_spec("baseline", "lightgbm", {}, s)
    s.on_event("baseline", {"features": s.config.base_features})
    named = candidate_specs(coded)
    folds = s.executor.run_many([spec for _, spec in named])
    result = merge_folds(folds)
    if not result.ok:
        raise RuntimeError(f"the baseline model failed: {result.failure.for_llm()}")
    best = {"name": "baseline", "family": "lightgbm", "params": {}, "metrics": result.metrics,
            "daily_rank_ic": result.details.get("daily_rank_ic")}
    with s.store.session() as db:
        db.add_all(experiment_rows(s.memory.run_id, 0, coded, {key: r for (key, _), r in zip(named, folds)}))
        db.add(DecisionRow(run_id=s.memory.run_id, iteration=0, candidate="baseline", verdict="replace_best",
                           reasons_json=dumps(["baseline: the default model on the base features"]),
                           metrics_json=dumps(result.metrics)))
        row = db.get(RunRow, s.memory.run_id)
        row.best_json = dumps(best)
        db.add(row)
    s.memory.best = best
    s.on_event("best", {"metrics": result.metrics})


def _memory(store: Store, run_id: str) -> RunMemory:
    """The run's state as of its last committed iteration."""
    run = store.run(run_id)
    raw = json.loads(run.config_json)
    library = dict(raw.get("library_at_start", {}))
    metrics = {}
    for row in store.library():
        if row.run_id == run_id:
            library[row.name] = row.expression
            metrics[row.name] = json.loads(row.metrics_json)
    tried = set()
    failures = []
    for e in store.rows(ExperimentRow, run_id):
        spec = json.loads(e.spec_json)
        for expr in spec.get("expressions", {}).values():
            try:
                tried.add(canonical(parse(expr)))
            except Exception:  # noqa: BLE001 - a stored bad expression is simply not a canonical form
                pass
        if not e.ok:
            r = ExperimentResult.from_dict(json.loads(e.result_json))
            if r.failure is not None:
                failures.append({"candidate": e.candidate, "failure": r.failure.for_llm()[:400]})
    families: dict[str, int] = {}
    for h in store.rows(HypothesisRow, run_id):
        families[h.family] = families.get(h.family, 0) + 1
    return RunMemory(run_id=run_id, iterations_done=run.iterations_done, best=json.loads(run.best_json),
                     scheduler=json.loads(run.scheduler_json), library=library, library_metrics=metrics, tried=tried,
                     families=families, failures=failures[-10:], lessons=json.loads(run.lessons_json),
                     tokens=run.tokens, cost_usd=run.cost_usd, cpu_seconds=run.cpu_seconds,
                     stopped=run.status == "stopped")
