"""The subscription expression language: parser, compiler and index probes. Pure, sans-IO.

Theory of operation
-------------------
An expression selects envelopes for a subscription, in KOMBIT's syntax extended with boolean
operators, ``any(list, condition)`` and value lists (the grammar and every semantic rule are in
``docs/filters.md``)::

    get(Beskedkuvert.Filtreringsdata.ObjektRegistrering, 0).ObjektHandling = '6ce72dab-…'
    and Beskedkuvert.Filtreringsdata.ObjektRegistrering.ObjektId in valueliste('borgere')

:func:`compile_expression` makes one pass over the text. The recursive-descent parser checks
every path against the envelope model as it reads it (the model is read once from the msgspec
Structs of :mod:`broker.envelope`), so every error names its column. For every node the pass
produces, at once:

* its syntax tree (immutable Structs: :class:`Compare`, :class:`And`, …) for printing
  (:func:`unparse`) and equality;
* a predicate closure ``(root, here, lists, owner) -> bool``; evaluation never walks the tree.
  ``here`` is the list element inside ``any()``, the envelope elsewhere;
* its *probes* (:class:`Probe`): necessary conditions of the form "some value at path P is one
  of these", which the subscription index (:mod:`broker.index`) looks up instead of evaluating.

A path's values are a list: a list on the way is crossed element by element ("exists"), and a
missing element yields no value. Every value is reduced to a comparison key
(:func:`comparison_key`: UUID text lower-cased, anything else as is), as are literals and the
values the :class:`ValueLists` protocol is asked about.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from operator import attrgetter
from typing import Any, Final, Literal, NamedTuple, NoReturn, Protocol, TypeAlias, TypeVar

import msgspec
import msgspec.inspect as mi

from broker.envelope import Haendelsesbesked, Tidspunkt, UnikId
from broker.errors import InvalidInput

__all__ = [
    "MAX_DEPTH",
    "MAX_EXPRESSION_LENGTH",
    "And",
    "AnyOf",
    "Compare",
    "EqAtom",
    "Expression",
    "ExpressionError",
    "Get",
    "InValueList",
    "InValues",
    "ListAtom",
    "Node",
    "Not",
    "Or",
    "Path",
    "PathKey",
    "Probe",
    "ValueLists",
    "comparison_key",
    "compile_expression",
    "format_path_key",
    "parse",
    "path_extractor",
    "unparse",
]

MAX_EXPRESSION_LENGTH: Final = 4096
#: Nesting bound for ``(``, ``not``, ``any(`` and ``get(`` together (the parser recurses).
MAX_DEPTH: Final = 32
MAX_GET_INDEX: Final = 1_000_000
#: Alternative probes kept per expression (the index picks the cheapest when adding).
MAX_PROBES: Final = 8

KEYWORDS: Final = frozenset({"and", "or", "not", "in", "get", "any", "valueliste", "it"})

_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z"
)


def comparison_key(text: str) -> str:
    """The form a value is compared in: UUIDs lower-cased (they are case-insensitive), the rest
    exact. Value-list implementations must store ``comparison_key(value)`` for each value."""
    if len(text) == 36 and _UUID_RE.match(text):
        return text.lower()
    return text


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


# --------------------------------------------------------------------------------------------
# syntax tree


class Get(msgspec.Struct, frozen=True):
    """``get(path, index)``: the element at ``index`` (0-based) of the list at ``path``."""

    path: Path
    index: int


class Path(msgspec.Struct, frozen=True):
    """A dotted path: ``names`` after an optional start (``get(…)`` or ``it``)."""

    names: tuple[str, ...] = ()
    base: Get | None = None
    it: bool = False


class Compare(msgspec.Struct, frozen=True):
    path: Path
    op: Literal["=", "!="]
    value: str


class InValues(msgspec.Struct, frozen=True):
    path: Path
    values: tuple[str, ...]
    negated: bool = False


class InValueList(msgspec.Struct, frozen=True):
    path: Path
    name: str
    negated: bool = False


class Not(msgspec.Struct, frozen=True):
    operand: Node


class And(msgspec.Struct, frozen=True):
    operands: tuple[Node, ...]


class Or(msgspec.Struct, frozen=True):
    operands: tuple[Node, ...]


class AnyOf(msgspec.Struct, frozen=True):
    """``any(path, condition)``: the condition holds for some element of the list at ``path``."""

    path: Path
    condition: Node


Node: TypeAlias = Compare | InValues | InValueList | Not | And | Or | AnyOf


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _unparse_path(path: Path) -> str:
    if path.base is not None:
        head = f"get({_unparse_path(path.base.path)}, {path.base.index})"
    elif path.it:
        head = "it"
    else:
        return ".".join(path.names)
    return ".".join((head, *path.names))


def unparse(node: Node) -> str:
    """The canonical text of a tree; ``parse(unparse(t)) == t`` for every valid tree."""
    if isinstance(node, Compare):
        return f"{_unparse_path(node.path)} {node.op} {_literal(node.value)}"
    if isinstance(node, InValues):
        op = "not in" if node.negated else "in"
        return f"{_unparse_path(node.path)} {op} ({', '.join(map(_literal, node.values))})"
    if isinstance(node, InValueList):
        op = "not in" if node.negated else "in"
        return f"{_unparse_path(node.path)} {op} valueliste({_literal(node.name)})"
    if isinstance(node, Not):
        return f"not {_operand(node.operand)}"
    if isinstance(node, AnyOf):
        return f"any({_unparse_path(node.path)}, {unparse(node.condition)})"
    word = " and " if isinstance(node, And) else " or "
    return word.join(_operand(op) for op in node.operands)


def _operand(node: Node) -> str:
    return f"({unparse(node)})" if isinstance(node, And | Or) else unparse(node)


# --------------------------------------------------------------------------------------------
# index probes

#: An absolute path as the index sees it: field names, ``"*"`` for every element of a list,
#: an int for ``get(list, i)``. ``("Beskedkuvert", "Filtreringsdata", "TilladtModtager", "*")``.
PathKey: TypeAlias = tuple[str | int, ...]


class EqAtom(msgspec.Struct, frozen=True):
    """Some value at ``path`` has comparison key ``value``."""

    path: PathKey
    value: str


class ListAtom(msgspec.Struct, frozen=True):
    """Some value at ``path`` is in the subscription owner's value list ``name``."""

    path: PathKey
    name: str


