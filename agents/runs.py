"""Read-side views of the project store for `rdquant runs list|show` (plain dicts, JSON-ready)."""

from __future__ import annotations

import json

from agents.store import DecisionRow, EdgeRow, HypothesisRow, LibraryFactorRow, RunRow, Store, TrialRow

__all__ = ["runs_overview", "run_summary"]


def runs_overview(store: Store) -> list[dict]:
    accepted: dict[str, int] = {}
    for row in store.library():
        accepted[row.run_id] = accepted.get(row.run_id, 0) + 1
    out = []
    for r in store.runs():
        best = json.loads(r.best_json)
        out.append({"run_id": r.id, "created": r.created, "status": r.status, "iterations": r.iterations_done,
                    "accepted": accepted.get(r.id, 0), "best_valid_rank_ic": best.get("metrics", {}).get("Rank IC"),
                    "tokens": r.tokens, "cost_usd": r.cost_usd, "data": json.loads(r.config_json)["loop"]["data"]})
    return out


def run_summary(store: Store, run_id: str) -> dict:
    """The run, its hypothesis graph (each hypothesis with its first parent edge), accepted factors with
    validation metrics, decisions per iteration and the best model (validation numbers only)."""
    run: RunRow = store.find_run(run_id)
    config = json.loads(run.config_json)
    edges = {}
    for e in store.rows(EdgeRow, run.id):
        edges.setdefault(e.source, (e.target, e.relation))
    hypotheses = []
    for h in store.rows(HypothesisRow, run.id):
        parent, relation = edges.get(h.id, (None, None))
        hypotheses.append({"id": h.id, "iteration": h.iteration, "direction": h.direction, "family": h.family,
                           "text": h.text, "status": h.status, "feedback": h.feedback, "parent": parent,
                           "relation": relation, "candidates": json.loads(h.candidates_json)})
    accepted = [{"name": f.name, "expression": f.expression, "iteration": f.iteration, "metrics": json.loads(f.metrics_json),
                 "replaced_by": f.replaced_by} for f in store.rows(LibraryFactorRow, run_id=run.id)]
    decisions = [{"iteration": d.iteration, "candidate": d.candidate, "verdict": d.verdict,
                  "reasons": json.loads(d.reasons_json)} for d in store.rows(DecisionRow, run.id)]
    best = {k: v for k, v in json.loads(run.best_json).items() if k != "daily_rank_ic"}
    return {"run_id": run.id, "status": run.status, "created": run.created, "iterations": run.iterations_done,
            "config": config["loop"], "segments": {k: v for k, v in config["segments"].items() if k != "test"},
            "tokens": run.tokens, "cost_usd": run.cost_usd, "cpu_seconds": run.cpu_seconds,
            "hypotheses": hypotheses, "accepted": accepted, "decisions": decisions, "best_model": best,
            "library_at_start": config.get("library_at_start", {}), "library": store.run_library(run.id)[0],
            "trials": trial_counts(store, run.id)}


def trial_counts(store: Store, run_id: str) -> dict:
    """How many factor candidates the run scored (screened, judged on validation) and how many the whole project
    has scored on the same market: the number of trials behind every discovery."""
    own = store.rows(TrialRow, run_id)
    markets = {t.market for t in own}
    project = [t for t in store.rows(TrialRow) if t.market in markets] if markets else []
    return {"screened": sum(t.stage == "screen" for t in own), "judged": sum(t.stage == "admission" for t in own),
            "project_market": len(project)}
