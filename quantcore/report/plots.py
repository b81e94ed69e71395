"""Report figures drawn on `matplotlib.figure.Figure` with an Agg canvas attached per figure, so
nothing touches pyplot's global figure manager or the user's chosen backend.

Curves accumulate by summation, as qlib's report graphs and `risk_analysis` (sum mode) do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from quantcore.report.errors import ReportError
from quantcore.report.risk import excess_returns

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "cumulative_return_figure",
    "drawdown_figure",
    "ic_figure",
    "quantile_returns_figure",
    "figure_png",
    "save_png",
]

_SIZE = (9.0, 4.0)  # inches; 900x400 px at the default 100 dpi reads well embedded in HTML
_DPI = 100


def _figure(size: tuple[float, float] = _SIZE) -> Figure:
    # matplotlib loads here, on the first figure: ~0.6 s that every CLI command would pay on import
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)  # the figure's own raster canvas: savefig never consults pyplot's backend
    return fig


def _x(index: pd.Index) -> np.ndarray:
    return index.to_numpy()


def cumulative_return_figure(report: pd.DataFrame, title: str = "Cumulative return") -> Figure:
    """Top: strategy with and without cost against the benchmark; bottom: cumulative excess return
    with and without cost. Needs the daily report's `return`, `bench` and `cost` columns."""
    ex = excess_returns(report)
    r = report["return"].astype(np.float64)
    x = _x(report.index)
    fig = _figure((_SIZE[0], _SIZE[1] * 1.6))
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(x, r.cumsum(), label="strategy (without cost)", color="tab:blue")
    top.plot(x, (r - report["cost"].astype(np.float64)).cumsum(), label="strategy (with cost)", color="tab:green")
    top.plot(x, report["bench"].astype(np.float64).cumsum(), label="benchmark", color="tab:gray")
    top.set_ylabel("cumulative return")
    top.set_title(title)
    bottom.plot(x, ex["without_cost"].cumsum(), label="excess (without cost)", color="tab:blue")
    bottom.plot(x, ex["with_cost"].cumsum(), label="excess (with cost)", color="tab:green")
    bottom.set_ylabel("cumulative excess")
    for ax in (top, bottom):
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize="small")
    return fig


def drawdown_figure(report: pd.DataFrame, title: str = "Drawdown of excess return") -> Figure:
    """Drawdown (cumulative excess minus its running peak, <= 0) with and without cost."""
    ex = excess_returns(report)
    x = _x(report.index)
    fig = _figure()
    ax = fig.subplots()
    for col, color in (("without_cost", "tab:blue"), ("with_cost", "tab:green")):
        curve = ex[col].fillna(0.0).cumsum()
        dd = (curve - curve.cummax()).to_numpy()
        ax.fill_between(x, dd, 0.0, alpha=0.25, color=color)
        ax.plot(x, dd, color=color, linewidth=0.8, label=f"{col.replace('_', ' ')} (max {dd.min():.2%})")
    ax.set_title(title)
    ax.set_ylabel("drawdown")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    return fig


def ic_figure(
    ic: pd.Series | np.ndarray,
    rank_ic: pd.Series | np.ndarray | None = None,
    window: int = 20,
    title: str = "IC over time",
    *,
    dates: Sequence | pd.Index | None = None,
) -> Figure:
    """Daily IC (and RankIC) as faint points with their `window`-day rolling means as lines. Pass
    date-indexed Series, or (T,) arrays such as `evaluate.daily_ic` returns together with `dates`;
    NaN days (too few pairs) are left as gaps."""
    if window < 1:
        raise ReportError(f"rolling window must be >= 1 day, got {window}")
    series = {"IC": _series(ic, "ic", dates)}
    if rank_ic is not None:
        series["RankIC"] = _series(rank_ic, "rank_ic", dates)
    fig = _figure()
    ax = fig.subplots()
    colors = {"IC": "tab:blue", "RankIC": "tab:orange"}
    for name, s in series.items():
        x = _x(s.index)
        ax.plot(
            x,
            s.to_numpy(),
            color=colors[name],
            alpha=0.3,
            linewidth=0.7,
            marker=".",
            markersize=2,
            label=f"daily {name} (mean {s.mean():.4f})",
        )
        rolling = s.rolling(window, min_periods=max(1, window // 2)).mean()
        ax.plot(x, rolling.to_numpy(), color=colors[name], linewidth=1.6, label=f"{window}-day mean {name}")
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    return fig


def quantile_returns_figure(
    returns: Sequence[float] | Mapping[str, float] | pd.Series, title: str = "Mean return by factor quantile"
) -> Figure:
    """Bars of the mean label per factor quantile, lowest factor first (Q1 .. Qn unless labelled)."""
    if isinstance(returns, pd.Series):
        labels, values = [str(k) for k in returns.index], returns.to_numpy(dtype=np.float64)
    elif isinstance(returns, Mapping):
        labels, values = [str(k) for k in returns], np.asarray(list(returns.values()), dtype=np.float64)
    else:
        values = np.asarray(list(returns), dtype=np.float64)
        labels = [f"Q{i + 1}" for i in range(values.size)]
    if values.size == 0 or np.isnan(values).all():
        raise ReportError("no quantile returns to draw; the factor evaluation produced no usable days")
    fig = _figure((_SIZE[0] * 0.7, _SIZE[1]))
    ax = fig.subplots()
    colors = ["tab:red" if v < 0 else "tab:green" for v in np.nan_to_num(values)]
    ax.bar(labels, np.nan_to_num(values), color=colors)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_title(title)
    ax.set_ylabel("mean return")
    ax.grid(alpha=0.3, axis="y")
    return fig


def figure_png(fig: Figure, dpi: int = _DPI) -> bytes:
    """The figure rendered as PNG bytes."""
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def save_png(fig: Figure, path: str | Path, dpi: int = _DPI) -> Path:
    """Write the figure as a PNG file (parent folders created) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(figure_png(fig, dpi))
    return path


def _series(s, name: str, dates=None) -> pd.Series:
    if isinstance(s, np.ndarray):
        if s.ndim != 1:
            raise ReportError(f"{name} must be one value per day (T,), got shape {s.shape}")
        if dates is not None and len(dates) != s.size:
            raise ReportError(f"{name} has {s.size} days but {len(dates)} dates were given; pass the scored calendar")
        s = pd.Series(s, index=pd.Index(dates) if dates is not None else None)
    if not isinstance(s, pd.Series):
        raise ReportError(f"{name} must be a Series indexed by date or a (T,) array, got {type(s).__name__}")
    s = s.astype(np.float64)
    if s.empty or s.isna().all():
        raise ReportError(f"{name} has no values to draw; the factor evaluation produced no usable days")
    return s
