"""The envelope model as the expression language sees it, and the comparison key of a value.

Theory of operation
-------------------
The language checks every path against the envelope while parsing, so that an error can name
its column and the fields that would have been valid. The model it checks against is read once,
at import, from the msgspec Structs of :mod:`broker.envelope` (``msgspec.inspect``) into a tree
of :class:`ModelType` nodes rooted at :data:`ROOT`:

* a struct becomes a node whose ``fields`` map each name to its node and whether it is a list;
* text, boolean and integer fields become shared leaf nodes; the choice types
  :class:`~broker.envelope.UnikId` and :class:`~broker.envelope.Tidspunkt` are structs that are
  also leaves (they compare the text of whichever branch is present);
* optional members and input shorthands collapse to the struct the canonical envelope holds;
  raw extension XML, lists of lists and anything else not comparable are left out.

A leaf's ``leaf`` reader turns a value into its comparison key (:func:`comparison_key`: UUID
text lower-cased, anything else as is), or ``None`` for a choice with no branch present.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final, TypeAlias

import msgspec.inspect as mi

from broker.envelope import Haendelsesbesked, Tidspunkt, UnikId

__all__ = ["ROOT", "Leaf", "ModelType", "comparison_key", "field_names"]

_UUID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z"
)


def comparison_key(text: str) -> str:
    """The form a value is compared in: UUIDs lower-cased (they are case-insensitive), the rest
    exact. Value-list implementations must store ``comparison_key(value)`` for each value."""
    if len(text) == 36 and _UUID_RE.match(text):
        return text.lower()
    return text


Leaf: TypeAlias = Callable[[Any], "str | None"]


class ModelType:
    """A node of the model: named fields (each maybe a list) and, if comparable, a leaf reader
    giving the comparison key of a value of this type."""

    __slots__ = ("fields", "leaf", "name")

    def __init__(self, name: str, leaf: Leaf | None) -> None:
        self.name = name
        self.leaf = leaf
        self.fields: dict[str, tuple[ModelType, bool]] = {}


def field_names(t: ModelType) -> str:
    """The names of ``t``'s fields, for messages."""
    return ", ".join(t.fields)


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
_STR = ModelType("text", _str_leaf)
_BOOL = ModelType("boolean", _bool_leaf)
_INT = ModelType("integer", _int_leaf)


def _classify(t: mi.Type, memo: dict[type, ModelType | None]) -> tuple[ModelType, bool] | None:
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


def _struct(t: mi.StructType, memo: dict[type, ModelType | None]) -> ModelType | None:
    if t.cls in memo:
        return memo[t.cls]
    node = ModelType(t.cls.__name__, _CHOICE_LEAVES.get(t.cls))
    for f in t.fields:
        if f.name not in _OPAQUE_FIELDS and (c := _classify(f.type, memo)) is not None:
            node.fields[f.name] = c
    memo[t.cls] = result = node if node.fields or node.leaf else None
    return result


def _model() -> ModelType:
    full = _struct(mi.type_info(Haendelsesbesked), {})  # type: ignore[arg-type]
    assert full is not None
    root = ModelType("Haendelsesbesked", None)
    root.fields["Beskedkuvert"] = full.fields["Beskedkuvert"]  # paths start at Beskedkuvert
    return root


#: The envelope: its only field is ``Beskedkuvert``, where every absolute path starts.
ROOT: Final = _model()
