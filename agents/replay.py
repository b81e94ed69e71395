"""`rdquant replay RUN_ID`: re-execute a run offline from its stored LLM responses and reviews, in a
scratch project holding what the run started from, and compare everything it decided, measured and
asked with the stored run (see `compare`)."""

from __future__ import annotations

import functools
import hashlib
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
from agents.recorded import uncited
from agents.store import (
    DecisionRow,
    ExperimentRow,
    HypothesisRow,
    LibraryFactorRow,
    LLMCallRow,
    ReviewRow,
    Store,
    TrialRow,
)
from sandbox.limits import Limits
from sandbox.local import LocalExecutor
from sandbox.market import market_roots
from sandbox.store import code_version

__all__ = ["ReplayReport", "replay_run", "compare", "CROSS_VERSION_TOLERANCE"]

#: Relative difference a float may show when the run was recorded by other code than the replay's (an
#: optimised kernel adds in another order): far below any figure a decision reads, far above rounding.
CROSS_VERSION_TOLERANCE = 1e-9


@dataclass
class ReplayReport:
    run_id: str
    iterations: int = 0
    decisions: int = 0
    metrics: int = 0
    divergences: list[str] = field(default_factory=list)
    tolerance: float = 0.0  # 0: every value compared exactly (the run's code is the replay's)
    recorded_code: list[str] = field(default_factory=list)  # the code versions that computed the stored run
    replay_code: str = ""  # the code version of the replay


def replay_run(
    store: Store, run_id: str, *, workers: int = 2, log: Callable[[str], None] = lambda m: None
) -> ReplayReport:
    run = store.find_run(run_id)
    if not store.rows(DecisionRow, run.id):  # nothing to re-execute, nothing a replay could vouch for
        return ReplayReport(
            run.id,
            divergences=[
                "the stored run has no decisions: nothing to compare (a run that decided nothing cannot match)"
            ],
        )
    raw = json.loads(run.config_json)
    # the stored worker count stays: it sizes the search's batches; `workers` only sizes this executor
    config = stored_config(raw["loop"]).model_copy(update={"budget": max(run.iterations_done, 1), "max_minutes": None})
    if config.backend == "llm":
        from agents.llm import LLMBackend

        calls = [c.model_dump() for c in store.rows(LLMCallRow, run.id)]
        backend = LLMBackend.from_env(config, replay_calls=calls)
    else:
        backend = OfflineBackend(config.seed, config.max_nodes, config.max_depth)
    reviews = [
        Review(action=r.action, reason=r.reason, edits=json.loads(r.edits_json)) for r in store.rows(ReviewRow, run.id)
    ]

    def reviewer(hypothesis, coded, validate):
        if not reviews:
            raise RuntimeError("the replay asked for a review the original run does not have")
        return reviews.pop(0)

    with tempfile.TemporaryDirectory(prefix="rdquant-replay-") as tmp:
        log(f"re-executing {run.iterations_done} iterations of {run.id} (no cache, no network)")
        _copy_project_state(
            store,
            open_project(tmp),
            int(raw.get("trial_mark") or 0),
            int(raw.get("library_mark") or 0),
            raw.get("library_at_start", {}),
        )
        limits = Limits(wall_seconds=config.wall_seconds, cpu_seconds=config.wall_seconds * 4)
        with LocalExecutor(
            workers=workers,
            root=Path(tmp) / "sandbox",
            limits=limits,
            use_cache=False,
            market_roots=market_roots(config.data),
        ) as executor:
            # recorded in the scratch project's MLflow store: the critic reads the metrics back from there too
            start_run(
                config,
                tmp,
                backend=backend,
                reviewer=reviewer if config.review else None,
                executor=executor,
                run_id=run.id,
                library=raw.get("library_at_start", {}),
            )
        recorded = [v for v in raw.get("code_versions") or [] if v]
        # bit for bit under the code that recorded it; another version (or an unknown one: runs stored before
        # versions were) may round differently in the last digits, so floats then agree to a relative 1e-9
        current = code_version()
        exact = recorded == [current]
        report = compare(store, open_project(tmp), run.id, tolerance=0.0 if exact else CROSS_VERSION_TOLERANCE)
        report.recorded_code, report.replay_code = recorded, current
        return report


