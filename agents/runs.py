"""Read-side views of the project store for `rdquant runs list|show` (plain dicts, JSON-ready)."""

from __future__ import annotations

import json

from agents.store import (
    DecisionRow,
    EdgeRow,
    EvaluationRow,
    HypothesisRow,
    IterationRow,
    LibraryFactorRow,
    OpeningRow,
    RunRow,
    Store,
    TrialRow,
)

__all__ = [
    "runs_overview",
    "run_summary",
    "trial_counts",
    "discovery_cost",
    "run_state",
    "state_changes",
    "evaluation",
    "HEADLINE",
]

#: The metrics the report and `runs show` put side by side: final model on validation, baseline and final on test.
HEADLINE = ("IC", "Rank IC", "ICIR", "ARR.with_cost", "IR.with_cost", "MDD.with_cost", "ARR.without_cost")


def runs_overview(store: Store) -> list[dict]:
    accepted: dict[str, int] = {}
    for row in store.library():
        accepted[row.run_id] = accepted.get(row.run_id, 0) + 1
    out = []
    for r in store.runs():
        best = json.loads(r.best_json)
        out.append(
            {
                "run_id": r.id,
                "created": r.created,
                "status": r.status,
                "iterations": r.iterations_done,
                "accepted": accepted.get(r.id, 0),
                "best_valid_rank_ic": best.get("metrics", {}).get("Rank IC"),
                "tokens": r.tokens,
                "cost_usd": r.cost_usd,
                "data": json.loads(r.config_json)["loop"]["data"],
            }
        )
    return out


def run_summary(store: Store, run_id: str) -> dict:
    """The run, its hypothesis graph (each hypothesis with its first parent edge), accepted factors with
    validation metrics, decisions per iteration, the best model (validation numbers), what each accepted
    factor cost, and the figures `rdquant report` stored (read here, never computed)."""
    run: RunRow = store.find_run(run_id)
    config = json.loads(run.config_json)
    edges = {}
    for e in store.rows(EdgeRow, run.id):
        edges.setdefault(e.source, (e.target, e.relation))
    hypotheses = []
    for h in store.rows(HypothesisRow, run.id):
        parent, relation = edges.get(h.id, (None, None))
        hypotheses.append(
            {
                "id": h.id,
                "iteration": h.iteration,
                "direction": h.direction,
                "family": h.family,
                "text": h.text,
                "status": h.status,
                "feedback": h.feedback,
                "parent": parent,
                "relation": relation,
                "candidates": json.loads(h.candidates_json),
            }
        )
    accepted = [
        {
            "name": f.name,
            "expression": f.expression,
            "iteration": f.iteration,
            "metrics": json.loads(f.metrics_json),
            "replaced_by": f.replaced_by,
        }
        for f in store.rows(LibraryFactorRow, run_id=run.id)
    ]
    decisions = [
        {
            "iteration": d.iteration,
            "candidate": d.candidate,
            "verdict": d.verdict,
            "reasons": json.loads(d.reasons_json),
        }
        for d in store.rows(DecisionRow, run.id)
    ]
    best = {k: v for k, v in json.loads(run.best_json).items() if k != "daily_rank_ic"}
    return {
        "run_id": run.id,
        "status": run.status,
        "created": run.created,
        "iterations": run.iterations_done,
        "config": config["loop"],
        "segments": {k: v for k, v in config["segments"].items() if k != "test"},
        "tokens": run.tokens,
        "cost_usd": run.cost_usd,
        "cpu_seconds": run.cpu_seconds,
        "hypotheses": hypotheses,
        "accepted": accepted,
        "decisions": decisions,
        "best_model": best,
        "library_at_start": config.get("library_at_start", {}),
        "library": store.run_library(run.id)[0],
        "trials": trial_counts(store, run.id),
        "discovery_cost": discovery_cost(store, run.id),
        "evaluation": evaluation(store, run.id),
    }


def trial_counts(store: Store, run_id: str) -> dict:
    """How many factor candidates the run scored (screened, judged on validation) and how many the whole project
    has scored on the same market: the number of trials behind every discovery."""
    own = store.rows(TrialRow, run_id)
    markets = {t.market for t in own}
    project = [t for t in store.rows(TrialRow) if t.market in markets] if markets else []
    return {
        "screened": sum(t.stage == "screen" for t in own),
        "judged": sum(t.stage == "admission" for t in own),
        "project_market": len(project),
    }


