"""Value lists (værdilister): named sets of strings a system's expressions test membership in.

Theory of operation
-------------------
A value list belongs to the system that created it; its name is unique among that system's
lists that are not deleted. Values are unvalidated strings (CPR numbers, UUIDs …), unique within
a list, stored as filter comparison keys (:func:`broker.filters.comparison_key`: UUIDs
lower-cased, anything else exact). Adding a value already present or removing one that is absent
is not an error (KOMBIT's VærdilisteRediger, reference §3).

The lifecycle is one table, :data:`TRANSITIONS` ((status, operation) -> status; ``None`` is "no
such list yet")::

    (none) --create--> oprettet      (none) --import--> importeret
    oprettet | importeret --replace/add/remove--> (same)
    oprettet | importeret --passivate--> passiveret --import--> importeret
    oprettet | importeret | passiveret --delete--> slettet   (final; content wiped)

Only ACTIVE lists (``oprettet``, ``importeret``) take part in matching: a passivated list keeps
its values but contains nothing until it is imported again; a deleted one is empty for good.
Each change that alters the list counts one registration and stamps ``last_changed_ms``
(KOMBIT: one registration per change, server time); a no-op edit changes nothing.

The pure functions here return new records;
:class:`catalog.valuelistregistry.ValueListRegistry` mirrors the current records in memory and
answers :class:`broker.filters.ValueLists` for routing (a change put into it counts for the very
next envelope).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal, TypeAlias

import msgspec

from broker.codec import decode_struct
from broker.errors import Conflict, InvalidInput, NotFound
from broker.filters import comparison_key
from catalog.authorities import require_name
from catalog.ids import Record

__all__ = [
    "ACTIVE",
    "MAX_VALUES",
    "MAX_VALUE_LENGTH",
    "TRANSITIONS",
    "EditOperation",
    "Operation",
    "Status",
    "ValueList",
    "ValueListIn",
    "ValuesEdit",
    "apply_values_edit",
    "check_name_free",
    "create",
    "decode_value_list_in",
    "decode_values_edit",
    "edit",
    "import_",
    "require_owner",
    "transition",
]

Status: TypeAlias = Literal["importeret", "oprettet", "passiveret", "slettet"]
Operation: TypeAlias = Literal[
    "create", "import", "replace", "add", "remove", "passivate", "delete"
]
EditOperation: TypeAlias = Literal["replace", "add", "remove", "passivate", "delete"]

MAX_VALUES: Final = 1_000_000
MAX_VALUE_LENGTH: Final = 1024

#: (current status, or None for no list; operation) -> next status. Pairs not listed are illegal.
TRANSITIONS: Final[dict[tuple[Status | None, Operation], Status]] = {
    (None, "create"): "oprettet",
    (None, "import"): "importeret",
    ("oprettet", "replace"): "oprettet",
    ("oprettet", "add"): "oprettet",
    ("oprettet", "remove"): "oprettet",
    ("importeret", "replace"): "importeret",
    ("importeret", "add"): "importeret",
    ("importeret", "remove"): "importeret",
    ("oprettet", "passivate"): "passiveret",
    ("importeret", "passivate"): "passiveret",
    ("passiveret", "import"): "importeret",
    ("oprettet", "delete"): "slettet",
    ("importeret", "delete"): "slettet",
    ("passiveret", "delete"): "slettet",
}
#: The statuses whose values count for matching.
ACTIVE: Final[frozenset[Status]] = frozenset({"oprettet", "importeret"})


class ValueList(Record, frozen=True, kw_only=True):
    """One value list; ``values`` are comparison keys, sorted, without duplicates."""

    id: str  # UUID, lower-case
    owner: str  # system id
    name: str
    values: tuple[str, ...] = ()
    status: Status = "oprettet"
    registrations: int = 1  # changes so far, the creation included
    last_changed_ms: int = 0
    created_ms: int = 0

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


class ValueListIn(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of a create or import: ``{"name", "values"?}``."""

    name: str
    values: list[str] = []


