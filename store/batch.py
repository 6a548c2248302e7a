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
* a publish buffer: runs of consecutive :class:`Publish` ops collect their bodies, reference
  counts, ready records and dedup records in lists that :meth:`Batch.flush` writes with one
  ``put_many`` per database (bodies and refs appended, seqs being monotonic). Every other op
  flushes first, so it sees everything the ops before it wrote;
* the dedup records a run of publishes may hit, read with ONE ``get_many`` before the run
  (:meth:`Batch.prefetch_dedup`: every dedup hash of the run in every live generation).

Nothing here outlives the transaction: when ``apply`` raises, the batch is dropped with it.
"""

from __future__ import annotations

from typing import Final

from broker.errors import NotFound, StoreError

from . import keys as k
from . import values as v
from .base import MailboxRecord, Route
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
        self._by_id: dict[str, MailboxRecord | None] = {}
        self._by_num: dict[int, MailboxRecord | None] = {}
        self._counters: dict[int, list[int]] = {}
        self._next_seq: int | None = None
        self._next_seq_read = 0
        self._next_mailbox: int | None = None
        self._next_mailbox_read = 0
        self._next_audit: int | None = None
        self._next_audit_read = 0
        # the publish buffer
        self._bodies: list[tuple[bytes, bytes]] = []
        self._refs: list[tuple[bytes, bytes]] = []
        self._ready_items: list[tuple[bytes, bytes]] = []
        #: dedup hash -> (key, encoded record), buffered by this run of publishes
        self._dedup: dict[bytes, tuple[bytes, bytes]] = {}
        #: dedup hash -> (key, stored record), prefetched for this run of publishes (found ones)
        self._dedup_known: dict[bytes, tuple[bytes, bytes]] = {}
        self._gen_prefixes: dict[int, bytes] = {}
        self._ready_values: dict[tuple[str, tuple[str, ...] | None], bytes] = {}
        self._heads: dict[int, bytes] = {}
        self._gained: dict[int, int] = {}  # buffered ready deliveries per mailbox num

    # ------------------------------------------------------------------------- mailboxes

    def mailbox(self, mailbox_id: str) -> MailboxRecord | None:
        try:
            return self._by_id[mailbox_id]
        except KeyError:
            pass
        key = lookup_key(mailbox_id)
        raw = None if key is None else self.txn.get(Db.MAILBOXES, key)
        record = None if raw is None else v.decode_record(raw, MailboxRecord)
        self._by_id[mailbox_id] = record
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
        self._by_id[record.id] = record
        self._by_num[record.num] = record
        self._counters[record.num] = [0, 0, 0, 0]

    def forget_mailbox(self, record: MailboxRecord) -> None:
        self._by_id[record.id] = None
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

    def alloc_seq(self) -> int:
        seq = self._next_seq
        if seq is None:
            raw = self.txn.get(Db.META, k.META_NEXT_SEQ)
            seq = self._next_seq_read = 1 if raw is None else v.decode_int(raw)
        self._next_seq = seq + 1
        return seq

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

    def live_gens(self) -> list[int]:
        """The stored dedup generations that can hold a live record (gen >= gen(now))."""
        gens = []
        start = k.dedup_key_of(k.dedup_gen(self.now), b"")
        while (found := self.txn.first(Db.DEDUP_GENS, start)) is not None:
            gen = int.from_bytes(found[0][:4], "big")
            gens.append(gen)
            start = k.dedup_key_of(gen + 1, b"")
        return gens

    def prefetch_dedup(self, digests: set[bytes]) -> None:
        """Read the stored records of these dedup ids in ONE ``get_many`` of sorted keys: each id
        in each live generation (a live record of an id is in at most one of them)."""
        known: dict[bytes, tuple[bytes, bytes]] = {}
        self._dedup_known = known
        if not digests:
            return
        prefixes = [k.dedup_key_of(gen, b"") for gen in self.live_gens()]
        if prefixes:
            probes = sorted([prefix + digest for prefix in prefixes for digest in digests])
            for key, raw in self.txn.get_found(Db.DEDUP_GENS, probes):
                known[key[4:]] = (key, raw)

    def dedup_record(self, digest: bytes) -> tuple[bytes, bytes] | None:
        """(key, encoded record) of a dedup id: buffered in this run, or stored (prefetched)."""
        return self._dedup.get(digest) or self._dedup_known.get(digest)

    def dedup_prefix(self, expires_ms: int) -> bytes:
        """The key prefix (generation) of a dedup record expiring at ``expires_ms``."""
        prefix = self._gen_prefixes.get(expires_ms)
        if prefix is None:
            prefix = self._gen_prefixes[expires_ms] = k.dedup_key_of(k.dedup_gen(expires_ms), b"")
        return prefix

    def add_dedup(self, digest: bytes, key: bytes, record: bytes) -> None:
        """Buffer the dedup record of an id that has no live one; a stored (expired) record of
        the id is overwritten at flush when under the same key, else deleted now."""
        stored = self._dedup_known.get(digest)
        if stored is not None and stored[0] != key:
            self.txn.delete(Db.DEDUP_GENS, stored[0])
            del self._dedup_known[digest]
        self._dedup[digest] = (key, record)

    def add_message(
        self, received_ms: int, body: bytes, targets: list[tuple[MailboxRecord, Route]]
    ) -> None:
        """Buffer one stored body plus a ready delivery for each (distinct) target mailbox."""
        seq = self.alloc_seq()
        key = k.seq_key(seq)
        head = self._heads.get(received_ms)
        if head is None:
            head = self._heads[received_ms] = v.body_header(received_ms)
        self._bodies.append((key, head + body))
        self._refs.append((key, v.encode_ref(len(targets))))
        values = self._ready_values
        items = self._ready_items
        gained = self._gained
        for mailbox, route in targets:
            cache_key = (route.subscription_id, route.tilladt_modtager)
            value = values.get(cache_key)
            if value is None:
                value = v.delivery_value(0, route.subscription_id, route.tilladt_modtager)
                values[cache_key] = value
            num = mailbox.num
            items.append((k.delivery_key(num, seq), value))
            count = gained.get(num)
            gained[num] = 1 if count is None else count + 1

    def flush(self) -> None:
        """Write the publish buffer (one put_many per database)."""
        txn = self.txn
        if self._bodies:
            txn.put_many(Db.BODIES, self._bodies, append=True)
            txn.put_many(Db.REFS, self._refs, append=True)
            self._ready_items.sort()
            txn.put_many(Db.READY, self._ready_items)
            for num, count in self._gained.items():
                self.counters(num)[READY] += count
                mailbox = self._by_num[num]
                assert mailbox is not None
                self.ready.add(mailbox.id)
            self._bodies = []
            self._refs = []
            self._ready_items = []
            self._gained = {}
        if self._dedup:
            txn.put_sorted(Db.DEDUP_GENS, sorted(self._dedup.values()))  # appends if in order
            self._dedup = {}
        self._dedup_known = {}

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
