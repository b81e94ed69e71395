"""Random alpha expressions in qlib syntax, drawn from a small grammar: what the synthetic market plants.

An expression is built in three steps, each drawn at random:

(a) a series: a price field ($close, $open, $high, $low, $vwap), $volume, or a scale-free transform of
    the bar (one-day return, overnight gap, intraday move, day range, vwap gap, close location in the
    range, Log($volume), log volume change, volume relative to its w-day mean, absolute return);
(b) an operator over it: a w-day change (x/Ref(x, w) - 1), a rolling statistic (Mean, EMA, WMA, Std,
    Skew, Kurt, Max, Min, Med, Quantile, Rank, IdxMax, IdxMin, Slope, Rsquare, Resi, Sum, Delta), a
    rolling Corr/Cov of two series, the ratio or difference of two rolling statistics, or a rolling
    statistic of a rolling statistic;
(c) a normalisation wherever the result would carry price or volume units (divide by $close, or
    x/Mean(x, w) - 1), so that its cross-sectional ranks compare instruments and not price levels.

Windows are any integer in [3, 60]. Most draws (rolling statistics of returns, gaps, ranges and log
volume; Skew/Kurt; correlations other than close with log volume; spreads; nested statistics) lie
outside Alpha158's families; the rest are relatives of them at other windows or on other fields.
The grammar knows nothing about data: `quantcore.data.synthetic` rejects degenerate draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Callable, Mapping

import numpy as np

__all__ = ["Unit", "Series", "DrawnAlpha", "MIN_WINDOW", "MAX_WINDOW", "draw_alpha"]

MIN_WINDOW, MAX_WINDOW = 3, 60  # window range of every drawn operator (Kurt needs 4; it gets max(w, 4))


class Unit(Enum):
    """What a series' values are measured in: decides how its statistics are made scale-free."""

    PRICE = "price"  # a price level: compare across instruments only after dividing by a price
    VOLUME = "volume"  # a share count: compare only relative to the instrument's own volume
    RATIO = "ratio"  # already scale-free (a return, a log, a correlation, a position in a range)


@dataclass(frozen=True)
class Series:
    """A qlib expression with its unit and the words and short tag that describe it."""

    text: str
    unit: Unit
    words: str  # e.g. "one-day return", for descriptions
    tag: str  # e.g. "ret", for names


@dataclass(frozen=True)
class DrawnAlpha:
    """One random expression: qlib text, an identifier-safe name and a one-line description."""

    expression: str
    name: str
    description: str


PRICES = tuple(Series(f"${f}", Unit.PRICE, f, f) for f in ("close", "open", "high", "low", "vwap"))
VOLUME = Series("$volume", Unit.VOLUME, "volume", "volume")
_RET = "$close/Ref($close, 1) - 1"
# Scale-free transforms of one bar; "{w}" is filled with a drawn window.
RATIO_SERIES = (
    Series(_RET, Unit.RATIO, "one-day return", "ret"),
    Series(f"Abs({_RET})", Unit.RATIO, "absolute one-day return", "absret"),
    Series("$open/Ref($close, 1) - 1", Unit.RATIO, "overnight gap", "gap"),
    Series("($close-$open)/$open", Unit.RATIO, "intraday move", "intraday"),
    Series("($high-$low)/$close", Unit.RATIO, "day range", "range"),
    Series("$vwap/$close - 1", Unit.RATIO, "vwap gap to the close", "vwapgap"),
    Series("($close-$low)/($high-$low+1e-12)", Unit.RATIO, "close location in the day range", "clv"),
    Series("Log($volume)", Unit.RATIO, "log volume", "logvol"),
    Series("Log($volume/Ref($volume, 1))", Unit.RATIO, "log volume change", "dlogvol"),
    Series("$volume/Mean($volume, {w})", Unit.RATIO, "volume relative to its {w}-day mean", "relvol{w}"),
)

# Rolling operators by what they do to units: location keeps them, dispersion keeps them (and may be
# signed), shape is scale-free. Words for descriptions.
LOCATION = MappingProxyType(
    {
        "Mean": "mean",
        "EMA": "exponential mean",
        "WMA": "weighted mean",
        "Max": "maximum",
        "Min": "minimum",
        "Med": "median",
        "Quantile": "quantile",
    }
)
DISPERSION = MappingProxyType(
    {"Std": "standard deviation", "Delta": "change", "Slope": "trend slope", "Resi": "trend residual"}
)
SHAPE = MappingProxyType(
    {
        "Skew": "skewness",
        "Kurt": "kurtosis",
        "Rank": "rank of the latest value",
        "Rsquare": "trend R-squared",
        "IdxMax": "position of the maximum",
        "IdxMin": "position of the minimum",
    }
)
ROLLING = MappingProxyType({**LOCATION, **DISPERSION, **SHAPE, "Sum": "sum"})
# Second-level statistics of an already scale-free result (a "statistic of a statistic").
OUTER = ("Mean", "EMA", "Std", "Delta", "Max", "Min", "Rank", "Skew")


