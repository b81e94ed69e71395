"""The offline factor search: seeded enumeration of small typed expression trees plus genetic
programming over everything already scored, steered by what paid off.

Nothing here knows any market's answer. The grammar is qlib's expression language with one prior
every quant applies: a factor must be *scale-free* across instruments (a raw price level ranks stocks
by their share price, not by anything that predicts returns). Each sub-expression therefore carries a
unit (price, volume, log level, ratio, unknown) and a candidate's root must be a ratio.

Where trees come from (every choice from `random.Random(f"{seed}:{iteration}:...")`, so a run, its
resume and its replay propose exactly the same things given the same store):

* **Regions** of the grammar, each named after the public literature that studies it (short-term
  reversal and momentum, volatility, higher moments, liquidity and volume, price-volume co-movement,
  range position, intraday moves, trend quality, VWAP gaps), plus the bare grammar: a recursive typed
  sampler over every rolling, pairwise, element-wise and cross-sectional operator. Fields, windows
  (a general 2-60 grid) and operators inside a region are free; a region is chosen with a weight that
  grows with the screening scores its trials earned.
* **Genetic programming** over the pool (the project's screened trials on this market with their
  scores, the library, and the base feature set's expressions as seeds): tournament selection, then
  window, operator, field and constant substitution, subtree replacement by a fresh typed subtree,
  smoothing wraps, and typed subtree crossover.

A candidate already tried in the project (same canonical form, or the same form up to an affine map)
is never proposed again, so a later run continues where earlier runs stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Iterable, Sequence

from quantcore.errors import ExpressionError
from quantcore.expr.ast import (
    EMA,
    Binary,
    Const,
    CrossSection,
    Expanding,
    Field,
    If,
    Mask,
    Node,
    Ref,
    Rolling,
    Unary,
    depth,
    node_count,
    walk,
)
from quantcore.expr.canonical import canonical
from quantcore.expr.parser import parse

__all__ = [
    "Unit",
    "Region",
    "REGIONS",
    "WINDOWS",
    "ScoredExpression",
    "SearchPool",
    "Proposal",
    "GrammarSearch",
    "unit_of",
    "field_units",
    "affine_core",
    "skeleton",
]


class Unit(Enum):
    PRICE = "price"  # a price level ($close, Mean($close, 5))
    VOLUME = "volume"  # shares or money traded
    LOG = "log"  # the log of a level: differences of it are scale-free, the level is not
    RATIO = "ratio"  # scale-free: comparable across instruments
    RAW = "raw"  # a field of unknown unit: only time-series-normalised forms are scale-free
    OTHER = "other"  # mixed units (price x volume, ...): never a candidate's root


PRICE_FIELDS = ("close", "open", "high", "low", "vwap")
VOLUME_FIELDS = ("volume", "amount", "money")
RATIO_FIELDS = ("change",)  # qlib's $change: close-to-close return
NON_SIGNAL_FIELDS = ("factor", "industry")  # adjustment factor and group codes: not series to mine

#: The window grid: dense at short horizons, up to three months.
WINDOWS = (2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60)
QUANTILES = (0.1, 0.2, 0.25, 0.5, 0.75, 0.8, 0.9)
_MIN_WINDOW = {"Skew": 3, "Kurt": 4, "Corr": 3, "Cov": 3, "Slope": 3, "Rsquare": 3, "Resi": 3, "Std": 2}

# rolling operators by how they scale their input: linear ones keep the unit, the rest are unit-free
_LOCATION_OPS = ("Mean", "EMA", "WMA", "Med", "Max", "Min", "Quantile")  # same unit, same sign as the input
_SPREAD_OPS = ("Std", "Mad", "Slope", "Resi")  # same unit, a dispersion or a trend
_FREE_OPS = ("Rank", "IdxMax", "IdxMin", "Rsquare", "Skew", "Kurt")  # unit-free outputs
_SWAPS: dict[str, tuple[str, ...]] = {
    **{op: tuple(o for o in ("Mean", "EMA", "WMA", "Med") if o != op) for op in ("Mean", "EMA", "WMA", "Med")},
    "Max": ("Min", "Quantile"),
    "Min": ("Max", "Quantile"),
    "Quantile": ("Max", "Min", "Med"),
    "Std": ("Mad",),
    "Mad": ("Std",),
    "Slope": ("Resi", "Delta"),
    "Resi": ("Slope",),
    "Delta": ("Slope",),
    "Sum": ("Mean",),
    "Skew": ("Kurt",),
    "Kurt": ("Skew",),
    "IdxMax": ("IdxMin",),
    "IdxMin": ("IdxMax",),
    "Rank": ("Rsquare",),
    "Rsquare": ("Rank",),
    "Corr": ("Cov",),
    "Cov": ("Corr",),
}
#: Every one-input rolling operator: an operator substitution may leave its family (a trend for a
#: level, a dispersion for a mean...); the unit check then keeps only scale-free results.
_ROLLING_UNARY = _LOCATION_OPS + _SPREAD_OPS + _FREE_OPS + ("Sum", "Delta")
_EPS = "1e-12"


def field_units(fields: Iterable[str]) -> dict[str, Unit]:
    """The unit of each market field, from qlib's naming conventions; unknown fields are RAW."""
    out = {}
    for f in fields:
        low = f.lower()
        if low in NON_SIGNAL_FIELDS:
            continue
        out[f] = (
            Unit.PRICE
            if low in PRICE_FIELDS
            else Unit.VOLUME
            if low in VOLUME_FIELDS
            else Unit.RATIO
            if low in RATIO_FIELDS
            else Unit.RAW
        )
    return out


