"""`rdquant replay RUN_ID`: re-execute a run offline from its stored LLM responses and reviews, in a
scratch project, and compare every decision and metric with the stored ones."""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from agents.backend import OfflineBackend
from agents.config import stored_config
from agents.contracts import Review
from agents.loop import open_project, start_run
from agents.store import DecisionRow, ExperimentRow, LLMCallRow, ReviewRow, Store, TrialRow
from sandbox.limits import Limits
from sandbox.local import LocalExecutor

__all__ = ["ReplayReport", "replay_run"]


@dataclass
class ReplayReport:
    run_id: str
    iterations: int = 0
    decisions: int = 0
    metrics: int = 0
    divergences: list[str] = field(default_factory=list)


def replay_run(store: Store, run_id: str, *, workers: int = 2, log: Callable[[str], None] = lambda m: None) -> ReplayReport:
    run = store.find_run(run_id)
    raw = json.loads(run.config_json)
    # the stored worker count stays: it sizes the search's batches; `workers` only sizes this executor
    config = stored_config(raw["loop"]).model_copy(update={"budget": max(run.iterations_done, 1), "max_minutes": None})
    if config.backend == "llm":
        from agents.llm import LLMBackend

        calls = [c.model_dump() for c in store.rows(LLMCallRow, run.id)]
        backend = LLMBackend.from_env(config, replay_calls=calls)
    else:
        backend = OfflineBackend(config.seed)
    reviews = [Review(action=r.action, reason=r.reason, edits=json.loads(r.edits_json))
               for r in store.rows(ReviewRow, run.id)]

    def reviewer(hypothesis, coded, validate):
        if not reviews:
            raise RuntimeError("the replay asked for a review the original run does not have")
        return reviews.pop(0)

    with tempfile.TemporaryDirectory(prefix="rdquant-replay-") as tmp:
        log(f"re-executing {run.iterations_done} iterations of {run.id} (no cache, no network)")
        _copy_prior_trials(store, open_project(tmp), int(raw.get("trial_mark") or 0))
        limits = Limits(wall_seconds=config.wall_seconds, cpu_seconds=config.wall_seconds * 4)
        with LocalExecutor(workers=workers, root=Path(tmp) / "sandbox", limits=limits, use_cache=False) as executor:
            start_run(config, tmp, backend=backend, reviewer=reviewer if config.review else None, executor=executor,
                      record=False, run_id=run.id, library=raw.get("library_at_start", {}))
        return compare(store, open_project(tmp), run.id)


def _copy_prior_trials(original: Store, scratch: Store, mark: int) -> None:
    """The project's trials from before the run (what its search started from), in their order."""
    rows = [t for t in original.rows(TrialRow) if t.id <= mark]
    with scratch.session() as db:
        db.add_all([TrialRow(**t.model_dump(exclude={"id"})) for t in rows])


def compare(original: Store, replayed: Store, run_id: str) -> ReplayReport:
    """Every decision (candidate, verdict, metrics) and experiment metric of `run_id`, side by side."""
    report = ReplayReport(run_id)
    a, b = _decisions(original, run_id), _decisions(replayed, run_id)
    report.iterations = len({it for it, _ in a})
    for key in sorted(set(a) | set(b)):
        it, cand = key
        if key not in b:
            report.divergences.append(f"iteration {it}: decision on {cand} is missing from the replay")
            continue
        if key not in a:
            report.divergences.append(f"iteration {it}: the replay decided on {cand}, the original did not")
            continue
        (va, ma), (vb, mb) = a[key], b[key]
        report.decisions += 1
        if va != vb:
            report.divergences.append(f"iteration {it}: {cand} was {va!r}, replay says {vb!r}")
        report.metrics += _diff_metrics(f"iteration {it}: {cand} decision metric", ma, mb, report.divergences)
    ea, eb = _experiments(original, run_id), _experiments(replayed, run_id)
    for key in sorted(set(ea) | set(eb)):
        it, cand = key
        if key not in ea or key not in eb:
            report.divergences.append(f"iteration {it}: experiment {cand} exists only in the "
                                      f"{'replay' if key in eb else 'original'}")
            continue
        report.metrics += _diff_metrics(f"iteration {it}: experiment {cand}", ea[key], eb[key], report.divergences)
    return report


def _decisions(store: Store, run_id: str) -> dict:
    return {(d.iteration, d.candidate): (d.verdict, json.loads(d.metrics_json)) for d in store.rows(DecisionRow, run_id)}


def _experiments(store: Store, run_id: str) -> dict:
    return {(e.iteration, e.candidate): json.loads(e.result_json).get("metrics", {}) for e in store.rows(ExperimentRow, run_id)}


def _diff_metrics(where: str, a: dict, b: dict, out: list[str]) -> int:
    n = 0
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        n += 1
        same = x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
        if not same:
            out.append(f"{where} {key}: stored {x!r}, replay {y!r}")
    return n
