"""qlib factor expressions -> typed nodes, with a real grammar and positioned errors (never `eval`).

    expression := operand (infix operand)*        infix by `PRECEDENCE`, Python's order
    operand    := ('-' | '+') operand | number | $field | '(' expression ')' | Name '(' arguments ')'
    arguments  := [argument (',' argument)* [',']]   argument := expression | "string" (Mask only)

Precedence climbing keeps Python's reading of qlib's text (qlib evals it as Python), except that a
comparison chain like `$a > 1 & $b > 2` is refused as ambiguous instead of silently meaning a chain.
What each call builds, and what its arguments must be, lives in `operators.py`.
"""

from __future__ import annotations

import re
import unicodedata
from typing import NamedTuple

from quantcore.errors import ArityError, ExpressionError, ParseError, UnknownOperatorError
from quantcore.expr.ast import Binary, Const, Field, Node, Unary, children
from quantcore.expr.operators import COMPARISON, INFIX, OPERATORS, POWER, PRECEDENCE, PREFIX, build, lookup

__all__ = ["parse", "MAX_LENGTH", "MAX_DEPTH"]

MAX_LENGTH = 10_000  # characters; Alpha158's longest expression has 137
MAX_DEPTH = 200  # nesting levels; Alpha158 needs 9. Keeps the recursion well inside Python's limit.

_SPACE = " \t\r\n\f\v"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_SYMBOLS = ("**", ">=", "<=", "==", "!=", ">", "<", "+", "-", "*", "/", "&", "|", "(", ")", ",")
_MISTAKES = {  # longest first; what people write from Python, C or spreadsheets
    "&&": "'&&' is not an operator; use '&' (element-wise and)",
    "||": "'||' is not an operator; use '|' (element-wise or)",
    "//": "'//' (floor division) is not supported; use '/'",
    "<>": "'<>' is not an operator; use '!='",
    "=": "'=' is not an operator; use '==' to compare",
    "!": "'!' is not an operator; use '!=' or Not(x)",
    "~": "'~' is not an operator; use Not(x)",
    "^": "'^' is not an operator; use '**' for powers",
}
_MISTAKE_STARTS = frozenset(m[0] for m in _MISTAKES)
_WORDS = {"and": "'&'", "or": "'|'", "not": "Not(x)"}
_LOOKALIKES = {  # characters NFKC leaves alone
    "\u2212": "-",
    "\u2010": "-",
    "\u2011": "-",
    "\u2012": "-",
    "\u2013": "-",
    "\u2014": "-",
    "\u00d7": "*",
    "\u00f7": "/",
    "\u2264": "<=",
    "\u2265": ">=",
    "\u2260": "!=",
    "\u3001": ",",
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
}
_BINARY_OF = {symbol: op for op, symbol in INFIX.items()}


class _Token(NamedTuple):  # a tuple: made by the thousand per batch, several times cheaper than a dataclass
    kind: str  # "field" "number" "string" "name" "op" "(" ")" "," "end"
    text: str
    pos: int
    value: float | str | None = None

    def describe(self) -> str:
        if self.kind == "end":
            return "end of expression"
        if self.kind in ("field", "number", "name"):
            return f"{self.kind} '{self.text}'"
        return "string literal" if self.kind == "string" else f"'{self.text}'"


