"""Delivery operations: publish, lease, ack/nack, requeue dead letters, replay.

Theory of operation
-------------------
A delivery of message ``seq`` to mailbox ``num`` lives under the key ``(num, seq)`` in exactly
one of the databases ``ready``, ``in_flight``, ``copy`` or ``dead``; moving it between states
deletes one record and puts another under the same key, so a redelivery keeps its place in
sequence order. ``in_flight``, ``copy`` and ``dead`` records also have an entry in a time index
(lease deadline, retention expiry) that the sweep walks (see ``store.retention``). Each move
adjusts the mailbox's counters in the batch. A delivery's TilladtModtager list (``tm``) moves
with it through every state.

Every op checks its preconditions (and raises its refusal) before it writes anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from broker.errors import InvalidInput, StoreError

from . import keys as k
from . import values as v
from .base import (
    Ack,
    AckResult,
    Delivery,
    Lease,
    MailboxRecord,
    Nack,
    Replay,
    RequeueDead,
    parse_delivery_id,
)
from .batch import COPY, DEAD, IN_FLIGHT, READY, Batch
from .keys import Db
from .kv import KvReader

__all__ = [
    "MAX_MS",
    "MAX_SEQ",
    "ack",
    "body_of",
    "check_range",
    "lease",
    "nack",
    "replay",
    "requeue_dead",
]

#: The largest seq a key can hold (ids naming a larger one name nothing).
MAX_SEQ = (1 << 64) - 1
_CHUNK = 512


#: Bound of times and durations (ms): keeps every time key within its 8 bytes.
MAX_MS = 1 << 48


def check_range(field: str, value: int, minimum: int) -> None:
    if not minimum <= value <= MAX_MS:
        raise InvalidInput(
            f"{field} must be between {minimum} and {MAX_MS}, got {value}", path=f"$.{field}"
        )


# ----------------------------------------------------------------------------- lease


def body_of(txn: KvReader, seq: int) -> tuple[int, bytes]:
    raw = txn.get(Db.BODIES, k.seq_key(seq))
    if raw is None:
        raise StoreError(f"message {seq} has a delivery record but no body")
    return v.decode_body(raw)


def lease(batch: Batch, op: Lease) -> list[Delivery]:
    """Move up to ``max`` ready deliveries (lowest seqs first) in flight."""
    mailbox = batch.require_mailbox(op.mailbox_id)
    check_range("max", op.max, 1)
    check_range("lease_ms", op.lease_ms, 1)
    txn = batch.txn
    num = mailbox.num
    start, end = k.mailbox_range(num)
    if mailbox.strict:
        head = txn.first(Db.IN_FLIGHT, start, end)
        if head is not None:
            end = head[0]  # only what precedes the earliest delivery in flight
    taken = txn.take(Db.READY, start, end, op.max)
    if not taken:
        return []
    keys = [key for key, _ in taken]
    seqs = k.delivery_seqs(keys)
    bodies = txn.get_many(Db.BODIES, k.seq_keys(keys))
    if None in bodies:
        seq = seqs[bodies.index(None)]
        raise StoreError(f"message {seq} has a delivery record but no body")
    stored = cast("list[bytes]", bodies)
    received = v.received_times(stored)
    offset = v.BODY_OFFSET
    deadline = batch.now + op.lease_ms
    lease_prefix = k.time_prefix(deadline)
    flights: list[tuple[bytes, bytes]] = []
    leases: list[tuple[bytes, bytes]] = []
    out: list[Delivery] = []
    # ready value -> attempt, sub, tm, flight value: one poll's deliveries mostly share one
    values: dict[bytes, tuple[int, str, tuple[str, ...] | None, bytes]] = {}
    for (key, raw), seq, body, received_ms in zip(taken, seqs, stored, received, strict=True):
        cached = values.get(raw)
        if cached is None:
            ready = v.decode_value(raw, v.ReadyValue)
            attempt = ready.attempt + 1
            sub, tm = ready.subscription_id, ready.tm
            cached = values[raw] = (attempt, sub, tm, v.delivery_value(attempt, sub, deadline, tm))
        attempt, subscription_id, tm, value = cached
        flights.append((key, value))
        leases.append((lease_prefix + key, b""))
        out.append(
            Delivery(
                delivery_id=f"{seq}-{attempt}",  # delivery_id(seq, attempt), without the call
                seq=seq,
                attempt=attempt,
                subscription_id=subscription_id,
                received_ms=received_ms,
                body=body[offset:],
                leased_until_ms=deadline,
                tilladt_modtager=tm,
            )
        )
    txn.put_sorted(Db.IN_FLIGHT, flights)  # appends when no later mailbox has some in flight
    txn.put_sorted(Db.LEASE_EXPIRY, leases)
    counts = batch.counters(num)
    counts[READY] -= len(out)
    counts[IN_FLIGHT] += len(out)
    return out


# ----------------------------------------------------------------------------- ack / nack


def _settle(
    batch: Batch, mailbox: MailboxRecord, ids: Sequence[str], failed: list[tuple[str, str]]
) -> list[tuple[bytes, int, v.FlightValue]]:
    """Take the in-flight deliveries named by ids out of flight; failures go to ``failed``.

    Their ``lease_expiry`` entries go too: leaving them to the sweep (which skips entries that
    match no in-flight record) saved ~0.6 us per delivery here but cost ~2.7 us in the sweep
    (bench/store_bench.py, "later sweep")."""
    txn = batch.txn
    num = mailbox.num
    parsed = [parse_delivery_id(text) for text in ids]
    keys = [k.delivery_key(num, p[0]) if p and p[0] <= MAX_SEQ else b"" for p in parsed]
    stored = txn.get_many(Db.IN_FLIGHT, [key for key in keys if key])
    out: list[tuple[bytes, int, v.FlightValue]] = []
    decoded: dict[bytes, v.FlightValue] = {}  # one lease gives many deliveries one value
    taken: set[bytes] = set()
    found = iter(stored)
    for text, p, key in zip(ids, parsed, keys, strict=True):
        raw = next(found) if key else None
        if raw is None or p is None or key in taken:
            failed.append((text, "unknown_delivery"))
            continue
        flight = decoded.get(raw)
        if flight is None:
            flight = decoded[raw] = v.decode_value(raw, v.FlightValue)
        if flight.attempt != p[1]:
            failed.append((text, "unknown_delivery"))
        elif flight.deadline_ms <= batch.now:
            failed.append((text, "lease_expired"))
        else:
            taken.add(key)
            out.append((key, p[0], flight))
    keys = sorted([key for key, _, _ in out])  # deletes are cheapest in key order
    txn.delete_many(Db.IN_FLIGHT, keys)
    # the deliveries of one lease share a deadline: one prefix each (time_prefix + key)
    prefixes: dict[int, bytes] = {}
    index = []
    for key, _, flight in out:
        prefix = prefixes.get(flight.deadline_ms)
        if prefix is None:
            prefix = prefixes[flight.deadline_ms] = k.time_prefix(flight.deadline_ms)
        index.append(prefix + key)
    if len(prefixes) > 1:
        index.sort()
    txn.delete_many(Db.LEASE_EXPIRY, index)
    batch.counters(num)[IN_FLIGHT] -= len(out)
    return out


def _retention_end(batch: Batch, mailbox: MailboxRecord) -> int:
    return batch.now + mailbox.retention_s * 1000


def ack(batch: Batch, op: Ack) -> AckResult:
    """In-flight deliveries (same attempt, lease not expired) to the copy queue."""
    mailbox = batch.require_mailbox(op.mailbox_id)
    failed: list[tuple[str, str]] = []
    settled = _settle(batch, mailbox, op.delivery_ids, failed)
    if settled:
        expires = _retention_end(batch, mailbox)
        copies = []
        # one flight value (decoded once by _settle) per lease: one copy value each
        values: dict[int, bytes] = {}
        now = batch.now
        for key, _, flight in settled:
            value = values.get(id(flight))
            if value is None:
                value = values[id(flight)] = v.delivery_value(
                    now, flight.attempt, flight.subscription_id, expires, flight.tm
                )
            copies.append((key, value))
        copies.sort()
        prefix = k.time_prefix(expires)  # time_key(expires, num, seq) of each
        index = [(prefix + key, b"") for key, _ in copies]
        batch.txn.put_sorted(Db.COPY, copies)  # appends when no later mailbox has copies
        batch.txn.put_sorted(Db.COPY_EXPIRY, index)
        batch.counters(mailbox.num)[COPY] += len(settled)
        head_freed(batch, mailbox)
    return AckResult(count=len(settled), failed=tuple(failed))


def head_freed(batch: Batch, mailbox: MailboxRecord) -> None:
    """A strict mailbox offers nothing behind its earliest delivery in flight: when deliveries
    leave the in-flight state without becoming ready (ack, dead letter), what waited behind
    them may be offered now, so the mailbox counts as having gained ready deliveries (its
    long-pollers and consume streams are woken, in every worker)."""
    if mailbox.strict and batch.counters(mailbox.num)[READY] > 0:
        batch.ready.add(mailbox.id)


def to_dead(
    batch: Batch,
    mailbox: MailboxRecord,
    seq: int,
    attempt: int,
    sub: str,
    reason: str,
    tm: tuple[str, ...] | None,
) -> None:
    """Put a dead letter (the caller removed its previous record)."""
    expires = _retention_end(batch, mailbox)
    value = v.delivery_value(batch.now, attempt, sub, reason, expires, tm)
    batch.txn.put(Db.DEAD, k.delivery_key(mailbox.num, seq), value)
    batch.txn.put(Db.DEAD_EXPIRY, k.time_key(expires, mailbox.num, seq), b"")
    batch.counters(mailbox.num)[DEAD] += 1


def to_ready(
    batch: Batch,
    mailbox: MailboxRecord,
    seq: int,
    attempt: int,
    sub: str,
    tm: tuple[str, ...] | None,
) -> None:
    """Put a ready delivery (the caller removed its previous record)."""
    value = v.delivery_value(attempt, sub, tm)
    batch.txn.put(Db.READY, k.delivery_key(mailbox.num, seq), value)
    batch.counters(mailbox.num)[READY] += 1
    batch.ready.add(mailbox.id)


def nack(batch: Batch, op: Nack) -> AckResult:
    """In-flight deliveries back to ready (same attempt), or to the dead letters."""
    mailbox = batch.require_mailbox(op.mailbox_id)
    failed: list[tuple[str, str]] = []
    settled = _settle(batch, mailbox, op.delivery_ids, failed)
    for _, seq, flight in settled:
        attempt, sub, tm = flight.attempt, flight.subscription_id, flight.tm
        if not op.requeue:
            to_dead(batch, mailbox, seq, attempt, sub, "nacked", tm)
        elif attempt >= mailbox.max_deliveries:
            to_dead(batch, mailbox, seq, attempt, sub, "max_deliveries", tm)
        else:
            to_ready(batch, mailbox, seq, attempt, sub, tm)
    if settled:
        head_freed(batch, mailbox)
    return AckResult(count=len(settled), failed=tuple(failed))


# ----------------------------------------------------------------------------- requeue / replay


def requeue_dead(batch: Batch, op: RequeueDead) -> int:
    """Dead letters (all, or the named ones) back to ready with attempt 0."""
    mailbox = batch.require_mailbox(op.mailbox_id)
    check_range("limit", op.limit, 1)
    txn = batch.txn
    num = mailbox.num
    count = 0

    def move(key: bytes, raw: bytes) -> None:
        seq = k.parse_delivery_key(key)[1]
        dead = v.decode_value(raw, v.DeadValue)
        txn.delete(Db.DEAD, key)
        txn.delete(Db.DEAD_EXPIRY, k.time_key(dead.expires_ms, num, seq))
        batch.counters(num)[DEAD] -= 1
        to_ready(batch, mailbox, seq, 0, dead.subscription_id, dead.tm)

    if op.delivery_ids:
        for text in op.delivery_ids:
            parsed = parse_delivery_id(text)
            if parsed is None or parsed[0] > MAX_SEQ:
                continue
            key = k.delivery_key(num, parsed[0])
            raw = txn.get(Db.DEAD, key)
            if raw is not None:
                move(key, raw)
                count += 1
                if count >= op.limit:
                    break
    else:
        start, end = k.mailbox_range(num)
        for key, raw in txn.scan(Db.DEAD, start, end, op.limit):
            move(key, raw)
            count += 1
    return count


def replay(batch: Batch, op: Replay) -> int:
    """Copies of messages received at or after ``since_ms`` back to ready, oldest first."""
    mailbox = batch.require_mailbox(op.mailbox_id)
    check_range("limit", op.limit, 1)
    txn = batch.txn
    num = mailbox.num
    start, end = k.mailbox_range(num)
    count = 0
    while count < op.limit:
        chunk = txn.scan(Db.COPY, start, end, _CHUNK)
        for key, raw in chunk:
            seq = k.parse_delivery_key(key)[1]
            received = txn.get(Db.BODIES, k.seq_key(seq))
            if received is None:
                raise StoreError(f"message {seq} has a delivery record but no body")
            if v.received_ms_of(received) < op.since_ms:
                continue
            copy = v.decode_value(raw, v.CopyValue)
            txn.delete(Db.COPY, key)
            txn.delete(Db.COPY_EXPIRY, k.time_key(copy.expires_ms, num, seq))
            batch.counters(num)[COPY] -= 1
            to_ready(batch, mailbox, seq, 0, copy.subscription_id, copy.tm)
            count += 1
            if count >= op.limit:
                break
        if len(chunk) < _CHUNK:
            break
        start = chunk[-1][0] + b"\x00"
    return count
