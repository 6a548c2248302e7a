"""The durable store: :class:`KvStore` over one LMDB environment."""

from __future__ import annotations

import os

from .engine import KvStore
from .keys import DB_NAMES
from .kv import DEFAULT_MAP_SIZE, LmdbKv

__all__ = ["DEFAULT_MAP_SIZE", "LmdbStore"]


class LmdbStore(KvStore):
    """A :class:`~store.base.Store` in the LMDB environment (a directory) at ``path``.

    Arguments:
        path: the environment's directory; created (with parents) when missing.
        map_size: the most the environment may grow to, in bytes (address space is reserved
            up front, disk is used as data grows). A full map fails ``apply`` with a
            StoreError naming ``map_size``; reopen with a larger one.
        sync: fsync on every commit (durable on return). False trades durability of the
            last commits on an OS crash for speed; for tests and benchmarks.

    Resource handling: opens ONE ``lmdb.Environment`` and every named database at once. Open
    it once per process (a second open of the same path raises StoreError) before threads
    start, share it, and :meth:`close` it after every thread is done (stack-notes §4).
    ``apply`` begins and commits its write transaction inside the one call, so call it on a
    worker thread, one at a time per process.

    Error handling: lmdb errors come out as StoreError; an environment of a newer or unknown
    format version is refused with a StoreError saying so.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        sync: bool = True,
    ) -> None:
        kv = LmdbKv(path, DB_NAMES, map_size=map_size, sync=sync)
        self.path = kv.path
        try:
            super().__init__(kv)
        except BaseException:
            kv.close()
            raise

    def __repr__(self) -> str:
        return f"<LmdbStore {self.path!r}>"
