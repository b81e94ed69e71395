"""`rdquant data ...`: synthesise, import and inspect markets."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from quantcore.cli._common import console, parse_pairs, user_errors
from quantcore.data.importer import DefectPolicy, ImportReport, import_bars
from quantcore.data.panel import Panel
from quantcore.data.qlib_format import write_qlib
from quantcore.data.sources import MARKET_SPECS, load_market
from quantcore.data.synthetic import planted_alphas, synth_market
from quantcore.evaluate.ic import daily_rank_ic, ic_stats
from quantcore.expr.evaluate import Evaluator
from quantcore.features import DEFAULT_LABEL

data_app = typer.Typer(help="Market data: synthesise, import, inspect.", no_args_is_help=True)


@data_app.command("synth")
@user_errors
def synth_command(
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write (qlib format)."),
    instruments: int = typer.Option(300, "--instruments", "-n", min=2, help="Number of instruments."),
    days: int = typer.Option(2520, "--days", "-t", min=30, help="Number of trading days."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed; the same seed gives the same market and alphas."),
    alphas: int = typer.Option(
        4,
        "--alphas",
        "-k",
        min=0,
        help="Number of planted alphas, drawn at random from the seed; 0 gives a null market with no signal.",
    ),
    reveal: bool = typer.Option(
        False, "--reveal", help="Print the planted alphas (hidden otherwise) with their target and realised rank IC."
    ),
    force: bool = typer.Option(False, "--force", help="Replace qlib data already in --out."),
) -> None:
    """Generate the synthetic market (with hidden planted alphas) and write it as a qlib directory."""
    t0 = time.perf_counter()
    panel = synth_market(instruments, days, seed, n_alphas=alphas)
    t1 = time.perf_counter()
    write_qlib(panel, out, overwrite=force)
    console.print(
        f"[green]wrote[/] {out}: synthetic {panel.n_instruments} instruments x {panel.n_days} days "
        f"(seed {seed}, {alphas} planted alphas) | generate {t1 - t0:.2f}s, write {time.perf_counter() - t1:.2f}s"
    )
    if not reveal:
        if alphas:
            console.print(
                f"the {alphas} planted alphas are hidden (the data holds no trace of them); --reveal prints them"
            )
        return
    planted = planted_alphas(seed, alphas)
    if not planted:
        console.print("no planted alphas: a null market")
        return
    realised = _realised_rank_ics(panel, {a.name: a.expression for a in planted})  # name -> (mean, std error)
    # plain lines, not a table: a table wraps long expressions and breaks copy-paste
    console.print(
        f"[bold]planted alphas[/] (rank IC: mean daily Spearman vs {DEFAULT_LABEL}, over all {panel.n_days} days)"
    )
    for a in planted:
        mean, error = realised[a.name]
        console.print(
            f"  [bold]{a.name}[/]  target {a.target_rank_ic:+.4f}  realised {mean:+.4f} +/- {error:.4f}",
            highlight=False,
        )
        console.print(f"    {a.expression}", markup=False, highlight=False, soft_wrap=True)
        console.print(f"    {a.description}", markup=False, highlight=False, soft_wrap=True)


def _realised_rank_ics(panel: Panel, expressions: dict[str, str]) -> dict[str, tuple[float, float]]:
    """Mean daily rank IC (Spearman) of each expression vs the default label on `panel`, over every day
    with enough instruments, as factor validation measures it; with its standard error (std / sqrt(days))."""
    evaluator = Evaluator(panel)
    label = evaluator.evaluate({"label": DEFAULT_LABEL}, allow_future=True, dtype=np.float64)["label"]
    values = evaluator.evaluate(expressions, dtype=np.float64)
    stats = {name: ic_stats(daily_rank_ic(v, label)) for name, v in values.items()}
    return {name: (s.mean, s.std / np.sqrt(s.n_days)) for name, s in stats.items()}


@data_app.command("import")
@user_errors
def import_command(
    file: Path = typer.Argument(..., help="CSV (optionally compressed) or Parquet file of long-format daily bars."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write (qlib format)."),
    mapping: list[str] = typer.Option(
        [], "--map", "-m", help="Column mapping SRC=DST, e.g. Name=instrument (repeatable)."
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Treat reported defects (missing OHL, OHLC-inconsistent, zero volume) as errors."
    ),
    force: bool = typer.Option(False, "--force", help="Replace qlib data already in --out."),
) -> None:
    """Import daily bars, print the import report, and write a qlib directory."""
    column_map = parse_pairs(mapping, "--map", "SRC=DST (e.g. Name=instrument)")
    policy = DefectPolicy.RAISE if strict else DefectPolicy.KEEP
    panel, report = import_bars(file, column_map, policy)
    _print_report(report)
    write_qlib(panel, out, overwrite=force)
    console.print(f"[green]wrote[/] {out}: {panel.n_instruments} instruments x {panel.n_days} days")


@data_app.command("info")
@user_errors
def info_command(
    market: str = typer.Argument(..., help="; ".join(MARKET_SPECS)),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Summarise a market: instruments, days, date range, fields, missing share, content version."""
    panel = load_market(market)
    info = market_info(panel)
    if as_json:
        typer.echo(json.dumps(info))
        return
    table = Table("", "", title=f"market {info['name']}", show_header=False)
    table.add_row("instruments", str(info["instruments"]))
    table.add_row("days", str(info["days"]))
    table.add_row("date range", f"{info['start']} .. {info['end']}")
    table.add_row("fields", ", ".join(info["fields"]))
    table.add_row("listed instrument-days", f"{info['listed_rows']:,}")
    table.add_row("missing share", f"{info['missing_share']:.4%} of listed instrument-days have no close")
    table.add_row("version", info["version"])
    for key, value in info["meta"].items():
        table.add_row(key, str(value))
    console.print(table)


def market_info(panel: Panel) -> dict:
    """The facts `data info` shows, as plain JSON-able values."""
    described = panel.describe()
    listed = described["listed_rows"]
    return {
        "name": panel.name,
        "instruments": panel.n_instruments,
        "days": panel.n_days,
        "start": described["start"],
        "end": described["end"],
        "fields": list(panel.fields),
        "listed_rows": listed,
        "missing_share": float(described["missing_close_in_span"] / listed) if listed else 0.0,
        "late_listings": int(np.count_nonzero(panel.starts > 0)),
        "early_delistings": int(np.count_nonzero(panel.ends < panel.n_days)),
        "version": panel.version,
        "meta": dict(panel.meta),
    }


def _print_report(report: ImportReport) -> None:
    console.print(
        f"[bold]import[/] {report.source}: {report.rows:,} rows, {report.instruments} instruments, "
        f"{report.days} days ({report.start} .. {report.end}); {report.suspended_days} suspended instrument-days"
    )
    table = Table("defect", "rows", "examples", title=f"reported defects (policy: {report.policy})")
    for d in report.defects:
        table.add_row(d.kind, str(d.count), "\n".join(d.examples[:3]) or "-")
    console.print(table)
    for line in report.derived:
        console.print(f"derived {line}")
    if report.ignored_columns:
        console.print(f"ignored non-numeric columns: {', '.join(report.ignored_columns)}")
