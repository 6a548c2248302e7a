"""The syntax tree of a subscription expression, and its canonical text.

Theory of operation
-------------------
The parser (:mod:`broker.expressions.parser`) builds one immutable, hashable msgspec Struct per
construct: comparisons (:class:`Compare`, :class:`InValues`, :class:`InValueList`) at the
leaves, :class:`Not`, :class:`And`, :class:`Or` and :class:`AnyOf` above them. Two expressions
are equal when their trees are, whatever their spacing or the case of their keywords. Paths
(:class:`Path`) are kept as written, with their optional start: ``get(…)`` (:class:`Get`) or
``it``.

:func:`unparse` prints a tree in canonical form: keywords in lower case, one space around
operators, an ``and``/``or`` operand of another operator in parentheses, quotes doubled inside
literals. It inverts parsing: ``parse(unparse(t)) == t`` for every valid tree.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import msgspec

__all__ = [
    "And",
    "AnyOf",
    "Compare",
    "Get",
    "InValueList",
    "InValues",
    "Node",
    "Not",
    "Or",
    "Path",
    "unparse",
]


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
