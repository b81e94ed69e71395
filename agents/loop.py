"""Start, resume and finish a research run: the glue between the CLI, the store, the sandbox and the graph."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Callable

from agents.backend import Backend, OfflineBackend
from agents.config import LoopConfig, loop_label, purge_days, stored_config
from agents.decide import admission_p, merge_folds
from agents.errors import ExperimentFailed, LabelError
from agents.graph import budget_left, build_graph
from agents.nodes import (
    FAILURES_KEPT,
    IterationState,
    RunMemory,
    Services,
    _model_spec,
    candidate_specs,
    experiment_rows,
    failure_note,
    form_of,
)
from agents.recorded import read_back
from agents.search import ScoredExpression
from agents.store import DecisionRow, ExperimentRow, HypothesisRow, LibraryFactorRow, RunRow, Store, TrialRow, dumps
from quantcore.data.sources import load_market
from quantcore.dataset.purge import purge_segments
from quantcore.errors import ExpressionError
from sandbox.executor import BaseExecutor
from sandbox.limits import Limits
from sandbox.local import LocalExecutor
from sandbox.market import market_roots
from sandbox.result import ExperimentResult, FailureCategory
from sandbox.spec import default_segments
from sandbox.store import code_version

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
        return OfflineBackend(config.seed, config.max_nodes, config.max_depth)
    from agents.llm import LLMBackend

    backend = LLMBackend.from_env(config, replay_calls=replay_calls)
    backend.tokens_used = tokens_used
    return backend


def make_executor(config: LoopConfig, root: Path, recorder=None, use_cache: bool = True) -> BaseExecutor:
    """The configured executor with `config.workers` workers, ready to run: "ray" joins the cluster at
    `RAY_ADDRESS` (else starts a local runtime) here, so a missing Ray or an unreachable address raises
    `RayUnavailable` before a run stores anything."""
    limits = Limits(wall_seconds=config.wall_seconds, cpu_seconds=config.wall_seconds * config.workers * 2)
    shared = dict(
        root=root, limits=limits, recorder=recorder, use_cache=use_cache, market_roots=market_roots(config.data)
    )
    if config.executor == "local":
        return LocalExecutor(workers=config.workers, **shared)
    from sandbox.ray_executor import RayExecutor

    executor = RayExecutor(workers=config.workers, **shared)
    try:
        executor.connect()
    except BaseException:
        executor.close()
        raise
    return executor


def start_run(
    config: LoopConfig,
    root: str | Path,
    *,
    backend: Backend | None = None,
    reviewer=None,
    on_event: Callable[[str, dict], None] = lambda k, d: None,
    executor: BaseExecutor | None = None,
    run_id: str | None = None,
    library: dict[str, str] | None = None,
) -> str:
    """A new run: store its settings (and the library it starts from, by default the project's), run
    the baseline, loop. The stored segments are purged (`purge_days`): train and valid end the label's
    horizon plus the embargo before the next segment starts. Resume reuses them as stored; replay derives
    the same ones again from the stored settings."""
    store = open_project(root)
    panel = load_market(config.data)
    _check_label(loop_label(config), panel)
    segments = dict(config.segments) if config.segments else default_segments(panel.calendar)
    if config.embargo_days is not None:  # None: a replayed run stored before purging keeps its segments as given
        # a segment the purge would empty raises SegmentError (a ValueError) naming it, before anything is stored
        segments = purge_segments(panel.calendar, segments, *purge_days(config))
    if library is None:
        library = {row.name: row.expression for row in store.library()}
    if config.fdr_planned_tests is None:  # fixed now: a replay (budget = iterations done) counts the same family
        config = config.model_copy(
            update={"fdr_planned_tests": config.budget * config.n_factor_candidates if config.fdr_q is not None else 0}
        )
    run_id = run_id or uuid.uuid4().hex[:12]
    own_executor = executor is None
    executor = executor or make_executor(config, project_paths(root)["sandbox"])  # first: a bad one stores nothing
    try:
        with store.session() as db:
            # trial_mark: the project's trials before this run are the search's starting point (replay too)
            db.add(
                RunRow(
                    id=run_id,
                    config_json=dumps(
                        {
                            "loop": config.model_dump(mode="json"),
                            "segments": segments,
                            "library_at_start": library,
                            "code_versions": [code_version()],
                            "trial_mark": _last_id(db, TrialRow),
                            "library_mark": _last_id(db, LibraryFactorRow),
                        }
                    ),
                )
            )
    except BaseException:
        if own_executor:
            executor.close()
        raise
    return _drive(run_id, store, root, config, panel, segments, backend, reviewer, on_event, executor, own_executor)


def _with_code_version(raw: dict) -> dict:
    versions = list(raw.get("code_versions") or [])
    return {**raw, "code_versions": versions if code_version() in versions else versions + [code_version()]}


def resume_run(
    run_id: str,
    root: str | Path,
    *,
    backend: Backend | None = None,
    reviewer=None,
    on_event: Callable[[str, dict], None] = lambda k, d: None,
    executor: BaseExecutor | None = None,
    budget: int | None = None,
    executor_kind: str | None = None,
) -> str:
    """Continue a run from its last committed iteration (an interrupted iteration is redone), on the
    executor it was started with unless `executor_kind` says otherwise (results are the same)."""
    store = open_project(root)
    run = store.find_run(run_id)
    raw = json.loads(run.config_json)
    config = stored_config(raw["loop"])
    overrides = {key: value for key, value in (("budget", budget), ("executor", executor_kind)) if value is not None}
    config = LoopConfig.model_validate({**config.model_dump(), **overrides})
    panel = load_market(config.data)
    own_executor = executor is None
    executor = executor or make_executor(config, project_paths(root)["sandbox"])  # first: a bad one changes nothing
    try:
        with store.session() as db:
            row = db.get(RunRow, run.id)
            row.status = "running"
            # the code that computes its metrics from here on (a replay compares exactly only under it)
            row.config_json = dumps(_with_code_version(json.loads(row.config_json)))
            db.add(row)
    except BaseException:
        if own_executor:
            executor.close()
        raise
    return _drive(
        run.id, store, root, config, panel, raw["segments"], backend, reviewer, on_event, executor, own_executor
    )


def _drive(run_id, store, root, config, panel, segments, backend, reviewer, on_event, executor, own_executor) -> str:
    """Run the baseline (if not done) and the graph until the budget is spent; closes `executor` if it
    is ours (`own_executor`). Every result is recorded in MLflow, where the critic reads its metrics back:
    an executor without a recorder records, for this run, in the project's store (experiment `loop-<run>`)."""
    status = "failed"
    recorder_before = executor.recorder
    try:
        if executor.recorder is None:
            from quantcore.recording import Recorder

            executor.recorder = Recorder.open(project_paths(root)["mlflow"], f"loop-{run_id}")
        memory = _memory(store, run_id, panel.version)
        services = Services(
            config=config,
            store=store,
            executor=executor,
            backend=backend or make_backend(config, tokens_used=memory.tokens),
            panel=panel,
            segments={k: tuple(v) for k, v in segments.items()},
            memory=memory,
            reviewer=reviewer,
            on_event=on_event,
        )
        on_event("start", {"run_id": run_id, "executor": config.executor, "workers": executor.workers})
        if not memory.best:
            _baseline(services)
        if budget_left(services) is None:
            graph = build_graph(services)
            graph.invoke(
                IterationState(iteration=memory.iterations_done + 1),
                config={"recursion_limit": 12 * config.budget + 50},
            )
        status = "stopped" if memory.stopped else "finished"
        on_event("done", {"run_id": run_id, "reason": budget_left(services)})
    finally:
        with store.session() as db:
            row = db.get(RunRow, run_id)
            row.status = status if status != "failed" or row.status != "stopped" else row.status
            db.add(row)
        executor.recorder = recorder_before  # a caller's executor records where it did before
        if own_executor:
            executor.close()
    return run_id


def _check_label(label: str, panel) -> None:
    """A label that does not parse, names a missing field, or reads no future day is refused (a
    LabelError naming it) before anything is stored: a label of the past is no prediction target."""
    from quantcore.evaluate.significance import label_horizon
    from quantcore.expr.parser import parse
    from quantcore.expr.validate import validate

    try:
        node = parse(label)
        validate(node, panel.field_names, allow_future=True)
    except ExpressionError as e:
        raise LabelError(f"--label {label!r}: {e}") from None
    if label_horizon(node) < 1:
        raise LabelError(
            f"--label {label!r} reads no future day: a label must be what happens after the day "
            "the factors see (e.g. Ref($close, -2)/Ref($close, -1) - 1)"
        )


def _baseline(s: Services) -> None:
    """Iteration 0: the base feature set + library with the default model, scored on validation; it
    is the first "best" every model candidate must beat."""
    coded = _model_spec("baseline", "lightgbm", {}, s)
    s.on_event("baseline", {"features": s.config.base_features})
    named = candidate_specs(coded)
    # its metrics as MLflow recorded them, like every decision's (see `agents.recorded`)
    folds = list(
        read_back(
            {key: r for (key, _), r in zip(named, s.executor.run_many([spec for _, spec in named]))},
            s.executor.recorder,
        ).values()
    )
    result = merge_folds(folds)
    if not result.ok:
        raise ExperimentFailed(f"the baseline model failed: {result.failure.for_llm()}")
    best = {
        "name": "baseline",
        "family": "lightgbm",
        "params": {},
        "metrics": result.metrics,
        "daily_rank_ic": result.details.get("daily_rank_ic"),
    }
    with s.store.session() as db:
        db.add_all(experiment_rows(s.memory.run_id, 0, coded, {key: r for (key, _), r in zip(named, folds)}))
        db.add(
            DecisionRow(
                run_id=s.memory.run_id,
                iteration=0,
                candidate="baseline",
                verdict="replace_best",
                reasons_json=dumps(["baseline: the default model on the base features"]),
                metrics_json=dumps(result.metrics),
            )
        )
        row = db.get(RunRow, s.memory.run_id)
        row.best_json = dumps(best)
        db.add(row)
    s.memory.best = best
    s.on_event("best", {"metrics": result.metrics})


def _last_id(db, table) -> int:
    """The newest row id of a table (0 when empty): what existed when a run started."""
    from sqlmodel import func, select

    return int(db.exec(select(func.max(table.id))).one() or 0)


def _memory(store: Store, run_id: str, market: str) -> RunMemory:
    """The run's state as of its last committed iteration: its library, and what the project has tried
    on this market (trials of earlier runs up to the run's start, then the run's own)."""
    run = store.run(run_id)
    raw = json.loads(run.config_json)
    library, metrics = store.run_library(run_id)
    names_mark = int(raw.get("library_mark") or 0)
    taken = {r.name for r in store.library(include_replaced=True) if r.id <= names_mark or r.run_id == run_id}
    mark = int(raw.get("trial_mark") or 0)
    trials = [t for t in store.rows(TrialRow, market=market) if t.run_id == run_id or t.id <= mark]
    tried = {t.form for t in trials}
    failures = []
    for e in store.rows(ExperimentRow, run_id):
        spec = json.loads(e.spec_json)
        screened = e.candidate.startswith("screen.")  # its scored members are trials (above); the rest may return
        for expr in () if screened else spec.get("expressions", {}).values():
            try:
                tried.add(form_of(expr))
            except Exception:  # noqa: BLE001 - a stored bad expression is simply not a form
                pass
        if not e.ok:
            r = ExperimentResult.from_dict(json.loads(e.result_json))
            if (
                r.failure is not None
                and not e.candidate.startswith("screen.")
                and r.failure.category is not FailureCategory.RECORD
            ):  # ours, no lesson (as in update_node)
                failures.append(failure_note(e.candidate, r.failure.for_llm()))
    screened = [t for t in trials if t.stage == "screen"]
    best_by_form: dict[str, float] = {}
    for t in screened:
        best_by_form[t.form] = max(best_by_form.get(t.form, 0.0), t.fitness)
    library_fitness = {}
    for name, expr in library.items():
        try:
            library_fitness[name] = best_by_form.get(form_of(expr), 0.0)
        except ExpressionError:  # an unparsable library expression has no fitness
            library_fitness[name] = 0.0
    planned = int(stored_config(raw["loop"]).fdr_planned_tests or 0)
    if planned:  # plus earlier runs' tests (finite p: a failed trial is no test): the family at the run's end
        planned += sum(
            1
            for t in trials
            if t.stage == "admission" and t.run_id != run_id and math.isfinite(admission_p(json.loads(t.metrics_json)))
        )
    families: dict[str, int] = {}
    for h in store.rows(HypothesisRow, run_id):
        families[h.family] = families.get(h.family, 0) + 1
    return RunMemory(
        run_id=run_id,
        iterations_done=run.iterations_done,
        best=json.loads(run.best_json),
        scheduler=json.loads(run.scheduler_json),
        library=library,
        library_metrics=metrics,
        tried=tried,
        trials=[ScoredExpression(t.expression, t.fitness, t.region) for t in screened],
        library_fitness=library_fitness,
        market=market,
        taken_names=taken,
        admission_p=[admission_p(json.loads(t.metrics_json)) for t in trials if t.stage == "admission"],
        planned_tests=planned,
        families=families,
        failures=failures[-FAILURES_KEPT:],
        lessons=json.loads(run.lessons_json),
        tokens=run.tokens,
        cost_usd=run.cost_usd,
        cpu_seconds=run.cpu_seconds,
        stopped=run.status == "stopped",
    )