def draw_alpha(rng: np.random.Generator) -> DrawnAlpha:
    """One random scale-free expression (see module docstring); deterministic given the generator state."""
    weights = np.array([weight for weight, _ in _FORMS.values()])
    _, build = list(_FORMS.values())[rng.choice(len(_FORMS), p=weights / weights.sum())]
    return build(rng)


# ---- forms --------------------------------------------------------------------------------------
def _level(rng: np.random.Generator) -> DrawnAlpha:
    """A scale-free series as it is, e.g. the intraday move."""
    x = _ratio_series(rng)
    return DrawnAlpha(x.text, x.tag, x.words)


def _change(rng: np.random.Generator) -> DrawnAlpha:
    """w-day relative change of a price or of volume: x/Ref(x, w) - 1."""
    x = PRICES[rng.integers(len(PRICES))] if rng.random() < 0.75 else VOLUME
    w = _window(rng)
    return DrawnAlpha(f"{x.text}/Ref({x.text}, {w}) - 1", f"chg_{x.tag}_{w}", f"{w}-day change of {x.words}")


def _rolling_alpha(rng: np.random.Generator) -> DrawnAlpha:
    """A rolling statistic of one series, normalised when it carries units."""
    u = rng.random()
    x = PRICES[rng.integers(len(PRICES))] if u < 0.3 else VOLUME if u < 0.4 else _ratio_series(rng)
    op = _pick(rng, ROLLING if x.unit is Unit.RATIO else {**LOCATION, **DISPERSION, **SHAPE})
    w = _window(rng, op)
    stat = _call(rng, op, x.text, w)
    text = _scale_free(stat, op, x, w)
    return DrawnAlpha(text, f"{op.lower()}_{x.tag}_{w}", f"{w}-day {_op_words(op, stat)} of {x.words}")


def _pair(rng: np.random.Generator) -> DrawnAlpha:
    """Rolling Corr of two series (not two price levels, nor volume with its log: those move together), or
    Cov of two scale-free ones."""
    if rng.random() < 0.75:
        x = _any_series(rng)
        while True:
            y = _any_series(rng)
            two_prices = x.unit is Unit.PRICE and y.unit is Unit.PRICE  # e.g. $close with $open: always ~1
            if y.tag != x.tag and {x.tag, y.tag} != {"volume", "logvol"} and not two_prices:
                break
        op = "Corr"
    else:
        x, y = _ratio_series(rng), _ratio_series(rng)
        while y.tag == x.tag:
            y = _ratio_series(rng)
        op = "Cov"
    w = _window(rng)
    words = "correlation" if op == "Corr" else "covariance"
    return DrawnAlpha(
        f"{op}({x.text}, {y.text}, {w})",
        f"{op.lower()}_{x.tag}_{y.tag}_{w}",
        f"{w}-day {words} of {x.words} with {y.words}",
    )


