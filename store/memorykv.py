"""The in-memory key-value backend (sorted dicts) behind :class:`store.MemoryStore`: the same
:class:`~store.kv.KvEnv` contract as LMDB, for tests and experiments (nothing is durable)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

from sortedcontainers import SortedDict

from broker.errors import StoreError

from .kv import KvReader, KvWriter

__all__ = ["MemoryKv"]


_MISSING: Final[Any] = object()


class _MemoryTxn:
    """Reads and writes the live dicts; a write txn journals old values to roll back."""

    __slots__ = ("_dbs", "_journal")

    def __init__(self, dbs: list[SortedDict], journal: list[tuple[int, bytes, Any]] | None):
        self._dbs = dbs
        self._journal = journal

    def get(self, db: int, key: bytes) -> bytes | None:
        value: bytes | None = self._dbs[db].get(key)
        return value

    def scan(
        self, db: int, start: bytes, end: bytes | None = None, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        data = self._dbs[db]
        out: list[tuple[bytes, bytes]] = []
        if limit is not None and limit <= 0:
            return out
        for key in data.irange(start, end, inclusive=(True, False)):
            out.append((key, data[key]))
            if limit is not None and len(out) >= limit:
                break
        return out

    def first(self, db: int, start: bytes, end: bytes | None = None) -> tuple[bytes, bytes] | None:
        found = self.scan(db, start, end, 1)
        return found[0] if found else None

    def count(self, db: int) -> int:
        return len(self._dbs[db])

    def get_many(self, db: int, keys: Sequence[bytes]) -> list[bytes | None]:
        data = self._dbs[db]
        return [data.get(key) for key in keys]

    def get_found(self, db: int, keys: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
        data = self._dbs[db]
        return [(key, data[key]) for key in keys if key in data]

    def _writable(self) -> list[tuple[int, bytes, Any]]:
        if self._journal is None:
            raise StoreError("write in a read transaction")
        return self._journal

    def put(self, db: int, key: bytes, value: bytes) -> None:
        if not key:
            raise StoreError("empty key")  # as LMDB: keys are 1..511 bytes
        data = self._dbs[db]
        self._writable().append((db, key, data.get(key, _MISSING)))
        data[key] = bytes(value)

    def put_many(
        self, db: int, items: Sequence[tuple[bytes, bytes]], *, append: bool = False
    ) -> None:
        data = self._dbs[db]
        if append and items and data and data.peekitem(-1)[0] >= items[0][0]:
            raise StoreError(f"put_many into {db}: append of a key that is not the largest")
        for key, value in items:
            self.put(db, key, value)

    def put_sorted(self, db: int, items: Sequence[tuple[bytes, bytes]]) -> None:
        data = self._dbs[db]
        append = bool(items) and (not data or data.peekitem(-1)[0] < items[0][0])
        self.put_many(db, items, append=append)

    def add_many(self, db: int, items: Sequence[tuple[bytes, bytes]]) -> int:
        data = self._dbs[db]
        added = 0
        for key, value in items:
            if key not in data:
                self.put(db, key, value)
                added += 1
        return added

    def delete(self, db: int, key: bytes) -> bool:
        data = self._dbs[db]
        old = data.pop(key, _MISSING)
        if old is _MISSING:
            return False
        self._writable().append((db, key, old))
        return True

    def delete_many(self, db: int, keys: Iterable[bytes]) -> int:
        return sum(self.delete(db, key) for key in keys)

    def take(
        self, db: int, start: bytes, end: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        found = self.scan(db, start, end, limit)
        for key, _ in found:
            self.delete(db, key)
        return found

    def rollback(self) -> None:
        journal = self._writable()
        for db, key, old in reversed(journal):
            if old is _MISSING:
                del self._dbs[db][key]
            else:
                self._dbs[db][key] = old
        journal.clear()


class MemoryKv:
    """Sorted dicts in memory. A write that raises is rolled back from its journal.

    One lock serializes transactions, so threads see whole transactions only.
    """

    def __init__(self, names: Sequence[bytes]) -> None:
        self._dbs: list[SortedDict] = [SortedDict() for _ in names]
        self._lock = threading.RLock()

    @contextmanager
    def read(self) -> Iterator[KvReader]:
        with self._lock:
            yield _MemoryTxn(self._dbs, None)

    @contextmanager
    def write(self) -> Iterator[KvWriter]:
        with self._lock:
            txn = _MemoryTxn(self._dbs, [])
            try:
                yield txn
            except BaseException:
                txn.rollback()
                raise

    def close(self) -> None:
        pass