def discovery_cost(store: Store, run_id: str) -> dict:
    """What the run spent (tokens, dollars, CPU and wall seconds, trials) in total and per accepted factor
    it still holds (`Store.run_library`); `per_factor` is None when it holds none."""
    run: RunRow = store.find_run(run_id)
    _, held = store.run_library(run.id)
    trials = trial_counts(store, run.id)
    totals = {
        "tokens": run.tokens,
        "cost_usd": run.cost_usd,
        "cpu_seconds": run.cpu_seconds,
        "wall_seconds": sum(r.seconds for r in store.rows(IterationRow, run.id)),
        "trials_screened": trials["screened"],
        "trials_judged": trials["judged"],
    }
    n = len(held)
    return {
        "accepted": n,
        "factors": sorted(held),
        "totals": totals,
        "per_factor": {k: v / n for k, v in totals.items()} if n else None,
    }


def run_state(store: Store, run_id: str) -> dict:
    """What a sealed-test opening scores besides the run's fixed settings: the library the run left and
    its best model's settings."""
    run: RunRow = store.find_run(run_id)
    best = json.loads(run.best_json)
    return {
        "library": store.run_library(run.id)[0],
        "best_model": {
            "name": best.get("name"),
            "family": best.get("family") or "lightgbm",
            "params": best.get("params", {}),
            "feature_norm": best.get("feature_norm", "none"),
        },
    }


def state_changes(before: dict, after: dict) -> list[str]:
    """How the run state `after` differs from `before` (both from `run_state`), one phrase per change."""
    old, new = before.get("library", {}), after.get("library", {})
    out = [
        f"library factor {name} {what}"
        for name, what in sorted(
            [(n, "added") for n in new.keys() - old.keys()]
            + [(n, "removed") for n in old.keys() - new.keys()]
            + [(n, "changed") for n in old.keys() & new.keys() if old[n] != new[n]]
        )
    ]
    a, b = before.get("best_model", {}), after.get("best_model", {})
    if a != b:
        out.append(
            f"best model {a.get('name')} ({a.get('family')}) -> {b.get('name')} ({b.get('family')})"
            if a.get("name") != b.get("name")
            else f"best model {b.get('name')}'s settings changed"
        )
    return out


def evaluation(store: Store, run_id: str) -> dict:
    """The figures `rdquant report` stored for the run: each opening of the sealed test (a report older
    than the openings table counts as one opening of unknown state), the latest opening's test figures
    (`test`: baseline and final), the final model's validation figure scored before it (`valid`), and
    how the run changed since that opening (`changed`; None where the opening's state is unknown)."""
    run: RunRow = store.find_run(run_id)
    rows = store.rows(EvaluationRow, run.id)
    openings = [
        {
            "number": o.number,
            "opened": o.opened,
            "final_hash": o.final_hash,
            "reason": o.reason,
            "state": json.loads(o.state_json),
        }
        for o in store.rows(OpeningRow, run.id)
    ]
    if any(r.opening is None for r in rows):
        openings.insert(
            0,
            {
                "number": 1,
                "opened": None,
                "final_hash": None,
                "state": None,
                "reason": "opened by a report that did not record its openings",
            },
        )
    latest = openings[-1]["number"] if openings else None
    figures: dict[int, dict[str, dict]] = {}
    for r in rows:  # in id order: a later row of the same name and opening wins
        figures.setdefault(r.opening or 1, {})[r.name] = {**json.loads(r.metrics_json), **json.loads(r.detail_json)}
    mine = figures.get(latest, {}) if openings else next(reversed(figures.values()), {})
    test = {k: mine[k] for k in ("baseline", "final") if k in mine}
    state = openings[-1]["state"] if openings else None
    return {
        "times_opened": len(openings),
        "openings": openings,
        "test": test or None,
        "valid": mine.get("final.valid"),
        "changed": None if state is None else state_changes(state, run_state(store, run.id)),
    }
