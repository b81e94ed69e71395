"""Parser, canonical form and validation of factor expressions.

Expected trees are built by hand from the grammar (Python's precedence, qlib's operator meanings), never
from the parser's own output.
"""

from __future__ import annotations

import ast as pyast
import math
import os
import random
import re

import pytest

from quantcore.errors import (
    ArityError,
    ExpressionError,
    LookAheadError,
    ParseError,
    UnknownFieldError,
    UnknownOperatorError,
)
from quantcore.expr import (
    EMA,
    Binary,
    Const,
    CrossSection,
    Expanding,
    Field,
    If,
    Mask,
    Ref,
    Rolling,
    Unary,
    canonical,
    compile_expression,
    expression_hash,
    parse,
    validate,
)
from quantcore.expr.ast import depth, stable_hash

a, b, c, x, y = Field("a"), Field("b"), Field("c"), Field("x"), Field("y")
close, open_, high, low, volume = Field("close"), Field("open"), Field("high"), Field("low"), Field("volume")
FIELDS = ("open", "high", "low", "close", "volume", "vwap", "industry", "a", "b", "c", "x", "y")


def B(op, left, right):
    return Binary(op, left, right)


def K(v):
    return Const(v)


def neg(node):
    return Unary("Neg", node)


# ---- precedence and associativity ---------------------------------------------------------------

PRECEDENCE_CASES = [
    ("$a + $b * $c", B("Add", a, B("Mul", b, c))),
    ("$a * $b + $c", B("Add", B("Mul", a, b), c)),
    ("$a - $b - $c", B("Sub", B("Sub", a, b), c)),
    ("$a - ($b - $c)", B("Sub", a, B("Sub", b, c))),
    ("$a / $b / $c", B("Div", B("Div", a, b), c)),
    ("$a / ($b / $c)", B("Div", a, B("Div", b, c))),
    ("$a * ($b + $c)", B("Mul", a, B("Add", b, c))),
    ("$a ** $b ** $c", B("Power", a, B("Power", b, c))),
    ("($a ** $b) ** $c", B("Power", B("Power", a, b), c)),
    ("-$x ** 2", neg(B("Power", x, K(2)))),
    ("-$x**2", neg(B("Power", x, K(2)))),
    ("2 ** -1", B("Power", K(2), K(-1))),
    ("2**-1**2", B("Power", K(2), neg(B("Power", K(1), K(2))))),
    ("-2 ** 2", neg(B("Power", K(2), K(2)))),
    ("(-2) ** 2", B("Power", K(-2), K(2))),
    ("-$a * $b", B("Mul", neg(a), b)),
    ("$a * -$b", B("Mul", a, neg(b))),
    ("-5", K(-5)),
    ("- 5", K(-5)),
    ("-(5)", K(-5)),
    ("--5", K(5)),
    ("+$x", x),
    ("+5", K(5)),
    ("--$x", neg(neg(x))),
    ("$x - -5", B("Sub", x, K(-5))),
    ("$x--5", B("Sub", x, K(-5))),
    ("$a > $b + 1", B("Gt", a, B("Add", b, K(1)))),
    ("$a + 1 <= $b * 2", B("Le", B("Add", a, K(1)), B("Mul", b, K(2)))),
    ("$a | $b & $c", B("Or", a, B("And", b, c))),
    ("$a & $b | $c", B("Or", B("And", a, b), c)),
    ("$a == $b | $c", B("Eq", a, B("Or", b, c))),  # Python's reading: `|` binds tighter than `==`
    ("($a > 1) & ($b > 2)", B("And", B("Gt", a, K(1)), B("Gt", b, K(2)))),
    ("($a > $b) > $c", B("Gt", B("Gt", a, b), c)),
    ("$a != -$b", B("Ne", a, neg(b))),
    ("$a >= $b & $c", B("Ge", a, B("And", b, c))),
    ("-Corr($a, $b, 10)", neg(Rolling("Corr", (a, b), 10))),
    ("0-Corr($a, $b, 10)", B("Sub", K(0), Rolling("Corr", (a, b), 10))),
    ("((($x)))", x),
    ("-0", K(0)),
]


@pytest.mark.parametrize("text, expected", PRECEDENCE_CASES)
def test_precedence_and_associativity(text, expected):
    assert parse(text) == expected


_PY_OPS = {
    pyast.Add: "Add",
    pyast.Sub: "Sub",
    pyast.Mult: "Mul",
    pyast.Div: "Div",
    pyast.Pow: "Power",
    pyast.BitAnd: "And",
    pyast.BitOr: "Or",
    pyast.Gt: "Gt",
    pyast.GtE: "Ge",
    pyast.Lt: "Lt",
    pyast.LtE: "Le",
    pyast.Eq: "Eq",
    pyast.NotEq: "Ne",
}


