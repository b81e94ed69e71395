"""Risk analysis and reports: qlib's risk numbers of a return series or a backtest's daily report,
matplotlib figures (no pyplot state), and one self-contained HTML report."""

from quantcore.report.errors import ReportError
from quantcore.report.html import (
    FigureSection,
    MetricsSection,
    Section,
    TableSection,
    TextSection,
    html_report,
    write_html_report,
)
from quantcore.report.plots import (
    cumulative_return_figure,
    drawdown_figure,
    figure_png,
    ic_figure,
    quantile_returns_figure,
    save_png,
)
from quantcore.report.risk import (
    PORTFOLIO_COLUMNS,
    Accumulation,
    RiskMetrics,
    analysis_frame,
    excess_returns,
    periods_per_year,
    portfolio_analysis,
    risk_analysis,
)

__all__ = [
    "Accumulation",
    "FigureSection",
    "MetricsSection",
    "PORTFOLIO_COLUMNS",
    "ReportError",
    "RiskMetrics",
    "Section",
    "TableSection",
    "TextSection",
    "analysis_frame",
    "cumulative_return_figure",
    "drawdown_figure",
    "excess_returns",
    "figure_png",
    "html_report",
    "ic_figure",
    "periods_per_year",
    "portfolio_analysis",
    "quantile_returns_figure",
    "risk_analysis",
    "save_png",
    "write_html_report",
]
