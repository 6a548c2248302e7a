"""The one-pass parser: text to checked, compiled expression.

Theory of operation
-------------------
:func:`compile_expression` makes one pass over the text. A recursive-descent parser reads the
tokens of :mod:`broker.expressions.lexer` by this grammar (``docs/filters.md`` has it in full)::

    or         := and ('or' and)*
    and        := not ('and' not)*
    not        := 'not' not | primary
    primary    := '(' or ')' | 'any' '(' path ',' or ')' | comparison
    comparison := path ('=' | '!=') literal
                | path ['not'] 'in' ('(' literal (',' literal)* ')' | 'valueliste' '(' literal ')')
    path       := (name | 'it' | 'get' '(' path ',' int ')') ('.' name)*

It checks every path against the envelope model as it reads it
(:mod:`broker.expressions.paths`), so every error is an :class:`ExpressionError` naming its
column, what was expected and what was found. For every construct it hands the syntax node to
:mod:`broker.expressions.compiler`, which returns the node with its predicate and probes, so
tree, closures and probes are all ready when the text ends.

Input is bounded: :data:`MAX_EXPRESSION_LENGTH` characters, :data:`MAX_DEPTH` levels of
nesting (the parser recurses) and :data:`MAX_GET_INDEX` for ``get()``.
"""

from __future__ import annotations

from typing import Final, Literal, NoReturn

from broker.errors import InvalidInput
from broker.expressions.compiler import (
    Expression,
    Item,
    compile_and,
    compile_any,
    compile_compare,
    compile_in_list,
    compile_in_values,
    compile_not,
    compile_or,
)
from broker.expressions.lexer import Token, describe, tokenize
from broker.expressions.model import ROOT, field_names
from broker.expressions.paths import (
    TOP,
    Resolution,
    Scope,
    build,
    identity_final,
    intern,
    leaf_final,
)
from broker.expressions.syntax import AnyOf, Compare, Get, InValueList, InValues, Node, Path

__all__ = [
    "MAX_DEPTH",
    "MAX_EXPRESSION_LENGTH",
    "MAX_GET_INDEX",
    "ExpressionError",
    "compile_expression",
    "parse",
]

MAX_EXPRESSION_LENGTH: Final = 4096
#: Nesting bound for ``(``, ``not``, ``any(`` and ``get(`` together (the parser recurses).
MAX_DEPTH: Final = 32
MAX_GET_INDEX: Final = 1_000_000


class ExpressionError(InvalidInput):
    """An expression that does not parse or names something the envelope does not have.

    Attributes:
        column: 1-based column (in characters) of the offending token.
        expression: the text that was compiled.
    """

    default_code = "invalid_expression"

    def __init__(self, message: str, *, column: int, expression: str) -> None:
        super().__init__(f"column {column}: {message}", path="$.expression")
        self.column = column
        self.expression = expression


_NO_LISTS: Final[frozenset[str]] = frozenset()


def compile_expression(text: str) -> Expression:
    """Parse, check against the envelope model and compile ``text``.

    Error handling:
        Raises :class:`ExpressionError` (``InvalidInput``, code ``invalid_expression``) whose
        message starts ``column N:`` and says what was expected and what was found, e.g.
        ``column 42: expected ')' or ',' after literal, found 'and'``.
    """
    item, value_lists = _Parser(text).parse()
    names = frozenset(value_lists) if value_lists else _NO_LISTS
    return Expression(text, item.node, item.pred, item.probes, names)