def unit_of(node: Node, units: dict[str, Unit]) -> Unit:
    """The unit of an expression tree (see `Unit`); OTHER where units mix."""
    if isinstance(node, Field):
        return units.get(node.name, Unit.OTHER)
    if isinstance(node, Const):
        return Unit.RATIO
    if isinstance(node, Unary):
        inner = unit_of(node.x, units)
        if node.op == "Log":
            return Unit.RATIO if inner is Unit.RATIO else Unit.LOG if inner in (Unit.PRICE, Unit.VOLUME) else Unit.OTHER
        return Unit.RATIO if node.op in ("Sign", "Not") else inner
    if isinstance(node, Binary):
        a, b = unit_of(node.left, units), unit_of(node.right, units)
        if node.op in ("Add", "Sub", "Greater", "Less"):
            if isinstance(node.right, Const) or isinstance(node.left, Const):  # an offset or an epsilon
                return b if isinstance(node.left, Const) else a
            if a == b:
                return Unit.RATIO if a is Unit.LOG and node.op == "Sub" else a
            return Unit.OTHER
        if node.op == "Div":  # dimensional analysis: a ratio scales, equal units cancel
            if a == b and a in (Unit.PRICE, Unit.VOLUME, Unit.RATIO):
                return Unit.RATIO
            return a if b is Unit.RATIO else Unit.OTHER
        if node.op == "Mul":
            if {a, b} == {Unit.PRICE, Unit.VOLUME}:
                return Unit.RATIO  # price x shares is money: comparable across instruments
            return b if a is Unit.RATIO else a if b is Unit.RATIO else Unit.OTHER
        return Unit.RATIO if node.op in ("Gt", "Ge", "Lt", "Le", "Eq", "Ne", "And", "Or") else Unit.OTHER
    if isinstance(node, Ref):
        return unit_of(node.x, units)
    if isinstance(node, EMA):
        return unit_of(node.x, units)
    if isinstance(node, Rolling):
        ins = [unit_of(x, units) for x in node.inputs]
        if node.op == "Corr":
            return Unit.RATIO if all(u is not Unit.OTHER for u in ins) else Unit.OTHER
        if node.op == "Cov":
            return Unit.RATIO if all(u is Unit.RATIO for u in ins) else Unit.OTHER
        if node.op in _FREE_OPS or node.op == "Count":
            return Unit.RATIO if ins[0] is not Unit.OTHER else Unit.OTHER
        if node.op in ("Std", "Mad", "Slope", "Resi", "Delta") and ins[0] is Unit.LOG:
            return Unit.RATIO  # dispersion and changes of a log level are scale-free
        return ins[0]
    if isinstance(node, CrossSection):
        return Unit.RATIO
    return Unit.OTHER


def affine_core(node: Node) -> Node:
    """`node` without outer affine maps (adding, subtracting, multiplying or dividing by a constant,
    negation): two expressions with the same core carry the same information for a model."""
    while True:
        if isinstance(node, Unary) and node.op == "Neg":
            node = node.x
        elif isinstance(node, Binary) and node.op in ("Add", "Sub", "Mul") and isinstance(node.right, Const):
            node = node.left
        elif isinstance(node, Binary) and node.op in ("Add", "Mul") and isinstance(node.left, Const):
            node = node.right
        elif isinstance(node, Binary) and node.op == "Sub" and isinstance(node.left, Const):
            node = node.right
        elif isinstance(node, Binary) and node.op == "Div" and isinstance(node.right, Const):
            node = node.left
        else:
            return node


