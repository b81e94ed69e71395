"""Typed expression nodes: frozen, hashable dataclasses.

Structural equality is what makes common-sub-expression sharing work: two occurrences of
`Mean($close, 5)` anywhere in a batch are the same key. Each meaning of qlib's overloaded syntax is its
own node: `Mean(x, 0)` parses to `Expanding`, not to a `Rolling` with a magic window; `Ref(x, -2)` is a
`Ref` whose negative `periods` marks it as reading the future (checked by `look_ahead`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from typing import Iterator, Union

__all__ = [
    "Node",
    "Field",
    "Const",
    "Unary",
    "Binary",
    "If",
    "Ref",
    "Rolling",
    "Expanding",
    "EMA",
    "Mask",
    "CrossSection",
    "children",
    "walk",
    "node_count",
    "depth",
    "fields_used",
    "max_lookback",
    "future_reads",
    "stable_hash",
]


def _cached_hash(cls):
    """Give a frozen node class a hash computed once per node. Nodes are dict keys all through
    planning and evaluation, and a dataclass's own hash rebuilds a tuple for the whole subtree on
    every lookup. The cached value is left out of pickles: str hashes differ between processes."""
    names = tuple(f.name for f in fields(cls))

    def __hash__(self) -> int:
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((cls.__name__, *(getattr(self, name) for name in names)))
            object.__setattr__(self, "_hash", h)
        return h

    def __getstate__(self) -> dict:
        return {name: getattr(self, name) for name in names}

    cls.__hash__ = __hash__
    cls.__getstate__ = __getstate__
    return cls


@_cached_hash
@dataclass(frozen=True)
class Field:
    """A panel field, `$close`."""

    name: str


@_cached_hash
@dataclass(frozen=True)
class Const:
    """A numeric literal (always stored as float so `1` and `1.0` share a key)."""

    value: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", float(self.value))


@_cached_hash
@dataclass(frozen=True)
class Unary:
    """Element-wise one-input operator: Neg, Abs, Sign, Log, Not."""

    op: str
    x: "Node"


@_cached_hash
@dataclass(frozen=True)
class Binary:
    """Element-wise two-input operator: Add Sub Mul Div Power Gt Ge Lt Le Eq Ne And Or Greater Less."""

    op: str
    left: "Node"
    right: "Node"


@_cached_hash
@dataclass(frozen=True)
class If:
    """`If(cond, then, otherwise)`: numpy.where semantics (a NaN condition counts as true, like qlib)."""

    cond: "Node"
    then: "Node"
    otherwise: "Node"


@_cached_hash
@dataclass(frozen=True)
class Ref:
    """Value `periods` rows earlier; a negative `periods` reads the future (labels only)."""

    x: "Node"
    periods: int


@_cached_hash
@dataclass(frozen=True)
class Rolling:
    """A window operator over the last `window` (>= 1) rows; `inputs` has 1 node (2 for Corr/Cov).

    `param` carries the operator's extra number (Quantile's q), else None."""

    op: str
    inputs: tuple["Node", ...]
    window: int
    param: float | None = None


@_cached_hash
@dataclass(frozen=True)
class Expanding:
    """The same operators as `Rolling`, over all rows since listing (qlib's `N=0`)."""

    op: str
    inputs: tuple["Node", ...]
    param: float | None = None


@_cached_hash
@dataclass(frozen=True)
class EMA:
    """Exponential moving average. `spec` is the argument as written: >= 1 is a span, in (0, 1) an alpha,
    0 means expanding (qlib's convention); `alpha` is the derived smoothing factor."""

    x: "Node"
    spec: float

    @property
    def alpha(self) -> float:
        if 0 < self.spec < 1:
            return self.spec
        return 2.0 / (self.spec + 1.0)


@_cached_hash
@dataclass(frozen=True)
class Mask:
    """qlib's `Mask(x, "INST")`: the value of `x` computed on another instrument, on this row's date."""

    x: "Node"
    instrument: str


@_cached_hash
@dataclass(frozen=True)
class CrossSection:
    """A per-day operator across instruments: CSRank, CSZScore, CSDemean, CSWinsorize, CSNeutralize.

    `group` is a field holding group codes (CSNeutralize), `param` CSWinsorize's tail quantile."""

    op: str
    x: "Node"
    group: Field | None = None
    param: float | None = None


Node = Union[Field, Const, Unary, Binary, If, Ref, Rolling, Expanding, EMA, Mask, CrossSection]


def children(node: Node) -> tuple[Node, ...]:
    """Direct sub-expressions of a node (data inputs only, not numeric parameters)."""
    if isinstance(node, (Field, Const)):
        return ()
    if isinstance(node, Binary):
        return (node.left, node.right)
    if isinstance(node, If):
        return (node.cond, node.then, node.otherwise)
    if isinstance(node, (Rolling, Expanding)):
        return node.inputs
    if isinstance(node, CrossSection):
        return (node.x,) if node.group is None else (node.x, node.group)
    return (node.x,)  # Unary, Ref, EMA, Mask


def walk(node: Node) -> Iterator[Node]:
    """Pre-order traversal, node first."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(children(n)))


def node_count(node: Node) -> int:
    return sum(1 for _ in walk(node))


def depth(node: Node) -> int:
    kids = children(node)
    return 1 + (max(depth(k) for k in kids) if kids else 0)


def fields_used(node: Node) -> frozenset[str]:
    return frozenset(n.name for n in walk(node) if isinstance(n, Field))


def max_lookback(node: Node) -> int:
    """Rows of history the expression needs before its first fully-warmed value (expanding = -1: all)."""
    kids = children(node)
    inner = max((max_lookback(k) for k in kids), default=0)
    if inner < 0:
        return -1
    if isinstance(node, Rolling):
        return inner + node.window - 1
    if isinstance(node, (Expanding,)) or (isinstance(node, EMA) and node.spec == 0):
        return -1
    if isinstance(node, Ref):
        return inner + max(node.periods, 0)
    return inner


def future_reads(node: Node) -> list[Ref]:
    """Every `Ref` with a negative shift, i.e. each place the expression reads future rows."""
    return [n for n in walk(node) if isinstance(n, Ref) and n.periods < 0]


def stable_hash(canonical: str) -> str:
    """Stable 16-hex-digit identity of an expression, from its canonical string."""
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