def parse(text: str) -> Node:
    """The syntax tree of ``text`` (checked like :func:`compile_expression`)."""
    return _Parser(text).parse()[0].node


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.depth = 0
        self.value_lists: set[str] = set()
        if len(text) > MAX_EXPRESSION_LENGTH:
            self.fail(
                f"expression is longer than {MAX_EXPRESSION_LENGTH} characters",
                MAX_EXPRESSION_LENGTH + 1,
            )
        self.toks = tokenize(text)
        self.pos = 0

    # -- token helpers

    def fail(self, message: str, where: Token | int) -> NoReturn:
        col = where if isinstance(where, int) else where.col
        raise ExpressionError(message, column=col, expression=self.text)

    def peek(self) -> Token:
        tok = self.toks[self.pos]
        if tok.kind == "error":
            self.fail(tok.text, tok)
        return tok

    def next(self) -> Token:
        tok = self.peek()
        if tok.kind != "end":
            self.pos += 1
        return tok

    @staticmethod
    def is_kw(tok: Token, word: str) -> bool:
        return tok.kw == word

    @staticmethod
    def is_op(tok: Token, op: str) -> bool:
        return tok.kind == "op" and tok.value == op

    def expect(self, op: str, context: str) -> Token:
        tok = self.next()
        if not self.is_op(tok, op):
            self.fail(f"expected '{op}' {context}, found {describe(tok)}", tok)
        return tok

    def enter(self, tok: Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail(f"nested deeper than {MAX_DEPTH} levels", tok)

    def literal(self, context: str) -> str:
        tok = self.next()
        if tok.kind != "str":
            self.fail(f"expected a literal ('…') {context}, found {describe(tok)}", tok)
        return tok.value

    # -- grammar

    def parse(self) -> tuple[Item, set[str]]:
        if self.peek().kind == "end":
            self.fail("expected a condition, found end of expression", self.peek())
        item = self.or_(TOP)
        tok = self.peek()
        if tok.kind != "end":
            self.fail(f"expected 'and', 'or' or end of expression, found {describe(tok)}", tok)
        return item, self.value_lists

    def or_(self, scope: Scope) -> Item:
        items = [self.and_(scope)]
        while self.is_kw(self.peek(), "or"):
            self.next()
            items.append(self.and_(scope))
        return items[0] if len(items) == 1 else compile_or(items)

    def and_(self, scope: Scope) -> Item:
        items = [self.not_(scope)]
        while self.is_kw(self.peek(), "and"):
            self.next()
            items.append(self.not_(scope))
        return items[0] if len(items) == 1 else compile_and(items)

    def not_(self, scope: Scope) -> Item:
        tok = self.peek()
        if not self.is_kw(tok, "not"):
            return self.primary(scope)
        self.next()
        self.enter(tok)
        inner = self.not_(scope)
        self.depth -= 1
        return compile_not(inner)

    def primary(self, scope: Scope) -> Item:
        tok = self.peek()
        if self.is_op(tok, "("):
            self.next()
            self.enter(tok)
            item = self.or_(scope)
            end = self.next()
            if not self.is_op(end, ")"):
                self.fail(
                    f"expected 'and', 'or' or ')' to close '(' at column {tok.col},"
                    f" found {describe(end)}",
                    end,
                )
            self.depth -= 1
            return item
        if self.is_kw(tok, "any"):
            return self.any_(scope)
        return self.comparison(scope)

    def any_(self, scope: Scope) -> Item:
        tok = self.next()
        self.enter(tok)
        self.expect("(", "after 'any'")
        start = self.peek()
        path, res = self.path(scope)
        if not res.is_list:
            self.fail(f"any() needs a list, but '{res.label}' is not a list", start)
        self.expect(",", "after the list in any(…)")
        prefix = (*res.full_key(scope), "*")
        cond = self.or_(Scope(res.type, prefix))
        end = self.next()
        if not self.is_op(end, ")"):
            self.fail(
                f"expected 'and', 'or' or ')' to close 'any(' at column {tok.col},"
                f" found {describe(end)}",
                end,
            )
        self.depth -= 1
        elements = build((*res.steps, "*"), identity_final)
        return compile_any(AnyOf(path, cond.node), cond, elements, res.absolute, prefix)

    def comparison(self, scope: Scope) -> Item:
        path, res = self.path(scope)
        tok = self.peek()
        if res.is_list:  # a list compared as a whole: each element ("exists")
            res = res._replace(is_list=False, steps=(*res.steps, "*"))
        if res.type.leaf is None:
            self.fail(
                f"'{res.label}' is a structure, not a value: expected '.' and one of"
                f" {field_names(res.type)}; found {describe(tok)}",
                tok,
            )
        extract = build(res.steps, leaf_final(res.type.leaf))
        key, absolute = intern(res.full_key(scope)), res.absolute
        if self.is_op(tok, "=") or self.is_op(tok, "!="):
            self.next()
            op: Literal["=", "!="] = "=" if tok.value == "=" else "!="
            value = self.literal(f"after '{tok.text}'")
            return compile_compare(Compare(path, op, value), extract, absolute, key)
        negated = False
        if self.is_kw(tok, "not"):
            self.next()
            negated, tok = True, self.peek()
            if not self.is_kw(tok, "in"):
                self.fail(f"expected 'in' after 'not', found {describe(tok)}", tok)
        if not self.is_kw(tok, "in"):
            self.fail(
                f"expected '=', '!=', 'in' or 'not in' after path, found {describe(tok)}", tok
            )
        self.next()
        tok = self.next()
        if self.is_kw(tok, "valueliste"):
            self.expect("(", "after 'valueliste'")
            name_tok = self.peek()
            name = self.literal("naming the value list")
            if not name:
                self.fail("a value list name must not be empty", name_tok)
            self.expect(")", "after the value list name")
            self.value_lists.add(name)
            return compile_in_list(InValueList(path, name, negated), extract, absolute, key)
        if not self.is_op(tok, "("):
            self.fail(f"expected '(' or 'valueliste' after 'in', found {describe(tok)}", tok)
        values = [self.literal("after '('")]
        while True:
            tok = self.next()
            if self.is_op(tok, ")"):
                break
            if not self.is_op(tok, ","):
                self.fail(f"expected ')' or ',' after literal, found {describe(tok)}", tok)
            values.append(self.literal("after ','"))
        return compile_in_values(InValues(path, tuple(values), negated), extract, absolute, key)

    def path(self, scope: Scope) -> tuple[Path, Resolution]:
        tok = self.next()
        base: Get | None = None
        names: list[str] = []
        it = False
        if self.is_kw(tok, "get"):
            self.enter(tok)
            self.expect("(", "after 'get'")
            start = self.peek()
            inner, res = self.path(scope)
            if not res.is_list:
                self.fail(f"get() needs a list, but '{res.label}' is not a list", start)
            self.expect(",", "after the list in get(…)")
            itok = self.next()
            if itok.kind != "int":
                self.fail(f"expected an index (0, 1, …) in get(…), found {describe(itok)}", itok)
            index = int(itok.value)
            if index < 0:
                self.fail(f"an index counts from 0, found {describe(itok)}", itok)
            if index > MAX_GET_INDEX:
                self.fail(f"index {index} is larger than {MAX_GET_INDEX}", itok)
            self.expect(")", "after the index in get(…)")
            self.depth -= 1
            base = Get(inner, index)
            res = res._replace(is_list=False, steps=(*res.steps, index), label=f"get(…, {index})")
        elif self.is_kw(tok, "it"):
            if scope.element is None:
                self.fail("'it' (the list element) is only valid inside any(…)", tok)
            res, it = Resolution(scope.element, False, (), False, "it"), True
        elif tok.kind == "name" and not tok.kw:
            names.append(tok.text)
            res = self.first(scope, tok)
        else:
            starts = "Beskedkuvert" if scope.element is None else "a field of the element"
            self.fail(f"expected a path ({starts}, get(…) or any(…)), found {describe(tok)}", tok)
        while self.is_op(self.peek(), "."):
            self.next()
            tok = self.next()
            if tok.kind != "name":
                self.fail(f"expected a name after '.', found {describe(tok)}", tok)
            res = self.step(res, tok)
            names.append(tok.text)
        return intern(Path(tuple(names), base, it)), res

    def first(self, scope: Scope, tok: Token) -> Resolution:
        el = scope.element
        if el is not None and tok.text in el.fields:
            t, is_list = el.fields[tok.text]
            return Resolution(t, is_list, (tok.text,), False, tok.text)
        if tok.text in ROOT.fields:
            t, is_list = ROOT.fields[tok.text]
            return Resolution(t, is_list, (tok.text,), True, tok.text)
        valid = "Beskedkuvert" if el is None else f"it, {field_names(el)}, Beskedkuvert"
        self.fail(f"unknown name '{tok.text}'{_hint(tok.text, valid)}; expected {valid}", tok)

    def step(self, res: Resolution, tok: Token) -> Resolution:
        steps = (*res.steps, "*") if res.is_list else res.steps
        field = res.type.fields.get(tok.text)
        if field is None and not res.type.fields:
            self.fail(f"'{res.label}' is a value ({res.type.name}) and has no fields", tok)
        if field is None:
            valid = field_names(res.type)
            self.fail(
                f"unknown name '{tok.text}' in {res.type.name}{_hint(tok.text, valid)};"
                f" expected one of {valid}",
                tok,
            )
        return Resolution(field[0], field[1], (*steps, tok.text), res.absolute, tok.text)


def _hint(name: str, valid: str) -> str:
    for v in valid.split(", "):
        if v.lower() == name.lower():
            return f" (names are case-sensitive: did you mean '{v}'?)"
    return ""