class Probe(msgspec.Struct, frozen=True):
    """A necessary condition: if the expression holds, at least one atom holds.

    ``exact`` means sufficient too: the expression holds exactly when some atom holds, so the
    index need not evaluate it.
    """

    atoms: frozenset[EqAtom | ListAtom]
    exact: bool


def format_path_key(key: PathKey) -> str:
    """``Beskedkuvert.Filtreringsdata.ObjektRegistrering[*].ObjektId`` style text."""
    out = ""
    for step in key:
        if isinstance(step, int):
            out += f"[{step}]"
        elif step == "*":
            out += "[*]"
        else:
            out += f".{step}" if out else step
    return out


# --------------------------------------------------------------------------------------------
# the envelope model as the language sees it

Leaf: TypeAlias = Callable[[Any], "str | None"]
_T = TypeVar("_T")


class _Type:
    """A node of the model: named fields (each maybe a list) and, if comparable, a leaf reader
    giving the comparison key of a value of this type."""

    __slots__ = ("fields", "leaf", "name")

    def __init__(self, name: str, leaf: Leaf | None) -> None:
        self.name = name
        self.leaf = leaf
        self.fields: dict[str, tuple[_Type, bool]] = {}


def _str_leaf(v: Any) -> str | None:
    return comparison_key(v)


def _bool_leaf(v: Any) -> str | None:
    return "true" if v else "false"


def _int_leaf(v: Any) -> str | None:
    return str(v)


def _uid_leaf(v: Any) -> str | None:
    text = v.UUIDIdentifikator
    if text is None:
        return v.URNIdentifikator  # type: ignore[no-any-return]
    return comparison_key(text)


