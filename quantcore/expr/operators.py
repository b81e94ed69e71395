"""Every operator of the expression language in one table, plus the builders that turn a call into a node.

Each row says how qlib spells the call (`signature`), which node it becomes (`kind`) and what each argument
must be (`args`). `build` turns a call into a typed node and is the only place argument rules live;
`call_form` is its inverse (used to print canonical text and to check hand-built nodes).
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Mapping, Sequence, Union

from quantcore.errors import ArityError, UnknownOperatorError
from quantcore.expr.ast import EMA, Binary, Const, CrossSection, Expanding, Field, If, Mask, Node, Ref, Rolling, Unary

__all__ = [
    "Kind",
    "Arg",
    "OpSpec",
    "OPERATORS",
    "INFIX",
    "PRECEDENCE",
    "COMPARISON",
    "PREFIX",
    "POWER",
    "UNARY_OPS",
    "BINARY_OPS",
    "ROLLING_OPS",
    "EXPANDING_OPS",
    "CROSS_SECTION_OPS",
    "MAX_WINDOW",
    "lookup",
    "build",
    "call_form",
]

# An argument as the parser hands it over: an expression, or the text of a string literal (Mask's instrument).
CallArg = Union[Node, str]

# Binding strength of the infix operators, in Python's order because qlib evaluates expressions as Python:
# higher binds tighter. Comparisons do not chain (Python would read `a > b > c` as `a > b and b > c`);
# `**` is right-associative and binds tighter than a prefix minus on its left (`-x**2` is `-(x**2)`).
PRECEDENCE: Mapping[str, int] = MappingProxyType(
    {"==": 1, "!=": 1, ">": 1, ">=": 1, "<": 1, "<=": 1, "|": 2, "&": 3, "+": 4, "-": 4, "*": 5, "/": 5, "**": 7}
)
COMPARISON = 1
PREFIX = 6  # prefix `-x` and `+x`
POWER = 7

# Larger windows or shifts than any market has rows; also keeps `int(1e300)` out of the kernels.
MAX_WINDOW = 1_000_000

_INSTRUMENT = re.compile(r"[!#-&(-\[\]-~]+")  # printable ASCII except space, quotes and backslash


class Kind(Enum):
    """Which node a call builds."""

    UNARY = "unary"  # Unary(op, x)
    BINARY = "binary"  # Binary(op, left, right)
    IF = "if"  # If(cond, then, otherwise)
    REF = "ref"  # Ref(x, N); N == 0 -> Expanding("First")
    ROLLING = "rolling"  # Rolling(op, inputs, N, param); N == 0 -> Expanding(op, inputs, param)
    EMA = "ema"  # EMA(x, spec)
    MASK = "mask"  # Mask(x, instrument)
    CROSS_SECTION = "cross_section"  # CrossSection(op, x, group, param)


class Arg(Enum):
    """What one argument of a call must be."""

    DATA = "data"  # any expression or number
    WINDOW = "window"  # integer literal >= min_window, or 0 (expanding)
    SHIFT = "shift"  # integer literal of any sign (Ref: negative reads the future)
    SPAN = "span"  # EMA's N: integer span >= 1, 0 (expanding) or an alpha in (0, 1)
    PARAM = "param"  # number literal within `param_range`
    INSTRUMENT = "instrument"  # string literal
    GROUP = "group"  # a field, `$industry`


@dataclass(frozen=True)
class OpSpec:
    """One operator: its qlib signature, the node it builds and the rules its arguments follow."""

    name: str
    signature: str  # as documented, e.g. "Quantile(feature, N, qscore)"
    kind: Kind
    args: tuple[Arg, ...]
    infix: str | None = None  # the infix spelling of a Binary, printed in canonical form
    min_window: int = 1  # smallest non-expanding window (qlib: Skew 3, Kurt 4)
    param_range: tuple[float, float, bool] | None = None  # (low, high, high inclusive?), low inclusive
    param_default: float | None = None  # value of an omitted trailing PARAM

    @property
    def arg_names(self) -> tuple[str, ...]:
        inner = self.signature[self.signature.index("(") + 1 : -1]
        return tuple(a.strip(" []") for a in inner.split(","))

    @property
    def min_args(self) -> int:
        return len(self.args) - (self.param_default is not None)


def _spec(name: str, params: str, kind: Kind, args: tuple[Arg, ...], **options) -> OpSpec:
    return OpSpec(name, f"{name}({params})", kind, args, **options)


_X, _N = (Arg.DATA,), (Arg.DATA, Arg.WINDOW)
_PAIR = "feature_left, feature_right"

_SPECS: tuple[OpSpec, ...] = (
    # element-wise, one input
    *(_spec(name, "feature", Kind.UNARY, _X) for name in ("Abs", "Sign", "Log", "Not")),
    # element-wise, two inputs; those with an infix spelling print infix
    *(
        _spec(name, _PAIR, Kind.BINARY, (Arg.DATA, Arg.DATA), infix=infix)
        for name, infix in (
            ("Add", "+"),
            ("Sub", "-"),
            ("Mul", "*"),
            ("Div", "/"),
            ("Power", "**"),
            ("Gt", ">"),
            ("Ge", ">="),
            ("Lt", "<"),
            ("Le", "<="),
            ("Eq", "=="),
            ("Ne", "!="),
            ("And", "&"),
            ("Or", "|"),
            ("Greater", None),
            ("Less", None),
        )
    ),
    _spec("If", "condition, feature_left, feature_right", Kind.IF, (Arg.DATA,) * 3),
    _spec("Ref", "feature, N", Kind.REF, (Arg.DATA, Arg.SHIFT)),
    # rolling over the last N rows; N = 0 is expanding (qlib's convention)
    *(
        _spec(name, "feature, N", Kind.ROLLING, _N)
        for name in (
            "Mean",
            "Sum",
            "Std",
            "Var",
            "Max",
            "Min",
            "IdxMax",
            "IdxMin",
            "Med",
            "Mad",
            "Rank",
            "Count",
            "Delta",
            "Slope",
            "Rsquare",
            "Resi",
            "WMA",
        )
    ),
    # qlib rejects these short windows in Skew.__init__ / Kurt.__init__ (qlib/data/ops.py)
    _spec("Skew", "feature, N", Kind.ROLLING, _N, min_window=3),
    _spec("Kurt", "feature, N", Kind.ROLLING, _N, min_window=4),
    _spec("Quantile", "feature, N, qscore", Kind.ROLLING, (*_N, Arg.PARAM), param_range=(0.0, 1.0, True)),
    *(_spec(name, f"{_PAIR}, N", Kind.ROLLING, (Arg.DATA, Arg.DATA, Arg.WINDOW)) for name in ("Corr", "Cov")),
    _spec("EMA", "feature, N", Kind.EMA, (Arg.DATA, Arg.SPAN)),
    _spec("Mask", "feature, instrument", Kind.MASK, (Arg.DATA, Arg.INSTRUMENT)),
    # per-day, across instruments (ours, not qlib's)
    *(_spec(name, "feature", Kind.CROSS_SECTION, _X) for name in ("CSRank", "CSZScore", "CSDemean")),
    _spec(
        "CSWinsorize",
        "feature[, q]",
        Kind.CROSS_SECTION,
        (Arg.DATA, Arg.PARAM),
        param_range=(0.0, 0.5, False),
        param_default=0.05,
    ),
    _spec("CSNeutralize", "feature, group", Kind.CROSS_SECTION, (Arg.DATA, Arg.GROUP)),
)

OPERATORS: Mapping[str, OpSpec] = MappingProxyType({s.name: s for s in _SPECS})
INFIX: Mapping[str, str] = MappingProxyType({s.name: s.infix for s in _SPECS if s.infix})
UNARY_OPS = frozenset({"Neg"} | {s.name for s in _SPECS if s.kind is Kind.UNARY})  # Neg: the `-x` prefix
BINARY_OPS = frozenset(s.name for s in _SPECS if s.kind is Kind.BINARY)
ROLLING_OPS = frozenset(s.name for s in _SPECS if s.kind is Kind.ROLLING)
EXPANDING_OPS = ROLLING_OPS | {"First"}  # First: qlib's Ref(x, 0), the first value since listing
CROSS_SECTION_OPS = frozenset(s.name for s in _SPECS if s.kind is Kind.CROSS_SECTION)


def lookup(name: str) -> OpSpec:
    """The spec of operator `name` (case-sensitive, like qlib); an unknown name suggests the closest."""
    spec = OPERATORS.get(name)
    if spec is not None:
        return spec
    known = sorted(OPERATORS)
    same_case = [k for k in known if k.lower() == name.lower()]
    close = same_case or difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    note = " (operator names are case-sensitive)" if same_case else ""
    raise UnknownOperatorError(f"unknown operator '{name}'{hint}{note}. Known operators: {', '.join(known)}")


def _count(spec: OpSpec) -> str:
    n, lo = len(spec.args), spec.min_args
    if lo != n:
        return f"{lo} or {n} arguments"
    return f"{n} argument" + ("s" if n != 1 else "")


def _arg_error(spec: OpSpec, i: int, problem: str) -> ArityError:
    """An error about argument `i`; `.argument` lets the parser point at it."""
    err = ArityError(f"{spec.name}'s argument {spec.arg_names[i]} {problem} ({spec.signature})")
    err.argument = i  # type: ignore[attr-defined]
    return err


def _number(spec: OpSpec, i: int, arg: CallArg) -> float:
    if isinstance(arg, Const) and math.isfinite(arg.value):
        return arg.value
    got = f'the string "{arg}"' if isinstance(arg, str) else "an expression"
    raise _arg_error(spec, i, f"must be a number literal, got {got}")


def _whole(spec: OpSpec, i: int, value: float) -> int:
    if value != int(value):
        raise _arg_error(spec, i, f"must be a whole number of rows, got {value:g}")
    if abs(value) > MAX_WINDOW:
        raise _arg_error(spec, i, f"must be at most {MAX_WINDOW} rows in size, got {value:g}")
    return int(value)


def _check(spec: OpSpec, i: int, kind: Arg, arg: CallArg) -> Node | str | float | int:
    """Argument `i` of a call, checked against its rule and converted to what the node stores."""
    if kind is Arg.DATA:
        if isinstance(arg, str):
            raise _arg_error(spec, i, f'must be an expression, got the string "{arg}" (strings are only for Mask)')
        return arg
    if kind is Arg.INSTRUMENT:
        if not isinstance(arg, str):
            raise _arg_error(spec, i, 'must be a quoted instrument code, e.g. "SH000300"')
        if not _INSTRUMENT.fullmatch(arg):
            raise _arg_error(spec, i, f"must be a non-empty instrument code without spaces or quotes, got {arg!r}")
        return arg
    if kind is Arg.GROUP:
        if not isinstance(arg, Field):
            raise _arg_error(spec, i, "must be a field holding group codes, e.g. $industry")
        return arg
    value = _number(spec, i, arg)
    if kind is Arg.SHIFT:
        return _whole(spec, i, value)
    if kind is Arg.WINDOW:
        window = _whole(spec, i, value)
        if window != 0 and window < spec.min_window:
            shift = "; only Ref takes a negative N (a future read)" if window < 0 else ""
            raise _arg_error(spec, i, f"must be >= {spec.min_window} (or 0 for expanding), got {window}{shift}")
        return window
    if kind is Arg.SPAN:
        if not (value == 0 or 0 < value < 1 or (value >= 1 and value == int(value))):
            raise _arg_error(
                spec, i, f"must be a whole-number span >= 1, 0 (expanding) or an alpha in (0, 1), got {value:g}"
            )
        if value > MAX_WINDOW:
            raise _arg_error(spec, i, f"must be at most {MAX_WINDOW}, got {value:g}")
        return value
    assert kind is Arg.PARAM and spec.param_range is not None, f"{spec.name}: PARAM needs a range"
    low, high, closed = spec.param_range
    if not (low <= value and (value <= high if closed else value < high)):
        raise _arg_error(spec, i, f"must be in [{low:g}, {high:g}{']' if closed else ')'}, got {value:g}")
    return value


def build(name: str, args: Sequence[CallArg]) -> Node:
    """The node for the call `name(*args)`, checking the count and each argument against the table.

    Numeric arguments (windows, shifts, parameters) arrive as `Const` nodes, instruments as `str`.
    Raises UnknownOperatorError or ArityError (whose `.argument`, when set, is the offending index)."""
    spec = lookup(name)
    if not spec.min_args <= len(args) <= len(spec.args):
        raise ArityError(f"{name} takes {_count(spec)} ({spec.signature}), got {len(args)}")
    vals = [_check(spec, i, kind, arg) for i, (kind, arg) in enumerate(zip(spec.args, args))]
    if len(vals) < len(spec.args):
        vals.append(spec.param_default)
    kind = spec.kind
    if kind is Kind.UNARY:
        return Unary(name, vals[0])
    if kind is Kind.BINARY:
        return Binary(name, vals[0], vals[1])
    if kind is Kind.IF:
        return If(*vals)
    if kind is Kind.REF:
        x, periods = vals
        return Ref(x, periods) if periods != 0 else Expanding("First", (x,))
    if kind is Kind.ROLLING:
        inputs = tuple(v for v, a in zip(vals, spec.args) if a is Arg.DATA)
        window = next(v for v, a in zip(vals, spec.args) if a is Arg.WINDOW)
        param = vals[-1] if spec.args[-1] is Arg.PARAM else None
        return Rolling(name, inputs, window, param) if window else Expanding(name, inputs, param)
    if kind is Kind.EMA:
        return EMA(vals[0], vals[1])
    if kind is Kind.MASK:
        return Mask(vals[0], vals[1])
    extra = vals[1] if len(vals) > 1 else None
    if isinstance(extra, Field):
        return CrossSection(name, vals[0], group=extra)
    return CrossSection(name, vals[0], param=extra)


_NODE_KIND = {
    Unary: Kind.UNARY,
    Binary: Kind.BINARY,
    If: Kind.IF,
    Ref: Kind.REF,
    Rolling: Kind.ROLLING,
    Expanding: Kind.ROLLING,
    EMA: Kind.EMA,
    Mask: Kind.MASK,
    CrossSection: Kind.CROSS_SECTION,
}


def call_form(node: Node) -> tuple[OpSpec, tuple[CallArg, ...]] | None:
    """The call that builds `node`, as (spec, args); None for leaves and the `-x` prefix.

    The inverse of `build`: `build(spec.name, args)` gives `node` back for every well-formed node."""
    if isinstance(node, (Field, Const)) or (isinstance(node, Unary) and node.op == "Neg"):
        return None
    if isinstance(node, Expanding) and node.op == "First":
        return OPERATORS["Ref"], (*node.inputs, Const(0))
    spec = OPERATORS.get(getattr(node, "op", type(node).__name__))
    if spec is None or _NODE_KIND.get(type(node)) is not spec.kind:
        raise UnknownOperatorError(
            f"{type(node).__name__} node names no operator of its kind: {node!r}; build nodes with parse() or build()"
        )
    if isinstance(node, Unary):
        return spec, (node.x,)
    if isinstance(node, Binary):
        return spec, (node.left, node.right)
    if isinstance(node, If):
        return spec, (node.cond, node.then, node.otherwise)
    if isinstance(node, Ref):
        return spec, (node.x, Const(node.periods))
    if isinstance(node, (Rolling, Expanding)):
        window = Const(node.window if isinstance(node, Rolling) else 0)
        params = (Const(node.param),) if node.param is not None else ()
        return spec, (*node.inputs, window, *params)
    if isinstance(node, EMA):
        return spec, (node.x, Const(node.spec))
    if isinstance(node, Mask):
        return spec, (node.x, node.instrument)
    if isinstance(node, CrossSection):
        extra = (node.group,) if node.group is not None else ()
        extra += (Const(node.param),) if node.param is not None else ()
        return spec, (node.x, *extra)
    raise TypeError(f"not an expression node: {node!r}")
