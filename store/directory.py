"""Systems, mailboxes and subscriptions: their write ops and reads.

Theory of operation
-------------------
Records are stored under their id; secondary indexes (token hash -> system, mailbox num ->
mailbox, owner -> mailboxes, mailbox -> subscriptions) are kept in the same transaction. A
mailbox gets a compact ``num`` (allocated from ``meta/next_mailbox``, never reused) that the
delivery keys use instead of its 36-byte id.
"""

from __future__ import annotations

from msgspec import UNSET
from msgspec.structs import replace

from broker.errors import Conflict, InvalidInput, NotFound

from . import keys as k
from . import values as v
from .base import (
    MAX_RETENTION_S,
    CreateMailbox,
    CreateSubscription,
    CreateSystem,
    DeleteMailbox,
    DeleteSubscription,
    MailboxRecord,
    SubscriptionRecord,
    SystemRecord,
    UpdateSubscription,
)
from .batch import Batch, lookup_key
from .keys import Db
from .kv import KvReader
from .retention import purge_mailbox

__all__ = [
    "create_mailbox",
    "create_subscription",
    "create_system",
    "delete_mailbox",
    "delete_subscription",
    "get_mailbox",
    "get_subscription",
    "get_system",
    "get_system_by_token_hash",
    "list_mailboxes",
    "list_subscriptions",
    "list_systems",
    "update_subscription",
]


# ----------------------------------------------------------------------------- writes


def create_system(batch: Batch, op: CreateSystem) -> SystemRecord:
    key = k.id_key("id", op.id)
    if not 0 < len(op.token_hash) <= k.MAX_ID_BYTES:
        raise InvalidInput(
            f"token_hash must be 1..{k.MAX_ID_BYTES} bytes, got {len(op.token_hash)}",
            path="$.token_hash",
        )
    txn = batch.txn
    if txn.get(Db.SYSTEMS, key) is not None:
        raise Conflict(f"system {op.id!r} already exists", path="$.id")
    if txn.get(Db.SYSTEM_TOKENS, op.token_hash) is not None:
        raise Conflict("another system already has this token", path="$.token_hash")
    record = SystemRecord(id=op.id, name=op.name, token_hash=op.token_hash, created_ms=batch.now)
    txn.put(Db.SYSTEMS, key, v.encode_record(record))
    txn.put(Db.SYSTEM_TOKENS, op.token_hash, v.encode_id(key))
    return record


def create_mailbox(batch: Batch, op: CreateMailbox) -> MailboxRecord:
    key = k.id_key("id", op.id)
    owner = k.id_key("owner", op.owner)
    if not 1 <= op.retention_s <= MAX_RETENTION_S:
        raise InvalidInput(
            f"retention_s must be between 1 and {MAX_RETENTION_S} seconds, got {op.retention_s}",
            path="$.retention_s",
        )
    if op.max_deliveries < 1:
        raise InvalidInput(
            f"max_deliveries must be >= 1, got {op.max_deliveries}", path="$.max_deliveries"
        )
    if batch.mailbox(op.id) is not None:
        raise Conflict(f"mailbox {op.id!r} already exists", path="$.id")
    record = MailboxRecord(
        id=op.id,
        num=batch.alloc_mailbox_num(),
        owner=op.owner,
        name=op.name,
        strict=op.strict,
        retention_s=op.retention_s,
        max_deliveries=op.max_deliveries,
        created_ms=batch.now,
    )
    txn = batch.txn
    txn.put(Db.MAILBOXES, key, v.encode_record(record))
    txn.put(Db.MAILBOX_NUMS, k.num_key(record.num), v.encode_id(key))
    txn.put(Db.MAILBOX_OWNERS, k.owner_key(owner, key), b"")
    batch.remember_mailbox(record)
    return record


def delete_mailbox(batch: Batch, op: DeleteMailbox) -> None:
    mailbox = batch.require_mailbox(op.id)
    txn = batch.txn
    purge_mailbox(batch, mailbox)
    start, end = k.mailbox_range(mailbox.num)
    for sub_key, _ in txn.take(Db.MAILBOX_SUBS, start, end, 1 << 62):
        txn.delete(Db.SUBSCRIPTIONS, sub_key[4:])
    key = mailbox.id.encode()
    txn.delete(Db.MAILBOXES, key)
    txn.delete(Db.MAILBOX_NUMS, k.num_key(mailbox.num))
    txn.delete(Db.MAILBOX_OWNERS, k.owner_key(mailbox.owner.encode(), key))
    batch.forget_mailbox(mailbox)