def _time_leaf(v: Any) -> str | None:
    if v.TidsstempelDatoTid is not None:
        return v.TidsstempelDatoTid  # type: ignore[no-any-return]
    if v.GraenseIndikator is not None:
        return "true" if v.GraenseIndikator else "false"
    return None


#: Choice types compare the text of whichever branch is present.
_CHOICE_LEAVES: Final[dict[type, Leaf]] = {UnikId: _uid_leaf, Tidspunkt: _time_leaf}
#: Raw extension XML (signatures, ##other) is not something to filter on.
_OPAQUE_FIELDS: Final = frozenset({"xml"})
_STR = _Type("text", _str_leaf)
_BOOL = _Type("boolean", _bool_leaf)
_INT = _Type("integer", _int_leaf)


def _classify(t: mi.Type, memo: dict[type, _Type | None]) -> tuple[_Type, bool] | None:
    if isinstance(t, mi.UnionType):
        members: list[mi.Type] = [m for m in t.types if not isinstance(m, mi.NoneType)]
        structs = [m for m in members if isinstance(m, mi.StructType)]
        if structs:  # a struct or its input shorthand: the model holds the struct
            members = [structs[0]]
        return _classify(members[0], memo) if len(members) == 1 else None
    if isinstance(t, mi.ListType):
        inner = _classify(t.item_type, memo)
        return None if inner is None or inner[1] else (inner[0], True)
    if isinstance(t, mi.StructType):
        node = _struct(t, memo)
        return None if node is None else (node, False)
    if isinstance(t, mi.StrType):
        return _STR, False
    if isinstance(t, mi.BoolType):
        return _BOOL, False
    if isinstance(t, mi.IntType):
        return _INT, False
    return None


def _struct(t: mi.StructType, memo: dict[type, _Type | None]) -> _Type | None:
    if t.cls in memo:
        return memo[t.cls]
    node = _Type(t.cls.__name__, _CHOICE_LEAVES.get(t.cls))
    for f in t.fields:
        if f.name not in _OPAQUE_FIELDS and (c := _classify(f.type, memo)) is not None:
            node.fields[f.name] = c
    memo[t.cls] = result = node if node.fields or node.leaf else None
    return result


def _model() -> _Type:
    full = _struct(mi.type_info(Haendelsesbesked), {})  # type: ignore[arg-type]
    assert full is not None
    root = _Type("Haendelsesbesked", None)
    root.fields["Beskedkuvert"] = full.fields["Beskedkuvert"]  # paths start at Beskedkuvert
    return root


_ROOT: Final = _model()


# --------------------------------------------------------------------------------------------
# extraction closures: node -> list of comparison keys (or of list elements)

Extract: TypeAlias = Callable[[Any], list[Any]]


def _attr_step(dotted: str, then: Extract) -> Extract:
    get = attrgetter(dotted)

    def step(node: Any) -> list[Any]:
        try:
            v = get(node)
        except AttributeError:  # an optional element on the way is absent (None)
            return []
        return [] if v is None else then(v)

    return step


def _each_step(then: Extract) -> Extract:
    def step(items: Any) -> list[Any]:
        out: list[Any] = []
        for item in items:
            out += then(item)
        return out

    return step


def _index_step(i: int, then: Extract) -> Extract:
    def step(items: Any) -> list[Any]:
        return then(items[i]) if i < len(items) else []

    return step


def _leaf_final(leaf: Leaf) -> Extract:
    final = _FINALS.get(leaf)
    if final is None:

        def final(v: Any) -> list[Any]:
            k = leaf(v)
            return [] if k is None else [k]

        _FINALS[leaf] = final
    return final


def _identity_final(v: Any) -> list[Any]:
    return [v]


_FINALS: dict[Leaf, Extract] = {}
#: One shared copy of each path and path key (100,000 subscriptions use a handful of paths).
_INTERNED: dict[Any, Any] = {}
_MAX_INTERNED: Final = 4096


def _intern(obj: _T) -> _T:
    found: _T | None = _INTERNED.get(obj)
    if found is None:
        found = obj
        if len(_INTERNED) < _MAX_INTERNED:
            _INTERNED[obj] = obj
    return found


