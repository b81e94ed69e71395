"""The project store: one SQLite file (SQLModel) holding every run of a project.

Tables: runs, iterations, hypotheses (+ edges: derived_from, refines, contradicts), experiments
(spec, result, MLflow run id), the accepted factor library (shared by all runs of the project),
decisions with reasons, every LLM call, every human review, the report's evaluations and each
opening of a run's sealed test segment. An iteration is written in one
transaction by `commit_iteration`: a loop killed mid-iteration leaves no trace of it, so
`--resume` redoes exactly that iteration (its experiments come back from the sandbox cache).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Optional

from sqlalchemy import event
from sqlmodel import Field, Session, SQLModel, create_engine, select

from agents.errors import RunNotFound

__all__ = [
    "Store",
    "RunRow",
    "IterationRow",
    "HypothesisRow",
    "EdgeRow",
    "ExperimentRow",
    "LibraryFactorRow",
    "DecisionRow",
    "LLMCallRow",
    "ReviewRow",
    "EvaluationRow",
    "OpeningRow",
    "TrialRow",
    "now",
]


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunRow(SQLModel, table=True):
    __tablename__ = "runs"
    id: str = Field(primary_key=True)
    created: str = Field(default_factory=now)
    status: str = "running"  # running | finished | stopped | failed
    config_json: str  # the loop settings (budget, backend, seed, market, segments, thresholds...)
    iterations_done: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    cpu_seconds: float = 0.0
    best_json: str = "{}"  # current best model config + valid metrics
    scheduler_json: str = "{}"  # bandit state
    lessons_json: str = "[]"  # distilled lessons kept for prompts


class IterationRow(SQLModel, table=True):
    __tablename__ = "iterations"
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: str = Field(index=True, foreign_key="runs.id")
    number: int
    direction: str  # factor | model
    reward: float = 0.0
    summary: str = ""
    seconds: float = 0.0
    created: str = Field(default_factory=now)


class HypothesisRow(SQLModel, table=True):
    __tablename__ = "hypotheses"
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    iteration: int
    direction: str
    family: str = ""
    text: str
    candidates_json: str
    feedback: str = ""  # the critic's analysis and next-step advice
    status: str = "proposed"  # proposed | accepted | rejected | partial | skipped


class EdgeRow(SQLModel, table=True):
    __tablename__ = "hypothesis_edges"
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    source: int  # hypothesis id
    target: int
    relation: str  # derived_from | refines | contradicts
    note: str = ""  # e.g. which library factor a refinement replaced


class ExperimentRow(SQLModel, table=True):
    __tablename__ = "experiments"
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    iteration: int
    hypothesis_id: Optional[int] = None
    candidate: str
    spec_hash: str = Field(index=True)
    spec_json: str
    ok: bool
    result_json: str
    mlflow_run_id: Optional[str] = None


class LibraryFactorRow(SQLModel, table=True):
    __tablename__ = "library"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str = Field(index=True, unique=True)
    expression: str
    canonical: str = Field(index=True)
    run_id: str
    iteration: int
    metrics_json: str  # validation metrics at admission
    created: str = Field(default_factory=now)
    replaced_by: Optional[str] = None  # a better factor of the same idea that refined it out of the library
    replaced_run: Optional[str] = None


class TrialRow(SQLModel, table=True):
    """Every factor candidate the sandbox scored, screened or admitted: what the search has tried on
    a market (the project's later runs continue from it) and how many trials a discovery cost."""

    __tablename__ = "trials"
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    iteration: int
    market: str = Field(index=True)  # the panel's data version: one market however its spec is spelled
    candidate: str
    expression: str
    form: str  # canonical affine core: the identity the search deduplicates on
    region: str = ""  # the grammar region (or "llm", "evolved") it came from
    stage: str  # screen | admission
    fitness: float = 0.0  # |t| of its mean daily RankIC on the stage's segment
    metrics_json: str = "{}"


class DecisionRow(SQLModel, table=True):
    __tablename__ = "decisions"
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    iteration: int
    candidate: str
    verdict: str  # accept | reject | replace_best | keep_best
    reasons_json: str
    metrics_json: str = "{}"


class LLMCallRow(SQLModel, table=True):
    __tablename__ = "llm_calls"
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    iteration: int
    node: str  # proposer | coder | critic
    attempt: int
    model: str
    request_json: str
    response_text: str
    ok: bool
    error: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cost_usd: float = 0.0
    created: str = Field(default_factory=now)


class ReviewRow(SQLModel, table=True):
    __tablename__ = "reviews"
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    iteration: int
    action: str  # approve | edit | reject | stop
    reason: str = ""
    edits_json: str = "{}"
    created: str = Field(default_factory=now)


class EvaluationRow(SQLModel, table=True):
    """The report's figures (never shown to agents): the final model on validation, scored first, then the
    baseline and the final model on the sealed test segment."""

    __tablename__ = "evaluations"
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    name: str  # final.valid | baseline | final
    metrics_json: str
    detail_json: str = "{}"
    # the test opening the figures belong to (final.valid: the one it was scored for); None: stored by a
    # report older than the openings table, which opened the test once
    opening: Optional[int] = None


class OpeningRow(SQLModel, table=True):
    """Each opening of a run's sealed test segment: when, and the state of the run it scored. A report of
    the same state reuses the figures; scoring another state is a reopening, counted and shown."""

    __tablename__ = "test_openings"
    id: Optional[int] = Field(default=None, primary_key=True)
    run_id: str = Field(index=True)
    number: int  # 1, 2, ... within the run
    opened: str = Field(default_factory=now)
    final_hash: str  # spec hash of the final model's test spec (market, segments, library, model settings)
    state_json: str  # {"library": {name: expression}, "best_model": {name, family, params, feature_norm}}
    reason: str = ""  # why it was opened: the first report, or a --reopen and what had changed


class Store:
    """Explicit handle on one project database; open with `Store.open(path)`."""

    def __init__(self, engine):
        self.engine = engine

    @classmethod
    def open(cls, path: str | Path) -> "Store":
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # WAL: readers (runs show) never block the loop's writes
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        SQLModel.metadata.create_all(engine)
        _add_missing_columns(engine)
        return cls(engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on any exception."""
        with Session(self.engine, expire_on_commit=False) as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    # ---- reads ---------------------------------------------------------------------------------------
    def run(self, run_id: str) -> RunRow | None:
        with self.session() as s:
            return s.get(RunRow, run_id)

    def runs(self) -> list[RunRow]:
        with self.session() as s:
            return list(s.exec(select(RunRow).order_by(RunRow.created)))

    def rows(self, table, run_id: str | None = None, **where: Any) -> list:
        with self.session() as s:
            q = select(table)
            if run_id is not None:
                q = q.where(table.run_id == run_id)
            for key, value in where.items():
                q = q.where(getattr(table, key) == value)
            order = getattr(table, "id", None)
            return list(s.exec(q.order_by(order) if order is not None else q))

    def library(self, include_replaced: bool = False) -> list[LibraryFactorRow]:
        """The project's factor library (without the factors later refinements replaced)."""
        rows = self.rows(LibraryFactorRow)
        return rows if include_replaced else [r for r in rows if r.replaced_by is None]

    def run_library(self, run_id: str) -> tuple[dict[str, str], dict[str, dict]]:
        """The factor library as run `run_id` left it (name -> expression, name -> validation metrics of
        the factors it admitted): what it started with, plus what it admitted, minus what it refined out.
        A later run retiring one of its factors does not change this run's library."""
        run = self.run(run_id)
        raw = json.loads(run.config_json) if run is not None else {}
        library = dict(raw.get("library_at_start", {}))
        metrics = {}
        for row in self.library(include_replaced=True):
            if row.replaced_run == run_id:
                library.pop(row.name, None)
            elif row.run_id == run_id:
                library[row.name] = row.expression
                metrics[row.name] = json.loads(row.metrics_json)
        return library, metrics

    def find_run(self, prefix: str) -> RunRow:
        """A run by id or unique id prefix; KeyError naming the candidates otherwise."""
        with self.session() as s:
            exact = s.get(RunRow, prefix)
            if exact is not None:
                return exact
            found = list(s.exec(select(RunRow).where(RunRow.id.startswith(prefix))))
        if len(found) == 1:
            return found[0]
        if not found:
            raise RunNotFound(f"no run {prefix!r} in this project")
        raise RunNotFound(f"run id prefix {prefix!r} is ambiguous: {', '.join(r.id for r in found)}")


def _add_missing_columns(engine) -> None:
    """Columns added to a table since a project's store was created, added to it in place (all are
    nullable or have defaults): an older project opens with every run it holds."""
    from sqlalchemy import inspect, text
    from sqlalchemy.exc import OperationalError

    inspector = inspect(engine)
    with engine.begin() as conn:
        for table in SQLModel.metadata.sorted_tables:
            have = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in have:
                    continue
                default = (
                    column.default.arg if column.default is not None and not callable(column.default.arg) else None
                )
                kind = column.type.compile(engine.dialect)
                clause = f" DEFAULT {default!r}" if isinstance(default, (str, int, float)) else ""
                try:
                    conn.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}{clause}'))
                except OperationalError as e:  # another process opening the same old store added it first
                    if "duplicate column" not in str(e):
                        raise


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