def parse(text: str) -> Node:
    """Parse a qlib factor expression into its typed tree; raises an ExpressionError subclass on any problem."""
    if not isinstance(text, str):
        raise ExpressionError(f"an expression must be a str, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        message = f"expression is too long ({len(text)} characters; the limit is {MAX_LENGTH})"
        raise ParseError(message, text, MAX_LENGTH)
    if not text.strip(_SPACE):
        raise ParseError("empty expression", text, 0)
    parser = _Parser(text, _tokenize(text))
    try:
        return parser.parse()
    except RecursionError:  # a safety net only: MAX_DEPTH stops nesting long before this
        raise ParseError(f"expression nests too deeply (the limit is {MAX_DEPTH} levels)", text, parser.peek().pos)


def _tokenize(text: str) -> list[_Token]:
    tokens, i, n = [], 0, len(text)
    while i < n:
        ch = text[i]
        if ch in _SPACE:
            i += 1
        elif ch == "$":
            if text.startswith("$$", i):
                raise ParseError("'$$' (point-in-time fields) is not supported; write '$name'", text, i)
            m = _NAME.match(text, i + 1)
            if not m:
                after = text[i + 1 : i + 2]
                if after and not after.isascii():
                    raise ParseError(_bad_character(after), text, i + 1)
                raise ParseError("expected a field name after '$', like $close", text, i + 1)
            tokens.append(_Token("field", text[i : m.end()], i, m.group()))
            i = m.end()
        elif ch.isascii() and (ch.isdigit() or (ch == "." and text[i + 1 : i + 2].isdigit())):
            m = _NUMBER.match(text, i)
            end = m.end()
            if end < n and (text[end].isascii() and (text[end].isalnum() or text[end] in "._")):
                raise ParseError(f"unexpected '{text[end]}' right after the number '{m.group()}'", text, end)
            value = float(m.group())
            if value == float("inf"):
                raise ParseError(f"number '{m.group()}' is too large", text, i)
            tokens.append(_Token("number", m.group(), i, value))
            i = end
        elif ch.isascii() and (ch.isalpha() or ch == "_"):
            m = _NAME.match(text, i)
            if m.group() in _WORDS:
                raise ParseError(f"Python's '{m.group()}' is not supported; use {_WORDS[m.group()]}", text, i)
            tokens.append(_Token("name", m.group(), i))
            i = m.end()
        elif ch in "\"'":
            end = text.find(ch, i + 1)
            if end < 0:
                raise ParseError(f"unterminated string literal; close it with {ch}", text, i)
            tokens.append(_Token("string", text[i : end + 1], i, text[i + 1 : end]))
            i = end + 1
        elif ch in "(),":
            tokens.append(_Token(ch, ch, i))
            i += 1
        else:
            if ch in _MISTAKE_STARTS:
                for mistake, message in _MISTAKES.items():
                    if text.startswith(mistake, i) and not text.startswith(("==", "!=", "<=", ">="), i):
                        raise ParseError(message, text, i)
            symbol = next((s for s in _SYMBOLS if text.startswith(s, i)), None)
            if symbol is None:
                raise ParseError(_bad_character(ch), text, i)
            tokens.append(_Token("op", symbol, i))  # brackets and commas were taken above
            i += len(symbol)
    tokens.append(_Token("end", "", n))
    return tokens


def _bad_character(ch: str) -> str:
    code = f"U+{ord(ch):04X}"
    if ord(ch) < 32 or ord(ch) == 127:
        return f"unexpected control character {ch!r} ({code})"
    if ch.isascii():
        return f"unexpected character {ch!r}"
    try:
        name = unicodedata.name(ch)
        plain = _LOOKALIKES.get(ch) or unicodedata.normalize("NFKC", ch)
    except (ValueError, UnicodeError):
        name, plain = "unnamed", ""
    hint = ""
    if plain.isascii() and plain.isprintable():
        hint = f"; did you mean {plain!r}?" if plain.strip() else "; use an ordinary space"
    return f"unexpected character {ch!r} ({code} {name}){hint}; expressions are plain ASCII"


class _Parser:
    """Precedence climbing over the token list; `depths` tracks tree depth so no tree exceeds MAX_DEPTH."""

    def __init__(self, text: str, tokens: list[_Token]):
        self.text = text
        self.tokens = tokens
        self.last = len(tokens) - 1  # the "end" token
        self.i = 0
        self.nesting = 0
        self.depths: dict[int, tuple[Node, int]] = {}  # id -> (node kept alive, depth)

    def peek(self, ahead: int = 0) -> _Token:
        return self.tokens[min(self.i + ahead, self.last)]

    def advance(self) -> _Token:
        """The current token, moving past it (never past the closing "end" token)."""
        tok = self.tokens[self.i]
        if self.i < self.last:
            self.i += 1
        return tok

    def error(self, message: str, pos: int) -> ParseError:
        return ParseError(message, self.text, pos)

    def parse(self) -> Node:
        node = self.expression(0)
        tok = self.peek()
        if tok.kind == ")":
            raise self.error("unexpected ')' with no matching '('", tok.pos)
        if tok.kind != "end":
            raise self.error(f"unexpected {tok.describe()} after a complete expression; expected an operator", tok.pos)
        return node

    def nested(self, pos: int, min_prec: int) -> Node:
        """A sub-expression one nesting level down."""
        if self.nesting >= MAX_DEPTH:
            raise self.error(f"expression nests too deeply (the limit is {MAX_DEPTH} levels)", pos)
        self.nesting += 1
        try:
            return self.expression(min_prec)
        finally:
            self.nesting -= 1

    def node(self, node: Node, pos: int) -> Node:
        """Register a built node's depth; refuse trees deeper than MAX_DEPTH (their printing would recurse)."""
        d = 1 + max((self.depths.get(id(c), (c, 1))[1] for c in children(node)), default=0)
        if d > MAX_DEPTH:
            raise self.error(f"expression nests too deeply (the limit is {MAX_DEPTH} levels)", pos)
        self.depths[id(node)] = (node, d)
        return node

    def expression(self, min_prec: int) -> Node:
        left = self.operand()
        after_comparison = False
        while True:
            tok = self.peek()
            prec = PRECEDENCE.get(tok.text) if tok.kind == "op" else None
            if prec is None or prec < min_prec:
                return left
            if prec == COMPARISON and after_comparison:
                raise self.chain_error(left, tok)
            self.advance()
            # `**` is right-associative: its right side may hold another `**`; others take tighter operators only
            right = self.nested(tok.pos, POWER) if prec == POWER else self.expression(prec + 1)
            left = self.node(Binary(_BINARY_OF[tok.text], left, right), tok.pos)
            after_comparison = prec == COMPARISON

    def chain_error(self, left: Binary, tok: _Token) -> ParseError:
        """`a > m > b` (often `$a > 1 & $b > 2`, as `&` binds tighter): Python reads a chain; we refuse it."""
        from quantcore.expr.canonical import canonical  # here, not at the top: canonical.py imports parse

        self.advance()
        middle = left.right
        logic = _is_logic(middle)
        try:
            right = self.expression(COMPARISON + 1)
            joined = middle.op if logic else "And"
            first, second = (middle.left, middle.right) if logic else (middle, middle)
            fixed = Binary(joined, Binary(left.op, left.left, first), Binary(_BINARY_OF[tok.text], second, right))
            example = f"'{canonical(fixed)}'"
        except ExpressionError:
            example = "'($a > 1) & ($b > 2)'"
        why = " ('&' and '|' bind tighter than comparisons)" if logic else ""
        return self.error(
            f"ambiguous comparison chain: '{tok.text}' follows another comparison{why}, which Python (and so qlib) "
            f"would read as a chained comparison; add parentheses, e.g. {example}",
            tok.pos,
        )

    def operand(self) -> Node:
        tok = self.advance()
        if tok.kind == "op" and tok.text in ("-", "+"):
            x = self.nested(tok.pos, PREFIX)
            if tok.text == "+":
                return x
            if isinstance(x, Const):
                return Const(0.0 - x.value)  # not -value: `-0` must be the same key as `0`, not -0.0
            return self.node(Unary("Neg", x), tok.pos)
        if tok.kind == "number":
            return Const(tok.value)
        if tok.kind == "field":
            return Field(tok.value)
        if tok.kind == "(":
            inner = self.nested(tok.pos, 0)
            self.close(tok, "'('")
            return inner
        if tok.kind == "name":
            return self.call(tok)
        if tok.kind == "string":
            message = 'a string literal is only allowed as Mask\'s instrument, e.g. Mask($close, "SH000300")'
            raise self.error(message, tok.pos)
        if tok.kind == "end":
            raise self.error("unexpected end of expression, expected an operand", tok.pos)
        raise self.error(f"unexpected {tok.describe()}, expected an operand", tok.pos)

    def close(self, opened: _Token, what: str) -> None:
        tok = self.advance()
        if tok.kind != ")":
            raise self.error(
                f"expected ')' to close {what} opened at position {opened.pos}, found {tok.describe()}", tok.pos
            )

    def call(self, name: _Token) -> Node:
        if self.peek().kind != "(":
            raise self.bare_name(name)
        try:
            lookup(name.text)
        except UnknownOperatorError as exc:
            raise _located(exc, self.text, name.pos) from None
        self.advance()
        args: list[Node | str] = []
        starts: list[int] = []
        while self.peek().kind != ")":
            tok = self.peek()
            starts.append(tok.pos)
            if tok.kind == "string" and self.peek(1).kind in (",", ")"):
                args.append(self.advance().value)
            else:
                args.append(self.nested(tok.pos, 0))
            if self.peek().kind != ",":
                break
            self.advance()  # a trailing comma is fine, as in Python
        self.close(name, f"'{name.text}('")
        try:
            node = build(name.text, args)
        except ArityError as exc:
            index = getattr(exc, "argument", None)
            raise _located(exc, self.text, starts[index] if index is not None else name.pos) from None
        return self.node(node, name.pos)

    def bare_name(self, tok: _Token) -> ParseError:
        if tok.text in OPERATORS:
            return self.error(f"expected '(' after the operator name '{tok.text}'", tok.pos)
        return self.error(
            f"unexpected name '{tok.text}': fields start with '$' (did you mean '${tok.text}'?) and operators "
            f"are called like Mean($close, 5)",
            tok.pos,
        )


def _is_logic(node: Node) -> bool:
    return isinstance(node, Binary) and node.op in ("And", "Or")


def _located(exc: ExpressionError, text: str, pos: int) -> ExpressionError:
    """The same error, its message pointing at `pos` in `text` like a ParseError's (also kept as `.position`
    and `.text`)."""
    located = type(exc)(str(ParseError(str(exc), text, pos)))
    located.position, located.text = pos, text  # type: ignore[attr-defined]
    return located