#: Built extractors, shared by every expression using the same path (bounded: get() indexes
#: make the number of distinct paths unbounded in principle).
_BUILT: dict[tuple[PathKey, Extract], Extract] = {}
_MAX_BUILT: Final = 4096


def _build(steps: PathKey, final: Extract) -> Extract:
    f = _BUILT.get((steps, final))
    if f is None:
        f = _build_new(steps, final)
        if len(_BUILT) < _MAX_BUILT:
            _BUILT[steps, final] = f
    return f


def _build_new(steps: PathKey, final: Extract) -> Extract:
    f = final
    i = len(steps)
    while i > 0:
        s = steps[i - 1]
        if isinstance(s, int):
            f, i = _index_step(s, f), i - 1
        elif s == "*":
            f, i = _each_step(f), i - 1
        else:  # one attrgetter for a run of field names
            j = i - 1
            while j > 0 and isinstance(steps[j - 1], str) and steps[j - 1] != "*":
                j -= 1
            f, i = _attr_step(".".join(str(x) for x in steps[j:i]), f), j
    return f


_EXTRACTORS: dict[PathKey, Extract] = {}


def path_extractor(key: PathKey) -> Callable[[Haendelsesbesked], list[str]]:
    """The comparison keys at an absolute path of a canonical envelope (cached per path).

    Error handling:
        Raises ``ValueError`` if ``key`` is not a path to a comparable value of the model
        (keys come from :class:`Probe` atoms, so this is a programming error).
    """
    f = _EXTRACTORS.get(key)
    if f is None:
        node, is_list = _ROOT, False
        for step in key:
            if isinstance(step, int) or step == "*":
                if not is_list:
                    raise ValueError(f"not a list before {step!r} in {key!r}")
                is_list = False
            elif is_list or step not in node.fields:
                raise ValueError(f"no field {step!r} in {key!r}")
            else:
                node, is_list = node.fields[step]
        if is_list or node.leaf is None:
            raise ValueError(f"{key!r} does not end at a single comparable value")
        f = _EXTRACTORS[key] = _build(key, _leaf_final(node.leaf))
    return f


# --------------------------------------------------------------------------------------------
# value lists and the compiled expression


class ValueLists(Protocol):
    """Current value-list contents, read at every evaluation (a value added now counts for the
    next envelope). Values handed in are comparison keys (:func:`comparison_key`).

    A list that does not exist, is passivated or deleted contains nothing.
    """

    def contains(self, owner: str, name: str, value: str) -> bool:
        """Is ``value`` in the value list ``name`` of system ``owner``?"""
        ...


Pred: TypeAlias = Callable[[Any, Any, ValueLists, str], bool]


class Expression:
    """A compiled, immutable subscription expression. Build with :func:`compile_expression`.

    Attributes:
        text: the text as given.
        ast: its syntax tree; two expressions are equal when their trees are.
        probes: alternative necessary conditions for the index (empty: evaluate always).
        value_lists: the value-list names it refers to (the owner's lists).
    """

    __slots__ = ("_pred", "ast", "probes", "text", "value_lists")

    text: str
    ast: Node
    probes: tuple[Probe, ...]
    value_lists: frozenset[str]
    _pred: Pred

    def __init__(
        self,
        text: str,
        ast: Node,
        pred: Pred,
        probes: tuple[Probe, ...],
        value_lists: frozenset[str],
    ) -> None:
        for name, value in (
            ("text", text),
            ("ast", ast),
            ("_pred", pred),
            ("probes", probes),
            ("value_lists", value_lists),
        ):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Expression is immutable (cannot set {name!r})")

    def evaluate(self, besked: Haendelsesbesked, lists: ValueLists, owner: str) -> bool:
        """Does the canonical envelope ``besked`` match, for subscription owner ``owner``?"""
        return self._pred(besked, besked, lists, owner)

    @property
    def canonical(self) -> str:
        return unparse(self.ast)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Expression) and self.ast == other.ast

    def __hash__(self) -> int:
        return hash(self.ast)

    def __repr__(self) -> str:
        text = self.text if len(self.text) <= 80 else self.text[:77] + "..."
        return f"<Expression {text!r}>"


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


