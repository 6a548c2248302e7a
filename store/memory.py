"""The in-memory store for tests: the same :class:`KvStore` logic over sorted dicts."""

from __future__ import annotations

from .engine import KvStore
from .keys import DB_NAMES
from .memorykv import MemoryKv

__all__ = ["MemoryStore"]


class MemoryStore(KvStore):
    """A :class:`~store.base.Store` that lives in memory (nothing survives the process).

    It runs the same logic and byte encodings as :class:`~store.lmdb_store.LmdbStore`; a write
    batch that raises is rolled back from a journal, so it leaves nothing behind either.
    """

    def __init__(self) -> None:
        super().__init__(MemoryKv(DB_NAMES))

    def __repr__(self) -> str:
        return "<MemoryStore>"
