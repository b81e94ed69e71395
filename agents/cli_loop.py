"""`rdquant loop`, `rdquant runs list|show`, `rdquant replay`, `rdquant report`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional, get_args

import typer
from pydantic import ValidationError
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from agents.config import LoopConfig
from agents.contracts import CoderOutput, Hypothesis, Review
from agents.errors import fail, user_errors

# agents.loop (LangGraph, the sandbox) and agents.runs (SQLModel) load inside the commands that use
# them: `rdquant --help` and the quant-core commands start without them.

__all__ = ["loop_command", "runs_app", "replay_command", "report_command"]

console = Console()
DEFAULT_ROOT = Path("runs")


@user_errors
def loop_command(
    budget: Optional[int] = typer.Option(
        None, "--budget", min=1, help="Iterations to run (default 5; on --resume, the run's own)."
    ),
    offline: bool = typer.Option(
        True, "--offline/--llm", help="Offline back-end (default) or an OpenAI-compatible LLM."
    ),
    model: str = typer.Option("gpt-4o-mini", "--model", envvar="RDQUANT_MODEL", help="LLM model name."),
    fallback_offline: bool = typer.Option(False, "--fallback-offline", help="On LLM failure, fall back to offline."),
    workers: int = typer.Option(
        2,
        "--workers",
        min=1,
        help="Experiments run at once: local worker processes, or Ray actors (on a cluster, e.g. its CPU count).",
    ),
    executor: Optional[str] = typer.Option(
        None,
        "--executor",
        metavar="local|ray",
        help="Where experiments run: local processes (default) or Ray "
        "(RAY_ADDRESS's cluster, else a local runtime); same results. "
        "On --resume, the run's own unless given.",
    ),
    data: str = typer.Option("sp500", "--data", help="sp500 | synthetic[:N:T:SEED] | qlib dir | bars file."),
    seed: int = typer.Option(0, "--seed"),
    review: bool = typer.Option(False, "--review", help="Approve, edit or reject each batch before it runs."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue this run id."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", min=1, help="Token budget for the run."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", min=0.1, help="Time budget in minutes."),
    candidates: int = typer.Option(
        4, "--candidates", min=1, max=16, help="Factor candidates sent to admission (validation) per iteration."
    ),
    screen: int = typer.Option(
        64,
        "--screen",
        min=0,
        max=1024,
        help="Offline search: candidates screened per worker each factor iteration "
        "(training-segment RankIC and originality); the strongest go to admission. "
        "0: no screening.",
    ),
    model_folds: int = typer.Option(
        2, "--model-folds", min=1, max=4, help="Walk-forward validation blocks each model candidate is scored on."
    ),
    embargo: int = typer.Option(
        5,
        "--embargo",
        min=0,
        help="Trading days dropped on top of the label's 2-day horizon at every segment "
        "and fold boundary: train, valid and each fold's fit and early-stop ranges "
        "end horizon + embargo days before what follows (against leaks through "
        "autocorrelated features). On --resume, the run's own (its segments are "
        "stored).",
    ),
    label: Optional[str] = typer.Option(
        None,
        "--label",
        help="Label expression factors and models predict (default: the next "
        "day's return, Ref($close, -2)/Ref($close, -1) - 1).",
    ),
    fdr_q: float = typer.Option(
        0.05,
        "--fdr-q",
        min=0.0001,
        max=0.5,
        help="False discovery rate controlled across every admission trial of the project on the market.",
    ),
    fdr_method: str = typer.Option(
        "by",
        "--fdr-method",
        metavar="by|bh",
        help="Benjamini-Yekutieli (any dependence) or Benjamini-Hochberg (independent or positively dependent tests).",
    ),
    residual_components: int = typer.Option(
        10,
        "--residual-components",
        min=0,
        max=64,
        help="Base-feature principal components a factor's residual RankIC "
        "(its admission statistic) is taken after, with the library; "
        "0: raw RankIC.",
    ),
    model_alpha: float = typer.Option(
        0.05,
        "--model-alpha",
        min=0.0001,
        max=0.5,
        help="The run's false model-replacement rate, split over its model comparisons.",
    ),
    root: Path = typer.Option(DEFAULT_ROOT, "--root", help="Project folder (store, sandbox, MLflow)."),
) -> None:
    """Mine factors and tune models unattended within a budget; prints the run id on its last line."""
    from agents.loop import resume_run, start_run

    kinds = get_args(LoopConfig.model_fields["executor"].annotation)
    if executor is not None and executor not in kinds:
        fail(f"unknown --executor {executor!r}: use one of {', '.join(kinds)}")
    if fdr_method not in ("by", "bh"):
        fail(f"unknown --fdr-method {fdr_method!r}: use by or bh")
    display = _Display(budget or 5)
    reviewer = _prompt_review if review else None
    if not resume:
        try:
            config = LoopConfig(
                budget=budget or 5,
                backend="offline" if offline else "llm",
                model=model,
                fallback_offline=fallback_offline,
                workers=workers,
                executor=executor or "local",
                data=data,
                seed=seed,
                review=review,
                max_tokens=max_tokens,
                max_minutes=max_minutes,
                n_factor_candidates=candidates,
                model_folds=model_folds,
                screen_per_worker=screen,
                embargo_days=embargo,
                fdr_q=fdr_q,
                fdr_method=fdr_method,
                residual_components=residual_components,
                model_alpha=model_alpha,
                label=label,
            )
        except ValidationError as e:  # the options as given: the user's to fix
            fail(" ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()))
    with display:  # an unknown run or market, a bad label, Ray missing: `user_errors`; anything else is our bug
        if resume:
            run_id = resume_run(
                resume, root, reviewer=reviewer, on_event=display.event, budget=budget, executor_kind=executor
            )
        else:
            run_id = start_run(config, root, reviewer=reviewer, on_event=display.event)
    print(f"\n{run_id}")  # the run id alone on the last line (for scripts)


class _Display:
    """The live panel: iteration, hypothesis, best valid IC, accepted factors, tokens/cost, elapsed, ETA,
    executor. It appears with the run's first event, once the run is stored and its executor connected,
    so a refused start prints its error alone."""

    def __init__(self, budget: int):
        self.budget, self.start, self.live = budget, time.monotonic(), None
        self.state = {
            "iteration": 0,
            "direction": "-",
            "hypothesis": "baseline model",
            "best_ic": None,
            "library": 0,
            "tokens": 0,
            "cost": 0.0,
            "done": 0,
            "executor": "-",
        }
        self.log: list[str] = []

    def __enter__(self) -> "_Display":
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.stop()

    def event(self, kind: str, data: dict) -> None:
        st = self.state
        if kind == "start":
            st["executor"] = f"{data['executor']}, {data['workers']} workers"
        elif kind == "direction":
            st["iteration"], st["direction"] = data["iteration"], data["direction"]
        elif kind == "hypothesis":
            st["hypothesis"] = data["text"]
        elif kind == "best":
            st["best_ic"] = data["metrics"].get("Rank IC")
        elif kind == "iteration":
            st["done"] = data["iteration"]
            st["library"], st["tokens"], st["cost"] = data["library"], data["tokens"], data["cost_usd"]
            st["best_ic"] = data["best"].get("Rank IC", st["best_ic"])
            if data["direction"] == "model":  # a model is not accepted: it replaces the best, or not
                what = f"new best model {data['new_best']}" if data.get("new_best") else "best model kept"
            else:
                what = f"accepted {', '.join(data['accepted']) or 'none'}"
            self.log.append(
                f"#{data['iteration']} {data['direction']}: {what}; {data['analysis']} ({data['seconds']:.1f}s)"
            )
        elif kind == "done":
            self.log.append(f"done: {data['reason']}")
        if self.live is None:
            self.live = Live(self.render(), console=console, refresh_per_second=4, transient=False)
            self.live.start()
        else:
            self.live.update(self.render())

    def render(self):
        st = self.state
        elapsed = time.monotonic() - self.start
        eta = elapsed / st["done"] * (self.budget - st["done"]) if st["done"] else None
        t = Table.grid(padding=(0, 2))
        t.add_row("iteration", f"{st['iteration']}/{self.budget} ({st['direction']})")
        t.add_row("hypothesis", st["hypothesis"][:110])
        t.add_row("best valid RankIC", "-" if st["best_ic"] is None else f"{st['best_ic']:.4f}")
        t.add_row("accepted factors", str(st["library"]))
        t.add_row("tokens / cost", f"{st['tokens']} / ${st['cost']:.4f}")
        t.add_row("elapsed / ETA", f"{elapsed:.0f}s / " + ("-" if eta is None else f"{eta:.0f}s"))
        t.add_row("executor", st["executor"])
        return Group(t, *self.log[-6:])


def _prompt_review(hypothesis: Hypothesis, coded: CoderOutput, validate) -> Review:
    """typer prompts: approve, edit (with validation), reject with a reason, or stop."""
    console.print(f"\n[bold]Hypothesis[/] ({hypothesis.direction}): {hypothesis.text}")
    for c in coded.coded:
        console.print(f"  {c.name}: {c.expression or json.dumps(c.params)}")
    action = typer.prompt("approve, edit, reject or stop", default="approve").strip().lower()
    while action not in ("approve", "edit", "reject", "stop", "a", "e", "r", "s"):
        action = typer.prompt("please answer approve, edit, reject or stop").strip().lower()
    action = {"a": "approve", "e": "edit", "r": "reject", "s": "stop"}.get(action, action)
    if action == "edit":
        edits = {}
        for c in coded.coded:
            if c.expression is None:
                continue
            while True:
                new = typer.prompt(f"{c.name} (enter keeps it)", default=c.expression).strip()
                if new == c.expression:
                    break
                problem = validate(new)
                if problem is None:
                    edits[c.name] = new
                    break
                console.print(f"[red]invalid:[/] {problem}")
        return Review(action="edit", edits=edits)
    if action in ("reject", "stop"):
        return Review(action=action, reason=typer.prompt("reason", default="").strip())
    return Review(action="approve")


# ---- runs ---------------------------------------------------------------------------------------------

runs_app = typer.Typer(help="List and inspect research runs.", no_args_is_help=True)


@runs_app.command("list")
@user_errors
def runs_list(root: Path = typer.Option(DEFAULT_ROOT, "--root"), as_json: bool = typer.Option(False, "--json")) -> None:
    """Every run of the project, oldest first."""
    from agents.loop import open_project
    from agents.runs import runs_overview

    rows = runs_overview(open_project(root))
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("run", "created", "status", "iterations", "accepted", "best valid RankIC", "tokens", "cost $")
    for r in rows:
        table.add_row(
            r["run_id"],
            r["created"],
            r["status"],
            str(r["iterations"]),
            str(r["accepted"]),
            "-" if r["best_valid_rank_ic"] is None else f"{r['best_valid_rank_ic']:.4f}",
            str(r["tokens"]),
            f"{r['cost_usd']:.4f}",
        )
    console.print(table)


@runs_app.command("show")
@user_errors
def runs_show(
    run_id: str = typer.Argument(...),
    root: Path = typer.Option(DEFAULT_ROOT, "--root"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The hypothesis graph as a tree and the accepted factors with their validation metrics."""
    from agents.loop import open_project
    from agents.runs import run_summary

    summary = run_summary(open_project(root), run_id)
    if as_json:
        print(json.dumps(summary, default=str))
        return
    console.print(
        f"[bold]run {summary['run_id']}[/] ({summary['status']}, {summary['iterations']} iterations, "
        f"data {summary['config']['data']}, backend {summary['config']['backend']})"
    )
    tree = Tree("hypotheses")
    nodes = {}
    for h in summary["hypotheses"]:
        label = escape(f"#{h['iteration']} [{h['direction']}/{h['family']}] {h['status']}: {h['text'][:90]}")
        parent = nodes.get(h["parent"]) if h["parent"] else None
        nodes[h["id"]] = (parent or tree).add(label + (f" ({h['relation']})" if h["relation"] else ""))
    # (a parent that is not shown - e.g. from another run - leaves the hypothesis at the top level)
    console.print(tree)
    # validation figures; p: the admission test's raw p-value, p adj.: FDR-adjusted over the trials counted
    table = Table(
        "factor", "expression", "RankIC", "residual RankIC", "p", "p adj. (trials)", "iteration", "replaced by"
    )
    for f in summary["accepted"]:
        m = f["metrics"]
        p = m.get("residual_p", m.get("rank_ic_p"))
        trials = f" ({int(m['trials'])})" if "trials" in m else ""
        table.add_row(
            f["name"],
            f["expression"][:60],
            _fmt(m.get("rank_ic")),
            _fmt(m.get("residual_rank_ic")),
            _fmt_p(p),
            _fmt_p(m.get("p_adjusted")) + trials,
            str(f["iteration"]),
            f["replaced_by"] or "",
        )
    console.print(table)
    trials = summary["trials"]
    console.print(
        f"trials: {trials['screened']} screened, {trials['judged']} judged on validation in this run; "
        f"{trials['project_market']} on this market in the project"
    )
    best = summary["best_model"]
    console.print(
        f"best model: {best.get('name')} {best.get('family')} {json.dumps(best.get('params', {}))} "
        f"valid RankIC {_fmt(best.get('metrics', {}).get('Rank IC'))}"
    )
    cost = summary["discovery_cost"]
    t, per = cost["totals"], cost["per_factor"]
    if per is None:
        console.print(
            f"cost per accepted factor: the run holds no accepted factor, nothing to divide "
            f"(run total: {t['tokens']:,} tokens, ${t['cost_usd']:.4f}, {t['cpu_seconds']:,.1f} CPU s, "
            f"{t['trials_screened'] + t['trials_judged']:,} trials)"
        )
    else:
        console.print(
            f"cost per accepted factor ({cost['accepted']} held by the run): {per['tokens']:,.0f} tokens, "
            f"${per['cost_usd']:.4f}, {per['cpu_seconds']:,.1f} CPU s, {per['trials_screened']:,.1f} "
            f"trials screened, {per['trials_judged']:,.1f} judged on validation"
        )
    ev = summary["evaluation"]
    if not ev["times_opened"]:
        console.print(
            f"sealed test: not opened (`rdquant report {summary['run_id']}` scores the final model on "
            "validation, then opens it)"
        )
        return
    console.print(_figures_table({"final.valid": ev["valid"] or {}, **ev["test"]}))
    last = ev["openings"][-1]
    n = ev["times_opened"]
    console.print(f"sealed test opened {n} time{'s' if n != 1 else ''}; last {last['opened'] or '(not recorded)'}")
    if ev["changed"]:
        console.print(
            escape(
                f"the run changed since ({'; '.join(ev['changed'])}): these figures are for the earlier "
                f"state; `rdquant report {summary['run_id']} --reopen` scores it again"
            )
        )