def skeleton(node: Node) -> str:
    """The canonical text of the affine core with every window and lag replaced by `w`: one idea at
    several windows shares a skeleton (a cluster)."""
    core = affine_core(node)

    def strip(n: Node) -> Node:
        kids = {f.name: getattr(n, f.name) for f in dataclasses.fields(n)}
        for name, value in kids.items():
            if isinstance(value, tuple):
                kids[name] = tuple(strip(v) for v in value)
            elif _is_node(value):
                kids[name] = strip(value)
        if isinstance(n, Rolling):
            kids["window"] = 1
        elif isinstance(n, Ref):
            kids["periods"] = 1
        elif isinstance(n, EMA):
            kids["spec"] = 1.0
        return type(n)(**kids)

    return canonical(strip(core))


_NODE_TYPES = (Field, Const, Unary, Binary, If, Ref, Rolling, Expanding, EMA, Mask, CrossSection)


def _is_node(value) -> bool:
    return isinstance(value, _NODE_TYPES)


# ---- the grammar's regions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Region:
    """A region of the grammar named after the literature that studies it; `draw(g)` returns one
    expression of the region with fields, windows and operators chosen by the sampler `g`."""

    name: str
    idea: str
    source: str
    draw: Callable[["_Sampler"], str]


class _Sampler:
    """Random typed sub-expressions over one market's fields (all draws from one `random.Random`)."""

    def __init__(self, rng: random.Random, units: dict[str, Unit], op_weight: Callable[[str], float]):
        self.rng, self.units, self.op_weight = rng, units, op_weight
        self.prices = [f"${f}" for f, u in units.items() if u is Unit.PRICE]
        self.volumes = [f"${f}" for f, u in units.items() if u is Unit.VOLUME]
        self.ratios = [f"${f}" for f, u in units.items() if u is Unit.RATIO]
        self.raws = [f"${f}" for f, u in units.items() if u is Unit.RAW]

    def pick(self, seq: Sequence):
        return seq[self.rng.randrange(len(seq))]

    def op(self, ops: Sequence[str]) -> str:
        weights = [self.op_weight(o) for o in ops]
        return self.rng.choices(list(ops), weights=weights)[0]

    def window(self, op: str = "", low: int = 2, high: int = 60) -> int:
        grid = [w for w in WINDOWS if max(low, _MIN_WINDOW.get(op, 2)) <= w <= high]
        return self.pick(grid) if grid else WINDOWS[-1]

    def other_window(self, w: int) -> int:
        """A window longer than `w` (shorter when `w` is the grid's longest)."""
        return self.window(low=w + 1) if w < WINDOWS[-1] else self.window(low=3, high=w - 1)

    def price(self) -> str:
        return self.pick(self.prices) if self.prices else self.level()

    def level(self) -> str:
        """A positive level series: a price, a volume, or an unknown field."""
        pool = self.prices + self.volumes + self.raws
        return self.pick(pool)

    def ret(self) -> str:
        """A one-period or multi-period simple return of a price (or a ratio field)."""
        if self.ratios and self.rng.random() < 0.3:
            return self.pick(self.ratios)
        p = self.price()
        lag = 1 if self.rng.random() < 0.7 else self.window(high=10)
        return f"{p}/Ref({p}, {lag}) - 1"

    def abs_ret(self) -> str:
        """The size of a move: the absolute one-period return."""
        return f"Abs({self.ret()})"

    def volume_change(self) -> str:
        if not self.volumes:
            return self.ret()
        v = self.pick(self.volumes)
        return self.pick(
            (
                f"Log({v} + 1) - Log(Ref({v}, 1) + 1)",
                f"{v}/(Mean({v}, {self.window(low=5)}) + {_EPS}) - 1",
                f"Log({v} + 1) - Mean(Log({v} + 1), {self.window(low=5)})",
            )
        )

    def intraday(self) -> str:
        c, o = self._price("close"), self._price("open")
        h, lo = self._price("high"), self._price("low")
        return self.pick(
            (
                f"({c} - {o})/{o}",
                f"({h} - {lo})/{c}",
                f"({c} - {lo})/({h} - {lo} + {_EPS})",
                f"{o}/Ref({c}, 1) - 1",
                f"({h} - {c})/{c}",
                f"({c} - {lo})/{c}",
            )
        )

    def _price(self, name: str) -> str:
        return f"${name}" if name in self.units else self.price()

    def ratio(self, depth: int = 2) -> str:
        """A scale-free series from the bare grammar (recursive, at most `depth` operators deep)."""
        r = self.rng.random()
        if depth <= 0 or r < 0.25:
            return self.pick((self.ret, self.ret, self.intraday, self.volume_change, self._level_ratio))()
        if r < 0.6:
            op = self.op(_LOCATION_OPS + _SPREAD_OPS + _FREE_OPS + ("Sum", "Delta"))
            inner, w = self.ratio(depth - 1), self.window(op)
            if op == "Quantile":
                return f"Quantile({inner}, {w}, {self.pick(QUANTILES)})"
            if op in ("IdxMax", "IdxMin"):
                return f"{op}({inner}, {w})/{w}"
            return f"{op}({inner}, {w})" if op != "EMA" else f"EMA({inner}, {w})"
        if r < 0.75:  # co-movement of two series: correlation is scale-free, so either may be a level
            op = self.op(("Corr", "Corr", "Cov"))
            a = self.ratio(depth - 1) if op == "Cov" or self.rng.random() < 0.6 else self.level()
            b = (
                self.ratio(0)
                if op == "Cov"
                else self.pick((self.level, self.ret, self.volume_change, self.abs_ret, self.intraday))()
            )
            return f"{op}({a}, {b}, {self.window(op, low=3)})"
        if r < 0.9:
            a, w = self.ratio(depth - 1), self.window(low=3)
            return self.pick(
                (
                    f"({a})/(Std({a}, {w}) + {_EPS})",
                    f"(({a}) - Mean({a}, {w}))/(Std({a}, {w}) + {_EPS})",
                    f"Abs({a})",
                    f"Mean({a}, {w}) - Mean({a}, {self.other_window(w)})",
                )
            )
        a, b = self.ratio(depth - 1), self.ratio(depth - 1)
        return self.pick((f"({a}) * ({b})", f"CSRank({a}) - CSRank({b})", f"CSRank({a}) + CSRank({b})"))

    def _level_ratio(self) -> str:
        """A level turned scale-free: relative to itself over a window, or a unit-free rolling statistic."""
        x, w = self.level(), self.window()
        op = self.op(_LOCATION_OPS + _SPREAD_OPS + ("Rank", "IdxMax", "IdxMin", "Rsquare", "Ref"))
        if op == "Ref":
            return f"Ref({x}, {w})/{x} - 1"
        if op == "Quantile":
            return f"Quantile({x}, {w}, {self.pick(QUANTILES)})/{x} - 1"
        if op in _LOCATION_OPS:
            return f"{op}({x}, {self.window(op)})/{x} - 1"
        if op in _SPREAD_OPS:
            w = self.window(op)
            return f"{op}({x}, {w})/(Mean({x}, {w}) + {_EPS})"
        if op in ("IdxMax", "IdxMin"):
            return f"{op}({x}, {w})/{w}"
        return f"{op}({x}, {self.window(op)})"


