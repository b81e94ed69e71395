"""The factor expression language: qlib-compatible text -> typed, validated trees."""

from quantcore.expr.ast import EMA, Binary, Const, CrossSection, Expanding, Field, If, Mask, Node, Ref, Rolling, Unary
from quantcore.expr.canonical import canonical, expression_hash
from quantcore.expr.parser import parse
from quantcore.expr.validate import compile_expression, validate

__all__ = [
    "parse",
    "canonical",
    "validate",
    "compile_expression",
    "expression_hash",
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
]