def python_reading(text: str):
    """The tree Python's own grammar gives `text` (qlib evals it as Python); None for a comparison chain."""

    def convert(n):
        if isinstance(n, pyast.Name):
            return Field(n.id.removeprefix("F_"))
        if isinstance(n, pyast.Constant):
            return Const(n.value)
        if isinstance(n, pyast.UnaryOp):
            inner = convert(n.operand)
            if inner is None or isinstance(n.op, pyast.UAdd):
                return inner
            return Const(0.0 - inner.value) if isinstance(inner, Const) else Unary("Neg", inner)
        if isinstance(n, pyast.BinOp):
            left, right = convert(n.left), convert(n.right)
            return None if left is None or right is None else Binary(_PY_OPS[type(n.op)], left, right)
        assert isinstance(n, pyast.Compare)
        if len(n.ops) > 1:
            return None
        left, right = convert(n.left), convert(n.comparators[0])
        return None if left is None or right is None else Binary(_PY_OPS[type(n.ops[0])], left, right)

    return convert(pyast.parse(text.replace("$", "F_"), mode="eval").body)


def random_infix_text(rng: random.Random, levels: int) -> str:
    if levels == 0 or rng.random() < 0.25:
        return rng.choice(["$a", "$b", "$c", "2", "0.5", "3"])
    r = rng.random()
    if r < 0.15:
        return rng.choice(["-", "+", "- "]) + random_infix_text(rng, levels - 1)
    if r < 0.3:
        return "(" + random_infix_text(rng, levels - 1) + ")"
    op = rng.choice(["+", "-", "*", "/", "**", "&", "|", ">", "<=", "==", "!=", "<", ">="])
    return random_infix_text(rng, levels - 1) + rng.choice([op, f" {op} "]) + random_infix_text(rng, levels - 1)


def test_precedence_matches_pythons_reading():
    """Python's own parser is the reference: qlib evals expression text as Python."""
    rng = random.Random(3)
    chains = 0
    for _ in range(3000):
        text = random_infix_text(rng, rng.randrange(1, 6))
        expected = python_reading(text)
        if expected is None:
            chains += 1
            with pytest.raises(ParseError, match="ambiguous comparison chain"):
                parse(text)
        else:
            assert parse(text) == expected, text
    assert chains > 50  # the generator does produce chains


@pytest.mark.parametrize(
    "text, value",
    [("5", 5.0), ("0.8", 0.8), ("1e-12", 1e-12), (".5", 0.5), ("5.", 5.0), ("1E3", 1000.0), ("2.5e+2", 250.0)],
)
def test_number_literals(text, value):
    assert parse(text) == Const(value)


def test_negated_zero_is_zero():
    assert math.copysign(1.0, parse("-0").value) == 1.0  # `-0` and `0` are one cache key and one meaning


# ---- every operator -----------------------------------------------------------------------------

ROLLING_ONE = [
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
]