def _momentum(g: _Sampler) -> str:
    p, w = g.price(), g.window()
    return g.pick(
        (
            f"Ref({p}, {w})/{p} - 1",
            f"{g.op(_LOCATION_OPS[:4])}({p}, {w})/{p} - 1",
            f"Sum({g.ret()}, {w})",
            f"Ref({p}, {w})/Ref({p}, {g.other_window(w)}) - 1",
        )
    )


def _volatility(g: _Sampler) -> str:
    w = g.window("Std")
    c = g._price("close")
    return g.pick(
        (
            f"{g.op(('Std', 'Mad'))}({g.ret()}, {w})",
            f"Mean(Abs({g.ret()}), {w})",
            f"(Max({g._price('high')}, {w}) - Min({g._price('low')}, {w}))/{c}",
            f"Std({g.ret()}, {w})/(Std({g.ret()}, {g.other_window(w)}) + {_EPS})",
        )
    )


def _moments(g: _Sampler) -> str:
    op = g.op(("Skew", "Kurt"))
    return f"{op}({g.pick((g.ret, g.intraday, g.volume_change))()}, {g.window(op, low=5)})"


def _liquidity(g: _Sampler) -> str:
    if not g.volumes:
        return g.ratio()
    v, w, c = g.pick(g.volumes), g.window(low=3), g._price("close")
    return g.pick(
        (
            f"{v}/(Mean({v}, {w}) + {_EPS}) - 1",
            f"Std({v}, {w})/(Mean({v}, {w}) + {_EPS})",
            f"Log({v} + 1)",
            f"{g.op(_LOCATION_OPS)}(Log({v} + 1), {w})",
            f"Log({v} * {c} + 1)",
            f"Log(Mean({v}, {w}) + 1) - Log(Mean({v}, {g.other_window(w)}) + 1)",
            f"Mean(Abs({g.ret()})/Log({v} * {c} + 2), {w})",
            f"Rank({v}, {w})",
            f"Mean({g.volume_change()}, {w})",
        )
    )


