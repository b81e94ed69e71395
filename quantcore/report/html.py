"""One self-contained HTML report: figures embedded as base64 PNG, metrics as tables, no external
links, scripts or stylesheets, so the file opens anywhere and can be attached to a run as is."""

from __future__ import annotations

import base64
import html
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from numbers import Real
from pathlib import Path
from typing import TYPE_CHECKING, Union

import pandas as pd

from quantcore.report.errors import ReportError
from quantcore.report.plots import figure_png

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "FigureSection",
    "MetricsSection",
    "TableSection",
    "TextSection",
    "Section",
    "html_report",
    "write_html_report",
]


@dataclass(frozen=True)
class MetricsSection:
    """A two-column table of named numbers (e.g. `portfolio_analysis(...)` or `RiskMetrics.to_dict()`)."""

    title: str
    metrics: Mapping[str, object] = field(hash=False)


@dataclass(frozen=True)
class FigureSection:
    """A PNG image; build it from a figure with `FigureSection.of(title, fig)`."""

    title: str
    png: bytes
    caption: str = ""

    @classmethod
    def of(cls, title: str, fig: Figure, caption: str = "", dpi: int = 100) -> FigureSection:
        return cls(title, figure_png(fig, dpi), caption)


@dataclass(frozen=True)
class TableSection:
    """A DataFrame rendered as an HTML table (index included)."""

    title: str
    frame: pd.DataFrame = field(hash=False)


@dataclass(frozen=True)
class TextSection:
    """Preformatted text (a config, an expression, a log excerpt)."""

    title: str
    text: str


Section = Union[MetricsSection, FigureSection, TableSection, TextSection]

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1000px;color:#222}
h1{font-size:1.5em}h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right}
th{background:#f5f5f5}td.k,th.k{text-align:left}img{max-width:100%}pre{background:#f7f7f7;padding:.8em;
overflow-x:auto}.cap{color:#666;font-size:.85em}.meta{color:#888;font-size:.8em}
"""


def html_report(sections: Sequence[Section] | Mapping[str, object], title: str = "rdquant report") -> str:
    """The report as one HTML string. `sections` is a list of sections, or a mapping from title to a
    Figure, PNG bytes, a DataFrame, a mapping of metrics, or text (each turned into its section)."""
    items = _sections(sections)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "\n".join(_render(s) for s in items)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body>\n<h1>{_e(title)}</h1>\n"
        f'<p class="meta">generated {stamp}</p>\n{body}\n</body></html>\n'
    )


def write_html_report(
    path: str | Path, sections: Sequence[Section] | Mapping[str, object], title: str = "rdquant report"
) -> Path:
    """Write `html_report(sections, title)` to `path` (parent folders created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_report(sections, title), encoding="utf-8")
    return path


def _sections(sections) -> list[Section]:
    if isinstance(sections, Mapping):
        return [_coerce(str(k), v) for k, v in sections.items()]
    out = list(sections)
    for s in out:
        if not isinstance(s, (MetricsSection, FigureSection, TableSection, TextSection)):
            raise ReportError(
                f"report sections must be MetricsSection/FigureSection/TableSection/TextSection, got "
                f"{type(s).__name__}; or pass a mapping of title -> Figure/DataFrame/dict/str"
            )
    return out


def _is_figure(value: object) -> bool:
    """A matplotlib Figure, checked without importing matplotlib (no figure exists before it is loaded)."""
    module = sys.modules.get("matplotlib.figure")
    return module is not None and isinstance(value, module.Figure)


def _coerce(title: str, value: object) -> Section:
    if isinstance(value, (MetricsSection, FigureSection, TableSection, TextSection)):
        return value
    if _is_figure(value):
        return FigureSection.of(title, value)
    if isinstance(value, (bytes, bytearray)):
        return FigureSection(title, bytes(value))
    if isinstance(value, pd.DataFrame):
        return TableSection(title, value)
    if isinstance(value, pd.Series):
        return MetricsSection(title, value.to_dict())
    if isinstance(value, Mapping):
        return MetricsSection(title, value)
    if isinstance(value, str):
        return TextSection(title, value)
    raise ReportError(
        f"section {title!r}: cannot render a {type(value).__name__}; pass a Figure, PNG bytes, a DataFrame, "
        "a mapping of metrics or a string"
    )


def _render(s: Section) -> str:
    head = f"<section>\n<h2>{_e(s.title)}</h2>\n"
    if isinstance(s, FigureSection):
        if not s.png.startswith(b"\x89PNG\r\n\x1a\n"):
            raise ReportError(f"section {s.title!r}: image bytes are not a PNG; build it with FigureSection.of")
        data = base64.b64encode(s.png).decode("ascii")
        cap = f'<p class="cap">{_e(s.caption)}</p>' if s.caption else ""
        return head + f'<img alt="{_e(s.title)}" src="data:image/png;base64,{data}">{cap}\n</section>'
    if isinstance(s, MetricsSection):
        return head + _metrics_table(s.metrics) + "\n</section>"
    if isinstance(s, TableSection):
        return head + s.frame.to_html(border=0, float_format=_fmt, na_rep="NaN", escape=True) + "\n</section>"
    return head + f"<pre>{_e(s.text)}</pre>\n</section>"


def _metrics_table(metrics: Mapping[str, object]) -> str:
    """Keys "group.metric" over several groups (portfolio_analysis) become a metric x group grid,
    like qlib's printed risk frames; anything else is a two-column table."""
    split = [str(k).rsplit(".", 1) for k in metrics]
    groups = list(dict.fromkeys(p[0] for p in split if len(p) == 2))
    if len(groups) > 1 and all(len(p) == 2 for p in split):
        names = list(dict.fromkeys(p[1] for p in split))
        cell = {tuple(p): v for p, v in zip(split, metrics.values())}
        header = "".join(f"<th>{_e(g)}</th>" for g in groups)
        rows = "".join(
            f'<tr><td class="k">{_e(n)}</td>'
            + "".join(f"<td>{_fmt(cell.get((g, n), ''))}</td>" for g in groups)
            + "</tr>"
            for n in names
        )
        return f'<table><tr><th class="k">metric</th>{header}</tr>{rows}</table>'
    rows = "".join(f'<tr><td class="k">{_e(str(k))}</td><td>{_fmt(v)}</td></tr>' for k, v in metrics.items())
    return f'<table><tr><th class="k">metric</th><th>value</th></tr>{rows}</table>'


def _fmt(v: object) -> str:
    if isinstance(v, bool) or not isinstance(v, Real):
        return _e(str(v))
    x = float(v)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if isinstance(v, int) or (x == int(x) and abs(x) < 1e15 and not isinstance(v, float)):
        return str(int(x))
    return f"{x:.6g}"


def _e(text: str) -> str:
    return html.escape(text, quote=True)
