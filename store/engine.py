"""The one implementation of :class:`~store.base.Store`, written against ``store.kv``.

Theory of operation
-------------------
:class:`KvStore` is the Store; :class:`~store.lmdb_store.LmdbStore` and
:class:`~store.memory.MemoryStore` only choose its key-value backend, so both run exactly the
same logic and the same encodings. :meth:`KvStore.apply` opens one write transaction, wraps it
in a :class:`~store.batch.Batch` and dispatches each op with ``match``. An op refused with a
:class:`~broker.errors.BrokerError` becomes that op's result (ops check before they write, so a
refusal leaves nothing behind); anything else aborts the whole transaction and comes out as
:class:`~broker.errors.StoreError`. A run of consecutive publishes is handed to
``store.publish`` in one call (it reads the dedup records the run can hit in one go).

Opening a format-1 environment upgrades it to the current format in one write transaction
(:func:`upgrade_format_1`); older code then refuses the environment by its format marker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, cast

from broker.errors import BrokerError, InvalidInput, StoreError

from . import deliveries, directory, documents, publish, queries, retention
from . import keys as k
from . import values as v
from .base import (
    Ack,
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
    PutDoc,
    Replay,
    RequeueDead,
    SetChange,
    StoreStats,
    SubscriptionRecord,
    Sweep,
    SystemRecord,
    UpdateSubscription,
)
from .batch import Batch
from .keys import Db
from .kv import KvEnv, KvWriter

__all__ = ["KvStore", "upgrade_format_1"]

_MIGRATE_CHUNK = 10_000


def upgrade_format_1(txn: KvWriter) -> int:
    """Move format-1 dedup records (``dedup`` + ``dedup_expiry``) into ``dedup_gens`` and mark
    the environment as the current format; returns how many records moved. Every other
    format-1 value reads as it is (delivery values just lack the optional ``tm``)."""
    moved = 0
    while chunk := txn.take(Db.DEDUP, b"\x00", None, _MIGRATE_CHUNK):
        items = []
        for stored_key, raw in chunk:
            record = v.decode_dedup(raw)
            # format 1 stored the key as k.normalize_dedup_key made it: its hash is dedup_hash
            digest = k.dedup_hash(stored_key)
            key = k.dedup_key_of(k.dedup_gen(record.expires_ms), digest)
            value = v.encode_dedup(record.transaction_id, record.mailboxes, record.expires_ms)
            items.append((key, value))
        items.sort()
        txn.put_many(Db.DEDUP_GENS, items)
        moved += len(items)
    while txn.take(Db.DEDUP_EXPIRY, b"\x00", None, _MIGRATE_CHUNK):
        pass
    txn.put(Db.META, k.META_FORMAT, v.encode_format())
    return moved


def _dispatch(batch: Batch, op: Op) -> OpResult:
    match op:
        case Publish():  # a subclass (apply runs Publish itself in runs)
            (result,) = publish.publish_run(batch, [op])
            if isinstance(result, BrokerError):
                raise result
            return result
        case Lease():
            return deliveries.lease(batch, op)
        case Ack():
            return deliveries.ack(batch, op)
        case Nack():
            return deliveries.nack(batch, op)
        case Sweep():
            return retention.sweep(batch, op)
        case RequeueDead():
            return deliveries.requeue_dead(batch, op)
        case Replay():
            return deliveries.replay(batch, op)
        case CreateSystem():
            return directory.create_system(batch, op)
        case CreateMailbox():
            return directory.create_mailbox(batch, op)
        case DeleteMailbox():
            directory.delete_mailbox(batch, op)
            return None
        case CreateSubscription():
            return directory.create_subscription(batch, op)
        case DeleteSubscription():
            directory.delete_subscription(batch, op)
            return None
        case UpdateSubscription():
            return directory.update_subscription(batch, op)
        case PutDoc():
            documents.put_doc(batch, op)
            return None
        case DeleteDoc():
            return documents.delete_doc(batch, op)
        case SetChange():
            return documents.set_change(batch, op)
        case AppendAudit():
            return documents.append_audit(batch, op)
        case _:
            raise InvalidInput(f"unknown operation {type(op).__name__}")


#: Op types one run of publishes is taken over (see KvStore.apply).
_RUN: Final = (Publish, AppendAudit)


class KvStore:
    """A :class:`~store.base.Store` over a key-value backend.

    Error handling: the format marker is checked on construction (StoreError when missing
    from a non-empty environment, or of another version).
    """

    def __init__(self, kv: KvEnv) -> None:
        self._kv = kv
        self._closed = False
        with kv.write() as txn:
            raw = txn.get(Db.META, k.META_FORMAT)
            if raw is not None:
                if v.check_format(raw) == 1:
                    upgrade_format_1(txn)
            elif any(txn.count(db) for db in Db):
                raise StoreError(
                    "the environment holds data but no format marker: not a dueslag store"
                )
            else:
                txn.put(Db.META, k.META_FORMAT, v.encode_format())

    # ------------------------------------------------------------------------- writes

    def apply(self, ops: Sequence[Op], now_ms: int) -> ApplyOutcome:
        """Apply every op in ONE write transaction; durable on return. See store.base."""
        if not 0 <= now_ms <= deliveries.MAX_MS:
            raise StoreError(f"now_ms must be between 0 and {deliveries.MAX_MS}, got {now_ms}")
        if not ops:
            return ApplyOutcome(results=[])
        try:
            with self._kv.write() as txn:
                batch = Batch(txn, now_ms)
                results: list[OpResult] = []
                # Audit appends read nothing the batch writes and nothing in a batch reads them,
                # so they are written together at the end, in order (one write for all), and
                # the publishes between them form one run (a stream frame is a publish + audit).
                audits: list[AppendAudit] = []
                audit_slots: list[int] = []
                i, count = 0, len(ops)
                while i < count:
                    op = ops[i]
                    if type(op) in _RUN:  # publishes and audit appends: one call for the run
                        run: list[Publish] = []
                        slots: list[int] = []
                        while i < count and type(ops[i]) in _RUN:
                            o = ops[i]
                            if type(o) is Publish:
                                slots.append(len(results))
                                run.append(o)
                            else:
                                audit_slots.append(len(results))
                                audits.append(cast("AppendAudit", o))
                            results.append(0)  # set below
                            i += 1
                        if run:
                            for slot, outcome in zip(
                                slots, publish.publish_run(batch, run), strict=True
                            ):
                                results[slot] = outcome
                        continue
                    batch.flush()  # later ops must see the buffered publishes
                    result: OpResult
                    try:
                        result = _dispatch(batch, op)
                    except StoreError:
                        raise
                    except BrokerError as exc:
                        result = exc
                    results.append(result)
                    i += 1
                if audits:
                    for slot, n in zip(
                        audit_slots, documents.append_audits(batch, audits), strict=True
                    ):
                        results[slot] = n
                batch.finish()
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(
                f"apply failed and nothing of the batch was applied: {type(exc).__name__}: {exc}"
            ) from exc
        return ApplyOutcome(results=results, ready=frozenset(batch.ready))

    # ------------------------------------------------------------------------- reads

    def get_system(self, system_id: str) -> SystemRecord | None:
        with self._kv.read() as txn:
            return directory.get_system(txn, system_id)

    def get_system_by_token_hash(self, token_hash: bytes) -> SystemRecord | None:
        with self._kv.read() as txn:
            return directory.get_system_by_token_hash(txn, token_hash)

    def list_systems(self) -> list[SystemRecord]:
        with self._kv.read() as txn:
            return directory.list_systems(txn)

    def get_mailbox(self, mailbox_id: str) -> MailboxRecord | None:
        with self._kv.read() as txn:
            return directory.get_mailbox(txn, mailbox_id)

    def list_mailboxes(self, owner: str) -> list[MailboxRecord]:
        with self._kv.read() as txn:
            return directory.list_mailboxes(txn, owner)

    def mailbox_stats(self, mailbox_id: str) -> MailboxStats:
        """Counts per queue; raises NotFound for an unknown mailbox. O(1), not a scan."""
        with self._kv.read() as txn:
            return queries.mailbox_stats(txn, mailbox_id)

    def get_subscription(self, subscription_id: str) -> SubscriptionRecord | None:
        with self._kv.read() as txn:
            return directory.get_subscription(txn, subscription_id)

    def list_subscriptions(self, mailbox_id: str | None = None) -> list[SubscriptionRecord]:
        with self._kv.read() as txn:
            return directory.list_subscriptions(txn, mailbox_id)

    def get_leased(self, mailbox_id: str, delivery_id: str, now_ms: int) -> Delivery:
        with self._kv.read() as txn:
            return queries.get_leased(txn, mailbox_id, delivery_id, now_ms)

    def list_dead(self, mailbox_id: str, limit: int = 100) -> list[Delivery]:
        with self._kv.read() as txn:
            return queries.list_dead(txn, mailbox_id, limit)

    def statistics(self) -> StoreStats:
        with self._kv.read() as txn:
            raw = txn.get(Db.META, k.META_NEXT_SEQ)
            return StoreStats(
                messages=txn.count(Db.BODIES),
                next_seq=1 if raw is None else v.decode_int(raw),
                mailboxes=txn.count(Db.MAILBOXES),
                format_version=k.FORMAT_VERSION,
            )

    def get_doc(self, kind: str, id: str) -> bytes | None:
        with self._kv.read() as txn:
            return documents.get_doc(txn, kind, id)

    def list_docs(self, kind: str) -> list[tuple[str, bytes]]:
        with self._kv.read() as txn:
            return documents.list_docs(txn, kind)

    def set_members(self, kind: str, id: str) -> list[str]:
        with self._kv.read() as txn:
            return documents.set_members(txn, kind, id)

    def set_contains(self, kind: str, id: str, member: str) -> bool:
        with self._kv.read() as txn:
            return documents.set_contains(txn, kind, id, member)

    def set_size(self, kind: str, id: str) -> int:
        with self._kv.read() as txn:
            return documents.set_size(txn, kind, id)

    def scan_audit(
        self, since_ms: int, until_ms: int | None, limit: int, after: bytes | None = None
    ) -> list[tuple[bytes, bytes]]:
        with self._kv.read() as txn:
            return documents.scan_audit(txn, since_ms, until_ms, limit, after)

    def close(self) -> None:
        """Close the backend; only after every thread using this store is done."""
        if not self._closed:
            self._closed = True
            self._kv.close()