OPERATOR_CASES = [
    ("Abs($x)", Unary("Abs", x)),
    ("Sign($x)", Unary("Sign", x)),
    ("Log($x)", Unary("Log", x)),
    ("Not($x)", Unary("Not", x)),
    *[
        (f"{op}($a, $b)", B(op, a, b))
        for op in [
            "Add",
            "Sub",
            "Mul",
            "Div",
            "Power",
            "Greater",
            "Less",
            "Gt",
            "Ge",
            "Lt",
            "Le",
            "Eq",
            "Ne",
            "And",
            "Or",
        ]
    ],
    ("Greater($x, 0)", B("Greater", x, K(0))),
    ("If($a > 1, 1, 0)", If(B("Gt", a, K(1)), K(1), K(0))),
    ("Ref($x, 1)", Ref(x, 1)),
    ("Ref($x, -2)", Ref(x, -2)),
    ("Ref($x, 0)", Expanding("First", (x,))),
    *[(f"{op}($x, 5)", Rolling(op, (x,), 5)) for op in ROLLING_ONE],
    *[(f"{op}($x, 0)", Expanding(op, (x,))) for op in ROLLING_ONE],
    ("Mean($x, 5.0)", Rolling("Mean", (x,), 5)),
    ("Skew($x, 3)", Rolling("Skew", (x,), 3)),
    ("Skew($x, 0)", Expanding("Skew", (x,))),
    ("Kurt($x, 4)", Rolling("Kurt", (x,), 4)),
    ("Kurt($x, 0)", Expanding("Kurt", (x,))),
    ("Quantile($x, 5, 0.8)", Rolling("Quantile", (x,), 5, 0.8)),
    ("Quantile($x, 0, 0.2)", Expanding("Quantile", (x,), 0.2)),
    ("Quantile($x, 5, 1)", Rolling("Quantile", (x,), 5, 1.0)),
    ("Corr($a, $b, 5)", Rolling("Corr", (a, b), 5)),
    ("Cov($a, $b, 0)", Expanding("Cov", (a, b))),
    ("EMA($x, 10)", EMA(x, 10)),
    ("EMA($x, 0.3)", EMA(x, 0.3)),
    ("EMA($x, 0)", EMA(x, 0)),
    ('Mask($close, "SH000300")', Mask(close, "SH000300")),
    ("Mask($close, '^GSPC')", Mask(close, "^GSPC")),
    ("CSRank($x)", CrossSection("CSRank", x)),
    ("CSZScore($x)", CrossSection("CSZScore", x)),
    ("CSDemean($x)", CrossSection("CSDemean", x)),
    ("CSWinsorize($x)", CrossSection("CSWinsorize", x, param=0.05)),
    ("CSWinsorize($x, 0.01)", CrossSection("CSWinsorize", x, param=0.01)),
    ("CSNeutralize($x, $industry)", CrossSection("CSNeutralize", x, group=Field("industry"))),
    ("Mean($x, 5,)", Rolling("Mean", (x,), 5)),  # a trailing comma, as Python allows
]


@pytest.mark.parametrize("text, expected", OPERATOR_CASES)
def test_every_operator_builds_its_node(text, expected):
    assert parse(text) == expected
    assert parse(canonical(expected)) == expected


@pytest.mark.parametrize(
    "node, text",
    [
        (B("Add", a, b), "$a + $b"),
        (parse("Add($a, Sub($b, $c))"), "$a + ($b - $c)"),
        (parse("Greater($open, $close)"), "Greater($open, $close)"),
        (parse("Less($a,$b)"), "Less($a, $b)"),
        (parse("Gt($a, 1)"), "$a > 1"),
        (parse("And(Gt($a, 1), Lt($b, 2))"), "($a > 1) & ($b < 2)"),
        (parse("Power(-5, 2)"), "(-5) ** 2"),
        (parse("Mean($x, 0)"), "Mean($x, 0)"),
        (parse("Ref($x, 0)"), "Ref($x, 0)"),
        (parse("EMA($x, 10.0)"), "EMA($x, 10)"),
        (parse("EMA($x, .5)"), "EMA($x, 0.5)"),
        (parse("Quantile($x,5,.8)"), "Quantile($x, 5, 0.8)"),
        (parse("1E-12 + 1.0"), "1e-12 + 1"),
        (parse("Mask($x, 'SH600000')"), 'Mask($x, "SH600000")'),
        (parse("CSWinsorize($x)"), "CSWinsorize($x, 0.05)"),
        (parse("-(-$x)"), "-(-$x)"),
        (parse("-($a * $b)"), "-($a * $b)"),
        (parse("($a > 1) == ($b > 2)"), "($a > 1) == ($b > 2)"),
        (Const(1e20), "1e+20"),
    ],
)
def test_canonical_text(node, text):
    assert canonical(node) == text


# ---- Alpha158 -----------------------------------------------------------------------------------