def _price_volume(g: _Sampler) -> str:
    a = g.pick((g.price, g.ret, g.intraday))()
    b = g.volume_change() if g.rng.random() < 0.4 else (f"Log({g.pick(g.volumes)} + 1)" if g.volumes else g.level())
    return f"Corr({a}, {b}, {g.window('Corr', low=3)})"


def _range_position(g: _Sampler) -> str:
    w, c, h, lo = g.window(), g._price("close"), g._price("high"), g._price("low")
    return g.pick(
        (
            f"({c} - Min({lo}, {w}))/(Max({h}, {w}) - Min({lo}, {w}) + {_EPS})",
            f"Max({h}, {w})/{c} - 1",
            f"Min({lo}, {w})/{c} - 1",
            f"{g.op(('IdxMax', 'IdxMin'))}({g.price()}, {w})/{w}",
            f"Quantile({c}, {w}, {g.pick(QUANTILES)})/{c} - 1",
            f"Rank({c}, {w})",
        )
    )


def _intraday(g: _Sampler) -> str:
    x = g.intraday()
    return g.pick(
        (
            x,
            f"{g.op(_LOCATION_OPS[:4] + ('Sum',))}({x}, {g.window()})",
            f"{g.op(_SPREAD_OPS[:2])}({x}, {g.window('Std')})",
        )
    )


def _trend(g: _Sampler) -> str:
    p, op = g.level(), g.op(("Slope", "Rsquare", "Resi"))
    w = g.window(op)
    return f"{op}({p}, {w})" + ("" if op == "Rsquare" else f"/(Mean({p}, {w}) + {_EPS})")


def _vwap(g: _Sampler) -> str:
    v = "$vwap" if "vwap" in g.units else g.price()
    c, w = g._price("close"), g.window()
    return g.pick(
        (
            f"{v}/{c} - 1",
            f"Mean({v}/{c} - 1, {w})",
            f"Corr({v}, {g.level()}, {g.window('Corr', low=3)})",
            f"({v} - Mean({v}, {w}))/{c}",
        )
    )


REGIONS: tuple[Region, ...] = (
    Region(
        "reversal_momentum",
        "past returns over a window predict the next ones (reversal at short horizons, momentum at long ones)",
        "Jegadeesh (1990); Lehmann (1990); Jegadeesh & Titman (1993); Alpha158 ROC/MA",
        _momentum,
    ),
    Region("volatility", "recent volatility is priced", "Ang, Hodrick, Xing & Zhang (2006); Alpha158 STD", _volatility),
    Region(
        "higher_moments",
        "skewness and kurtosis of recent returns are priced",
        "Harvey & Siddique (2000); Amaya, Christoffersen, Jacobs & Vasquez (2015)",
        _moments,
    ),
    Region(
        "liquidity_volume",
        "illiquidity and abnormal volume carry premia",
        "Amihud (2002); Gervais, Kaniel & Mingelgrin (2001); Alpha158 VMA/VSTD",
        _liquidity,
    ),
    Region(
        "price_volume",
        "co-movement of price and volume predicts returns",
        "Kakushadze (2016), 101 Formulaic Alphas (e.g. #6, #13); Alpha158 CORR/CORD",
        _price_volume,
    ),
    Region(
        "range_position",
        "where the price sits in its recent range predicts mean reversion",
        "George & Hwang (2004); Alpha158 RSV/MAX/MIN/IMAX/IMIN/QTLU",
        _range_position,
    ),
    Region(
        "intraday",
        "intraday and overnight moves behave differently and revert",
        "Lou, Polk & Skouras (2019); Alpha158 KMID/KLEN/KSFT",
        _intraday,
    ),
    Region("trend_quality", "the slope and fit of a recent trend", "Alpha158 BETA/RSQR/RESI", _trend),
    Region("vwap_gap", "closing away from the volume-weighted price", "Kakushadze (2016), #5, #32, #41", _vwap),
    Region(
        "grammar",
        "any small scale-free tree of the expression grammar",
        "the expression grammar itself",
        lambda g: g.ratio(2),
    ),
)


