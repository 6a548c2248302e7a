"""Reads of deliveries: mailbox counters, a leased delivery, dead letters.

Each takes a read transaction (:class:`~store.kv.KvReader`) that the caller opened and closes.
"""

from __future__ import annotations

from broker.errors import Conflict, NotFound

from . import keys as k
from . import values as v
from .base import Delivery, MailboxRecord, MailboxStats, delivery_id, parse_delivery_id
from .deliveries import MAX_SEQ, body_of
from .keys import Db
from .kv import KvReader

__all__ = ["get_leased", "list_dead", "mailbox_stats"]


def _read_mailbox(txn: KvReader, mailbox_id: str) -> MailboxRecord:
    raw = None
    key = mailbox_id.encode()
    if 0 < len(key) <= k.MAX_ID_BYTES:
        raw = txn.get(Db.MAILBOXES, key)
    if raw is None:
        raise NotFound(f"mailbox {mailbox_id!r} does not exist", path="$.mailbox_id")
    return v.decode_record(raw, MailboxRecord)


def mailbox_stats(txn: KvReader, mailbox_id: str) -> MailboxStats:
    mailbox = _read_mailbox(txn, mailbox_id)
    raw = txn.get(Db.COUNTERS, k.num_key(mailbox.num))
    ready, in_flight, copy, dead = [0, 0, 0, 0] if raw is None else v.decode_counters(raw)
    oldest = None
    first = txn.first(Db.READY, *k.mailbox_range(mailbox.num))
    if first is not None:
        seq = k.parse_delivery_key(first[0])[1]
        body = txn.get(Db.BODIES, k.seq_key(seq))
        oldest = None if body is None else v.received_ms_of(body)
    return MailboxStats(
        ready=ready, in_flight=in_flight, copy=copy, dead=dead, oldest_ready_ms=oldest
    )


def get_leased(txn: KvReader, mailbox_id: str, text: str, now_ms: int) -> Delivery:
    mailbox = _read_mailbox(txn, mailbox_id)
    parsed = parse_delivery_id(text)
    raw = None
    if parsed is not None and parsed[0] <= MAX_SEQ:
        raw = txn.get(Db.IN_FLIGHT, k.delivery_key(mailbox.num, parsed[0]))
    flight = None if raw is None else v.decode_value(raw, v.FlightValue)
    if parsed is None or flight is None or flight.attempt != parsed[1]:
        raise Conflict(f"delivery {text!r} is not in flight", code="unknown_delivery")
    if flight.deadline_ms <= now_ms:
        raise Conflict(f"the lease of delivery {text!r} has expired", code="lease_expired")
    seq = parsed[0]
    received_ms, body = body_of(txn, seq)
    return Delivery(
        delivery_id=delivery_id(seq, flight.attempt),
        seq=seq,
        attempt=flight.attempt,
        subscription_id=flight.subscription_id,
        received_ms=received_ms,
        body=body,
        leased_until_ms=flight.deadline_ms,
        tilladt_modtager=flight.tm,
    )


def list_dead(txn: KvReader, mailbox_id: str, limit: int) -> list[Delivery]:
    mailbox = _read_mailbox(txn, mailbox_id)
    out = []
    for key, raw in txn.scan(Db.DEAD, *k.mailbox_range(mailbox.num), limit=max(limit, 0)):
        seq = k.parse_delivery_key(key)[1]
        dead = v.decode_value(raw, v.DeadValue)
        received_ms, body = body_of(txn, seq)
        out.append(
            Delivery(
                delivery_id=delivery_id(seq, dead.attempt),
                seq=seq,
                attempt=dead.attempt,
                subscription_id=dead.subscription_id,
                received_ms=received_ms,
                body=body,
                reason=dead.reason,
                tilladt_modtager=dead.tm,
            )
        )
    return out