def alpha158() -> list[str]:
    """qlib's Alpha158 feature expressions, rebuilt from its recipe (Alpha158DL.get_feature_config)."""
    out = [  # the k-bar and price features, copied verbatim
        "($close-$open)/$open",
        "($high-$low)/$open",
        "($close-$open)/($high-$low+1e-12)",
        "($high-Greater($open, $close))/$open",
        "($high-Greater($open, $close))/($high-$low+1e-12)",
        "(Less($open, $close)-$low)/$open",
        "(Less($open, $close)-$low)/($high-$low+1e-12)",
        "(2*$close-$high-$low)/$open",
        "(2*$close-$high-$low)/($high-$low+1e-12)",
        "$open/$close",
        "$high/$close",
        "$low/$close",
        "$vwap/$close",
    ]
    families = [
        "Ref($close, %d)/$close",
        "Mean($close, %d)/$close",
        "Std($close, %d)/$close",
        "Slope($close, %d)/$close",
        "Rsquare($close, %d)",
        "Resi($close, %d)/$close",
        "Max($high, %d)/$close",
        "Min($low, %d)/$close",
        "Quantile($close, %d, 0.8)/$close",
        "Quantile($close, %d, 0.2)/$close",
        "Rank($close, %d)",
        "($close-Min($low, {d}))/(Max($high, {d})-Min($low, {d})+1e-12)",
        "IdxMax($high, {d})/{d}",
        "IdxMin($low, {d})/{d}",
        "(IdxMax($high, {d})-IdxMin($low, {d}))/{d}",
        "Corr($close, Log($volume+1), %d)",
        "Corr($close/Ref($close,1), Log($volume/Ref($volume, 1)+1), %d)",
        "Mean($close>Ref($close, 1), %d)",
        "Mean($close<Ref($close, 1), %d)",
        "Mean($close>Ref($close, 1), {d})-Mean($close<Ref($close, 1), {d})",
        "Sum(Greater($close-Ref($close, 1), 0), {d})/(Sum(Abs($close-Ref($close, 1)), {d})+1e-12)",
        "Sum(Greater(Ref($close, 1)-$close, 0), {d})/(Sum(Abs($close-Ref($close, 1)), {d})+1e-12)",
        "(Sum(Greater($close-Ref($close, 1), 0), {d})-Sum(Greater(Ref($close, 1)-$close, 0), {d}))"
        "/(Sum(Abs($close-Ref($close, 1)), {d})+1e-12)",
        "Mean($volume, %d)/($volume+1e-12)",
        "Std($volume, %d)/($volume+1e-12)",
        "Std(Abs($close/Ref($close, 1)-1)*$volume, {d})/(Mean(Abs($close/Ref($close, 1)-1)*$volume, {d})+1e-12)",
        "Sum(Greater($volume-Ref($volume, 1), 0), {d})/(Sum(Abs($volume-Ref($volume, 1)), {d})+1e-12)",
        "Sum(Greater(Ref($volume, 1)-$volume, 0), {d})/(Sum(Abs($volume-Ref($volume, 1)), {d})+1e-12)",
        "(Sum(Greater($volume-Ref($volume, 1), 0), {d})-Sum(Greater(Ref($volume, 1)-$volume, 0), {d}))"
        "/(Sum(Abs($volume-Ref($volume, 1)), {d})+1e-12)",
    ]
    for family in families:
        for d in (5, 10, 20, 30, 60):
            out.append(family % d if "%d" in family else family.format(d=d))
    return out


def test_alpha158_parses_validates_and_round_trips():
    exprs = alpha158()
    assert len(exprs) == 158 and len(set(exprs)) == 158
    hashes = set()
    for text in exprs:
        node = compile_expression(text, FIELDS)
        assert parse(canonical(node)) == node, text
        assert canonical(parse(canonical(node))) == canonical(node)
        hashes.add(expression_hash(text))
    assert len(hashes) == 158


def test_alpha158_spot_checks():
    exprs = alpha158()
    d = 5
    rsv = Rolling("Min", (low,), d)
    assert parse(exprs[0]) == B("Div", B("Sub", close, open_), open_)
    assert parse(exprs[7]) == B("Div", B("Sub", B("Sub", B("Mul", K(2), close), high), low), open_)
    assert parse(f"($close-Min($low, {d}))/(Max($high, {d})-Min($low, {d})+1e-12)") == B(
        "Div", B("Sub", close, rsv), B("Add", B("Sub", Rolling("Max", (high,), d), rsv), K(1e-12))
    )
    assert canonical(parse(exprs[0])) == "($close - $open) / $open"
    assert canonical(parse(exprs[4])) == "($high - Greater($open, $close)) / ($high - $low + 1e-12)"
    cntd = "Mean($close>Ref($close, 1), 5)-Mean($close<Ref($close, 1), 5)"
    assert canonical(parse(cntd)) == "Mean($close > Ref($close, 1), 5) - Mean($close < Ref($close, 1), 5)"
    cord = parse("Corr($close/Ref($close,1), Log($volume/Ref($volume, 1)+1), 5)")
    ratio = B("Div", volume, Ref(volume, 1))
    assert cord == Rolling("Corr", (B("Div", close, Ref(close, 1)), Unary("Log", B("Add", ratio, K(1)))), 5)


# ---- canonical round trip, as a property over random trees --------------------------------------

_NUMBERS = [0, 1, 2, 5, -1, -3, 0.5, 0.8, -0.25, 1e-12, 1 / 3, 2.5e-7, 1e20, -1e20, 123456.789]
_BINARY = ["Add", "Sub", "Mul", "Div", "Power", "Greater", "Less", "Gt", "Ge", "Lt", "Le", "Eq", "Ne", "And", "Or"]