# ---- the pool the search evolves ------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoredExpression:
    """An expression already scored (a screened trial, a library factor), fitness = |t| of its RankIC."""

    expression: str
    fitness: float
    region: str = ""


@dataclass
class SearchPool:
    """What the search evolves from: scored trials of the project on this market (oldest first), the
    library, and the base feature set's expressions (unscored seeds)."""

    scored: list[ScoredExpression] = field(default_factory=list)
    seeds: list[str] = field(default_factory=list)
    tried: set[str] = field(default_factory=set)  # canonical affine cores already tried or held


@dataclass(frozen=True)
class Proposal:
    expression: str
    region: str
    origin: str  # how it was made: "region reversal_momentum", "mutation(window) of ...", ...


class GrammarSearch:
    """Proposes `k` fresh, scale-free, valid candidates per call (deterministic given the seed, the
    iteration and the pool)."""

    def __init__(self, seed: int = 0, max_nodes: int = 40, max_depth: int = 10):
        self.seed, self.max_nodes, self.max_depth = seed, max_nodes, max_depth

    def propose(
        self, iteration: int, k: int, fields: Iterable[str], pool: SearchPool, salt: str = ""
    ) -> list[Proposal]:
        rng = random.Random(f"{self.seed}:{iteration}:search:{salt}")
        units = field_units(fields)
        region_w, op_w = _payoffs(pool)
        sampler = _Sampler(rng, units, lambda op: op_w.get(op, 1.0))
        if not (sampler.prices or sampler.volumes or sampler.raws):  # nothing but ratio fields: no levels to draw
            return []
        parents = sorted(pool.scored, key=lambda s: -s.fitness)[:128]
        # early on, most candidates come from the regions; as scores accumulate, from evolution
        evolve_share = 0.0 if not parents else min(0.7, 0.45 + len(pool.scored) / 4000)
        seen = set(pool.tried)
        out: list[Proposal] = []
        for _ in range(60 * k):
            if len(out) >= k:
                break
            if rng.random() < evolve_share:
                made = self._offspring(rng, sampler, parents, pool.seeds, units)
            elif pool.seeds and rng.random() < 0.15:
                made = self._offspring(rng, sampler, [], pool.seeds, units)
            else:
                region = rng.choices(REGIONS, weights=[region_w.get(r.name, 1.0) for r in REGIONS])[0]
                made = (region.draw(sampler), region.name, f"region {region.name}")
            if made is None:
                continue
            proposal = self._admit(Proposal(*made), units, seen)
            if proposal is not None:
                out.append(proposal)
        return out

    # ---- evolution ------------------------------------------------------------------------------------
    def _offspring(
        self, rng: random.Random, g: _Sampler, parents: list[ScoredExpression], seeds: list[str], units: dict[str, Unit]
    ) -> tuple[str, str, str] | None:
        parent = _tournament(rng, parents) if parents else ScoredExpression(g.pick(seeds), 0.0, "base")
        try:
            tree = parse(parent.expression)
        except ExpressionError:
            return None
        move = rng.random()
        if move < 0.12 and len(parents) > 1:
            other = _tournament(rng, parents)
            try:
                child, what = _crossover(rng, tree, parse(other.expression), units), "crossover"
            except ExpressionError:
                return None
        else:
            moves = (
                ("window", _mutate_window, 0.34),
                ("operator", _mutate_operator, 0.16),
                ("field", _mutate_field, 0.14),
                ("subtree", _mutate_subtree, 0.14),
                ("constant", _mutate_constant, 0.06),
                ("wrap", _wrap, 0.12),
            )
            name, fn, _ = rng.choices(moves, weights=[m[2] for m in moves])[0]
            child, what = fn(rng, g, tree, units), name
        if child is None:
            return None
        try:
            text = canonical(child)
        except ExpressionError:  # a substitution the operator table does not allow
            return None
        return text, parent.region or "evolved", f"{what} of {parent.expression[:80]}"

    def _admit(self, p: Proposal, units: dict[str, Unit], seen: set[str]) -> Proposal | None:
        try:
            node = parse(p.expression)
        except ExpressionError:
            return None
        unit = unit_of(node, units)
        if unit is not Unit.RATIO and not (unit is Unit.LOG and _volume_level(node, units)):
            return None
        if node_count(node) > self.max_nodes or depth(node) > self.max_depth:
            return None
        if any(isinstance(n, Field) and n.name not in units for n in walk(node)):
            return None
        key = canonical(affine_core(node))
        if key in seen:
            return None
        seen.add(key)
        return Proposal(canonical(node), p.region, p.origin)