class ValuesEdit(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Body of ``POST /v1/value-lists/{id}/values``: ``{"add"?, "remove"?}``."""

    add: list[str] = []
    remove: list[str] = []


_list_decoder: Final = msgspec.json.Decoder(ValueListIn)
_edit_decoder: Final = msgspec.json.Decoder(ValuesEdit)


def decode_value_list_in(data: bytes) -> ValueListIn:
    body: ValueListIn = decode_struct(data, _list_decoder)
    return body


def decode_values_edit(data: bytes) -> ValuesEdit:
    body: ValuesEdit = decode_struct(data, _edit_decoder)
    return body


def transition(current: ValueList | None, op: Operation) -> Status:
    """The status after ``op``.

    Error handling:
        :class:`Conflict` (``value_list_state``) when the table has no such transition.
    """
    before = None if current is None else current.status
    after = TRANSITIONS.get((before, op))
    if after is None:
        what = "no list" if current is None else f"value list {current.id} is {before}"
        raise Conflict(f"{what}: cannot {op}", code="value_list_state")
    return after


def _values(items: Iterable[object], path: str) -> set[str]:
    out: set[str] = set()
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item:
            raise InvalidInput(
                f"a value must be a non-empty string, got {item!r}", path=f"{path}[{i}]"
            )
        if len(item) > MAX_VALUE_LENGTH:
            raise InvalidInput(
                f"a value may be at most {MAX_VALUE_LENGTH} characters", path=f"{path}[{i}]"
            )
        out.add(comparison_key(item))
    return out


def _sized(values: set[str], path: str) -> tuple[str, ...]:
    if len(values) > MAX_VALUES:
        raise InvalidInput(f"a value list may hold at most {MAX_VALUES} values", path=path)
    return tuple(sorted(values))


def check_name_free(
    owner_lists: Iterable[ValueList], name: str, *, except_id: str | None = None
) -> None:
    """Refuse ``name`` if another not-deleted list of the same owner has it.

    Error handling:
        :class:`Conflict` (``value_list_conflict``) naming the list that has the name.
    """
    for other in owner_lists:
        if other.name == name and other.status != "slettet" and other.id != except_id:
            raise Conflict(
                f"a value list named {name!r} already exists ({other.id})",
                code="value_list_conflict",
                path="$.name",
            )


def require_owner(current: ValueList | None, system_id: str, list_id: str) -> ValueList:
    """The list, if it exists and ``system_id`` owns it; another system's list is not found.

    Error handling:
        :class:`NotFound` otherwise.
    """
    if current is None or current.owner != system_id:
        raise NotFound(f"value list {list_id} does not exist")
    return current


def create(
    body: ValueListIn, *, list_id: str, owner: str, now_ms: int, owner_lists: Iterable[ValueList]
) -> ValueList:
    """A new list (``oprettet``) with a fresh id chosen by the caller.

    Error handling:
        :class:`InvalidInput` for a bad name or value (with its path);
        :class:`Conflict` (``value_list_conflict``) when the name is taken.
    """
    name = require_name(body.name, path="$.name")
    check_name_free(owner_lists, name)
    return ValueList(
        id=list_id.lower(),
        owner=owner,
        name=name,
        values=_sized(_values(body.values, "$.values"), "$.values"),
        status=transition(None, "create"),
        last_changed_ms=now_ms,
        created_ms=now_ms,
    )


def import_(
    current: ValueList | None,
    body: ValueListIn,
    *,
    list_id: str,
    owner: str,
    now_ms: int,
    owner_lists: Iterable[ValueList],
) -> ValueList:
    """Import with a given id: creates the list (``importeret``), or reactivates a passivated
    one of the same owner, replacing its name and values.

    Error handling:
        :class:`Conflict` (``value_list_conflict``) when the id belongs to another system or the
        name is taken; :class:`Conflict` (``value_list_state``) when the list is active or
        deleted; :class:`InvalidInput` for bad input.
    """
    if current is not None and current.owner != owner:
        raise Conflict(
            f"value list id {list_id} is in use", code="value_list_conflict", path="$.id"
        )
    after = transition(current, "import")
    name = require_name(body.name, path="$.name")
    check_name_free(owner_lists, name, except_id=None if current is None else current.id)
    values = _sized(_values(body.values, "$.values"), "$.values")
    if current is None:
        return ValueList(
            id=list_id.lower(),
            owner=owner,
            name=name,
            values=values,
            status=after,
            last_changed_ms=now_ms,
            created_ms=now_ms,
        )
    return msgspec.structs.replace(
        current,
        name=name,
        values=values,
        status=after,
        registrations=current.registrations + 1,
        last_changed_ms=now_ms,
    )


def edit(
    current: ValueList,
    op: EditOperation,
    values: Iterable[object] = (),
    *,
    now_ms: int,
    path: str = "$.values",
) -> ValueList:
    """Apply one operation; returns the new record (or ``current`` for a no-op edit).

    ``delete`` wipes the content at once. ``values`` is ignored by passivate and delete.

    Error handling:
        :class:`Conflict` (``value_list_state``) for an operation the status does not allow;
        :class:`InvalidInput` for a bad value (with its path under ``path``).
    """
    after = transition(current, op)
    held = set(current.values)
    if op == "replace":
        new = _values(values, path)
    elif op == "add":
        new = held | _values(values, path)
    elif op == "remove":
        new = held - _values(values, path)
    elif op == "delete":
        new = set()
    else:
        new = held
    if new == held and after == current.status:
        return current
    return msgspec.structs.replace(
        current,
        values=_sized(new, path),
        status=after,
        registrations=current.registrations + 1,
        last_changed_ms=now_ms,
    )


def apply_values_edit(current: ValueList, body: ValuesEdit, *, now_ms: int) -> ValueList:
    """``{"add", "remove"}`` in one change.

    Error handling:
        :class:`InvalidInput` at ``$.remove[i]`` for a value that is in both lists; otherwise as
        :func:`edit`.
    """
    added = _values(body.add, "$.add")
    for i, value in enumerate(body.remove):
        if isinstance(value, str) and comparison_key(value) in added:
            raise InvalidInput(f"value {value!r} is both added and removed", path=f"$.remove[{i}]")
    after = edit(current, "remove", body.remove, now_ms=now_ms, path="$.remove")
    after = edit(after, "add", body.add, now_ms=now_ms, path="$.add")
    if after is current:
        return current
    # one request is one registration, even when it both adds and removes
    return msgspec.structs.replace(after, registrations=current.registrations + 1)