def random_tree(rng: random.Random, levels: int):
    """A random well-formed tree, in the normal form the parser produces (no `-` applied to a literal)."""
    if levels == 0 or rng.random() < 0.2:
        return Field(rng.choice(FIELDS)) if rng.random() < 0.6 else Const(rng.choice(_NUMBERS))

    def sub():
        return random_tree(rng, levels - 1)

    kind = rng.randrange(11)
    if kind == 0:
        inner = sub()
        return Unary("Neg", inner if not isinstance(inner, Const) else Field("x"))
    if kind == 1:
        return Unary(rng.choice(["Abs", "Sign", "Log", "Not"]), sub())
    if kind in (2, 3, 4):
        return Binary(rng.choice(_BINARY), sub(), sub())
    if kind == 5:
        return If(sub(), sub(), sub())
    if kind == 6:
        return Ref(sub(), rng.choice([-5, -1, 1, 2, 20]))
    if kind in (7, 8):
        op = rng.choice([*ROLLING_ONE, "Skew", "Kurt", "Quantile", "Corr", "Cov"] + (["First"] if kind == 8 else []))
        inputs = (sub(), sub()) if op in ("Corr", "Cov") else (sub(),)
        param = rng.choice([0.0, 0.2, 0.8, 1.0]) if op == "Quantile" else None
        if kind == 8:
            return Expanding(op, inputs, param)
        return Rolling(op, inputs, rng.choice([4, 5, 20, 60]), param)
    if kind == 9:
        return EMA(sub(), rng.choice([0, 0.3, 5, 10])) if rng.random() < 0.5 else Mask(sub(), "SH600000")
    op = rng.choice(["CSRank", "CSZScore", "CSDemean", "CSWinsorize", "CSNeutralize"])
    if op == "CSWinsorize":
        return CrossSection(op, sub(), param=rng.choice([0.0, 0.05, 0.1]))
    if op == "CSNeutralize":
        return CrossSection(op, sub(), group=Field("industry"))
    return CrossSection(op, sub())


_PIECES = re.compile(r"\$\w+|\d+\.?\d*(?:e[+-]?\d+)?|\w+|\*\*|[<>=!]=|\"[^\"]*\"|\S")


def reformat(text: str, rng: random.Random) -> str:
    """The same expression with random whitespace between its tokens."""
    return rng.choice(["", " ", "\t"]) + "".join(
        piece + rng.choice(["", "", " ", "  ", "\n", "\t "]) for piece in _PIECES.findall(text)
    )


def test_canonical_round_trips_random_trees():
    rng = random.Random(20240601)
    for _ in range(1500):
        tree = random_tree(rng, rng.randrange(1, 7))
        text = canonical(tree)
        assert parse(text) == tree, text
        variant = reformat(text, rng)
        assert parse(variant) == tree, variant
        assert expression_hash(variant) == expression_hash(tree) == stable_hash(text)
        validate(tree, FIELDS, allow_future=True)


def test_formatting_and_spelling_variants_share_a_hash():
    variants = [
        "($close-$open)/$open",
        " ( $close - $open ) / $open ",
        "Div(Sub($close, $open), $open)",
        "(($close)-($open))/(($open))",
        "Div(\n  $close - $open,\n  $open\n)",
    ]
    assert len({expression_hash(v) for v in variants}) == 1
    assert expression_hash("Mean($x, 5)") == expression_hash("Mean($x, 5.0)") != expression_hash("Mean($x, 10)")
    assert expression_hash("$a - ($b - $c)") != expression_hash("$a - $b - $c")


def test_nodes_hash_like_their_structure_in_any_process(tmp_path):
    """Equal trees hash equal, also after a pickle goes to a process with another str-hash salt
    (a node keeps its hash once computed; the pickle must not carry it)."""
    import pickle
    import subprocess
    import sys

    texts = ["Mean($close, 5) / $close", "Corr($close, Log($volume + 1), 20)", "Quantile($high, 10, 0.8)"]
    trees = [parse(t) for t in texts]
    assert len({hash(t) for t in trees}) == 3
    assert all(hash(parse(t)) == hash(tree) and parse(t) == tree for t, tree in zip(texts, trees))
    (tmp_path / "trees.pkl").write_bytes(pickle.dumps(trees))
    check = (
        "import pickle, sys\n"
        "from quantcore.expr.parser import parse\n"
        f"trees = pickle.load(open({str(tmp_path / 'trees.pkl')!r}, 'rb'))\n"
        f"fresh = {{parse(t): i for i, t in enumerate({texts!r})}}\n"
        "assert [fresh[t] for t in trees] == [0, 1, 2]\n"
    )
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        subprocess.run([sys.executable, "-c", check], check=True, env=env)


