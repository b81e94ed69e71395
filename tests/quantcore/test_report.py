"""Risk analysis against hand computations (and optionally qlib itself), report errors, figures and
the self-contained HTML report."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

from quantcore.errors import QuantcoreError
from quantcore.report import (
    FigureSection,
    MetricsSection,
    ReportError,
    TableSection,
    TextSection,
    analysis_frame,
    cumulative_return_figure,
    drawdown_figure,
    figure_png,
    html_report,
    ic_figure,
    periods_per_year,
    portfolio_analysis,
    quantile_returns_figure,
    risk_analysis,
    save_png,
    write_html_report,
)

PNG = b"\x89PNG\r\n\x1a\n"

# cumsum 0.01, -0.01, 0.02, 0.01, 0.03; running peak 0.01, 0.01, 0.02, 0.02, 0.03 -> deepest gap -0.02
R5 = pd.Series([0.01, -0.02, 0.03, -0.01, 0.02], index=pd.bdate_range("2021-01-04", periods=5))


def _report(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    idx = pd.DatetimeIndex(pd.bdate_range("2021-01-04", periods=n), name="datetime")
    ret = rng.normal(0.001, 0.01, n)
    return pd.DataFrame(
        {
            "account": 1e8 * np.cumprod(1 + ret),
            "return": ret,
            "total_turnover": 0.0,
            "turnover": 0.1,
            "total_cost": 0.0,
            "cost": rng.uniform(0, 3e-4, n),
            "value": 1e8,
            "cash": 0.0,
            "bench": rng.normal(0.0, 0.01, n),
        },
        index=idx,
    )


# ---- risk analysis ----------------------------------------------------------------------------------


def test_sum_mode_matches_hand_computation():
    m = risk_analysis(R5)
    # mean 0.03 / 5; deviations 0.004 -0.026 0.024 -0.016 0.014 -> squares sum 1720e-6, / (5 - 1)
    std = math.sqrt(1720e-6 / 4)
    assert m.mean == pytest.approx(0.006, rel=1e-12)
    assert m.std == pytest.approx(std, rel=1e-12)
    assert m.annualized_return == pytest.approx(0.006 * 238, rel=1e-12)  # qlib 0.9.7: 238 days a year
    assert m.information_ratio == pytest.approx(0.006 / std * math.sqrt(238), rel=1e-12)
    assert m.max_drawdown == pytest.approx(-0.02, abs=1e-15)
    assert list(m.to_dict()) == ["mean", "std", "annualized_return", "information_ratio", "max_drawdown"]


def test_explicit_periods_per_year_overrides_freq():
    m = risk_analysis(R5, n=252)
    assert m.annualized_return == pytest.approx(0.006 * 252, rel=1e-12)
    assert m.information_ratio == pytest.approx(0.006 / math.sqrt(1720e-6 / 4) * math.sqrt(252), rel=1e-12)


def test_product_mode_matches_hand_computation():
    r = pd.Series([0.1, -0.5, 1.0])  # wealth 1.1, 0.55, 1.1: halved from its peak, then back
    m = risk_analysis(r, mode="product")
    logs = np.array([math.log(1.1), math.log(0.5), math.log(2.0)])
    assert m.mean == pytest.approx(1.1 ** (1 / 3) - 1, rel=1e-12)
    assert m.std == pytest.approx(math.sqrt(((logs - logs.mean()) ** 2).sum() / 2), rel=1e-12)
    assert m.annualized_return == pytest.approx(1.1 ** (238 / 3) - 1, rel=1e-12)
    assert m.max_drawdown == pytest.approx(-0.5, rel=1e-12)
    assert m.information_ratio == pytest.approx(m.mean / m.std * math.sqrt(238), rel=1e-12)


@pytest.mark.parametrize(
    "freq, n",
    [
        ("day", 238),
        ("1d", 238),
        ("2day", 119),
        ("week", 50),
        ("w", 50),
        ("month", 12),
        ("mon", 12),
        ("min", 240 * 238),
        ("5minute", 240 * 238 / 5),
    ],
)
def test_periods_per_year_follow_qlib(freq, n):
    assert periods_per_year(freq) == pytest.approx(n)


def test_missing_values_are_dropped_and_a_flat_series_has_no_ratio():
    with_gaps = pd.concat([R5.iloc[:2], pd.Series([np.nan]), R5.iloc[2:]])
    assert risk_analysis(with_gaps) == risk_analysis(R5)
    flat = risk_analysis(pd.Series([0.001] * 4))
    assert flat.std == 0.0 and math.isnan(flat.information_ratio) and flat.max_drawdown == 0.0


@pytest.mark.parametrize(
    "bad, match",
    [
        (pd.Series([], dtype=float), "empty"),
        (pd.Series([np.nan, np.nan]), "all NaN"),
        (pd.Series([0.01, np.inf]), "infinite"),
        (pd.DataFrame({"a": [0.1]}), "one series"),
        (pd.Series(["a", "b"]), "numeric"),
    ],
)
def test_bad_returns_are_refused(bad, match):
    with pytest.raises(ReportError, match=match):
        risk_analysis(bad)


def test_bad_options_are_refused():
    with pytest.raises(ReportError, match="sum' or 'product"):
        risk_analysis(R5, mode="log")
    with pytest.raises(ReportError, match="unknown frequency"):
        risk_analysis(R5, freq="fortnight")
    with pytest.raises(ReportError, match="> -100%"):
        risk_analysis(pd.Series([0.1, -1.0]), mode="product")
    assert issubclass(ReportError, QuantcoreError) and issubclass(ReportError, ValueError)


def test_portfolio_analysis_uses_qlib_names_and_excess_returns():
    rep = _report()
    out = portfolio_analysis(rep)
    metrics = ["mean", "std", "annualized_return", "information_ratio", "max_drawdown"]
    assert set(out) == {
        f"{g}.{k}" for g in ("excess_return_without_cost", "excess_return_with_cost", "bench") for k in metrics
    }
    without = rep["return"].to_numpy() - rep["bench"].to_numpy()
    with_cost = without - rep["cost"].to_numpy()
    for name, r in (("excess_return_without_cost", without), ("excess_return_with_cost", with_cost)):
        curve = np.cumsum(r)
        assert out[f"{name}.mean"] == pytest.approx(r.sum() / r.size, rel=1e-12)
        assert out[f"{name}.std"] == pytest.approx(math.sqrt(((r - r.mean()) ** 2).sum() / (r.size - 1)), rel=1e-12)
        assert out[f"{name}.annualized_return"] == pytest.approx(r.mean() * 238, rel=1e-12)
        assert out[f"{name}.max_drawdown"] == pytest.approx(min(curve - np.maximum.accumulate(curve)), rel=1e-12)
    assert out["excess_return_with_cost.mean"] < out["excess_return_without_cost.mean"]


def test_analysis_frame_has_qlibs_port_analysis_layout():
    frame = analysis_frame(portfolio_analysis(_report()))
    assert list(frame.columns) == ["risk"] and frame.shape == (15, 1)
    assert frame.loc[("excess_return_with_cost", "max_drawdown"), "risk"] <= 0
    with pytest.raises(ReportError, match="expected keys"):
        analysis_frame({"mean": 1.0})


def test_portfolio_analysis_reads_columns_the_backtest_writes():
    from quantcore.backtest import REPORT_COLUMNS
    from quantcore.report import PORTFOLIO_COLUMNS

    assert set(PORTFOLIO_COLUMNS) <= set(REPORT_COLUMNS)


def test_portfolio_analysis_refuses_bad_reports():
    with pytest.raises(ReportError, match=r"lacks column\(s\) \['cost'\]"):
        portfolio_analysis(_report().drop(columns="cost"))
    with pytest.raises(ReportError, match="no rows"):
        portfolio_analysis(_report().iloc[:0])
    nan_rep = _report()
    nan_rep["return"] = np.nan
    with pytest.raises(ReportError, match="all NaN"):
        portfolio_analysis(nan_rep)
    with pytest.raises(ReportError, match="daily report frame"):
        portfolio_analysis(_report()["return"])


# ---- parity with qlib's own risk_analysis (needs RDQUANT_QLIB_PYTHON or ~/qlibref) -------------------

QLIB_PYTHON = Path(os.environ.get("RDQUANT_QLIB_PYTHON", Path.home() / "qlibref" / "bin" / "python"))

_QLIB_SCRIPT = """
import json, sys, warnings
import pandas as pd
from qlib.contrib.evaluate import risk_analysis
warnings.simplefilter("ignore")
r = pd.Series(json.loads(sys.stdin.read()))
out = {}
for mode in ("sum", "product"):
    out[mode] = risk_analysis(r, freq="day", mode=mode)["risk"].to_dict()
