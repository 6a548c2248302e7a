"""Publishing: a run of consecutive :class:`~store.base.Publish` ops into the batch's buffer.

Theory of operation
-------------------
Publishing is the store's hottest path (every envelope passes it once), so a whole run of
consecutive publishes is handled by one call, :func:`publish_run`, in one loop over local
names: per envelope it costs a dedup lookup in dicts, a handful of tuple appends to the batch's
publish buffer (see ``store.batch``) and a result. The buffer is written by ``Batch.flush``
with one ``put_many`` per database.

Before the loop, the dedup records the run can hit are read with ONE ``get_many`` of sorted
keys: each dedup id of the run in each live generation (a live record of an id is in at most
one of them). Within the run a publish sees the records buffered by the publishes before it.

Each publish checks its input before it buffers anything, so a refused op (its
:class:`~broker.errors.BrokerError` becomes its result) leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Sequence

from broker.errors import BrokerError, StoreError

from . import keys as k
from . import values as v
from .base import OpResult, Publish, PublishResult, Route
from .batch import Batch
from .deliveries import MAX_MS, check_range
from .keys import Db

__all__ = ["publish_run"]


def _live_gens(batch: Batch) -> list[int]:
    """The stored dedup generations that can hold a live record (gen >= gen(now))."""
    gens = []
    start = k.dedup_key_of(k.dedup_gen(batch.now), b"")
    while (found := batch.txn.first(Db.DEDUP_GENS, start)) is not None:
        gen = int.from_bytes(found[0][:4], "big")
        gens.append(gen)
        start = k.dedup_key_of(gen + 1, b"")
    return gens


def _prefetch(batch: Batch, digests: list[bytes | None]) -> dict[bytes, tuple[bytes, bytes]]:
    """dedup id -> (key, stored record) of the ids that have a record in a live generation."""
    known: dict[bytes, tuple[bytes, bytes]] = {}
    wanted = {digest for digest in digests if digest is not None}
    if wanted:
        prefixes = [k.dedup_key_of(gen, b"") for gen in _live_gens(batch)]
        if prefixes:
            probes = sorted([prefix + digest for prefix in prefixes for digest in wanted])
            for key, raw in batch.txn.get_found(Db.DEDUP_GENS, probes):
                known[key[4:]] = (key, raw)
    return known


def publish_run(batch: Batch, run: Sequence[Publish]) -> list[OpResult]:
    """Buffer a run of publishes; the result (or refusal) of each, in order.

    Per publish: dedup check, the body once and a ready delivery per distinct live mailbox of
    its routes (nothing when none is left), then its dedup record. A duplicate (a live record
    of its dedup id, stored or buffered earlier in the run) stores nothing and gets the
    original's result.
    """
    dedup_hash = k.dedup_hash
    digests = [dedup_hash(op.dedup_key) if op.dedup_key else None for op in run]
    known = _prefetch(batch, digests)
    now = batch.now
    txn = batch.txn
    # the batch's publish buffer and caches, as locals: this loop runs once per envelope
    buffered = batch.dedup_buffer
    bodies = batch.body_buffer
    refs = batch.ref_buffer
    items = batch.ready_buffer
    gained = batch.gained
    by_id = batch.mailbox_cache
    heads = batch.body_heads
    values = batch.ready_values
    prefixes = batch.gen_prefixes
    seq_key = k.seq_key
    delivery_key = k.delivery_key
    encode_ref = v.encode_ref
    encode_dedup = v.encode_dedup
    seq = first_seq = batch.peek_seq()
    results: list[OpResult] = []
    append = results.append
    for op, digest in zip(run, digests, strict=True):
        try:
            received = op.received_ms
            if not (0 <= received <= MAX_MS and 0 <= op.dedup_window_ms <= MAX_MS):
                check_range("received_ms", received, 0)
                check_range("dedup_window_ms", op.dedup_window_ms, 0)
            stored = None
            if digest is not None:
                prior = buffered.get(digest)
                if known:  # usually empty: most envelopes are not duplicates
                    stored = known.get(digest)
                    if prior is None:
                        prior = stored
                if prior is not None and v.dedup_expires(prior[1]) > now:
                    record = v.decode_dedup(prior[1])
                    append(
                        PublishResult(
                            transaction_id=record.transaction_id,
                            mailboxes=record.mailboxes,
                            duplicate=True,
                        )
                    )
                    continue
            routes = op.routes
            targets: list[tuple[int, Route]] = []  # (num, route) per distinct live mailbox
            for route in routes:
                mailbox_id = route.mailbox_id
                mailbox = by_id[mailbox_id] if mailbox_id in by_id else batch.mailbox(mailbox_id)
                if mailbox is not None:
                    num = mailbox.num
                    if not targets or all(num != t[0] for t in targets):
                        targets.append((num, route))
            # writes from here on
            if targets:
                key = seq_key(seq)
                head = heads.get(received)
                if head is None:
                    head = heads[received] = v.body_header(received)
                bodies.append((key, head + op.body))
                refs.append((key, encode_ref(len(targets))))
                for num, route in targets:
                    cache_key = (route.subscription_id, route.tilladt_modtager)
                    value = values.get(cache_key)
                    if value is None:
                        value = values[cache_key] = v.delivery_value(0, *cache_key)
                    items.append((delivery_key(num, seq), value))
                    gained[num] = gained.get(num, 0) + 1
                seq += 1
            if digest is not None:
                expires = received + op.dedup_window_ms
                prefix = prefixes.get(expires)
                if prefix is None:
                    prefix = prefixes[expires] = k.dedup_key_of(k.dedup_gen(expires), b"")
                key = prefix + digest
                if stored is not None and stored[0] != key:
                    # an expired record of the id in another generation: the new one replaces it
                    # (one under the same key is simply overwritten at flush)
                    txn.delete(Db.DEDUP_GENS, stored[0])
                    del known[digest]
                buffered[digest] = (key, encode_dedup(op.transaction_id, len(targets), expires))
            append(
                PublishResult(
                    transaction_id=op.transaction_id, mailboxes=len(targets), duplicate=False
                )
            )
        except StoreError:
            raise
        except BrokerError as exc:
            append(exc)
    if seq != first_seq:
        batch.used_seqs(seq)
    return results