# ---- errors: kind, message and position ---------------------------------------------------------


def raises(text: str, kind: type[ExpressionError]) -> ExpressionError:
    with pytest.raises(kind) as info:
        parse(text)
    return info.value


def test_unclosed_call_names_the_opening():
    err = raises("1 + Mean($close, 5", ParseError)
    assert "expected ')' to close 'Mean(' opened at position 4" in str(err)
    assert err.position == len("1 + Mean($close, 5")
    err = raises("($x + 1", ParseError)
    assert "expected ')' to close '(' opened at position 0" in str(err)


@pytest.mark.parametrize(
    "text, message, position",
    [
        ("$x +", "unexpected end of expression, expected an operand", 4),
        ("Mean($x, )", "got 1", None),
        ("$x # 1", "unexpected character '#'", 3),
        ("", "empty expression", 0),
        (" \t\n", "empty expression", 0),
        ("Mean($x, 5))", "unexpected ')' with no matching '('", 11),
        ("$x $y", "unexpected field '$y'", 3),
        ("Mean($x, 5 5)", "expected ')' to close 'Mean(' opened at position 0", 11),
        ("Mean(, 5)", "unexpected ','", 5),
        ('"SH600000" + 1', "string literal is only allowed as Mask's instrument", 0),
        ('Mask($x, "SH6" + 1)', "string literal is only allowed as Mask's instrument", 9),
        ("close / $open", "did you mean '$close'?", 0),
        ("Mean * 2", "expected '(' after the operator name 'Mean'", 0),
        ("$a and $b", "use '&'", 3),
        ("$a = 1", "use '=='", 3),
        ("$a && $b", "use '&'", 3),
        ("$a ^ 2", "use '**'", 3),
        ("$ close", "expected a field name after '$'", 1),
        ("$$close", "'$$'", 0),
        ("5x", "right after the number '5'", 1),
        ("1.2.3", "right after the number '1.2'", 3),
        ("1e999", "too large", 0),
        ("Mask($x, 'SH600000)", "unterminated string", 9),
    ],
)
def test_parse_errors(text, message, position):
    err = raises(text, ExpressionError)
    assert message in str(err)
    if position is not None:
        assert isinstance(err, ParseError) and err.position == position


@pytest.mark.parametrize("text", ["$a > 1 & $b > 2", "$a > $b > $c", "$a < 1 | $b == 2", "$a == $b != $c"])
def test_chained_comparison_is_ambiguous(text):
    err = raises(text, ParseError)
    assert "ambiguous" in str(err) and "parentheses" in str(err)


def test_chained_comparison_suggests_the_fix():
    err = raises("$a > 1 & $b > 2", ParseError)
    assert "($a > 1) & ($b > 2)" in str(err)
    assert err.position == len("$a > 1 & $b ")
    assert parse("($a > 1) & ($b > 2)") == B("And", B("Gt", a, K(1)), B("Gt", b, K(2)))


def test_unknown_operator_suggests_the_right_case_and_lists_operators():
    err = raises("mean($close, 5)", UnknownOperatorError)
    assert "'mean'" in str(err) and "did you mean 'Mean'?" in str(err) and "case-sensitive" in str(err)
    assert "Quantile" in str(err) and "CSRank" in str(err)
    assert err.position == 0
    err = raises("1 + Stdev($x, 5)", UnknownOperatorError)
    assert "did you mean 'Std'" in str(err) and err.position == 4
    assert "did you mean" not in str(raises("Zzzz($x)", UnknownOperatorError))


def test_arity_error_names_the_signature():
    err = raises("Mean($close)", ArityError)
    assert "Mean takes 2 arguments (Mean(feature, N)), got 1" in str(err)
    quantile = "Quantile takes 3 arguments (Quantile(feature, N, qscore)), got 2"
    assert quantile in str(raises("Quantile($x, 5)", ArityError))
    assert "If takes 3 arguments" in str(raises("If($a, 1)", ArityError))
    assert "CSWinsorize takes 1 or 2 arguments" in str(raises("CSWinsorize($x, 0.1, 2)", ArityError))
    assert "Abs takes 1 argument (Abs(feature)), got 2" in str(raises("Abs($x, $y)", ArityError))


