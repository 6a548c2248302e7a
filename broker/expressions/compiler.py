"""Predicate closures and probes for each construct, and the compiled :class:`Expression`.

Theory of operation
-------------------
The parser calls one function here per construct it has read, handing over the syntax node and
what it already compiled (the path's extractor, the operands' :class:`Item`), and gets back an
:class:`Item`: the node, its predicate and its probes. Nothing walks the tree afterwards.

A predicate is a closure ``(root, here, lists, owner) -> bool`` (:data:`Pred`): ``root`` is the
canonical envelope, ``here`` the list element inside ``any()`` (the envelope elsewhere), so an
absolute path reads ``root`` and a relative one ``here``. Comparison closures are specialised on
absolute-or-relative at compile time; value lists are asked through the :class:`ValueLists`
protocol at every evaluation. Literals are reduced to comparison keys once, when compiling.

Probes (:mod:`broker.expressions.probes`) come bottom-up: ``=``, ``in (…)`` and
``in valueliste(…)`` are exact; ``!=`` and the negations give none; ``and`` keeps every
conjunct's probes as inexact alternatives, smallest first; ``or`` unites the best probe of each
disjunct if every disjunct has one; ``any()`` stays exact only while all its atoms lie inside
the list it iterates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, TypeAlias

from broker.envelope import Haendelsesbesked
from broker.expressions.model import comparison_key
from broker.expressions.paths import Extract
from broker.expressions.probes import MAX_PROBES, EqAtom, ListAtom, PathKey, Probe
from broker.expressions.syntax import (
    And,
    AnyOf,
    Compare,
    InValueList,
    InValues,
    Node,
    Not,
    Or,
    unparse,
)

__all__ = [
    "Expression",
    "Item",
    "Pred",
    "ValueLists",
    "compile_and",
    "compile_any",
    "compile_compare",
    "compile_in_list",
    "compile_in_values",
    "compile_not",
    "compile_or",
]


class ValueLists(Protocol):
    """Current value-list contents, read at every evaluation (a value added now counts for the
    next envelope). Values handed in are comparison keys (:func:`comparison_key`).

    A list that does not exist, is passivated or deleted contains nothing.
    """

    def contains(self, owner: str, name: str, value: str) -> bool:
        """Is ``value`` in the value list ``name`` of system ``owner``?"""
        ...


Pred: TypeAlias = Callable[[Any, Any, ValueLists, str], bool]


class Item(NamedTuple):
    """One compiled construct."""

    node: Node
    pred: Pred
    probes: tuple[Probe, ...]


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


def compile_compare(node: Compare, extract: Extract, absolute: bool, key: PathKey) -> Item:
    k = comparison_key(node.value)
    pred: Pred
    if node.op == "=":
        if absolute:
            pred = lambda r, h, lv, o: k in extract(r)  # noqa: E731
        else:
            pred = lambda r, h, lv, o: k in extract(h)  # noqa: E731
        return Item(node, pred, (Probe(frozenset({EqAtom(key, k)}), True),))
    if absolute:
        pred = lambda r, h, lv, o: k not in extract(r)  # noqa: E731
    else:
        pred = lambda r, h, lv, o: k not in extract(h)  # noqa: E731
    return Item(node, pred, ())


def compile_in_values(node: InValues, extract: Extract, absolute: bool, key: PathKey) -> Item:
    keys = frozenset(comparison_key(v) for v in node.values)
    disjoint = keys.isdisjoint
    pred: Pred
    if node.negated:
        if absolute:
            pred = lambda r, h, lv, o: disjoint(extract(r))  # noqa: E731
        else:
            pred = lambda r, h, lv, o: disjoint(extract(h))  # noqa: E731
        return Item(node, pred, ())
    if absolute:
        pred = lambda r, h, lv, o: not disjoint(extract(r))  # noqa: E731
    else:
        pred = lambda r, h, lv, o: not disjoint(extract(h))  # noqa: E731
    atoms = frozenset(EqAtom(key, k) for k in keys)
    return Item(node, pred, (Probe(atoms, True),))


def compile_in_list(node: InValueList, extract: Extract, absolute: bool, key: PathKey) -> Item:
    name, negated = node.name, node.negated

    def pred(r: Any, h: Any, lv: ValueLists, o: str) -> bool:
        for v in extract(r if absolute else h):
            if lv.contains(o, name, v):
                return not negated
        return negated

    probes = () if negated else (Probe(frozenset({ListAtom(key, name)}), True),)
    return Item(node, pred, probes)


def compile_not(inner: Item) -> Item:
    p = inner.pred
    return Item(Not(inner.node), lambda r, h, lv, o: not p(r, h, lv, o), ())


def compile_any(
    node: AnyOf, cond: Item, elements: Extract, absolute: bool, prefix: PathKey
) -> Item:
    """``any()``: ``elements`` reads the list, ``prefix`` is the absolute key of an element."""
    c = cond.pred

    def pred(r: Any, h: Any, lv: ValueLists, o: str) -> bool:
        for e in elements(r if absolute else h):  # noqa: SIM110 (a loop is faster)
            if c(r, e, lv, o):
                return True
        return False

    probes = tuple(
        Probe(p.atoms, p.exact and all(a.path[: len(prefix)] == prefix for a in p.atoms))
        for p in cond.probes
    )
    return Item(node, pred, probes)


def compile_and(items: list[Item]) -> Item:
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
    return Item(And(tuple(i.node for i in items)), pred, tuple(probes))


def compile_or(items: list[Item]) -> Item:
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
    return Item(Or(tuple(i.node for i in items)), pred, probes)
