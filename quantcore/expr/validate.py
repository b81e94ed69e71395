"""Checks a parsed (or hand-built) expression against a panel's fields, the look-ahead rule and size caps."""

from __future__ import annotations

import difflib
import math
import re
from typing import Iterable

from quantcore.errors import ExpressionError, LookAheadError, UnknownFieldError
from quantcore.expr.ast import (
    Const,
    Field,
    Node,
    Ref,
    Unary,
    children,
    depth,
    fields_used,
    future_reads,
    node_count,
    walk,
)
from quantcore.expr.canonical import canonical
from quantcore.expr.operators import build, call_form
from quantcore.expr.parser import parse

__all__ = ["validate", "compile_expression"]

_FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def validate(
    node: Node,
    fields: Iterable[str],
    *,
    allow_future: bool = False,
    max_nodes: int | None = None,
    max_depth: int | None = None,
) -> Node:
    """Return `node` if it is well-formed, reads only `fields`, never the future (unless `allow_future`,
    for labels) and fits the caps; otherwise raise the ExpressionError subclass that names the problem."""
    try:
        _check_structure(node)
        return _check_use(node, fields, allow_future, max_nodes, max_depth)
    except RecursionError:  # only hand-built trees get this deep; parse() caps nesting
        raise ExpressionError("expression is nested too deeply to check") from None


def compile_expression(
    expression: str | Node,
    fields: Iterable[str],
    *,
    allow_future: bool = False,
    max_nodes: int | None = None,
    max_depth: int | None = None,
) -> Node:
    """`parse` (when given text) then `validate`: the checked tree of an expression. A tree `parse`
    built is well-formed by construction (every node comes from `build`), so only its fields, look-ahead
    and size are checked."""
    if not isinstance(expression, str):
        return validate(expression, fields, allow_future=allow_future, max_nodes=max_nodes, max_depth=max_depth)
    return _check_use(parse(expression), fields, allow_future, max_nodes, max_depth)


def _check_use(
    node: Node, fields: Iterable[str], allow_future: bool, max_nodes: int | None, max_depth: int | None
) -> Node:
    """The checks that depend on where a well-formed tree is used: caps, fields, look-ahead."""
    _check_caps(node, max_nodes, max_depth)
    _check_fields(node, fields)
    if not allow_future:
        _check_look_ahead(node)
    return node


def _check_caps(node: Node, max_nodes: int | None, max_depth: int | None) -> None:
    if max_nodes is not None and (n := node_count(node)) > max_nodes:
        raise ExpressionError(f"expression has {n} nodes, over the cap max_nodes={max_nodes}; simplify it")
    if max_depth is not None and (d := depth(node)) > max_depth:
        raise ExpressionError(f"expression nests {d} levels deep, over the cap max_depth={max_depth}; simplify it")


def _check_structure(node: Node) -> None:
    """Every node must be one that parsing its canonical text could give (the same rules as `build`)."""
    for n in walk(node):
        if not isinstance(n, Node):
            raise ExpressionError(f"not an expression node: {n!r}")
        if isinstance(n, Field):
            if not isinstance(n.name, str) or not _FIELD_NAME.fullmatch(n.name):
                raise ExpressionError(f"field name {n.name!r} is not a valid name ([A-Za-z_][A-Za-z0-9_]*)")
        elif isinstance(n, Const):
            if not math.isfinite(n.value):
                raise ExpressionError(f"constant {n.value} is not finite; expressions hold finite numbers only")
        elif not (isinstance(n, Unary) and n.op == "Neg"):
            spec, args = call_form(n)  # raises UnknownOperatorError for an op its node kind does not have
            rebuilt = build(spec.name, args)
            if rebuilt != n:
                raise ExpressionError(
                    f"malformed node {n!r}: {spec.signature} with these arguments builds {rebuilt!r}; "
                    "build nodes with parse() or quantcore.expr.operators.build()"
                )


def _check_fields(node: Node, fields: Iterable[str]) -> None:
    available = sorted({f.removeprefix("$") for f in fields})
    unknown = sorted(fields_used(node) - set(available))
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, available, n=1)
        hints.append(f"${name} (did you mean ${close[0]}?)" if close else f"${name}")
    listed = ", ".join(f"${f}" for f in available) or "none"
    noun = "field" if len(unknown) == 1 else "fields"
    raise UnknownFieldError(f"unknown {noun} {', '.join(hints)}; available fields: {listed}")


def _rows_ahead(node: Node) -> int:
    """How many rows after the current one `node` reads."""
    inner = max((_rows_ahead(c) for c in children(node)), default=0)
    return max(inner - node.periods, 0) if isinstance(node, Ref) else inner


def _check_look_ahead(node: Node) -> None:
    reads = future_reads(node)  # pre-order: the outermost future read comes first
    if not reads:
        return
    first = reads[0]
    rows = _rows_ahead(first)
    others = len(reads) - 1
    more = f" ({others} more future read{'s' if others > 1 else ''} in the expression)" if others else ""
    raise LookAheadError(
        f"'{canonical(first)}' reads {rows} row{'s' if rows != 1 else ''} into the future "
        f"(a negative Ref shift){more}; "
        "features may only use data up to the current day; future reads are allowed only in labels "
        "(validate or compile a label with allow_future=True)"
    )