@pytest.mark.parametrize(
    "text, message, position",
    [
        ("Mean($x, 2.5)", "Mean's argument N must be a whole number", 9),
        ("Corr($a, $b, 2.5)", "Corr's argument N must be a whole number", 13),
        ("Ref($x, 1.5)", "Ref's argument N must be a whole number", 8),
        ("Mean($x, -1)", "only Ref takes a negative N", 9),
        ("Mean($x, $y)", "must be a number literal", 9),
        ("Mean($x, 2 + 3)", "must be a number literal", 9),
        ("Skew($x, 2)", "Skew's argument N must be >= 3 (or 0", 9),
        ("Kurt($x, 3)", "Kurt's argument N must be >= 4 (or 0", 9),
        ("Quantile($x, 5, 1.5)", "qscore must be in [0, 1]", 16),
        ("Quantile($x, 5, -0.1)", "qscore must be in [0, 1]", 16),
        ("EMA($x, 2.5)", "alpha in (0, 1)", 8),
        ("EMA($x, -3)", "alpha in (0, 1)", 8),
        ("CSWinsorize($x, 0.5)", "q must be in [0, 0.5)", 16),
        ("CSNeutralize($x, 1)", "group must be a field", 17),
        ("CSNeutralize($x, $a + 1)", "group must be a field", 17),
        ("Mask($x, $y)", "instrument must be a quoted instrument code", 9),
        ("Mask($x, 'SH 600')", "without spaces or quotes", 9),
        ('Mean($x, "5")', 'got the string "5"', 9),
        ('Abs("x")', "strings are only for Mask", 4),
        ("Mean($x, 1e9)", "at most", 9),
    ],
)
def test_argument_rules(text, message, position):
    err = raises(text, ArityError)
    assert message in str(err)
    assert err.position == position


# ---- hostile inputs -----------------------------------------------------------------------------


def test_length_limit():
    err = raises("$x+" * 4000 + "$x", ParseError)
    assert "too long" in str(err) and "10000" in str(err)


@pytest.mark.parametrize(
    "text",
    [
        "(" * 5000 + "$x" + ")" * 5000,
        "(" * 3000 + "$x" + ")" * 3000,
        "-" * 9000 + "$x",
        "Abs(" * 1000 + "$x" + ")" * 1000,
        "+".join(["$x"] * 2000),
        "**".join(["2"] * 2000),
        "Mean(" * 600 + "$x" + ", 5)" * 600,
        "(" * 2000,
    ],
)
def test_deep_nesting_is_a_parse_error(text):
    err = raises(text, ParseError)
    assert "too deeply" in str(err) or "too long" in str(err)


def test_nesting_just_under_the_limit_parses():
    node = parse("Abs(" * 190 + "$x" + ")" * 190)
    assert depth(node) == 191
    assert parse(canonical(node)) == node
    assert parse("(" * 190 + "$x" + ")" * 190) == x


def test_deep_input_from_a_deep_call_stack_still_raises_expression_error():
    def recurse(level):
        return parse("(" * 199 + "$x" + ")" * 199) if level == 0 else recurse(level - 1)

    try:
        assert recurse(750) == x
    except ExpressionError as err:
        assert "too deeply" in str(err)


@pytest.mark.parametrize(
    "text, message",
    [
        ("$x\x00", "control character"),
        ("$x\x1b[31m", "control character"),
        ("\x7f", "control character"),
        ("$x \u2212 $y", "did you mean '-'"),
        ("\uff04close", "did you mean '$'"),
        ("Mean\uff08$x, 5)", "did you mean '('"),
        ("Mean($x\uff0c 5)", "did you mean ','"),
        ("$x\u00a0+ 1", "ordinary space"),
        ("$\u0441lose", "CYRILLIC"),  # a Cyrillic 'с' in place of the Latin 'c'
        ("$x \u00d7 2", "did you mean '*'"),
        ("Mask($x, \u201cSH600000\u201d)", "did you mean '\"'"),
        ("\ud800", "U+D800"),
    ],
)
def test_control_and_lookalike_characters(text, message):
    err = raises(text, ParseError)
    assert message in str(err)


def test_random_garbage_only_raises_expression_errors():
    rng = random.Random(7)
    alphabet = list("$()+-*/&|<>=!,.'\" 0123456789eE_abcxyzMeanRfQ\t\n")
    alphabet += ["Mean(", "Ref(", "**", "$x", "\x00", "\u2212"]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 30)))
        try:
            parse(text)
        except ExpressionError:
            pass