def _volume_level(node: Node, units: dict[str, Unit]) -> bool:
    """A log level of traded volume: a liquidity characteristic (Datar, Naik & Radcliffe 1998;
    Amihud 2002) that is compared across instruments as it is, unlike a log price level."""
    return any(isinstance(n, Field) and units.get(n.name) is Unit.VOLUME for n in walk(node)) and not any(
        isinstance(n, Field) and units.get(n.name) is Unit.PRICE for n in walk(node)
    )


def _payoffs(pool: SearchPool) -> tuple[dict[str, float], dict[str, float]]:
    """Weights for regions and operators: mean screening fitness of the trials that used them,
    relative to all trials, shrunk towards 1 with a prior of 20 trials."""
    if not pool.scored:
        return {}, {}
    mean_all = sum(s.fitness for s in pool.scored) / len(pool.scored) or 1.0
    region_sum: dict[str, list[float]] = {}
    op_sum: dict[str, list[float]] = {}
    for s in pool.scored:
        region_sum.setdefault(s.region, []).append(s.fitness)
        for op in _operators(s.expression):
            op_sum.setdefault(op, []).append(s.fitness)

    def weight(values: list[float]) -> float:
        prior = 20.0
        shrunk = (sum(values) + prior * mean_all) / (len(values) + prior)
        return min(3.0, max(0.33, shrunk / mean_all))

    return {k: weight(v) for k, v in region_sum.items()}, {k: weight(v) for k, v in op_sum.items()}


@functools.lru_cache(maxsize=65536)
def _operators(expression: str) -> tuple[str, ...]:
    """The operators an expression uses (cached: the pool is re-read every iteration)."""
    try:
        return tuple(sorted({n.op for n in walk(parse(expression)) if getattr(n, "op", None)}))
    except ExpressionError:
        return ()


def _tournament(rng: random.Random, parents: list[ScoredExpression], size: int = 4) -> ScoredExpression:
    picks = [parents[rng.randrange(len(parents))] for _ in range(size)]
    return max(picks, key=lambda s: s.fitness)


# ---- tree surgery (frozen nodes: every change rebuilds the path to the root) -------------------------------


def _paths(node: Node, path: tuple = ()) -> list[tuple[tuple, Node]]:
    """Every sub-tree with its path (a tuple of (attribute, index-or-None) steps)."""
    out = [(path, node)]
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if isinstance(value, tuple):
            for i, v in enumerate(value):
                if _is_node(v):
                    out += _paths(v, path + ((f.name, i),))
        elif _is_node(value) and f.name != "group":
            out += _paths(value, path + ((f.name, None),))
    return out


def _replace(node: Node, path: tuple, new: Node) -> Node:
    if not path:
        return new
    (name, index), rest = path[0], path[1:]
    value = getattr(node, name)
    if index is None:
        return dataclasses.replace(node, **{name: _replace(value, rest, new)})
    items = list(value)
    items[index] = _replace(items[index], rest, new)
    return dataclasses.replace(node, **{name: tuple(items)})


def _near(rng: random.Random, current: int, low: int = 2) -> int:
    grid = [w for w in WINDOWS if w >= low]
    nearest = min(range(len(grid)), key=lambda i: abs(grid[i] - current))
    if rng.random() < 0.75:
        step = rng.choice((-2, -1, 1, 2))
        return grid[min(max(nearest + step, 0), len(grid) - 1)]
    return rng.choice(grid)


def _mutate_window(rng, g, tree: Node, units) -> Node | None:
    spots = [
        (p, n)
        for p, n in _paths(tree)
        if isinstance(n, (Rolling, Ref, EMA)) and not (isinstance(n, Ref) and n.periods < 1)
    ]
    if not spots:
        return None
    path, n = rng.choice(spots)
    if isinstance(n, Rolling):
        new = dataclasses.replace(n, window=_near(rng, n.window, _MIN_WINDOW.get(n.op, 2)))
    elif isinstance(n, Ref):
        new = dataclasses.replace(n, periods=_near(rng, n.periods, 1))
    else:
        new = dataclasses.replace(n, spec=float(_near(rng, int(n.spec) if n.spec >= 1 else 10)))
    return _replace(tree, path, new)


