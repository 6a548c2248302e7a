"""The state of one :meth:`Store.apply` call: its write transaction plus per-batch caches.

Theory of operation
-------------------
A batch is the unit of group commit, and most of its cost is per-envelope Python work. So
:class:`Batch` keeps, for the length of one write transaction:

* a cache of mailbox records (by id and by num), so routing hundreds of envelopes to the same
  few mailboxes reads each record once;
* the per-mailbox counters (ready, in_flight, copy, dead), changed in memory and written once
  per touched mailbox in :meth:`Batch.finish`;
* the sequence and mailbox number allocators, read from and written back to ``meta`` inside
  the transaction (never kept in process memory, so processes can share one environment);
* a publish buffer: runs of consecutive :class:`Publish` ops (``store.publish``) collect their
  bodies, reference counts, ready records and dedup records in lists that :meth:`Batch.flush`
  writes with one ``put_many`` per database (bodies and refs appended, seqs being monotonic).
  Every other op flushes first, so it sees everything the ops before it wrote.

Nothing here outlives the transaction: when ``apply`` raises, the batch is dropped with it.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Final

from broker.errors import NotFound, StoreError

from . import keys as k
from . import values as v
from .base import MailboxRecord
from .keys import Db
from .kv import KvWriter

__all__ = ["COPY", "DEAD", "IN_FLIGHT", "READY", "Batch"]

#: Indexes into a mailbox's counters list.
READY: Final = 0
IN_FLIGHT: Final = 1
COPY: Final = 2
DEAD: Final = 3


def lookup_key(value: str) -> bytes | None:
    """An id as a lookup key, or None when it can't be a stored id (so: not found)."""
    raw = value.encode()
    return raw if 0 < len(raw) <= k.MAX_ID_BYTES else None


