"""`rdquant report RUN_ID`: one self-contained HTML file about a run.

The sealed test segment is used here and only here: the baseline (base features + the default
LightGBM) and the final model (base features + the library the run ends with + the best model
settings) are trained on train/valid and scored once on test; the numbers are stored
(`evaluations` table) so a second report reuses them instead of peeking again."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from agents.config import stored_config  # noqa: E402
from agents.runs import run_summary  # noqa: E402
from agents.store import EvaluationRow, IterationRow, Store, dumps  # noqa: E402
from quantcore.report.html import FigureSection, MetricsSection, TableSection, TextSection, write_html_report  # noqa: E402
from sandbox.limits import Limits  # noqa: E402
from sandbox.local import LocalExecutor  # noqa: E402

__all__ = ["build_report", "sealed_test"]

HEADLINE = ("IC", "Rank IC", "ICIR", "ARR.with_cost", "IR.with_cost", "MDD.with_cost", "ARR.without_cost")


def sealed_test(store: Store, root: str | Path, run_id: str, *, workers: int = 2,
                log: Callable[[str], None] = lambda m: None) -> dict[str, dict]:
    """{"baseline": {...}, "final": {...}} test-segment metrics (+ the daily report path), computed once."""
    run = store.find_run(run_id)
    stored = {r.name: r for r in store.rows(EvaluationRow, run.id)}
    if {"baseline", "final"} <= set(stored):
        return {k: {**json.loads(v.metrics_json), **json.loads(v.detail_json)} for k, v in stored.items()}
    raw = json.loads(run.config_json)
    config = stored_config(raw["loop"])
    summary = run_summary(store, run.id)
    library, _ = store.run_library(run.id)
    best = summary["best_model"]
    segments = {k: list(v) for k, v in raw["segments"].items()}
    specs = {
        "baseline": {"kind": "model", "market": config.data, "features": config.base_features, "family": "lightgbm",
                     "segments": segments, "seed": config.seed},
        "final": {"kind": "model", "market": config.data, "features": config.base_features, "extra_features": library,
                  "family": best.get("family") or "lightgbm", "params": best.get("params", {}),
                  "feature_norm": best.get("feature_norm", "none"), "segments": segments,
                  "seed": config.seed},
    }
    log(f"evaluating baseline and final model on the sealed test segment {segments['test'][0]} .. {segments['test'][1]}")
    limits = Limits(wall_seconds=1800, cpu_seconds=3600 * workers)
    with LocalExecutor(workers=workers, root=Path(root) / "sandbox", limits=limits) as ex:
        results = dict(zip(specs, ex.run_many(list(specs.values()))))
    out = {}
    with store.session() as db:
        for name, r in results.items():
            if not r.ok:
                raise RuntimeError(f"the {name} model failed on the test segment: {r.failure.for_llm()}")
            detail = {"report_path": str(Path(r.artifacts["mlflow_capture"]) / "artifacts" / "report.parquet"),
                      "n_features_extra": len(library) if name == "final" else 0}
            db.add(EvaluationRow(run_id=run.id, name=name, metrics_json=dumps(r.metrics), detail_json=dumps(detail)))
            out[name] = {**r.metrics, **detail}
    return out


def build_report(store: Store, root: str | Path, run_id: str, *, out: Path | None = None, workers: int = 2,
                 log: Callable[[str], None] = lambda m: None) -> tuple[Path, dict]:
    summary = run_summary(store, run_id)
    test = sealed_test(store, root, summary["run_id"], workers=workers, log=log)
    headline = {k: {m: float(test[k].get(m, math.nan)) for m in HEADLINE} for k in ("baseline", "final")}
    sections = [
        MetricsSection("Run", {"run": summary["run_id"], "status": summary["status"], "iterations": summary["iterations"],
                               "data": summary["config"]["data"], "backend": summary["config"]["backend"],
                               "factors accepted (refined out later in the run)":
                                   f"{len(summary['accepted'])} "
                                   f"({sum(1 for f in summary['accepted'] if f['name'] not in summary['library'])})",
                               "trials (screened / judged on validation)":
                                   f"{summary['trials']['screened']} / {summary['trials']['judged']}",
                               "trials on this market, whole project": summary["trials"]["project_market"],
                               "tokens": summary["tokens"],
                               "cost ($)": summary["cost_usd"], "CPU seconds": round(summary["cpu_seconds"], 1)}),
        TableSection("Sealed test segment: final model vs the Alpha158 + LightGBM baseline",
                     pd.DataFrame(headline).rename_axis("metric")),
    ]
    fig = _cumulative_figure(test)
    if fig is not None:
        sections.append(FigureSection.of("Cumulative excess return with cost (test segment)", fig))
    fig = _ic_over_iterations(summary)
    if fig is not None:
        sections.append(FigureSection.of("Validation RankIC of accepted factors by iteration", fig))
    if summary["accepted"]:
        sections.append(TableSection("Accepted factors (validation metrics)", pd.DataFrame([
            {"name": f["name"], "iteration": f["iteration"], "expression": f["expression"],
             **{k: f["metrics"].get(k) for k in ("rank_ic", "rank_icir", "ic", "icir")}} for f in summary["accepted"]
        ]).set_index("name")))
    sections.append(TextSection("Hypothesis graph", _graph_text(summary)))
    sections.append(TableSection("Cost per accepted factor", _cost_table(store, summary)))
    path = out or Path(root) / "reports" / f"{summary['run_id']}.html"
    write_html_report(path, sections, title=f"rdquant run {summary['run_id']}")
    plt.close("all")
    return path, headline


def _excess_with_cost(report_path: str) -> pd.Series | None:
    try:
        rep = pd.read_parquet(report_path)
    except (OSError, ValueError):
        return None
    return (rep["return"] - rep["bench"] - rep["cost"]).cumsum()


def _cumulative_figure(test: dict):
    series = {k: _excess_with_cost(test[k].get("report_path", "")) for k in ("baseline", "final")}
    if any(v is None for v in series.values()):
        return None
    fig, ax = plt.subplots(figsize=(9, 3.6))
    for name, s in series.items():
        ax.plot(pd.to_datetime(s.index), s.values, label=name)
    ax.axhline(0, color="#999", lw=0.8)
    ax.set_ylabel("cumulative excess return (with cost)")
    ax.legend()
    fig.tight_layout()
    return fig


def _ic_over_iterations(summary: dict):
    if not summary["accepted"]:
        return None
    fig, ax = plt.subplots(figsize=(9, 3.2))
    xs = [f["iteration"] for f in summary["accepted"]]
    ys = [f["metrics"].get("rank_ic", math.nan) for f in summary["accepted"]]
    ax.scatter(xs, ys)
    for x, y, f in zip(xs, ys, summary["accepted"]):
        ax.annotate(f["name"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(0, color="#999", lw=0.8)
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation RankIC")
    fig.tight_layout()
    return fig


def _graph_text(summary: dict) -> str:
    children: dict = {}
    for h in summary["hypotheses"]:
        children.setdefault(h["parent"], []).append(h)

    lines: list[str] = []

    def walk(parent, indent: int) -> None:
        for h in children.get(parent, []):
            rel = f" [{h['relation']}]" if h["relation"] else ""
            lines.append(f"{'  ' * indent}- #{h['iteration']} {h['direction']}/{h['family']} ({h['status']}){rel}: {h['text']}")
            walk(h["id"], indent + 1)

    walk(None, 0)
    return "\n".join(lines) or "(no hypotheses)"


def _cost_table(store: Store, summary: dict) -> pd.DataFrame:
    iterations = {r.number: r for r in store.rows(IterationRow, summary["run_id"])}
    n = max(len(summary["accepted"]), 1)
    total = {"tokens": summary["tokens"], "cost ($)": summary["cost_usd"], "CPU seconds": summary["cpu_seconds"],
             "wall seconds": sum(r.seconds for r in iterations.values())}
    per = {k: v / n for k, v in total.items()}
    return pd.DataFrame({"run total": total, "per accepted factor": per}).round(4)
