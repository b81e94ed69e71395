"""`rdquant factor eval`: score one expression against a label (IC, RankIC, quantiles, turnover, decay).

With --json, stdout holds exactly one JSON object (`FactorReport.to_dict()`); otherwise a rich table.
"""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from quantcore.cli._common import console, parse_pairs, user_errors
from quantcore.data.sources import load_market
from quantcore.evaluate import evaluate_expression
from quantcore.evaluate.factor_data import MAX_LOSS
from quantcore.evaluate.ic import MIN_PAIRS
from quantcore.evaluate.report import DECAY_HORIZONS
from quantcore.features import DEFAULT_LABEL

factor_app = typer.Typer(
    help="Evaluate factors: IC, RankIC, quantile returns, turnover, IC decay.", no_args_is_help=True
)


@factor_app.command("eval")
@user_errors
def eval_command(
    expression: str = typer.Argument(..., help="Factor expression in qlib syntax, e.g. 'Ref($close, 5)/$close - 1'."),
    data: str = typer.Option(
        "sp500", "--data", "-d", help="sp500 | synthetic[:N:T:SEED] | qlib dir | CSV/Parquet file."
    ),
    start: Optional[str] = typer.Option(None, help="First date scored (inclusive); look-backs still use earlier data."),
    end: Optional[str] = typer.Option(None, help="Last date scored (inclusive)."),
    label: str = typer.Option(DEFAULT_LABEL, "--label", help="Label expression (may read the future)."),
    quantiles: int = typer.Option(5, "--quantiles", "-q", min=2, help="Quantile buckets per day."),
    min_pairs: int = typer.Option(MIN_PAIRS, "--min-pairs", min=2, help="Skip days with fewer valid pairs."),
    max_loss: float = typer.Option(MAX_LOSS, "--max-loss", help="Refuse when cleaning drops more than this share."),
    decay: bool = typer.Option(True, "--decay/--no-decay", help=f"RankIC decay over horizons 1..{DECAY_HORIZONS[-1]}."),
    corr: list[str] = typer.Option([], "--corr", help="NAME=EXPRESSION to report value correlation with (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Score EXPRESSION against a label over a market and print the report."""
    library = parse_pairs(corr, "--corr", "NAME=EXPRESSION")
    panel = load_market(data)
    report = evaluate_expression(
        panel,
        expression,
        label,
        start,
        end,
        quantiles=quantiles,
        min_pairs=min_pairs,
        max_loss=max_loss,
        decay_horizons=DECAY_HORIZONS if decay else (),
        library=library,
    )
    out = report.to_dict()
    if as_json:
        typer.echo(json.dumps(out))
        return
    table = Table(title=f"{expression}  ({panel.name}, {out['start']} .. {out['end']}, {out['n_days']} days)")
    table.add_column("metric")
    table.add_column("IC", justify="right")
    table.add_column("RankIC", justify="right")
    for name, a, b in (
        ("mean", "ic", "rank_ic"),
        ("std", "ic_std", "rank_ic_std"),
        ("IR", "icir", "rank_icir"),
        ("t-stat", "ic_t", "rank_ic_t"),
        ("days", "ic_days", "rank_ic_days"),
    ):
        table.add_row(name, _fmt(out[a]), _fmt(out[b]))
    console.print(table)
    q = Table(title=f"label by factor quantile (1 = lowest), label {label}")
    for i in range(len(out["quantile_returns"])):
        q.add_column(f"Q{i + 1}", justify="right")
    q.add_column("long-short", justify="right")
    q.add_column("t", justify="right")
    q.add_row(*[_fmt(v, 5) for v in out["quantile_returns"]], _fmt(out["long_short"], 5), _fmt(out["long_short_t"], 2))
    console.print(q)
    console.print(
        f"turnover top {_fmt(out['turnover']['top'])}, bottom {_fmt(out['turnover']['bottom'])}; "
        f"rank autocorrelation {_fmt(out['autocorr'])}; cleaning dropped {_fmt(out['loss'], 3)} of the factor"
    )
    if out["decay"]:
        console.print("RankIC decay: " + ", ".join(f"h{h} {_fmt(v)}" for h, v in out["decay"].items()))
    for name, c in out["correlations"].items():
        console.print(f"correlation with {name}: daily mean {_fmt(c['daily_mean'])}, pooled {_fmt(c['pooled'])}")


def _fmt(v, digits: int = 4) -> str:
    return "n/a" if v is None else (str(v) if isinstance(v, int) else f"{v:.{digits}f}")