# --------------------------------------------------------------------------------------------
# tokens


class _Token(NamedTuple):
    kind: Literal["name", "int", "str", "op", "end", "error"]
    text: str  # source text (for "error": the message)
    value: str  # literal content, name, digits, operator ("<>" is "!=")
    col: int
    kw: str = ""  # the keyword, lower-cased, if this name is one


_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<name>[^\W\d]\w*)
      | (?P<int>-?[0-9]+)
      | (?P<str>'(?:[^']|'')*')
      | (?P<op>!=|<>|[=(),.])
      | (?P<bad>\S)
      | (?P<end>\Z)
    )""",
    re.VERBOSE,
)


def _tokenize(text: str) -> list[_Token]:
    """All tokens; a lexical error becomes a final "error" token, so it is reported only if
    the parser gets that far (errors come in reading order)."""
    toks: list[_Token] = []
    new = tuple.__new__  # a NamedTuple's own __new__ is a slow Python function
    for m in _TOKEN_RE.finditer(text):
        kind = m.lastgroup
        if kind == "end" or kind is None:
            break
        tok = m.group(kind)
        col = m.start(kind) + 1
        if kind == "name":
            tok = sys.intern(tok)
            low = tok.lower()
            toks.append(new(_Token, ("name", tok, tok, col, low if low in KEYWORDS else "")))
        elif kind == "str":
            toks.append(new(_Token, ("str", tok, tok[1:-1].replace("''", "'"), col, "")))
        elif kind == "op":
            toks.append(new(_Token, ("op", tok, "!=" if tok == "<>" else tok, col, "")))
        elif kind == "int":
            toks.append(new(_Token, ("int", tok, tok, col, "")))
        else:
            if tok == "'":
                msg = "unterminated literal (a literal ends with ' ; write '' for a quote)"
            else:
                hint = "; literals use single quotes" if tok in '"`´‘’“”' else ""
                msg = f"unexpected character {tok!r}{hint}"
            toks.append(_Token("error", msg, "", col))
            return toks
    toks.append(_Token("end", "", "", len(text) + 1))
    return toks


def _describe(tok: _Token) -> str:
    if tok.kind == "end":
        return "end of expression"
    if tok.kind == "str":
        return f"literal {tok.text if len(tok.text) <= 40 else tok.text[:37] + '...'}"
    return f"'{tok.text}'"


# --------------------------------------------------------------------------------------------
# parser + compiler (one pass)


class _Item(NamedTuple):
    node: Node
    pred: Pred
    probes: tuple[Probe, ...]


class _Scope(NamedTuple):
    """Where relative paths start: the envelope, or the list element inside ``any()``."""

    element: _Type | None  # None: top level, paths start at the root
    prefix: PathKey  # absolute key of the element (ends with "*")


class _Res(NamedTuple):
    """A path resolved as far as it has been read."""

    type: _Type
    is_list: bool  # the value so far is a list (not yet crossed)
    steps: PathKey  # from where the path starts (root or element)
    absolute: bool
    label: str  # last name, for messages

    def full_key(self, scope: _Scope) -> PathKey:
        return self.steps if self.absolute else scope.prefix + self.steps


_TOP: Final = _Scope(None, ())


def _names(t: _Type) -> str:
    return ", ".join(t.fields)


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
        self.toks = _tokenize(text)
        self.pos = 0

    # -- token helpers

    def fail(self, message: str, where: _Token | int) -> NoReturn:
        col = where if isinstance(where, int) else where.col
        raise ExpressionError(message, column=col, expression=self.text)

    def peek(self) -> _Token:
        tok = self.toks[self.pos]
        if tok.kind == "error":
            self.fail(tok.text, tok)
        return tok

    def next(self) -> _Token:
        tok = self.peek()
        if tok.kind != "end":
            self.pos += 1
        return tok

    @staticmethod
    def is_kw(tok: _Token, word: str) -> bool:
        return tok.kw == word

    @staticmethod
    def is_op(tok: _Token, op: str) -> bool:
        return tok.kind == "op" and tok.value == op

    def expect(self, op: str, context: str) -> _Token:
        tok = self.next()
        if not self.is_op(tok, op):
            self.fail(f"expected '{op}' {context}, found {_describe(tok)}", tok)
        return tok

    def enter(self, tok: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail(f"nested deeper than {MAX_DEPTH} levels", tok)

    def literal(self, context: str) -> str:
        tok = self.next()
        if tok.kind != "str":
            self.fail(f"expected a literal ('…') {context}, found {_describe(tok)}", tok)
        return tok.value

    # -- grammar

    def parse(self) -> tuple[_Item, set[str]]:
        if self.peek().kind == "end":
            self.fail("expected a condition, found end of expression", self.peek())
        item = self.or_(_TOP)
        tok = self.peek()
        if tok.kind != "end":
            self.fail(f"expected 'and', 'or' or end of expression, found {_describe(tok)}", tok)
        return item, self.value_lists

    def or_(self, scope: _Scope) -> _Item:
        items = [self.and_(scope)]
        while self.is_kw(self.peek(), "or"):
            self.next()
            items.append(self.and_(scope))
        return items[0] if len(items) == 1 else _or(items)

    def and_(self, scope: _Scope) -> _Item:
        items = [self.not_(scope)]
        while self.is_kw(self.peek(), "and"):
            self.next()
            items.append(self.not_(scope))
        return items[0] if len(items) == 1 else _and(items)

    def not_(self, scope: _Scope) -> _Item:
        tok = self.peek()
        if not self.is_kw(tok, "not"):
            return self.primary(scope)
        self.next()
        self.enter(tok)
        inner = self.not_(scope)
        self.depth -= 1
        p = inner.pred
        return _Item(Not(inner.node), lambda r, h, lv, o: not p(r, h, lv, o), ())

    def primary(self, scope: _Scope) -> _Item:
        tok = self.peek()
        if self.is_op(tok, "("):
            self.next()
            self.enter(tok)
            item = self.or_(scope)
            end = self.next()
            if not self.is_op(end, ")"):
                self.fail(
                    f"expected 'and', 'or' or ')' to close '(' at column {tok.col},"
                    f" found {_describe(end)}",
                    end,
                )
            self.depth -= 1
            return item
        if self.is_kw(tok, "any"):
            return self.any_(scope)
        return self.comparison(scope)

    def any_(self, scope: _Scope) -> _Item:
        tok = self.next()
        self.enter(tok)
        self.expect("(", "after 'any'")
        start = self.peek()
        path, res = self.path(scope)
        if not res.is_list:
            self.fail(f"any() needs a list, but '{res.label}' is not a list", start)
        self.expect(",", "after the list in any(…)")
        prefix = (*res.full_key(scope), "*")
        cond = self.or_(_Scope(res.type, prefix))
        end = self.next()
        if not self.is_op(end, ")"):
            self.fail(
                f"expected 'and', 'or' or ')' to close 'any(' at column {tok.col},"
                f" found {_describe(end)}",
                end,
            )
        self.depth -= 1
        elements = _build((*res.steps, "*"), _identity_final)
        c, absolute = cond.pred, res.absolute

        def pred(r: Any, h: Any, lv: ValueLists, o: str) -> bool:
            for e in elements(r if absolute else h):  # noqa: SIM110 (a loop is faster)
                if c(r, e, lv, o):
                    return True
            return False

        probes = tuple(
            Probe(p.atoms, p.exact and all(a.path[: len(prefix)] == prefix for a in p.atoms))
            for p in cond.probes
        )
        return _Item(AnyOf(path, cond.node), pred, probes)

    def comparison(self, scope: _Scope) -> _Item:
        path, res = self.path(scope)
        tok = self.peek()
        if res.is_list:  # a list compared as a whole: each element ("exists")
            res = res._replace(is_list=False, steps=(*res.steps, "*"))
        if res.type.leaf is None:
            self.fail(
                f"'{res.label}' is a structure, not a value: expected '.' and one of"
                f" {_names(res.type)}; found {_describe(tok)}",
                tok,
            )
        extract = _build(res.steps, _leaf_final(res.type.leaf))
        key, absolute = _intern(res.full_key(scope)), res.absolute
        if self.is_op(tok, "=") or self.is_op(tok, "!="):
            self.next()
            op: Literal["=", "!="] = "=" if tok.value == "=" else "!="
            value = self.literal(f"after '{tok.text}'")
            return _compare(Compare(path, op, value), extract, absolute, key)
        negated = False
        if self.is_kw(tok, "not"):
            self.next()
            negated, tok = True, self.peek()
            if not self.is_kw(tok, "in"):
                self.fail(f"expected 'in' after 'not', found {_describe(tok)}", tok)
        if not self.is_kw(tok, "in"):
            self.fail(
                f"expected '=', '!=', 'in' or 'not in' after path, found {_describe(tok)}", tok
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
            return _in_list(InValueList(path, name, negated), extract, absolute, key)
        if not self.is_op(tok, "("):
            self.fail(f"expected '(' or 'valueliste' after 'in', found {_describe(tok)}", tok)
        values = [self.literal("after '('")]
        while True:
            tok = self.next()
            if self.is_op(tok, ")"):
                break
            if not self.is_op(tok, ","):
                self.fail(f"expected ')' or ',' after literal, found {_describe(tok)}", tok)
            values.append(self.literal("after ','"))
        return _in_values(InValues(path, tuple(values), negated), extract, absolute, key)

    def path(self, scope: _Scope) -> tuple[Path, _Res]:
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
                self.fail(f"expected an index (0, 1, …) in get(…), found {_describe(itok)}", itok)
            index = int(itok.value)
            if index < 0:
                self.fail(f"an index counts from 0, found {_describe(itok)}", itok)
            if index > MAX_GET_INDEX:
                self.fail(f"index {index} is larger than {MAX_GET_INDEX}", itok)
            self.expect(")", "after the index in get(…)")
            self.depth -= 1
            base = Get(inner, index)
            res = res._replace(is_list=False, steps=(*res.steps, index), label=f"get(…, {index})")
        elif self.is_kw(tok, "it"):
            if scope.element is None:
                self.fail("'it' (the list element) is only valid inside any(…)", tok)
            res, it = _Res(scope.element, False, (), False, "it"), True
        elif tok.kind == "name" and not tok.kw:
            names.append(tok.text)
            res = self.first(scope, tok)
        else:
            starts = "Beskedkuvert" if scope.element is None else "a field of the element"
            self.fail(f"expected a path ({starts}, get(…) or any(…)), found {_describe(tok)}", tok)
        while self.is_op(self.peek(), "."):
            self.next()
            tok = self.next()
            if tok.kind != "name":
                self.fail(f"expected a name after '.', found {_describe(tok)}", tok)
            res = self.step(res, tok)
            names.append(tok.text)
        return _intern(Path(tuple(names), base, it)), res

    def first(self, scope: _Scope, tok: _Token) -> _Res:
        el = scope.element
        if el is not None and tok.text in el.fields:
            t, is_list = el.fields[tok.text]
            return _Res(t, is_list, (tok.text,), False, tok.text)
        if tok.text in _ROOT.fields:
            t, is_list = _ROOT.fields[tok.text]
            return _Res(t, is_list, (tok.text,), True, tok.text)
        valid = "Beskedkuvert" if el is None else f"it, {_names(el)}, Beskedkuvert"
        self.fail(f"unknown name '{tok.text}'{_hint(tok.text, valid)}; expected {valid}", tok)

    def step(self, res: _Res, tok: _Token) -> _Res:
        steps = (*res.steps, "*") if res.is_list else res.steps
        field = res.type.fields.get(tok.text)
        if field is None and not res.type.fields:
            self.fail(f"'{res.label}' is a value ({res.type.name}) and has no fields", tok)
        if field is None:
            valid = _names(res.type)
            self.fail(
                f"unknown name '{tok.text}' in {res.type.name}{_hint(tok.text, valid)};"
                f" expected one of {valid}",
                tok,
            )
        return _Res(field[0], field[1], (*steps, tok.text), res.absolute, tok.text)


def _hint(name: str, valid: str) -> str:
    for v in valid.split(", "):
        if v.lower() == name.lower():
            return f" (names are case-sensitive: did you mean '{v}'?)"
    return ""


# --------------------------------------------------------------------------------------------
# node compilers


def _compare(node: Compare, extract: Extract, absolute: bool, key: PathKey) -> _Item:
    k = comparison_key(node.value)
    pred: Pred
    if node.op == "=":
        if absolute:
            pred = lambda r, h, lv, o: k in extract(r)  # noqa: E731
        else:
            pred = lambda r, h, lv, o: k in extract(h)  # noqa: E731
        return _Item(node, pred, (Probe(frozenset({EqAtom(key, k)}), True),))
    if absolute:
        pred = lambda r, h, lv, o: k not in extract(r)  # noqa: E731
    else:
        pred = lambda r, h, lv, o: k not in extract(h)  # noqa: E731
    return _Item(node, pred, ())


def _in_values(node: InValues, extract: Extract, absolute: bool, key: PathKey) -> _Item:
    keys = frozenset(comparison_key(v) for v in node.values)
    disjoint = keys.isdisjoint
    pred: Pred
    if node.negated:
        if absolute:
            pred = lambda r, h, lv, o: disjoint(extract(r))  # noqa: E731
        else:
            pred = lambda r, h, lv, o: disjoint(extract(h))  # noqa: E731
        return _Item(node, pred, ())
    if absolute:
        pred = lambda r, h, lv, o: not disjoint(extract(r))  # noqa: E731
    else:
        pred = lambda r, h, lv, o: not disjoint(extract(h))  # noqa: E731
    atoms = frozenset(EqAtom(key, k) for k in keys)
    return _Item(node, pred, (Probe(atoms, True),))


def _in_list(node: InValueList, extract: Extract, absolute: bool, key: PathKey) -> _Item:
    name, negated = node.name, node.negated

    def pred(r: Any, h: Any, lv: ValueLists, o: str) -> bool:
        for v in extract(r if absolute else h):
            if lv.contains(o, name, v):
                return not negated
        return negated

    probes = () if negated else (Probe(frozenset({ListAtom(key, name)}), True),)
    return _Item(node, pred, probes)


def _and(items: list[_Item]) -> _Item:
    preds = tuple(i.pred for i in items)
    pred: Pred
    if len(preds) == 2:
        a, b = preds
        pred = lambda r, h, lv, o: a(r, h, lv, o) and b(r, h, lv, o)  # noqa: E731
    else:

        def pred(r: Any, h: Any, lv: ValueLists, o: str) -> bool:
            for p in preds:  # noqa: SIM110 (a loop is faster than all(genexpr))
                if not p(r, h, lv, o):
                    return False
            return True

    # any conjunct's probe is necessary for the whole; none is sufficient on its own
    alternatives = dict.fromkeys(Probe(p.atoms, False) for i in items for p in i.probes)
    probes = sorted(alternatives, key=lambda p: len(p.atoms))[:MAX_PROBES]
    return _Item(And(tuple(i.node for i in items)), pred, tuple(probes))


def _or(items: list[_Item]) -> _Item:
    preds = tuple(i.pred for i in items)

    def pred(r: Any, h: Any, lv: ValueLists, o: str) -> bool:
        for p in preds:  # noqa: SIM110
            if p(r, h, lv, o):
                return True
        return False

    probes: tuple[Probe, ...] = ()
    if all(i.probes for i in items):  # one necessary condition per disjunct, united
        chosen = [min(i.probes, key=lambda p: (not p.exact, len(p.atoms))) for i in items]
        atoms = frozenset().union(*(p.atoms for p in chosen))
        probes = (Probe(atoms, all(p.exact for p in chosen)),)
    return _Item(Or(tuple(i.node for i in items)), pred, probes)