def test_mutated_alpha158_only_raises_expression_errors():
    rng = random.Random(11)
    exprs = alpha158()
    for _ in range(1500):
        text = list(rng.choice(exprs))
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(len(text))
            action = rng.randrange(3)
            if action == 0:
                del text[i]
            elif action == 1:
                text.insert(i, rng.choice("()$,-*&<>5.'x "))
            else:
                text[i] = rng.choice("()$,-*&<>5.'x ")
        try:
            node = parse("".join(text))
        except ExpressionError:
            continue
        assert parse(canonical(node)) == node


def test_non_text_input():
    with pytest.raises(ExpressionError):
        parse(b"$close")  # type: ignore[arg-type]


# ---- validate -----------------------------------------------------------------------------------


def test_unknown_field_lists_fields_and_suggests():
    with pytest.raises(UnknownFieldError) as info:
        validate(parse("$clsoe / $open"), ["open", "close", "high"])
    message = str(info.value)
    assert "$clsoe" in message and "did you mean $close?" in message
    assert "$close, $high, $open" in message


def test_group_field_must_exist():
    with pytest.raises(UnknownFieldError, match=r"\$sector"):
        validate(parse("CSNeutralize($x, $sector)"), ["x", "industry"])
    validate(parse("CSNeutralize($x, $industry)"), ["x", "industry"])


def test_look_ahead_is_refused_with_the_reason():
    with pytest.raises(LookAheadError) as info:
        validate(parse("Ref($close, -2) / $close - 1"), FIELDS)
    message = str(info.value)
    assert "'Ref($close, -2)'" in message and "2 rows into the future" in message
    assert "features may only use data up to the current day" in message
    assert "future reads are allowed only in labels" in message
    assert "allow_future=True" in message
    label = "Ref($close, -2) / Ref($close, -1) - 1"
    assert validate(parse(label), FIELDS, allow_future=True) == parse(label)


def test_look_ahead_counts_nested_shifts():
    with pytest.raises(LookAheadError, match=r"'Ref\(Ref\(\$close, -1\), -2\)' reads 3 rows"):
        validate(parse("Mean(Ref(Ref($close, -1), -2), 5)"), FIELDS)
    with pytest.raises(LookAheadError, match="1 row into the future"):
        validate(parse("Ref(Ref($close, -1), 1)"), FIELDS)  # refused: it still contains a future read
    with pytest.raises(LookAheadError, match="1 more future read"):
        validate(parse("Ref($close, -1) + Ref($open, -3)"), FIELDS)


def test_complexity_caps():
    node = parse("Mean($close, 5) / Std($close, 5) + Abs($open)")
    with pytest.raises(ExpressionError, match=r"8 nodes.*max_nodes=5"):
        validate(node, FIELDS, max_nodes=5)
    with pytest.raises(ExpressionError, match=r"4 levels.*max_depth=3"):
        validate(node, FIELDS, max_depth=3)
    assert validate(node, FIELDS, max_nodes=8, max_depth=4) is node


@pytest.mark.parametrize(
    "node, kind, message",
    [
        (Rolling("Mean", (x,), 0), ExpressionError, "Expanding"),
        (Rolling("Skew", (x,), 2), ArityError, ">= 3"),
        (Rolling("Mean", (x,), 5, 0.5), ArityError, "takes 2 arguments"),
        (Ref(x, 0), ExpressionError, "Expanding"),
        (Rolling("Foo", (x,), 5), UnknownOperatorError, "Foo"),
        (Unary("Mean", x), UnknownOperatorError, "Mean"),
        (Binary("Max", x, y), UnknownOperatorError, "Max"),
        (Const(float("nan")), ExpressionError, "not finite"),
        (Field("close price"), ExpressionError, "not a valid name"),
        (Mask(x, "bad name"), ArityError, "instrument"),
        (EMA(x, 2.5), ArityError, "alpha"),
        (CrossSection("CSWinsorize", x), ExpressionError, "CSWinsorize"),
        (Rolling("Mean", ("$x",), 5), ArityError, "must be an expression"),
        (Rolling("Mean", (5,), 5), ExpressionError, "not an expression node"),
    ],
)
def test_malformed_hand_built_nodes(node, kind, message):
    with pytest.raises(kind, match=re.escape(message)):
        validate(node, FIELDS)


def test_compile_expression():
    assert compile_expression("Mean($close, 5)", FIELDS) == Rolling("Mean", (close,), 5)
    assert compile_expression(Rolling("Mean", (close,), 5), ["close"]) == Rolling("Mean", (close,), 5)
    with pytest.raises(LookAheadError):
        compile_expression("Ref($close, -1)", FIELDS)
    with pytest.raises(UnknownFieldError):
        compile_expression("$foo", FIELDS)
    with pytest.raises(ParseError):
        compile_expression("Mean($close, ", FIELDS)
