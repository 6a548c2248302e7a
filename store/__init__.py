"""Storage: the :class:`Store` protocol, its LMDB and in-memory implementations.

The on-disk format lives in ``store.keys`` (databases, key layout) and ``store.values``
(value encodings) alone.
"""

from __future__ import annotations

import os

from .base import (
    DEFAULT_AUDIT_RETENTION_MS,
    DEFAULT_MAX_DELIVERIES,
    DEFAULT_RETENTION_S,
    MAX_RETENTION_S,
    UNSET,
    Ack,
    AckResult,
    AppendAudit,
    ApplyOutcome,
    CreateMailbox,
    CreateSubscription,
    CreateSystem,
    DeleteDoc,
    DeleteMailbox,
    DeleteSubscription,
    Delivery,
    Lease,
    MailboxRecord,
    MailboxStats,
    Nack,
    Op,
    OpResult,
    Publish,
    PublishResult,
    PutDoc,
    Replay,
    RequeueDead,
    Route,
    SetChange,
    SetChangeResult,
    Store,
    StoreStats,
    SubscriptionRecord,
    Sweep,
    SweepResult,
    SystemRecord,
    UnsetType,
    UpdateSubscription,
    delivery_id,
    parse_delivery_id,
)
from .keys import FORMAT_VERSION
from .kv import DEFAULT_MAP_SIZE
from .lmdb_store import LmdbStore
from .memory import MemoryStore

__all__ = [
    "DEFAULT_AUDIT_RETENTION_MS",
    "DEFAULT_MAP_SIZE",
    "DEFAULT_MAX_DELIVERIES",
    "DEFAULT_RETENTION_S",
    "FORMAT_VERSION",
    "MAX_RETENTION_S",
    "UNSET",
    "Ack",
    "AckResult",
    "AppendAudit",
    "ApplyOutcome",
    "CreateMailbox",
    "CreateSubscription",
    "CreateSystem",
    "DeleteDoc",
    "DeleteMailbox",
    "DeleteSubscription",
    "Delivery",
    "Lease",
    "LmdbStore",
    "MailboxRecord",
    "MailboxStats",
    "MemoryStore",
    "Nack",
    "Op",
    "OpResult",
    "Publish",
    "PublishResult",
    "PutDoc",
    "Replay",
    "RequeueDead",
    "Route",
    "SetChange",
    "SetChangeResult",
    "Store",
    "StoreStats",
    "SubscriptionRecord",
    "Sweep",
    "SweepResult",
    "SystemRecord",
    "UnsetType",
    "UpdateSubscription",
    "delivery_id",
    "open_store",
    "parse_delivery_id",
]


def open_store(
    path: str | os.PathLike[str] | None, *, map_size: int = DEFAULT_MAP_SIZE, sync: bool = True
) -> Store:
    """An :class:`LmdbStore` at ``path``, or a :class:`MemoryStore` when path is None."""
    if path is None:
        return MemoryStore()
    return LmdbStore(path, map_size=map_size, sync=sync)
