"""`rdquant report RUN_ID`: one self-contained HTML file about a run.

The sealed test segment is used here and only here. The final model (base features + the library the
run ends with + the best model settings) is first scored on validation as the loop scored every model
(`inner_folds`' fold 0), and that figure is stored; only then are the baseline (base features + the
default LightGBM) and the final model trained on train/valid and scored on test. Each opening of the
test is stored (`test_openings`: when, and the hash of the final spec it scored) with its figures
(`evaluations`), so a second report of the same run state reuses them; a run that changed since
(resumed, say) is refused unless `reopen` is given, and every reopening is counted in the report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import pandas as pd
from matplotlib.figure import Figure

from agents.config import loop_label, purge_days, stored_config
from agents.errors import ExperimentFailed, UserError
from agents.nodes import inner_folds
from agents.runs import HEADLINE, evaluation, run_state, run_summary, state_changes
from agents.store import EvaluationRow, OpeningRow, Store, dumps
from quantcore.data.sources import load_market
from quantcore.report.html import FigureSection, MetricsSection, TableSection, TextSection, write_html_report
from sandbox.limits import Limits
from sandbox.local import LocalExecutor
from sandbox.market import market_roots
from sandbox.spec import spec_hash

__all__ = ["build_report", "sealed_test", "SealedTestChanged"]


class SealedTestChanged(UserError, RuntimeError):
    """The run changed since its sealed test was opened: the stored test figures are for another state."""


def sealed_test(
    store: Store,
    root: str | Path,
    run_id: str,
    *,
    reopen: bool = False,
    workers: int = 2,
    log: Callable[[str], None] = lambda m: None,
) -> dict:
    """The run's report figures (`agents.runs.evaluation`). Reused when the test was already opened for
    the run's current state; otherwise the final model is scored on validation and stored, then the test
    is opened and the opening recorded. Raises SealedTestChanged if the run changed since the last
    opening and `reopen` is not set."""
    run = store.find_run(run_id)
    raw = json.loads(run.config_json)
    config = stored_config(raw["loop"])
    state = run_state(store, run.id)
    best = state["best_model"]
    segments = {k: list(v) for k, v in raw["segments"].items()}
    base = {
        "kind": "model",
        "market": config.data,
        "features": config.base_features,
        "seed": config.seed,
        "label": loop_label(config),
    }
    specs = {
        "baseline": {**base, "family": "lightgbm", "segments": segments},
        "final": {
            **base,
            "extra_features": state["library"],
            "family": best["family"],
            "params": best["params"],
            "feature_norm": best["feature_norm"],
            "segments": segments,
        },
    }
    final_hash = spec_hash(specs["final"])
    seen = evaluation(store, run.id)
    reason = "first report"
    if seen["openings"]:
        last = seen["openings"][-1]
        changes = state_changes(last["state"], state) if last["state"] is not None else None
        if not reopen:
            if last["final_hash"] in (None, final_hash) and seen["test"] is not None:
                return seen  # the same state (or one a report before openings were recorded scored): no new look
            when = f"on {last['opened']}" if last["opened"] else "by an earlier report"
            raise SealedTestChanged(
                f"run {run.id} changed since its sealed test was opened {when} "
                f"({'; '.join(changes) if changes else 'the final model spec differs'}): the stored test figures "
                f"are for the earlier state, and scoring this one is another look at the test segment. To do it "
                f"anyway, run `rdquant report {run.id} --reopen`; the report will say the test was opened "
                f"{seen['times_opened'] + 1} times."
            )
        reason = "--reopen: " + (
            "the earlier opening's state was not recorded"
            if changes is None
            else "; ".join(changes) or "the run is unchanged"
        )
    number = seen["times_opened"] + 1

    # the final combination on validation, as the loop scored every model: fit on train's first 80%,
    # early-stop on the rest, score the validation segment (test untouched)
    horizon, embargo = purge_days(config)
    fold = inner_folds(
        {k: tuple(v) for k, v in raw["segments"].items()}, load_market(config.data), 1, horizon=horizon, embargo=embargo
    )[0]
    valid_spec = {**specs["final"], "segments": {k: list(v) for k, v in fold.items()}}
    limits = Limits(wall_seconds=1800, cpu_seconds=3600 * workers)
    with LocalExecutor(
        workers=workers, root=Path(root) / "sandbox", limits=limits, market_roots=market_roots(config.data)
    ) as ex:
        log(f"scoring the final model on the validation segment {fold['test'][0]} .. {fold['test'][1]}")
        [r] = ex.run_many([valid_spec])
        if not r.ok:
            raise ExperimentFailed(
                f"the final model failed on validation (the sealed test stays closed): {r.failure.for_llm()}"
            )
        with store.session() as db:
            db.add(
                EvaluationRow(
                    run_id=run.id,
                    name="final.valid",
                    opening=number,
                    metrics_json=dumps(r.metrics),
                    detail_json=dumps(
                        {"segments": fold, "final_hash": final_hash, "n_features_extra": len(state["library"])}
                    ),
                )
            )
        log(f"opening the sealed test segment {segments['test'][0]} .. {segments['test'][1]} (opening {number})")
        results = dict(zip(specs, ex.run_many(list(specs.values()))))
    for name, r in results.items():
        if not r.ok:
            raise ExperimentFailed(f"the {name} model failed on the test segment: {r.failure.for_llm()}")
    with store.session() as db:  # the opening and its figures together: a failed opening leaves no record of one
        db.add(OpeningRow(run_id=run.id, number=number, final_hash=final_hash, state_json=dumps(state), reason=reason))
        for name, r in results.items():
            detail = {
                "report_path": str(Path(r.artifacts["mlflow_capture"]) / "artifacts" / "report.parquet"),
                "n_features_extra": len(state["library"]) if name == "final" else 0,
            }
            db.add(
                EvaluationRow(
                    run_id=run.id, name=name, opening=number, metrics_json=dumps(r.metrics), detail_json=dumps(detail)
                )
            )
    return evaluation(store, run.id)


def build_report(
    store: Store,
    root: str | Path,
    run_id: str,
    *,
    out: Path | None = None,
    reopen: bool = False,
    workers: int = 2,
    log: Callable[[str], None] = lambda m: None,
) -> tuple[Path, dict]:
    """Write the run's HTML report; returns its path and the headline figures
    {"final.valid" | "baseline" | "final": {metric: value}, "times_opened": n}."""
    run_id = store.find_run(run_id).id
    figures = sealed_test(store, root, run_id, reopen=reopen, workers=workers, log=log)
    summary = run_summary(store, run_id)
    columns = {
        "final.valid": figures["valid"] or {},
        "baseline": figures["test"]["baseline"],
        "final": figures["test"]["final"],
    }
    headline = {k: {m: float(v.get(m, math.nan)) for m in HEADLINE} for k, v in columns.items()}
    n = figures["times_opened"]
    held = summary["discovery_cost"]["accepted"]
    sections = [
        MetricsSection(
            "Run",
            {
                "run": summary["run_id"],
                "status": summary["status"],
                "iterations": summary["iterations"],
                "data": summary["config"]["data"],
                "backend": summary["config"]["backend"],
                "factors accepted (refined out later in the run)": f"{len(summary['accepted'])} ({len(summary['accepted']) - held})",
                "trials (screened / judged on validation)": f"{summary['trials']['screened']:,} / {summary['trials']['judged']:,}",
                "trials on this market, whole project": f"{summary['trials']['project_market']:,}",
                "tokens": f"{summary['tokens']:,}",
                "cost": _dollars(summary["cost_usd"]),
                "CPU seconds": f"{summary['cpu_seconds']:,.1f}",
                "sealed test": _openings_line(figures),
            },
        ),
        TableSection(
            f"Final model on validation, then on the sealed test segment (test opened {_times(n)}) "
            "vs the Alpha158 + LightGBM baseline",
            _headline_frame(headline),
        ),
    ]
    if n > 1 or figures["openings"][-1]["opened"] is None:
        sections.append(
            TableSection(
                f"Openings of the sealed test ({_times(n)})",
                pd.DataFrame(
                    [
                        {
                            "opening": o["number"],
                            "opened": _when(o["opened"]),
                            "final spec": (o["final_hash"] or "not recorded")[:12],
                            "why": o["reason"],
                        }
                        for o in figures["openings"]
                    ]
                ).set_index("opening"),
            )
        )
    fig = _cumulative_figure(figures["test"])
    if fig is not None:
        sections.append(FigureSection.of("Cumulative excess return with cost (test segment)", fig))
    fig = _ic_over_iterations(summary)
    if fig is not None:
        sections.append(FigureSection.of("Validation RankIC of accepted factors by iteration", fig))
    if summary["accepted"]:
        sections.append(
            TableSection(
                "Accepted factors (validation metrics)",
                pd.DataFrame(
                    [
                        {
                            "name": f["name"],
                            "iteration": f["iteration"],
                            "expression": f["expression"],
                            **{k: _number(f["metrics"].get(k)) for k in ("rank_ic", "rank_icir", "ic", "icir")},
                        }
                        for f in summary["accepted"]
                    ]
                ).set_index("name"),
            )
        )
    sections.append(TextSection("Hypothesis graph", _graph_text(summary)))
    cost = summary["discovery_cost"]
    title = (
        f"Cost per accepted factor ({held} held by the run)"
        if held
        else "Cost of the run (it holds no accepted factor, so there is no cost per factor)"
    )
    sections.append(TableSection(title, _cost_frame(cost)))
    path = out or Path(root) / "reports" / f"{summary['run_id']}.html"
    write_html_report(path, sections, title=f"rdquant run {summary['run_id']}")
    return path, {**headline, "times_opened": n}


def _times(n: int) -> str:
    return f"{n} time" if n == 1 else f"{n} times"


def _when(iso: str | None) -> str:
    return "not recorded" if iso is None else f"{iso[:16].replace('T', ' ')} UTC"  # stored as UTC ISO seconds


def _openings_line(figures: dict) -> str:
    when = _when(figures["openings"][-1]["opened"])
    line = f"opened {_times(figures['times_opened'])}; last {when}"
    if figures["changed"]:
        line += f" (the run changed since: {'; '.join(figures['changed'])})"
    return line


def _metric_text(metric: str, value: float) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:+.2%}" if metric.startswith(("ARR", "MDD")) else f"{value:+.4f}"


def _headline_frame(headline: dict[str, dict[str, float]]) -> pd.DataFrame:
    names = {"final.valid": "final (validation)", "baseline": "baseline (test)", "final": "final (test)"}
    return pd.DataFrame(
        {names[k]: {m: _metric_text(m, v) for m, v in cols.items()} for k, cols in headline.items()}
    ).rename_axis("metric")


def _number(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:+.4f}"


def _dollars(value: float) -> str:
    return f"${value:,.2f}" if abs(value) >= 1 else f"${value:.4f}"  # LLM runs cost cents


COST_ROWS = {  # discovery_cost key -> (row label, format of the run total, format of a per-factor share)
    "tokens": ("tokens", "{:,}".format, "{:,.0f}".format),
    "cost_usd": ("cost", _dollars, _dollars),
    "cpu_seconds": ("CPU seconds", "{:,.1f}".format, "{:,.1f}".format),
    "wall_seconds": ("wall seconds", "{:,.1f}".format, "{:,.1f}".format),
    "trials_screened": ("trials screened", "{:,}".format, "{:,.1f}".format),
    "trials_judged": ("trials judged on validation", "{:,}".format, "{:,.1f}".format),
}


def _cost_frame(cost: dict) -> pd.DataFrame:
    """The run's totals and, when it holds accepted factors, the totals divided by their number."""
    frame = {"run total": {label: total(cost["totals"][k]) for k, (label, total, _) in COST_ROWS.items()}}
    if cost["per_factor"] is not None:
        frame["per accepted factor"] = {label: per(cost["per_factor"][k]) for k, (label, _, per) in COST_ROWS.items()}
    return pd.DataFrame(frame)


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
    fig = Figure(figsize=(9, 3.6))  # no pyplot: no global figure state, no backend to pick
    ax = fig.subplots()
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
    fig = Figure(figsize=(9, 3.2))
    ax = fig.subplots()
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
            lines.append(
                f"{'  ' * indent}- #{h['iteration']} {h['direction']}/{h['family']} ({h['status']}){rel}: {h['text']}"
            )
            walk(h["id"], indent + 1)

    walk(None, 0)
    return "\n".join(lines) or "(no hypotheses)"
