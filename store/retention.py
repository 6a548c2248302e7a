"""Retention: the bounded sweep (lease expiry, copy/dead/dedup/audit purge) and mailbox purge.

Theory of operation
-------------------
Three time indexes are keyed ``(time u64, num u32, seq u64)``: ``lease_expiry`` (lease
deadline), ``copy_expiry`` and ``dead_expiry`` (retention end); dedup records are keyed by
their expiry generation (``store.keys``) and audit events by ``(time u64, counter u64)``.
Everything due at ``now`` is a prefix of its database, so a sweep takes (reads and deletes, in
key order) at most ``max_items`` keys per database and peeks at one more to tell whether more
is due. A ``lease_expiry`` entry whose delivery is not in flight with exactly that deadline is
dropped without counting (none should exist: every move out of flight deletes its entry).

A delivery record that leaves the store for good (purged copy or dead letter, deleted mailbox)
releases one reference to its body (:meth:`Batch.release`), which deletes the body at zero.
"""

from __future__ import annotations

from typing import Final

from broker.errors import InvalidInput

from . import keys as k
from . import values as v
from .base import MailboxRecord, Sweep, SweepResult
from .batch import COPY, DEAD, IN_FLIGHT, Batch
from .deliveries import MAX_MS, head_freed, to_dead, to_ready
from .keys import Db

__all__ = ["dedup_cutoff", "purge_mailbox", "sweep"]

_CHUNK: Final = 1024


def _take_due(batch: Batch, db: Db, end: bytes, limit: int) -> tuple[list[bytes], bool]:
    """Take (delete) the keys of ``db`` below ``end`` (at most limit); and whether more are."""
    txn = batch.txn
    keys = [key for key, _ in txn.take(db, b"\x00", end, limit)]
    return keys, len(keys) == limit and txn.first(db, b"\x00", end) is not None


def _expire_leases(batch: Batch, limit: int, result: dict[str, int]) -> bool:
    txn = batch.txn
    index_keys, more = _take_due(batch, Db.LEASE_EXPIRY, k.time_range(batch.now)[1], limit)
    if not index_keys:
        return more
    parsed = [k.parse_time_key(index_key) for index_key in index_keys]
    keys = [k.delivery_key(num, seq) for _, num, seq in parsed]
    for (deadline, num, seq), key, raw in zip(
        parsed, keys, txn.get_many(Db.IN_FLIGHT, keys), strict=True
    ):
        if raw is None:
            continue  # a stale entry: nothing else to do
        flight = v.decode_value(raw, v.FlightValue)
        mailbox = batch.mailbox_by_num(num)
        if flight.deadline_ms != deadline or mailbox is None:
            continue
        txn.delete(Db.IN_FLIGHT, key)
        batch.counters(num)[IN_FLIGHT] -= 1
        result["expired_leases"] += 1
        attempt, sub, tm = flight.attempt, flight.subscription_id, flight.tm
        if attempt >= mailbox.max_deliveries:
            to_dead(batch, mailbox, seq, attempt, sub, "max_deliveries", tm)
            head_freed(batch, mailbox)
            result["dead_lettered"] += 1
        else:
            to_ready(batch, mailbox, seq, attempt, sub, tm)
    return more


def _purge(
    batch: Batch, index: Db, records: Db, slot: int, limit: int, result: dict[str, int]
) -> tuple[int, bool]:
    """Purge copies or dead letters past retention; returns (purged, more)."""
    txn = batch.txn
    keys, more = _take_due(batch, index, k.time_range(batch.now)[1], limit)
    purged = 0
    for index_key in keys:
        _, num, seq = k.parse_time_key(index_key)
        if txn.delete(records, k.delivery_key(num, seq)):
            purged += 1
            if batch.mailbox_by_num(num) is not None:
                batch.counters(num)[slot] -= 1
            if batch.release(seq):
                result["bodies_deleted"] += 1
    return purged, more


def dedup_cutoff(now_ms: int) -> bytes:
    """Keys of ``dedup_gens`` below this are of generations whose every record has expired
    (a record is live while ``expires > now``; generation g ends at ``(g + 1) * GEN - 1``)."""
    return k.dedup_key_of((now_ms + 1) // k.DEDUP_GEN_MS, b"")


def sweep(batch: Batch, op: Sweep) -> SweepResult:
    """Expire due leases, purge copies/dead letters/dedup records/audit events past their time."""
    if op.max_items < 1:
        raise InvalidInput(f"max_items must be >= 1, got {op.max_items}", path="$.max_items")
    if not 0 <= op.audit_retention_ms <= MAX_MS:
        raise InvalidInput(
            f"audit_retention_ms must be between 0 and {MAX_MS}, got {op.audit_retention_ms}",
            path="$.audit_retention_ms",
        )
    limit = op.max_items
    now = batch.now
    result = {"expired_leases": 0, "dead_lettered": 0, "bodies_deleted": 0}
    more = _expire_leases(batch, limit, result)
    copies, more_copies = _purge(batch, Db.COPY_EXPIRY, Db.COPY, COPY, limit, result)
    dead, more_dead = _purge(batch, Db.DEAD_EXPIRY, Db.DEAD, DEAD, limit, result)
    dedup, more_dedup = _take_due(batch, Db.DEDUP_GENS, dedup_cutoff(now), limit)
    audit_end = k.audit_key(max(now - op.audit_retention_ms, 0), 0)
    audit, more_audit = _take_due(batch, Db.AUDIT, audit_end, limit)
    return SweepResult(
        expired_leases=result["expired_leases"],
        dead_lettered=result["dead_lettered"],
        purged_copies=copies,
        purged_dead=dead,
        purged_dedup=len(dedup),
        bodies_deleted=result["bodies_deleted"],
        more=more or more_copies or more_dead or more_dedup or more_audit,
        purged_audit=len(audit),
    )


def purge_mailbox(batch: Batch, mailbox: MailboxRecord) -> None:
    """Remove every delivery record of a mailbox (and its index entries), releasing bodies."""
    txn = batch.txn
    num = mailbox.num
    start, end = k.mailbox_range(num)
    for records in (Db.READY, Db.IN_FLIGHT, Db.COPY, Db.DEAD):
        while True:
            chunk = txn.take(records, start, end, _CHUNK)
            for key, raw in chunk:
                seq = k.parse_delivery_key(key)[1]
                if records is Db.IN_FLIGHT:
                    deadline = v.decode_value(raw, v.FlightValue).deadline_ms
                    txn.delete(Db.LEASE_EXPIRY, k.time_key(deadline, num, seq))
                elif records is Db.COPY:
                    expires = v.decode_value(raw, v.CopyValue).expires_ms
                    txn.delete(Db.COPY_EXPIRY, k.time_key(expires, num, seq))
                elif records is Db.DEAD:
                    expires = v.decode_value(raw, v.DeadValue).expires_ms
                    txn.delete(Db.DEAD_EXPIRY, k.time_key(expires, num, seq))
                batch.release(seq)
            if len(chunk) < _CHUNK:
                break