out["n252"] = risk_analysis(r, N=252, freq=None)["risk"].to_dict()
print(json.dumps(out))
"""


@pytest.mark.qlib
def test_matches_qlib_risk_analysis():
    if not QLIB_PYTHON.exists():
        pytest.skip(f"needs pyqlib at {QLIB_PYTHON}")
    r = _report(250, seed=3)["return"]
    done = subprocess.run(
        [str(QLIB_PYTHON), "-c", _QLIB_SCRIPT],
        input=json.dumps(r.tolist()),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ref = json.loads(done.stdout.strip().splitlines()[-1])
    ours = {"sum": risk_analysis(r), "product": risk_analysis(r, mode="product"), "n252": risk_analysis(r, n=252)}
    for key, m in ours.items():
        for name, value in m.to_dict().items():
            assert value == pytest.approx(ref[key][name], rel=1e-10, abs=1e-15), (key, name)


# ---- figures and HTML -------------------------------------------------------------------------------


def _ic_series(n: int = 80) -> tuple[pd.Series, pd.Series]:
    rng = np.random.default_rng(1)
    idx = pd.bdate_range("2021-01-04", periods=n)
    ic = pd.Series(rng.normal(0.03, 0.1, n), idx)
    ic.iloc[5] = np.nan  # a day with too few pairs
    return ic, pd.Series(rng.normal(0.04, 0.1, n), idx)


@pytest.fixture(scope="module")
def figures():
    rep = _report()
    ic, ric = _ic_series()
    return {
        "Cumulative return": cumulative_return_figure(rep),
        "Drawdown": drawdown_figure(rep),
        "IC": ic_figure(ic, ric, window=10),
        "Quantiles": quantile_returns_figure([-0.002, -0.0005, 0.0, 0.001, 0.003]),
    }


def test_figures_save_as_png_without_touching_pyplot_or_the_backend(tmp_path, figures):
    import matplotlib.pyplot as plt

    backend, open_figures = matplotlib.get_backend(), plt.get_fignums()
    for name, fig in figures.items():
        path = save_png(fig, tmp_path / "png" / f"{name}.png", dpi=50)
        data = path.read_bytes()
        assert data.startswith(PNG) and len(data) > 5_000, name
    assert plt.get_fignums() == open_figures
    assert matplotlib.get_backend() == backend


def test_figure_inputs_are_checked():
    with pytest.raises(ReportError, match="lacks column"):
        drawdown_figure(_report().drop(columns="bench"))
    with pytest.raises(ReportError, match="no values"):
        ic_figure(pd.Series([np.nan, np.nan]))
    with pytest.raises(ReportError, match="no quantile returns"):
        quantile_returns_figure([])
    with pytest.raises(ReportError, match="window"):
        ic_figure(_ic_series()[0], window=0)
    with pytest.raises(ReportError, match="3 dates"):
        ic_figure(np.zeros(4), dates=pd.bdate_range("2021-01-04", periods=3))
    with pytest.raises(ReportError, match=r"\(T,\)"):
        ic_figure(np.zeros((2, 4)))


def test_ic_figure_takes_daily_arrays_with_dates():
    ic, ric = _ic_series(30)
    fig = ic_figure(ic.to_numpy(), ric.to_numpy(), window=5, dates=ic.index)
    assert figure_png(fig).startswith(PNG)
    assert fig.axes[0].get_lines()[0].get_xdata()[0] == ic.index[0]


def test_html_report_is_self_contained(tmp_path, figures):
    figs = figures
    sections = [
        MetricsSection("Portfolio <risk>", portfolio_analysis(_report())),
        *[FigureSection.of(title, fig, caption="summed returns", dpi=40) for title, fig in figs.items()],
        TableSection("Daily report", _report().head()),
        TextSection("Expression", "Rank($close) < 3 & <script>alert(1)</script>"),
    ]
    path = write_html_report(tmp_path / "out" / "report.html", sections, title="Run 7")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and "<title>Run 7</title>" in text
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.I)
    assert "<script" not in text and "&lt;script&gt;" in text and "Portfolio &lt;risk&gt;" in text
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == len(figs)
    assert all(base64.b64decode(b).startswith(PNG) for b in images)
    grid = re.search(r"<h2>Portfolio &lt;risk&gt;</h2>\s*<table>(.*?)</table>", text, re.S).group(1)
    assert "<th>excess_return_with_cost</th>" in grid and grid.count("<tr>") == 6  # header + 5 metrics


def test_html_report_from_a_mapping_and_bad_sections(figures):
    text = html_report(
        {"fig": figures["Quantiles"], "metrics": {"ic": 0.05, "n": 3, "bad": float("nan")}, "note": "plain"}
    )
    assert text.count("data:image/png;base64,") == 1 and ">NaN<" in text and ">3<" in text
    with pytest.raises(ReportError, match="cannot render"):
        html_report({"x": object()})
    with pytest.raises(ReportError, match="not a PNG"):
        html_report([FigureSection("x", b"GIF89a")])
    with pytest.raises(ReportError, match="sections must be"):
        html_report(["just a string"])
    assert figure_png(figures["Drawdown"]).startswith(PNG)


def test_the_cli_loads_matplotlib_only_when_a_figure_is_drawn():
    """Every `rdquant` command imports the report module; matplotlib (~0.6 s) loads with the first figure."""
    code = (
        "import sys; import quantcore.cli, quantcore.report as R; assert 'matplotlib' not in sys.modules; "
        "import pandas as pd; R.html_report({'m': {'IC': 0.1}}); assert 'matplotlib' not in sys.modules; "
        "r = pd.DataFrame({'return': [0.01, -0.02], 'bench': [0.0, 0.0], 'cost': [0.0, 0.0]}, "
        "index=pd.date_range('2020-01-01', periods=2)); fig = R.cumulative_return_figure(r); "
        "assert 'matplotlib' in sys.modules and '<img' in R.html_report({'cum': fig})"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