class Batch:
    """One write transaction plus the caches and buffers of one apply call."""

    def __init__(self, txn: KvWriter, now_ms: int) -> None:
        self.txn = txn
        self.now = now_ms
        #: ids of mailboxes that gained ready deliveries (ApplyOutcome.ready)
        self.ready: set[str] = set()
        #: mailbox id -> record (None: no such mailbox), read through :meth:`mailbox`
        self.mailbox_cache: dict[str, MailboxRecord | None] = {}
        self._by_num: dict[int, MailboxRecord | None] = {}
        self._counters: dict[int, list[int]] = {}
        self._next_seq: int | None = None
        self._next_seq_read = 0
        self._next_mailbox: int | None = None
        self._next_mailbox_read = 0
        self._next_audit: int | None = None
        self._next_audit_read = 0
        # the publish buffer, filled by store.publish (public for its loop's sake)
        self.body_buffer: list[tuple[bytes, bytes]] = []
        self.ref_buffer: list[tuple[bytes, bytes]] = []
        self.ready_buffer: list[tuple[bytes, bytes]] = []
        #: dedup hash -> (key, encoded record), buffered by this run of publishes
        self.dedup_buffer: dict[bytes, tuple[bytes, bytes]] = {}
        self.gained: dict[int, int] = {}  # buffered ready deliveries per mailbox num
        # encodings shared by many envelopes of a batch
        self.gen_prefixes: dict[int, bytes] = {}  # dedup expiry -> generation key prefix
        self.ready_values: dict[tuple[str, tuple[str, ...] | None], bytes] = {}
        self.body_heads: dict[int, bytes] = {}  # received_ms -> body header

    # ------------------------------------------------------------------------- mailboxes

    def mailbox(self, mailbox_id: str) -> MailboxRecord | None:
        try:
            return self.mailbox_cache[mailbox_id]
        except KeyError:
            pass
        key = lookup_key(mailbox_id)
        raw = None if key is None else self.txn.get(Db.MAILBOXES, key)
        record = None if raw is None else v.decode_record(raw, MailboxRecord)
        self.mailbox_cache[mailbox_id] = record
        if record is not None:
            self._by_num[record.num] = record
        return record

    def require_mailbox(self, mailbox_id: str) -> MailboxRecord:
        record = self.mailbox(mailbox_id)
        if record is None:
            raise NotFound(f"mailbox {mailbox_id!r} does not exist", path="$.mailbox_id")
        return record

    def mailbox_by_num(self, num: int) -> MailboxRecord | None:
        try:
            return self._by_num[num]
        except KeyError:
            pass
        raw = self.txn.get(Db.MAILBOX_NUMS, k.num_key(num))
        record = None if raw is None else self.mailbox(v.decode_id(raw))
        self._by_num[num] = record
        return record

    def remember_mailbox(self, record: MailboxRecord) -> None:
        self.mailbox_cache[record.id] = record
        self._by_num[record.num] = record
        self._counters[record.num] = [0, 0, 0, 0]

    def forget_mailbox(self, record: MailboxRecord) -> None:
        self.mailbox_cache[record.id] = None
        self._by_num[record.num] = None
        self._counters.pop(record.num, None)
        self.txn.delete(Db.COUNTERS, k.num_key(record.num))
        self.ready.discard(record.id)

    def counters(self, num: int) -> list[int]:
        """The mutable [ready, in_flight, copy, dead] of a mailbox; written by finish()."""
        counts = self._counters.get(num)
        if counts is None:
            raw = self.txn.get(Db.COUNTERS, k.num_key(num))
            counts = [0, 0, 0, 0] if raw is None else v.decode_counters(raw)
            self._counters[num] = counts
        return counts

    # ------------------------------------------------------------------------- allocators

    def alloc_mailbox_num(self) -> int:
        num = self._next_mailbox
        if num is None:
            raw = self.txn.get(Db.META, k.META_NEXT_MAILBOX)
            num = self._next_mailbox_read = 1 if raw is None else v.decode_int(raw)
        self._next_mailbox = num + 1
        return num

    def alloc_audit(self, count: int) -> int:
        """The first of ``count`` consecutive audit counters."""
        first = self._next_audit
        if first is None:
            raw = self.txn.get(Db.META, k.META_NEXT_AUDIT)
            first = self._next_audit_read = 1 if raw is None else v.decode_int(raw)
        self._next_audit = first + count
        return first

    # ------------------------------------------------------------------------- bodies

    def release(self, seq: int) -> bool:
        """One delivery record of ``seq`` left the store; True if its body went with it."""
        key = k.seq_key(seq)
        raw = self.txn.get(Db.REFS, key)
        if raw is None:
            raise StoreError(f"message {seq} has a delivery record but no reference count")
        count = v.decode_ref(raw) - 1
        if count > 0:
            self.txn.put(Db.REFS, key, v.encode_ref(count))
            return False
        self.txn.delete(Db.REFS, key)
        self.txn.delete(Db.BODIES, key)
        return True

    # ------------------------------------------------------------------------- publish buffer

    def peek_seq(self) -> int:
        """The next seq to hand out, without taking it (see :meth:`used_seqs`)."""
        seq = self._next_seq
        if seq is None:
            raw = self.txn.get(Db.META, k.META_NEXT_SEQ)
            seq = self._next_seq = self._next_seq_read = 1 if raw is None else v.decode_int(raw)
        return seq

    def used_seqs(self, next_seq: int) -> None:
        """The seqs from :meth:`peek_seq` up to ``next_seq`` (exclusive) were taken."""
        self._next_seq = next_seq

    def flush(self) -> None:
        """Write the publish buffer (one put_many per database)."""
        txn = self.txn
        if self.body_buffer:
            txn.put_many(Db.BODIES, self.body_buffer, append=True)
            txn.put_many(Db.REFS, self.ref_buffer, append=True)
            items = self.ready_buffer
            if len(self.gained) > 1:  # one mailbox's items are in seq order already
                items.sort()
            txn.put_sorted(Db.READY, items)  # appends when no later mailbox has ready ones
            for num, count in self.gained.items():
                self.counters(num)[READY] += count
                mailbox = self._by_num[num]
                assert mailbox is not None
                self.ready.add(mailbox.id)
            self.body_buffer = []
            self.ref_buffer = []
            self.ready_buffer = []
            self.gained = {}
        if self.dedup_buffer:
            # by key alone (keys are unique): cheaper than comparing tuples
            records = sorted(self.dedup_buffer.values(), key=itemgetter(0))
            txn.put_sorted(Db.DEDUP_GENS, records)  # appends if in order
            self.dedup_buffer = {}

    def finish(self) -> None:
        """Flush, then write the counters and allocators this batch changed."""
        self.flush()
        txn = self.txn
        if self._counters:
            txn.put_many(
                Db.COUNTERS,
                [
                    (k.num_key(num), v.encode_counters(c))
                    for num, c in sorted(self._counters.items())
                ],
            )
        if self._next_seq is not None and self._next_seq != self._next_seq_read:
            txn.put(Db.META, k.META_NEXT_SEQ, v.encode_int(self._next_seq))
        if self._next_mailbox is not None and self._next_mailbox != self._next_mailbox_read:
            txn.put(Db.META, k.META_NEXT_MAILBOX, v.encode_int(self._next_mailbox))
        if self._next_audit is not None and self._next_audit != self._next_audit_read:
            txn.put(Db.META, k.META_NEXT_AUDIT, v.encode_int(self._next_audit))