def create_subscription(batch: Batch, op: CreateSubscription) -> SubscriptionRecord:
    key = k.id_key("id", op.id)
    mailbox = batch.require_mailbox(op.mailbox_id)
    txn = batch.txn
    if txn.get(Db.SUBSCRIPTIONS, key) is not None:
        raise Conflict(f"subscription {op.id!r} already exists", path="$.id")
    record = SubscriptionRecord(
        id=op.id,
        mailbox_id=mailbox.id,
        owner=mailbox.owner,
        message_types=tuple(t.lower() for t in op.message_types),
        expression=op.expression,
        created_ms=batch.now,
    )
    txn.put(Db.SUBSCRIPTIONS, key, v.encode_record(record))
    txn.put(Db.MAILBOX_SUBS, k.mailbox_sub_key(mailbox.num, key), b"")
    return record


def _subscription_of(
    batch: Batch, mailbox: MailboxRecord, subscription_id: str
) -> tuple[bytes, SubscriptionRecord]:
    key = lookup_key(subscription_id)
    raw = None if key is None else batch.txn.get(Db.SUBSCRIPTIONS, key)
    record = None if raw is None else v.decode_record(raw, SubscriptionRecord)
    if key is None or record is None or record.mailbox_id != mailbox.id:
        raise NotFound(
            f"subscription {subscription_id!r} does not exist in this mailbox", path="$.id"
        )
    return key, record


def delete_subscription(batch: Batch, op: DeleteSubscription) -> None:
    mailbox = batch.require_mailbox(op.mailbox_id)
    key, _ = _subscription_of(batch, mailbox, op.id)
    batch.txn.delete(Db.SUBSCRIPTIONS, key)
    batch.txn.delete(Db.MAILBOX_SUBS, k.mailbox_sub_key(mailbox.num, key))


def update_subscription(batch: Batch, op: UpdateSubscription) -> SubscriptionRecord:
    """Change what the op names (None / UNSET: leave unchanged); the updated record."""
    mailbox = batch.require_mailbox(op.mailbox_id)
    key, record = _subscription_of(batch, mailbox, op.id)
    changes: dict[str, object] = {}
    if op.active is not None:
        changes["active"] = op.active
    if op.expression is not UNSET:
        changes["expression"] = op.expression
    if op.message_types is not None:
        changes["message_types"] = tuple(t.lower() for t in op.message_types)
    if changes:
        record = replace(record, **changes)
        batch.txn.put(Db.SUBSCRIPTIONS, key, v.encode_record(record))
    return record


# ----------------------------------------------------------------------------- reads


def get_system(txn: KvReader, system_id: str) -> SystemRecord | None:
    key = lookup_key(system_id)
    raw = None if key is None else txn.get(Db.SYSTEMS, key)
    return None if raw is None else v.decode_record(raw, SystemRecord)


def get_system_by_token_hash(txn: KvReader, token_hash: bytes) -> SystemRecord | None:
    if not 0 < len(token_hash) <= k.MAX_ID_BYTES:
        return None
    raw = txn.get(Db.SYSTEM_TOKENS, token_hash)
    return None if raw is None else get_system(txn, v.decode_id(raw))


def list_systems(txn: KvReader) -> list[SystemRecord]:
    return [v.decode_record(raw, SystemRecord) for _, raw in txn.scan(Db.SYSTEMS, b"\x00")]


def get_mailbox(txn: KvReader, mailbox_id: str) -> MailboxRecord | None:
    key = lookup_key(mailbox_id)
    raw = None if key is None else txn.get(Db.MAILBOXES, key)
    return None if raw is None else v.decode_record(raw, MailboxRecord)


def list_mailboxes(txn: KvReader, owner: str) -> list[MailboxRecord]:
    owner_key = lookup_key(owner)
    if owner_key is None:
        return []
    start, end = k.owner_range(owner_key)
    out = []
    for index_key, _ in txn.scan(Db.MAILBOX_OWNERS, start, end):
        raw = txn.get(Db.MAILBOXES, index_key[len(start) :])
        if raw is not None:
            out.append(v.decode_record(raw, MailboxRecord))
    return out


def get_subscription(txn: KvReader, subscription_id: str) -> SubscriptionRecord | None:
    key = lookup_key(subscription_id)
    raw = None if key is None else txn.get(Db.SUBSCRIPTIONS, key)
    return None if raw is None else v.decode_record(raw, SubscriptionRecord)


def list_subscriptions(txn: KvReader, mailbox_id: str | None) -> list[SubscriptionRecord]:
    if mailbox_id is None:
        scanned = txn.scan(Db.SUBSCRIPTIONS, b"\x00")
        return [v.decode_record(raw, SubscriptionRecord) for _, raw in scanned]
    mailbox = get_mailbox(txn, mailbox_id)
    if mailbox is None:
        return []
    out = []
    for index_key, _ in txn.scan(Db.MAILBOX_SUBS, *k.mailbox_range(mailbox.num)):
        raw = txn.get(Db.SUBSCRIPTIONS, index_key[4:])
        if raw is not None:
            out.append(v.decode_record(raw, SubscriptionRecord))
    return out
