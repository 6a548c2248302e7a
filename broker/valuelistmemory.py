"""Value lists in memory, and the protocol the subscription index watches them through.

:class:`WatchedValueLists` is what :class:`broker.index.SubscriptionIndex` files ``in
valueliste(…)`` terms under (see :mod:`broker.index`); :class:`InMemoryValueLists` implements it
over dicts. Both are re-exported by :mod:`broker.index`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Protocol, TypeAlias

import msgspec

from broker.errors import Conflict, NotFound
from broker.filters import ValueLists, comparison_key

__all__ = [
    "InMemoryValueLists",
    "ValueListListener",
    "ValueListStatistics",
    "WatchedValueLists",
]

#: ``listener(owner, name, added, removed)``: values (comparison keys) that entered or left the
#: *active* contents of one list.
ValueListListener: TypeAlias = Callable[[str, str, Collection[str], Collection[str]], None]


class WatchedValueLists(ValueLists, Protocol):
    """Value lists an index can file subscriptions under (see the module docstring)."""

    def active_values(self, owner: str, name: str) -> Collection[str]:
        """The comparison keys the list holds now; empty if it is passive, deleted or absent."""
        ...

    def watch(self, listener: ValueListListener) -> None:
        """Call ``listener`` after every change of any list's active contents."""
        ...

    def unwatch(self, listener: ValueListListener) -> None: ...


class _NoLists:
    def contains(self, owner: str, name: str, value: str) -> bool:
        return False


class ValueListStatistics(msgspec.Struct, frozen=True, kw_only=True):
    lists: int
    active: int
    values: int


class _List:
    __slots__ = ("active", "values")

    def __init__(self) -> None:
        self.values: set[str] = set()
        self.active = True


class InMemoryValueLists:
    """:class:`WatchedValueLists` over dicts, for tests and as the model a store-backed
    implementation mirrors.

    Lists are keyed by (owner, name). Values are stored as comparison keys (UUIDs lower-cased),
    so ``add(…, ['ABC…'])`` then ``contains(…, 'abc…')`` is true. A passivated list keeps its
    values but contains nothing until activated again; adding a present value or removing an
    absent one is not an error (as in KOMBIT's VærdilisteRediger). Listeners hear every change
    of active contents, after it is made.
    """

    def __init__(self) -> None:
        self._lists: dict[tuple[str, str], _List] = {}
        self._listeners: list[ValueListListener] = []

    # -- the protocol

    def contains(self, owner: str, name: str, value: str) -> bool:
        lst = self._lists.get((owner, name))
        return lst is not None and lst.active and value in lst.values

    def active_values(self, owner: str, name: str) -> Collection[str]:
        lst = self._lists.get((owner, name))
        return lst.values if lst is not None and lst.active else ()

    def watch(self, listener: ValueListListener) -> None:
        self._listeners.append(listener)

    def unwatch(self, listener: ValueListListener) -> None:
        self._listeners.remove(listener)

    # -- editing

    def create(self, owner: str, name: str, values: Iterable[str] = ()) -> None:
        """Error handling: :class:`Conflict` if ``owner`` already has a list ``name``."""
        if (owner, name) in self._lists:
            raise Conflict(f"value list {name!r} of {owner} already exists")
        self._lists[(owner, name)] = _List()
        self.add(owner, name, values)

    def add(self, owner: str, name: str, values: Iterable[str]) -> None:
        lst = self._get(owner, name)
        added = {comparison_key(v) for v in values} - lst.values
        lst.values |= added
        self._tell(owner, name, lst, added, ())

    def remove(self, owner: str, name: str, values: Iterable[str]) -> None:
        lst = self._get(owner, name)
        removed = {comparison_key(v) for v in values} & lst.values
        lst.values -= removed
        self._tell(owner, name, lst, (), removed)

    def replace(self, owner: str, name: str, values: Iterable[str]) -> None:
        lst = self._get(owner, name)
        new = {comparison_key(v) for v in values}
        added, removed = new - lst.values, lst.values - new
        lst.values = new
        self._tell(owner, name, lst, added, removed)

    def set_active(self, owner: str, name: str, active: bool) -> None:
        """Passivate (``False``) or reactivate a list."""
        lst = self._get(owner, name)
        if lst.active == active:
            return
        lst.active = active
        everything = frozenset(lst.values)
        if everything:
            for listener in self._listeners:
                listener(owner, name, everything if active else (), () if active else everything)

    def delete(self, owner: str, name: str) -> None:
        self.set_active(owner, name, False)
        del self._lists[(owner, name)]

    def values(self, owner: str, name: str) -> frozenset[str]:
        return frozenset(self._get(owner, name).values)

    def statistics(self) -> ValueListStatistics:
        return ValueListStatistics(
            lists=len(self._lists),
            active=sum(lst.active for lst in self._lists.values()),
            values=sum(len(lst.values) for lst in self._lists.values()),
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<InMemoryValueLists [{s.lists} lists, {s.active} active | {s.values} values]>"

    def _get(self, owner: str, name: str) -> _List:
        lst = self._lists.get((owner, name))
        if lst is None:
            raise NotFound(f"value list {name!r} of {owner} does not exist")
        return lst

    def _tell(
        self, owner: str, name: str, lst: _List, added: Collection[str], removed: Collection[str]
    ) -> None:
        if lst.active and (added or removed):
            for listener in self._listeners:
                listener(owner, name, added, removed)
