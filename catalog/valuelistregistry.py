"""The in-memory value-list registry that routing reads: :class:`broker.filters.ValueLists`.

The store owns the records (:class:`catalog.valuelists.ValueList`); this class mirrors them. Feed
it every record at start-up and every new record after each change; a change counts for the very
next envelope routed. Only ACTIVE lists (``oprettet``, ``importeret``) contain anything.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import msgspec

from broker.index import ValueListListener
from catalog.valuelists import ValueList

__all__ = ["ValueListRegistry", "ValueListStatistics"]


class ValueListStatistics(msgspec.Struct, frozen=True, kw_only=True):
    lists: int  # records held, deleted ones included
    active: int
    values: int  # values of active lists


class ValueListRegistry:
    """Current value lists in memory: the :class:`broker.filters.ValueLists` protocol.

    Feed it every record the store holds at start-up, then every new record after each change
    (:meth:`put`). Lookups by ``(owner, name)`` see only ACTIVE lists. Keeps a reverse map value
    -> lists for :meth:`lists_containing` (the subscription index's probe). Not thread-safe: one
    owner (the router) mutates and reads it.
    """

    def __init__(self, records: Iterable[ValueList] = ()) -> None:
        self._listeners: list[ValueListListener] = []
        self._by_name: dict[tuple[str, str], str] = {}  # (owner, name) of active lists -> id
        self._records: dict[str, ValueList] = {}
        self._reverse: dict[str, set[tuple[str, str]]] = {}
        self._active_values = 0
        for record in records:
            self.put(record)

    # -- the ValueLists protocol

    def contains(self, owner: str, name: str, value: str) -> bool:
        lists = self._reverse.get(value)
        return lists is not None and (owner, name) in lists

    def lists_containing(self, value: str) -> Iterable[tuple[str, str]]:
        return self._reverse.get(value, ())

    # -- the WatchedValueLists protocol (broker.index files subscriptions under list values)

    def active_values(self, owner: str, name: str) -> Collection[str]:
        list_id = self._by_name.get((owner, name))
        record = None if list_id is None else self._records.get(list_id)
        return record.values if record is not None and record.active else ()

    def watch(self, listener: ValueListListener) -> None:
        self._listeners.append(listener)

    def unwatch(self, listener: ValueListListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _announce(
        self, key: tuple[str, str] | None, added: Collection[str], removed: Collection[str]
    ) -> None:
        if key is None or not (added or removed):
            return
        for listener in list(self._listeners):
            listener(key[0], key[1], added, removed)

    # -- keeping it current

    def put(self, record: ValueList) -> None:
        """Insert or replace the record with ``record.id``; matching changes at once."""
        old = self._records.get(record.id)
        old_key = None if old is None else (old.owner, old.name)
        new_key = (record.owner, record.name)
        old_values = set(old.values) if old is not None and old.active else set()
        new_values = set(record.values) if record.active else set()
        if old_key != new_key:
            self._unindex(old_values, old_key)
            self._index(new_values, new_key)
        else:
            self._unindex(old_values - new_values, old_key)
            self._index(new_values - old_values, new_key)
        self._active_values += len(new_values) - len(old_values)
        self._records[record.id] = record
        if old_key is not None and self._by_name.get(old_key) == record.id:
            del self._by_name[old_key]
        if record.active:
            self._by_name[new_key] = record.id
        if old_key != new_key:
            self._announce(old_key, (), old_values)
            self._announce(new_key, new_values, ())
        else:
            self._announce(new_key, new_values - old_values, old_values - new_values)

    def discard(self, list_id: str) -> None:
        """Forget a record entirely (e.g. a deleted list purged from the store)."""
        old = self._records.pop(list_id, None)
        if old is not None and old.active:
            self._unindex(set(old.values), (old.owner, old.name))
            self._active_values -= len(old.values)
            if self._by_name.get((old.owner, old.name)) == old.id:
                del self._by_name[(old.owner, old.name)]
            self._announce((old.owner, old.name), (), set(old.values))

    def get(self, list_id: str) -> ValueList | None:
        return self._records.get(list_id.lower())

    def owned_by(self, owner: str) -> list[ValueList]:
        """The owner's records (deleted ones included), by name."""
        return sorted((r for r in self._records.values() if r.owner == owner), key=lambda r: r.name)

    def statistics(self) -> ValueListStatistics:
        return ValueListStatistics(
            lists=len(self._records),
            active=sum(1 for r in self._records.values() if r.active),
            values=self._active_values,
        )

    def __repr__(self) -> str:
        s = self.statistics()
        return f"<ValueListRegistry [{s.lists} lists, {s.active} active | {s.values} values]>"

    def _index(self, values: Iterable[str], key: tuple[str, str] | None) -> None:
        if key is None:
            return
        reverse = self._reverse
        for value in values:
            holders = reverse.get(value)
            if holders is None:
                reverse[value] = {key}
            else:
                holders.add(key)

    def _unindex(self, values: Iterable[str], key: tuple[str, str] | None) -> None:
        if key is None:
            return
        reverse = self._reverse
        for value in values:
            holders = reverse.get(value)
            if holders is not None:
                holders.discard(key)
                if not holders:
                    del reverse[value]