def _copy_project_state(original: Store, scratch: Store, mark: int, names_mark: int, library: dict[str, str]) -> None:
    """What the run started from: the project's trials before it (in their order) and the rows of the
    library it started with, as they were then (a refinement of the run may retire one of them)."""
    rows = [t for t in original.rows(TrialRow) if t.id <= mark]
    factors = [
        f for f in original.library(include_replaced=True) if f.id <= names_mark or library.get(f.name) == f.expression
    ]
    with scratch.session() as db:
        db.add_all([TrialRow(**t.model_dump(exclude={"id"})) for t in rows])
        # as they were then: a factor the run (or a later one) retired was still in the library
        db.add_all(
            [
                LibraryFactorRow(**f.model_dump(exclude={"id", "replaced_by", "replaced_run"}))
                for f in factors
                if f.name in library
            ]
            + [LibraryFactorRow(**f.model_dump(exclude={"id"})) for f in factors if f.name not in library]
        )


def compare(original: Store, replayed: Store, run_id: str, tolerance: float = 0.0) -> ReplayReport:
    """Everything `run_id` decided and measured, side by side: decisions (verdict, metrics, reasons but the
    MLflow runs they cite), experiments (spec, metrics, details, failure), hypotheses, trials, the library
    it changed, the best model, and each LLM call's request (a recorded call the replay did not make is a
    divergence too). A run with nothing decided cannot match: there is nothing to vouch for. Floats are
    compared exactly, or to a relative `tolerance` where the run was recorded by other code."""
    report = ReplayReport(run_id, tolerance=tolerance)
    out = report.divergences
    same = functools.partial(_same, tolerance=tolerance)
    a, b = _decisions(original, run_id), _decisions(replayed, run_id)
    report.iterations = len({it for it, _ in a})
    if not a:
        out.append("the stored run has no decisions: nothing to compare (a run that decided nothing cannot match)")
    for key in sorted(set(a) | set(b)):
        it, cand = key
        if key not in b:
            out.append(f"iteration {it}: decision on {cand} is missing from the replay")
            continue
        if key not in a:
            out.append(f"iteration {it}: the replay decided on {cand}, the original did not")
            continue
        (va, ma, ra), (vb, mb, rb) = a[key], b[key]
        report.decisions += 1
        if va != vb:
            out.append(f"iteration {it}: {cand} was {va!r}, replay says {vb!r}")
        _diff_values(f"iteration {it}: {cand} decision reasons", ra, rb, out, same)
        report.metrics += _diff_metrics(f"iteration {it}: {cand} decision metric", ma, mb, out, same)
    ea, eb = _experiments(original, run_id), _experiments(replayed, run_id)
    for key in sorted(set(ea) | set(eb)):
        it, cand = key
        if key not in ea or key not in eb:
            out.append(f"iteration {it}: experiment {cand} exists only in the {'replay' if key in eb else 'original'}")
            continue
        (spec_a, res_a), (spec_b, res_b) = ea[key], eb[key]
        if spec_a != spec_b:
            out.append(f"iteration {it}: experiment {cand}'s spec differs")
        report.metrics += _diff_metrics(
            f"iteration {it}: experiment {cand}", res_a.pop("metrics", {}), res_b.pop("metrics", {}), out, same
        )
        _diff_values(f"iteration {it}: experiment {cand}", res_a, res_b, out, same)
    for name, rows in (
        ("hypothesis", _hypotheses),
        ("trial", _trials),
        ("library factor", _library),
        ("LLM call", _calls),
    ):
        ra, rb = rows(original, run_id), rows(replayed, run_id)
        for key in sorted(set(ra) | set(rb), key=str):
            if key not in rb:
                out.append(
                    f"{name} {key} of the stored run "
                    + (
                        "was never asked for by the replay (unused)"
                        if name == "LLM call"
                        else "is missing from the replay"
                    )
                )
            elif key not in ra:
                out.append(f"{name} {key} exists only in the replay")
            else:
                _diff_values(f"{name} {key}", ra[key], rb[key], out, same)
    _diff_values("best model", _best(original, run_id), _best(replayed, run_id), out, same)
    return report


# what legitimately differs between a run and its replay: where and how long it ran, and its MLflow run
# (a new one in the scratch project's store; `uncited` drops it from the decision reasons compared)
_VOLATILE_RESULT = frozenset({"seconds", "cached", "artifacts", "mlflow_run_id"})
_VOLATILE_DETAILS = frozenset({"seconds", "recording_error"})


