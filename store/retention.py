"""Retention: the bounded sweep (lease expiry, copy/dead/dedup purge) and mailbox purge.

Theory of operation
-------------------
Three time indexes are keyed ``(time u64, num u32, seq u64)``: ``lease_expiry`` (lease
deadline), ``copy_expiry`` and ``dead_expiry`` (retention end); ``dedup_expiry`` is keyed
``(time u64, dedup key)``. Everything due at ``now`` is a prefix of an index, so a sweep reads
at most ``max_items + 1`` keys per index (the extra one only tells whether more is due).

A delivery record that leaves the store for good (purged copy or dead letter, deleted mailbox)
releases one reference to its body (:meth:`Batch.release`), which deletes the body at zero.
"""

from __future__ import annotations

from typing import Final

from broker.errors import InvalidInput

from . import keys as k
from .base import MailboxRecord, Sweep, SweepResult
from .batch import COPY, DEAD, IN_FLIGHT, Batch
from .deliveries import to_dead, to_ready
from .keys import Db

__all__ = ["purge_mailbox", "sweep"]

_CHUNK: Final = 1024


def _due(batch: Batch, index: Db, limit: int) -> tuple[list[bytes], bool]:
    """Keys of ``index`` due at ``now`` (at most limit), and whether more are due."""
    start, end = k.time_range(batch.now)
    found = batch.txn.scan(index, start, end, limit + 1)
    return [key for key, _ in found[:limit]], len(found) > limit


def _expire_leases(batch: Batch, limit: int, result: dict[str, int]) -> bool:
    txn = batch.txn
    keys, more = _due(batch, Db.LEASE_EXPIRY, limit)
    for index_key in keys:
        txn.delete(Db.LEASE_EXPIRY, index_key)
        deadline, num, seq = k.parse_time_key(index_key)
        key = k.delivery_key(num, seq)
        raw = txn.get(Db.IN_FLIGHT, key)
        mailbox = batch.mailbox_by_num(num)
        if raw is None or mailbox is None:
            continue  # a stale index entry; nothing else to do
        flight = k.decode_value(raw, k.FlightValue)
        if flight.deadline_ms != deadline:
            continue
        txn.delete(Db.IN_FLIGHT, key)
        batch.counters(num)[IN_FLIGHT] -= 1
        result["expired_leases"] += 1
        if flight.attempt >= mailbox.max_deliveries:
            to_dead(batch, mailbox, seq, flight.attempt, flight.subscription_id, "max_deliveries")
            result["dead_lettered"] += 1
        else:
            to_ready(batch, mailbox, seq, flight.attempt, flight.subscription_id)
    return more


def _purge(
    batch: Batch, index: Db, records: Db, slot: int, limit: int, result: dict[str, int]
) -> tuple[int, bool]:
    """Purge copies or dead letters past retention; returns (purged, more)."""
    txn = batch.txn
    keys, more = _due(batch, index, limit)
    purged = 0
    for index_key in keys:
        txn.delete(index, index_key)
        _, num, seq = k.parse_time_key(index_key)
        if txn.delete(records, k.delivery_key(num, seq)):
            purged += 1
            if batch.mailbox_by_num(num) is not None:
                batch.counters(num)[slot] -= 1
            if batch.release(seq):
                result["bodies_deleted"] += 1
    return purged, more


def _purge_dedup(batch: Batch, limit: int) -> tuple[int, bool]:
    txn = batch.txn
    keys, more = _due(batch, Db.DEDUP_EXPIRY, limit)
    for index_key in keys:
        txn.delete(Db.DEDUP_EXPIRY, index_key)
        txn.delete(Db.DEDUP, index_key[8:])
    return len(keys), more


def sweep(batch: Batch, op: Sweep) -> SweepResult:
    """Expire due leases, purge copies/dead letters/dedup records past their time."""
    if op.max_items < 1:
        raise InvalidInput(f"max_items must be >= 1, got {op.max_items}", path="$.max_items")
    limit = op.max_items
    result = {"expired_leases": 0, "dead_lettered": 0, "bodies_deleted": 0}
    more = _expire_leases(batch, limit, result)
    copies, more_copies = _purge(batch, Db.COPY_EXPIRY, Db.COPY, COPY, limit, result)
    dead, more_dead = _purge(batch, Db.DEAD_EXPIRY, Db.DEAD, DEAD, limit, result)
    dedup, more_dedup = _purge_dedup(batch, limit)
    return SweepResult(
        expired_leases=result["expired_leases"],
        dead_lettered=result["dead_lettered"],
        purged_copies=copies,
        purged_dead=dead,
        purged_dedup=dedup,
        bodies_deleted=result["bodies_deleted"],
        more=more or more_copies or more_dead or more_dedup,
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
                    deadline = k.decode_value(raw, k.FlightValue).deadline_ms
                    txn.delete(Db.LEASE_EXPIRY, k.time_key(deadline, num, seq))
                elif records is Db.COPY:
                    expires = k.decode_value(raw, k.CopyValue).expires_ms
                    txn.delete(Db.COPY_EXPIRY, k.time_key(expires, num, seq))
                elif records is Db.DEAD:
                    expires = k.decode_value(raw, k.DeadValue).expires_ms
                    txn.delete(Db.DEAD_EXPIRY, k.time_key(expires, num, seq))
                batch.release(seq)
            if len(chunk) < _CHUNK:
                break