def _mutate_operator(rng, g, tree: Node, units) -> Node | None:
    spots = [(p, n) for p, n in _paths(tree) if (isinstance(n, Rolling) and n.op in _SWAPS) or isinstance(n, EMA)]
    if not spots:
        return None
    path, n = rng.choice(spots)
    if isinstance(n, EMA):  # its own node: a span instead of a window
        window = max(2, int(n.spec)) if n.spec >= 1 else 10
        return _replace(tree, path, Rolling(rng.choice(_SWAPS["EMA"]), (n.x,), window))
    # mostly a neighbour in the operator's family; sometimes any one-input rolling operator
    family = n.op in ("Corr", "Cov") or rng.random() < 0.6
    op = rng.choice(_SWAPS[n.op] if family else tuple(o for o in _ROLLING_UNARY if o != n.op))
    if op in ("Corr", "Cov") or n.op in ("Corr", "Cov"):
        if len(n.inputs) != 2:
            return None
        new = dataclasses.replace(n, op=op)
    elif op == "EMA":
        new = EMA(n.inputs[0], float(n.window))
    elif op == "Quantile":
        new = dataclasses.replace(n, op=op, param=rng.choice(QUANTILES))
    elif op in ("IdxMax", "IdxMin") and n.op not in ("IdxMax", "IdxMin"):
        return None  # a position in the window: only scale-free divided by it, a shape `_wrap` and the regions draw
    else:
        new = dataclasses.replace(n, op=op, param=None, window=max(n.window, _MIN_WINDOW.get(op, 2)))
    return _replace(tree, path, new)


def _mutate_field(rng, g, tree: Node, units) -> Node | None:
    spots = [(p, n) for p, n in _paths(tree) if isinstance(n, Field) and n.name in units]
    if not spots:
        return None
    path, n = rng.choice(spots)
    same = [f for f, u in units.items() if u is units[n.name] and f != n.name]
    if not same:
        return None
    return _replace(tree, path, Field(rng.choice(same)))


def _mutate_subtree(rng, g, tree: Node, units) -> Node | None:
    spots = [(p, n) for p, n in _paths(tree) if unit_of(n, units) is Unit.RATIO and not isinstance(n, Const)]
    inner = [(p, n) for p, n in spots if p]  # the root replaced is a fresh tree, not a mutation
    if not inner:
        return None
    path, _ = rng.choice(inner)
    try:
        fresh = parse(g.ratio(1))
    except ExpressionError:
        return None
    return _replace(tree, path, fresh)


def _mutate_constant(rng, g, tree: Node, units) -> Node | None:
    spots = [(p, n) for p, n in _paths(tree) if isinstance(n, Rolling) and n.op == "Quantile"]
    if not spots:
        return _mutate_window(rng, g, tree, units)
    path, n = rng.choice(spots)
    return _replace(tree, path, dataclasses.replace(n, param=rng.choice([q for q in QUANTILES if q != n.param])))


def _wrap(rng, g, tree: Node, units) -> Node | None:
    """The tree under a rolling statistic: smoothed, normalised, or its trend, spread, extremes or shape."""
    text, w = canonical(tree), g.window(low=3)
    shape = rng.choice(
        (
            f"Mean({text}, {w})",
            f"EMA({text}, {w})",
            f"({text} - Mean({text}, {w}))/(Std({text}, {w}) + {_EPS})",
            f"Delta({text}, {min(w, 10)})",
            f"Rank({text}, {w})",
            f"Std({text}, {w})",
            f"Sum({text}, {w})",
            f"Slope({text}, {w})",
            f"{rng.choice(('Max', 'Min', 'Med'))}({text}, {w})",
            f"{rng.choice(('Skew', 'Kurt'))}({text}, {max(w, 5)})",
        )
    )
    try:
        return parse(shape)
    except ExpressionError:
        return None


def _crossover(rng, a: Node, b: Node, units) -> Node | None:
    """Typed subtree crossover: a ratio-valued subtree of `a` is replaced by one of `b`."""
    spots_a = [(p, n) for p, n in _paths(a) if p and unit_of(n, units) is Unit.RATIO and not isinstance(n, Const)]
    spots_b = [n for p, n in _paths(b) if unit_of(n, units) is Unit.RATIO and not isinstance(n, Const)]
    if not spots_a or not spots_b:
        return None
    path, _ = rng.choice(spots_a)
    return _replace(a, path, rng.choice(spots_b))