def _fmt(v) -> str:
    return "-" if v is None or v != v else f"{v:+.4f}"  # (v != v: NaN)


def _fmt_p(p) -> str:
    return "-" if p is None or p != p else f"{p:.2g}"


# ---- replay and report ------------------------------------------------------------------------------------


@user_errors
def replay_command(
    run_id: str = typer.Argument(...),
    root: Path = typer.Option(DEFAULT_ROOT, "--root"),
    workers: int = typer.Option(2, "--workers", min=1),
) -> None:
    """Re-execute a run offline from its stored LLM responses and reviews; exit 1 on any divergence."""
    from agents.loop import open_project
    from agents.replay import replay_run

    report = replay_run(open_project(root), run_id, workers=workers, log=lambda m: console.print(f"  [dim]{m}[/]"))
    if report.tolerance:
        console.print(
            f"  [dim]recorded by other code ({', '.join(report.recorded_code) or 'a version before versions were stored'};"
            f" this is {report.replay_code}): floats compared to a relative {report.tolerance:g}[/]"
        )
    for line in report.divergences:
        console.print(f"[red]diverged:[/] {line}")
    if report.divergences:
        console.print(f"[bold red]replay of {report.run_id} diverged[/] ({len(report.divergences)} difference(s))")
        raise typer.Exit(1)
    agree = f"equal to a relative {report.tolerance:g}" if report.tolerance else "identical"
    console.print(
        f"[bold green]replay of {report.run_id} matches[/]: {report.iterations} iterations, "
        f"{report.decisions} decisions, {report.metrics} metric values {agree}"
    )


