"""Canonical text of an expression: one spelling per tree, so equal trees share a cache key and a hash.

qlib-style and round-tripping (`parse(canonical(n)) == n`): calls as `Mean($close, 5)`, infix operators
with single spaces and only the parentheses that precedence and associativity need, numbers in their
shortest form.
"""

from __future__ import annotations

import math

from quantcore.errors import ExpressionError
from quantcore.expr.ast import Binary, Const, Field, Node, Unary, stable_hash
from quantcore.expr.operators import COMPARISON, INFIX, POWER, PRECEDENCE, PREFIX, call_form
from quantcore.expr.parser import parse

__all__ = ["canonical", "expression_hash", "number_text"]

_ATOM = 9  # binds tighter than any operator: fields, positive numbers, calls, parenthesised text


def number_text(value: float) -> str:
    """Whole numbers as integers (`5`, `-1`), others as Python's shortest round-tripping repr (`0.8`)."""
    if not math.isfinite(value):
        raise ExpressionError(f"the constant {value} cannot be written in an expression; use a finite number")
    if value == int(value) and abs(value) < 1e16:  # beyond 1e16 `repr` is shorter: 1e+20
        return str(int(value))
    return repr(value)


def canonical(node: Node) -> str:
    """The canonical text of `node`."""
    try:
        return _text(node)[0]
    except RecursionError:
        raise ExpressionError("expression is nested too deeply to print") from None


def expression_hash(expression: str | Node) -> str:
    """Stable identity of an expression: formatting variants of the same tree share it."""
    node = parse(expression) if isinstance(expression, str) else expression
    return stable_hash(canonical(node))


def _wrap(text: str, needed: bool) -> str:
    return f"({text})" if needed else text


def _text(node: Node) -> tuple[str, int]:
    """(text, precedence of its outermost operator)."""
    if isinstance(node, Field):
        return "$" + node.name, _ATOM
    if isinstance(node, Const):
        text = number_text(node.value)
        return text, PREFIX if text.startswith("-") else _ATOM
    if isinstance(node, Unary) and node.op == "Neg":
        text, prec = _text(node.x)
        return "-" + _wrap(text, prec <= PREFIX), PREFIX  # `-(-x)` rather than `--x`
    if isinstance(node, Binary) and node.op in INFIX:
        symbol = INFIX[node.op]
        prec = PRECEDENCE[symbol]
        (left, lp), (right, rp) = _text(node.left), _text(node.right)
        if prec == POWER:  # right-associative; a prefix minus may start the exponent: 2 ** -1
            wrap_left, wrap_right = lp <= prec, rp < PREFIX
        elif prec == COMPARISON:  # non-associative
            wrap_left, wrap_right = lp <= prec, rp <= prec
        else:  # left-associative: a - (b - c) keeps its parentheses
            wrap_left, wrap_right = lp < prec, rp <= prec
        return f"{_wrap(left, wrap_left)} {symbol} {_wrap(right, wrap_right)}", prec
    spec, args = call_form(node)
    parts = [f'"{a}"' if isinstance(a, str) else _text(a)[0] for a in args]
    return f"{spec.name}({', '.join(parts)})", _ATOM
