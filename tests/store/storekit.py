"""Helpers of the store test suite (a module of its own: conftest is not for importing)."""

from __future__ import annotations

from pathlib import Path

from store import (
    CreateMailbox,
    CreateSubscription,
    CreateSystem,
    LmdbStore,
    MemoryStore,
    Op,
    OpResult,
    Publish,
    PublishResult,
    Route,
    Store,
)
from store.applier import ApplierStore
from store.engine import KvStore
from store.keys import Db

BACKENDS = ("memory", "lmdb", "applier")
TEST_MAP_SIZE = 64 << 20


def make_store(backend: str, path: Path) -> KvStore:
    if backend == "memory":
        return MemoryStore()
    if backend == "applier":  # LMDB, written by a writer process (store.applier)
        return ApplierStore(path, map_size=TEST_MAP_SIZE, sync=False)
    return LmdbStore(path, map_size=TEST_MAP_SIZE, sync=False)


def one(store: Store, op: Op, now_ms: int = 1_000) -> OpResult:
    """Apply a single op and return its result."""
    return store.apply([op], now_ms).results[0]


def dump(store: KvStore) -> dict[str, list[tuple[bytes, bytes]]]:
    """Every key and value of every database (to check that something changed nothing)."""
    with store._kv.read() as txn:
        return {db.name: txn.scan(db, b"\x00") for db in Db}


def setup(
    store: Store,
    *mailboxes: CreateMailbox,
    now_ms: int = 1_000,
) -> None:
    """A system ``sys`` plus mailboxes (default: ``mb1`` and ``mb2``), each with a subscription."""
    boxes = mailboxes or (
        CreateMailbox(id="mb1", owner="sys", name="one"),
        CreateMailbox(id="mb2", owner="sys", name="two"),
    )
    ops: list[Op] = [CreateSystem(id="sys", name="System", token_hash=b"t" * 32)]
    for box in boxes:
        ops.append(box)
        ops.append(
            CreateSubscription(id=f"sub-{box.id}", mailbox_id=box.id, message_types=("type",))
        )
    outcome = store.apply(ops, now_ms)
    assert not [r for r in outcome.results if isinstance(r, Exception)]


def publish(
    n: int | None = None,
    *to: str,
    key: bytes | None = None,
    received_ms: int = 1_000,
    body: bytes | None = None,
    window_ms: int = 60_000,
) -> Publish:
    """A Publish routed to mailboxes ``to`` via their ``sub-<id>`` subscriptions."""
    tag = f"{n}" if n is not None else "x"
    return Publish(
        sender="sys",
        dedup_key=key if key is not None else f"key-{tag}".encode(),
        transaction_id=f"tx-{tag}",
        body=body if body is not None else f'{{"n":"{tag}"}}'.encode(),
        routes=tuple(Route(m, f"sub-{m}") for m in to),
        received_ms=received_ms,
        dedup_window_ms=window_ms,
    )


def published(result: object) -> PublishResult:
    """The result of a Publish op (asserting it is one)."""
    assert isinstance(result, PublishResult)
    return result
