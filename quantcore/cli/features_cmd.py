"""`rdquant features`: compute a feature set (and/or custom expressions) over a market, write Parquet.

Output contract (other tools depend on it): a Parquet file holding one frame indexed by
(datetime, instrument), one float32 column per feature with the feature set's names, rows = days inside
each instrument's listing span within [start, end].
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from quantcore.cli._common import console, parse_pairs, user_errors
from quantcore.data.sources import load_market
from quantcore.expr.cache import DEFAULT_DISK_CACHE_BYTES, DiskCache
from quantcore.expr.evaluate import Evaluator
from quantcore.features import DEFAULT_LABEL, FEATURE_SETS, feature_set
from quantcore.frame_io import write_parquet


@user_errors
def features_command(
    out: Path = typer.Option(..., "--out", "-o", help="Output Parquet file."),
    data: str = typer.Option(
        "sp500", "--data", "-d", help="sp500 | synthetic[:N:T:SEED] | qlib dir | CSV/Parquet file."
    ),
    set_name: str = typer.Option("alpha158", "--set", "-s", help=f"Feature set: {' | '.join(FEATURE_SETS)} | none."),
    expr: list[str] = typer.Option([], "--expr", "-e", help="Extra feature NAME=EXPRESSION (repeatable)."),
    label: bool = typer.Option(False, "--label/--no-label", help=f"Add LABEL0 = {DEFAULT_LABEL}."),
    start: Optional[str] = typer.Option(None, help="First date (inclusive); look-backs still use earlier data."),
    end: Optional[str] = typer.Option(None, help="Last date (inclusive)."),
    cache: Optional[Path] = typer.Option(None, help="On-disk expression cache directory (off by default)."),
    cache_max_gb: float = typer.Option(
        DEFAULT_DISK_CACHE_BYTES / 2**30,
        "--cache-max-gb",
        help="Bound of the --cache directory: past it the entries used longest ago are deleted.",
    ),
    qlib_compat: bool = typer.Option(
        True, "--qlib-compat/--corrected", help="qlib 0.9.7's exact operator quirks, or the corrected definitions."
    ),
    float32_arithmetic: bool = typer.Option(
        False, "--float32-arithmetic", help="Element-wise steps in float32 as qlib does (bit-level parity)."
    ),
    threads: Optional[int] = typer.Option(None, help="Kernel threads (default: all cores)."),
) -> None:
    """Compute features over a market and write them to Parquet, indexed by (datetime, instrument)."""
    expressions: dict[str, str] = {} if set_name.lower() == "none" else feature_set(set_name)
    extra = parse_pairs(expr, "--expr", "NAME=EXPRESSION")
    clash = sorted(set(extra) & set(expressions))
    if clash:
        raise ValueError(f"--expr names clash with the {set_name} feature set: {', '.join(clash)}")
    expressions.update(extra)
    if cache_max_gb <= 0:
        raise ValueError(f"--cache-max-gb must be positive, got {cache_max_gb}")
    if not expressions and not label:
        raise ValueError("nothing to compute: give --set or at least one --expr")
    t0 = time.perf_counter()
    panel = load_market(data)
    t1 = time.perf_counter()
    evaluator = Evaluator(
        panel,
        compat=qlib_compat,
        float32_arithmetic=float32_arithmetic,
        threads=threads,
        disk_cache=DiskCache(cache, max_bytes=int(cache_max_gb * 2**30)) if cache else None,
    )
    arrays = evaluator.evaluate(expressions)
    if label:
        arrays.update(evaluator.evaluate({"LABEL0": DEFAULT_LABEL}, allow_future=True))
    t2 = time.perf_counter()
    frame = panel.to_frame(arrays, days=panel.date_index(start, end))
    if frame.empty:
        raise ValueError(
            f"no rows between {start} and {end}: the market covers "
            f"{str(panel.calendar[0])[:10]} .. {str(panel.calendar[-1])[:10]}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    write_parquet(frame, out)
    t3 = time.perf_counter()
    console.print(
        f"[green]wrote[/] {out}: {frame.shape[0]:,} rows x {frame.shape[1]} columns "
        f"({panel.name}: {panel.n_instruments} instruments x {panel.n_days} days) | "
        f"load {t1 - t0:.2f}s, compute {t2 - t1:.2f}s, write {t3 - t2:.2f}s"
    )
