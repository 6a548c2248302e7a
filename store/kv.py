"""A tiny ordered key-value transaction interface, with an LMDB and an in-memory backend.

Theory of operation
-------------------
The store's logic (``store.engine`` and friends) is written once against :class:`KvReader` /
:class:`KvWriter`: a transaction over a fixed list of named, byte-ordered databases addressed by
index (``store.keys.Db``). A backend hands out transactions from :meth:`KvEnv.read` and
:meth:`KvEnv.write`, both context managers: a write transaction commits when its block ends and
is rolled back (leaving nothing behind) when the block raises.

Scans return lists, never live iterators, so callers may write while walking their result and
the in-memory backend never iterates a dict that is changing. Ranges are ``[start, end)``.

:class:`LmdbKv` wraps ``lmdb.Error`` into :class:`~broker.errors.StoreError`. Per stack-notes
§4 each transaction begins and ends on the calling thread inside one call; the caller keeps at
most one write transaction per thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Final, Protocol, cast

import lmdb

from broker.errors import StoreError

__all__ = ["KvEnv", "KvReader", "KvWriter", "LmdbKv"]

#: Default LMDB map size: address space is reserved, disk is used only as data grows.
DEFAULT_MAP_SIZE: Final = 32 << 30


class KvReader(Protocol):
    def get(self, db: int, key: bytes) -> bytes | None: ...

    def scan(
        self, db: int, start: bytes, end: bytes | None = None, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        """Items with start <= key < end (end None: to the end), in key order, at most limit."""
        ...

    def first(self, db: int, start: bytes, end: bytes | None = None) -> tuple[bytes, bytes] | None:
        """The first item with start <= key < end, if any."""
        ...

    def count(self, db: int) -> int:
        """Number of keys in the database (O(1))."""
        ...

    def get_many(self, db: int, keys: Sequence[bytes]) -> list[bytes | None]:
        """The values of keys (None where missing), in one call."""
        ...

    def get_found(self, db: int, keys: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
        """(key, value) of those keys that are stored, in one call (sorted keys read fastest)."""
        ...


class KvWriter(KvReader, Protocol):
    def put(self, db: int, key: bytes, value: bytes) -> None: ...

    def put_many(
        self, db: int, items: Sequence[tuple[bytes, bytes]], *, append: bool = False
    ) -> None:
        """Put sorted items; ``append`` promises every key is above all keys already stored."""
        ...

    def put_sorted(self, db: int, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Put sorted items, appending (LMDB fills pages fully, no search) when they all sort
        after every stored key: the common case of time-ordered index keys."""
        ...

    def add_many(self, db: int, items: Sequence[tuple[bytes, bytes]]) -> int:
        """Put sorted items whose keys are not stored yet (others are left alone); how many."""
        ...

    def delete(self, db: int, key: bytes) -> bool:
        """Delete a key; False when it was not there."""
        ...

    def delete_many(self, db: int, keys: Iterable[bytes]) -> int:
        """Delete keys (missing ones are ignored); how many were there. Keys in ascending
        order cost the least (runs of neighbours are deleted without a search)."""
        ...

    def take(
        self, db: int, start: bytes, end: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        """Like :meth:`KvReader.scan`, and deletes what it returns."""
        ...


class KvEnv(Protocol):
    def read(self) -> AbstractContextManager[KvReader]: ...

    def write(self) -> AbstractContextManager[KvWriter]: ...

    def close(self) -> None: ...


# ----------------------------------------------------------------------------- LMDB


class _LmdbTxn:
    """One lmdb transaction; cursors are opened once per database and reused."""

    __slots__ = ("_cursors", "_dbs", "_txn")

    def __init__(self, txn: lmdb.Transaction, dbs: Sequence[Any]) -> None:
        self._txn = txn
        self._dbs = dbs
        self._cursors: dict[int, lmdb.Cursor] = {}

    def _cursor(self, db: int) -> lmdb.Cursor:
        cursor = self._cursors.get(db)
        if cursor is None:
            cursor = self._cursors[db] = self._txn.cursor(self._dbs[db])
        return cursor

    def get(self, db: int, key: bytes) -> bytes | None:
        # buffers=False (the default): lmdb hands out bytes copies, safe after the txn ends
        return cast("bytes | None", self._txn.get(key, db=self._dbs[db]))

    def scan(
        self, db: int, start: bytes, end: bytes | None = None, limit: int | None = None
    ) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        if limit is not None and limit <= 0:
            return out
        cursor = self._cursor(db)
        if not cursor.set_range(start):
            return out
        for key, value in cast("Iterator[tuple[bytes, bytes]]", iter(cursor)):
            if end is not None and key >= end:
                break
            out.append((key, value))
            if limit is not None and len(out) >= limit:
                break
        return out

    def first(self, db: int, start: bytes, end: bytes | None = None) -> tuple[bytes, bytes] | None:
        cursor = self._cursor(db)
        if not cursor.set_range(start):
            return None
        key = cast(bytes, cursor.key())
        if end is not None and key >= end:
            return None
        return key, cast(bytes, cursor.value())

    def count(self, db: int) -> int:
        entries: int = self._txn.stat(self._dbs[db])["entries"]
        return entries

    def get_found(self, db: int, keys: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
        return cast("list[tuple[bytes, bytes]]", self._cursor(db).getmulti(keys))

    def get_many(self, db: int, keys: Sequence[bytes]) -> list[bytes | None]:
        found = cast("list[tuple[bytes, bytes]]", self._cursor(db).getmulti(keys))
        if len(found) == len(keys):  # getmulti leaves missing keys out
            return [value for _, value in found]
        values = dict(found)
        return [values.get(key) for key in keys]

    def put(self, db: int, key: bytes, value: bytes) -> None:
        self._txn.put(key, value, db=self._dbs[db])

    def put_many(
        self, db: int, items: Sequence[tuple[bytes, bytes]], *, append: bool = False
    ) -> None:
        if not items:
            return
        _, added = self._cursor(db).putmulti(items, append=append)
        if added != len(items):
            raise StoreError(
                f"putmulti into {db} stored {added} of {len(items)} items (append={append})"
            )

    def put_sorted(self, db: int, items: Sequence[tuple[bytes, bytes]]) -> None:
        if not items:
            return
        cursor = self._cursor(db)
        append = not cursor.last() or cast(bytes, cursor.key()) < items[0][0]
        self.put_many(db, items, append=append)

    def add_many(self, db: int, items: Sequence[tuple[bytes, bytes]]) -> int:
        if not items:
            return 0
        _, added = self._cursor(db).putmulti(items, overwrite=False)
        result: int = added
        return result

    def delete(self, db: int, key: bytes) -> bool:
        deleted: bool = self._txn.delete(key, db=self._dbs[db])
        return deleted

    def delete_many(self, db: int, keys: Iterable[bytes]) -> int:
        # A cursor delete leaves the cursor on the next key: when that is the next key to
        # delete (an acked lease is a run of neighbours), no search is needed at all. About
        # half the cost of txn.delete per key, which searches from the root every time.
        # The first key is always searched: where another call left the cursor is no guide.
        cursor = self._cursor(db)
        current = cursor.key
        find = cursor.set_key
        delete = cursor.delete
        count = 0
        moved = False  # the cursor sits where our last delete left it
        for key in keys:
            if (moved and current() == key) or find(key):
                delete()
                count += 1
                moved = True
            else:
                moved = False
        return count

    def take(
        self, db: int, start: bytes, end: bytes | None, limit: int
    ) -> list[tuple[bytes, bytes]]:
        out: list[tuple[bytes, bytes]] = []
        cursor = self._cursor(db)
        if limit <= 0 or not cursor.set_range(start):
            return out
        key = cast(bytes, cursor.key())
        while key and (end is None or key < end):
            out.append((key, cast(bytes, cursor.value())))
            cursor.delete()  # moves to the next item; key() is b"" past the end
            if len(out) >= limit:
                break
            key = cast(bytes, cursor.key())
        return out


def _wrap(exc: lmdb.Error, map_size: int, path: str) -> StoreError:
    if isinstance(exc, lmdb.MapFullError):
        return StoreError(
            f"LMDB environment {path} is full: map_size={map_size} bytes "
            f"({map_size / (1 << 30):.2f} GiB) reached; reopen it with a larger map_size"
        )
    if isinstance(exc, lmdb.ReadersFullError):
        return StoreError(f"LMDB environment {path}: too many concurrent readers ({exc})")
    return StoreError(f"LMDB environment {path}: {type(exc).__name__}: {exc}")


class LmdbKv:
    """One ``lmdb.Environment`` with every named database opened at construction.

    Resource handling: open one per process (LMDB refuses a second open of one environment in
    a process) and share it between threads; :meth:`close` only after every user is done.

    Error handling: every ``lmdb.Error`` comes out as :class:`StoreError`; a full map names
    ``map_size``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        names: Sequence[bytes],
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        sync: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        self.map_size = map_size
        try:
            os.makedirs(self.path, exist_ok=True)
            self._env = lmdb.open(
                self.path,
                map_size=map_size,
                max_dbs=len(names) + 4,
                subdir=True,
                sync=sync,
                metasync=sync,
                readahead=False,
            )
        except lmdb.Error as exc:
            if "already open" in str(exc):
                raise StoreError(
                    f"LMDB environment {self.path} is already open in this process; "
                    "open it once and share the store"
                ) from exc
            raise _wrap(exc, map_size, self.path) from exc
        except OSError as exc:
            raise StoreError(f"cannot open LMDB environment {self.path}: {exc}") from exc
        try:
            with self._env.begin(write=True) as txn:
                self._dbs = tuple(self._env.open_db(name, txn=txn) for name in names)
        except lmdb.Error as exc:
            self._env.close()
            raise _wrap(exc, map_size, self.path) from exc

    @contextmanager
    def read(self) -> Iterator[KvReader]:
        try:
            txn = self._env.begin(write=False)
        except lmdb.Error as exc:
            raise _wrap(exc, self.map_size, self.path) from exc
        try:
            yield _LmdbTxn(txn, self._dbs)
        except lmdb.Error as exc:
            raise _wrap(exc, self.map_size, self.path) from exc
        finally:
            txn.abort()

    @contextmanager
    def write(self) -> Iterator[KvWriter]:
        try:
            txn = self._env.begin(write=True)
        except lmdb.Error as exc:
            raise _wrap(exc, self.map_size, self.path) from exc
        try:
            yield _LmdbTxn(txn, self._dbs)
        except lmdb.Error as exc:
            txn.abort()
            raise _wrap(exc, self.map_size, self.path) from exc
        except BaseException:
            txn.abort()
            raise
        try:
            txn.commit()
        except lmdb.Error as exc:
            raise _wrap(exc, self.map_size, self.path) from exc

    def close(self) -> None:
        self._env.close()
