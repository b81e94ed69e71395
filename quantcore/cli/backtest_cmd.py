"""`rdquant backtest`: run a daily backtest of a signal on a market and write qlib's daily report.

Input contract: SIGNAL.parquet holds a `score` column indexed by (datetime, instrument) (or with
`datetime` and `instrument` columns). Day t trades on the scores of day t-1, as qlib's TopkDropout.
Output contract: a Parquet frame indexed by `datetime` with qlib's report columns
account, return, total_turnover, turnover, total_cost, cost, value, cash, bench.
"""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Optional

import pandas as pd
import typer

from quantcore.backtest import SignalError, TopkDropout, WeightStrategy, align_signal
from quantcore.backtest.run import backtest_scores
from quantcore.cli._common import console, user_errors
from quantcore.data.sources import load_market
from quantcore.frame_io import write_parquet

__all__ = ["backtest_command", "read_signal", "StrategyName"]


class StrategyName(str, Enum):
    topk = "topk"  # qlib TopkDropout on the scores
    weight = "weight"  # scores are non-negative target weights, rescaled to the invested fraction


def read_signal(path: Path) -> pd.Series:
    """The `score` series of a signal file, indexed by (datetime, instrument)."""
    if not path.is_file():
        raise SignalError(f"signal file {path} does not exist")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a non-Parquet file
        raise SignalError(
            f"cannot read signal file {path} as Parquet ({type(exc).__name__}); write it with DataFrame.to_parquet"
        ) from None
    if "score" not in frame.columns:
        raise SignalError(
            f"signal file {path} has no 'score' column (columns: {', '.join(map(str, frame.columns))}); "
            "name the prediction column `score`"
        )
    if not isinstance(frame.index, pd.MultiIndex) and {"datetime", "instrument"} <= set(frame.columns):
        frame = frame.set_index(["datetime", "instrument"])
    if not isinstance(frame.index, pd.MultiIndex) or frame.index.nlevels != 2:
        raise SignalError(f"signal file {path} must be indexed by (datetime, instrument)")
    return frame["score"]


@user_errors
def backtest_command(
    signal: Path = typer.Option(
        ..., "--signal", help="Parquet file with a `score` column indexed by (datetime, instrument)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Output Parquet report."),
    data: str = typer.Option(
        "sp500", "--data", "-d", help="sp500 | synthetic[:N:T:SEED] | qlib dir | CSV/Parquet file."
    ),
    strategy: StrategyName = typer.Option(StrategyName.topk, "--strategy", help="topk (TopkDropout) | weight."),
    topk: int = typer.Option(50, help="TopkDropout: names held."),
    n_drop: int = typer.Option(5, "--n-drop", help="TopkDropout: names replaced per day."),
    start: Optional[str] = typer.Option(None, help="First trading day (default: the day after the first signal day)."),
    end: Optional[str] = typer.Option(None, help="Last trading day (default: the day after the last signal day)."),
    benchmark: str = typer.Option("equal-weight", help="equal-weight (mean return of all instruments) | INSTRUMENT."),
    account: float = typer.Option(1e8, help="Initial cash."),
) -> None:
    """Backtest a signal with qlib's reference exchange (close price, 5/15 bp costs, min 5, 9.5% limits, lots of 100)."""
    if account <= 0:
        raise ValueError(f"--account must be positive, got {account}")
    t0 = time.perf_counter()
    panel = load_market(data)
    scores = align_signal(read_signal(signal), panel)
    policy = TopkDropout(topk, n_drop) if strategy is StrategyName.topk else WeightStrategy()
    t1 = time.perf_counter()
    report = backtest_scores(panel, scores, policy, start=start, end=end, account=account, benchmark=benchmark)
    t2 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(report, out)
    net = float((1 + report["return"] - report["cost"]).prod() - 1)
    excess = net - float((1 + report["bench"]).prod() - 1)
    console.print(
        f"[green]wrote[/] {out}: {len(report)} days {str(report.index[0])[:10]} .. {str(report.index[-1])[:10]} | "
        f"return net of cost {net:+.2%}, vs benchmark {excess:+.2%} | load {t1 - t0:.2f}s, backtest {t2 - t1:.2f}s"
    )