def _spread(rng: np.random.Generator) -> DrawnAlpha:
    """Two rolling statistics compared: a ratio for prices/volume, a difference or a dispersion ratio otherwise."""
    u = rng.random()
    if u < 0.4:  # prices: e.g. EMA($vwap, 7)/Max($high, 31) - 1
        x, y = (PRICES[i] for i in rng.integers(len(PRICES), size=2))
        a, b = _pick(rng, LOCATION), _pick(rng, LOCATION)
        w1, w2 = _two_windows(rng)
        sa, sb = _call(rng, a, x.text, w1), _call(rng, b, y.text, w2)
        return DrawnAlpha(
            f"{sa}/{sb} - 1",
            f"{a.lower()}{w1}_{x.tag}_{b.lower()}{w2}_{y.tag}",
            f"{w1}-day {_op_words(a, sa)} of {x.words} over the {w2}-day {_op_words(b, sb)} of {y.words}",
        )
    if u < 0.55:  # volume: short over long mean
        w1, w2 = _two_windows(rng)
        return DrawnAlpha(
            f"Mean($volume, {w1})/Mean($volume, {w2}) - 1", f"vma{w1}_{w2}", f"{w1}-day over {w2}-day mean volume"
        )
    x = _ratio_series(rng)
    w1, w2 = _two_windows(rng)
    if rng.random() < 0.5:  # e.g. Std(ret, 5)/Std(ret, 40): short over long volatility
        op = "Std" if rng.random() < 0.7 else "Mean"
        if op == "Mean" and x.tag in ("ret", "gap", "intraday", "dlogvol", "vwapgap"):
            op = "Std"  # signed series: a ratio of means can divide by ~0
        return DrawnAlpha(
            f"{op}({x.text}, {w1})/{op}({x.text}, {w2})",
            f"{op.lower()}{w1}_{op.lower()}{w2}_{x.tag}",
            f"{w1}-day over {w2}-day {ROLLING[op]} of {x.words}",
        )
    a = _pick(rng, LOCATION)
    sa, sb = _call(rng, a, x.text, w1), _call(rng, a, x.text, w2)
    return DrawnAlpha(
        f"{sa} - {sb}",
        f"{a.lower()}{w1}_{a.lower()}{w2}_{x.tag}",
        f"{w1}-day minus {w2}-day {_op_words(a, sa)} of {x.words}",
    )


def _nested(rng: np.random.Generator) -> DrawnAlpha:
    """A statistic of a scale-free statistic, e.g. Std(Corr($close, Log($volume), 10), 20)."""
    inner = _pair(rng) if rng.random() < 0.3 else _rolling_alpha(rng)
    op = OUTER[rng.integers(len(OUTER))]
    w = _window(rng, op)
    return DrawnAlpha(
        f"{op}({inner.expression}, {w})",
        f"{op.lower()}{w}_{inner.name}",
        f"{w}-day {ROLLING[op]} of the {inner.description}",
    )


# Each form with its relative weight; rolling statistics of one series are the broadest region.
_FORMS: Mapping[str, tuple[float, Callable[[np.random.Generator], DrawnAlpha]]] = MappingProxyType(
    {
        "level": (1.0, _level),
        "change": (1.5, _change),
        "rolling": (4.0, _rolling_alpha),
        "pair": (2.0, _pair),
        "spread": (1.5, _spread),
        "nested": (1.5, _nested),
    }
)


# ---- pieces -------------------------------------------------------------------------------------
def _window(rng: np.random.Generator, op: str = "") -> int:
    w = int(rng.integers(MIN_WINDOW, MAX_WINDOW + 1))
    return max(w, 4) if op == "Kurt" else w


def _two_windows(rng: np.random.Generator) -> tuple[int, int]:
    """A short and a longer window, at least 5 days apart (close windows give a near-constant ratio)."""
    while True:
        a, b = sorted(int(v) for v in rng.integers(MIN_WINDOW, MAX_WINDOW + 1, size=2))
        if b - a >= 5:
            return a, b


def _pick(rng: np.random.Generator, ops: Mapping[str, str]) -> str:
    names = list(ops)
    return names[rng.integers(len(names))]


def _ratio_series(rng: np.random.Generator) -> Series:
    s = RATIO_SERIES[rng.integers(len(RATIO_SERIES))]
    if "{w}" not in s.text:
        return s
    w = _window(rng)
    return Series(s.text.format(w=w), s.unit, s.words.format(w=w), s.tag.format(w=w))


def _any_series(rng: np.random.Generator) -> Series:
    u = rng.random()
    return PRICES[rng.integers(len(PRICES))] if u < 0.25 else VOLUME if u < 0.35 else _ratio_series(rng)


def _call(rng: np.random.Generator, op: str, x: str, w: int) -> str:
    if op == "Quantile":
        return f"Quantile({x}, {w}, {round(float(rng.uniform(0.1, 0.9)), 2)})"
    return f"{op}({x}, {w})"


def _op_words(op: str, call: str) -> str:
    if op == "Quantile":
        return f"{call.rsplit(', ', 1)[1].rstrip(')')}-quantile"
    return ROLLING[op]


def _scale_free(stat: str, op: str, x: Series, w: int) -> str:
    """Divide out price or volume units: by $close for prices, by the series' own level for volume."""
    if x.unit is Unit.RATIO or op in SHAPE:
        return stat
    if x.unit is Unit.PRICE:
        return f"{stat}/$close - 1" if op in LOCATION else f"{stat}/$close"
    return f"{stat}/$volume - 1" if op in LOCATION else f"{stat}/Mean($volume, {w})"