@user_errors
def report_command(
    run_id: str = typer.Argument(...),
    root: Path = typer.Option(DEFAULT_ROOT, "--root"),
    out: Optional[Path] = typer.Option(None, "--out", help="HTML file (default runs/reports/RUN.html)."),
    workers: int = typer.Option(2, "--workers", min=1),
    reopen: bool = typer.Option(
        False,
        "--reopen",
        help="Score the sealed test again for a run changed since it was opened (the report counts every opening).",
    ),
) -> None:
    """A self-contained HTML report; the final model is scored on validation first, then the sealed test
    segment is opened, once per state of the run."""
    from agents.loop import open_project
    from agents.report import build_report

    path, headline = build_report(
        open_project(root),
        root,
        run_id,
        out=out,
        workers=workers,
        reopen=reopen,
        log=lambda m: console.print(f"  [dim]{m}[/]"),
    )
    console.print(_figures_table({k: headline[k] for k in ("final.valid", "baseline", "final")}))
    console.print(f"sealed test opened {headline['times_opened']} time{'s' if headline['times_opened'] != 1 else ''}")
    console.print(f"report: {path}")


def _figures_table(columns: dict[str, dict]) -> Table:
    """Metric rows, one column per stored figure set: the final model on validation, the test figures."""
    from agents.runs import HEADLINE

    names = {"final.valid": "final (validation)", "baseline": "baseline (test)", "final": "final (test)"}
    table = Table("metric", *(names[k] for k in columns))
    for key in HEADLINE:
        table.add_row(key, *(_fmt(c.get(key)) for c in columns.values()))
    return table