def _stable(result: dict) -> dict:
    """A stored experiment result without its volatile keys (only at their known places: a factor
    named `seconds` inside the details is still compared)."""
    out = {k: v for k, v in result.items() if k not in _VOLATILE_RESULT}
    details = out.get("details")
    if isinstance(details, dict):
        details = {k: v for k, v in details.items() if k not in _VOLATILE_DETAILS}
        if isinstance(details.get("pipeline"), dict):  # a factor experiment's model run times itself too
            details["pipeline"] = {k: v for k, v in details["pipeline"].items() if k not in _VOLATILE_DETAILS}
        out["details"] = details
    return out


def _decisions(store: Store, run_id: str) -> dict:
    """(iteration, candidate) -> (verdict, metrics, reasons without the MLflow runs they cite)."""
    return {
        (d.iteration, d.candidate): (d.verdict, json.loads(d.metrics_json), uncited(json.loads(d.reasons_json)))
        for d in store.rows(DecisionRow, run_id)
    }


def _experiments(store: Store, run_id: str) -> dict:
    return {
        (e.iteration, e.candidate): (json.loads(e.spec_json), _stable(json.loads(e.result_json)))
        for e in store.rows(ExperimentRow, run_id)
    }


def _hypotheses(store: Store, run_id: str) -> dict:
    return {
        (h.iteration, h.direction): {
            "family": h.family,
            "text": h.text,
            "status": h.status,
            "feedback": h.feedback,
            "candidates": json.loads(h.candidates_json),
        }
        for h in store.rows(HypothesisRow, run_id)
    }


def _trials(store: Store, run_id: str) -> dict:
    return {
        (t.iteration, t.candidate, t.stage): {
            "expression": t.expression,
            "form": t.form,
            "fitness": t.fitness,
            "metrics": json.loads(t.metrics_json),
        }
        for t in store.rows(TrialRow, run_id)
    }


def _library(store: Store, run_id: str) -> dict:
    return {
        r.name: {
            "expression": r.expression,
            "iteration": r.iteration,
            "metrics": json.loads(r.metrics_json),
            "replaced_by": r.replaced_by if r.replaced_run == run_id else None,
        }  # not a later run's doing
        for r in store.library(include_replaced=True)
        if r.run_id == run_id or r.replaced_run == run_id
    }


def _calls(store: Store, run_id: str) -> dict:
    """Each LLM call by (iteration, node, attempt, order), its request hashed: the prompt the replay
    built must be the one the recorded run sent."""
    out, seen = {}, {}
    for c in store.rows(LLMCallRow, run_id):
        key = (c.iteration, c.node, c.attempt)
        seen[key] = seen.get(key, 0) + 1
        out[(*key, seen[key])] = {
            "request_sha256": hashlib.sha256(c.request_json.encode()).hexdigest(),
            "ok": c.ok,
            "model": c.model,
        }
    return out


def _best(store: Store, run_id: str) -> dict:
    run = store.run(run_id)
    return json.loads(run.best_json) if run is not None else {}


def _same(a, b, tolerance: float = 0.0) -> bool:
    """Equal leaves: NaN equals NaN; two floats within `tolerance` relative (or 1e-12 of it absolute,
    for values that round around 0) where a tolerance is given."""
    if a == b:
        return True
    if not (type(a) is float and type(b) is float):
        return False
    if math.isnan(a) and math.isnan(b):
        return True
    return (
        tolerance > 0 and math.isfinite(a) and math.isfinite(b) and abs(a - b) <= tolerance * max(abs(a), abs(b), 1e-3)
    )


def _diff_values(where: str, a, b, out: list[str], same: Callable = _same, path: str = "") -> None:
    """Every leaf that differs between two JSON-like values (see `_same`), named by its path."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                out.append(f"{where} {path}{key}: only in the {'replay' if key in b else 'original'}")
            else:
                _diff_values(where, a[key], b[key], out, same, f"{path}{key}.")
        return
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            _diff_values(where, x, y, out, same, f"{path}{i}.")
        return
    if not same(a, b):
        out.append(f"{where} {path.rstrip('.')}: stored {_short(a)}, replay {_short(b)}")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _diff_metrics(where: str, a: dict, b: dict, out: list[str], same: Callable = _same) -> int:
    n = 0
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        n += 1
        if not same(x, y):
            out.append(f"{where} {key}: stored {x!r}, replay {y!r}")
    return n
