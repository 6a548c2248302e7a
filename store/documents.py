"""Documents, sets and the audit log: storage for the catalog and access-control layer.

Theory of operation
-------------------
The store keeps these for the layer above without interpreting them:

* **documents** (``docs``): opaque bytes under ``(kind, id)``, the key being ``len u8, kind,
  id`` so that the documents of one kind are one key range, in id order;
* **sets** (``sets`` + ``set_sizes``): one empty-valued key per member, ``len u8, kind, len u8,
  id, member``, so a member test is one point read and the members of a set are one range in
  sorted order; each set's member count is kept in ``set_sizes`` (O(1) size) and changed by
  exactly the number of keys a :class:`SetChange` really added or removed (``add_many`` and
  ``delete_many`` report them), so a change of a few members to a set of millions costs a few
  B-tree writes;
* the **audit log** (``audit``): events keyed ``(ms u64, counter u64)``, the counter from
  ``meta/next_audit`` (store-wide, so keys are unique across transactions and processes). As
  time only grows, each append goes after every stored key: it is written in LMDB's append mode.

Ops check their input (raising InvalidInput) before they write. Reads take a read transaction
the caller opened; a kind, id or member that could not have been stored reads as absent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from broker.errors import Conflict, InvalidInput

from . import keys as k
from . import values as v
from .base import AppendAudit, DeleteDoc, PutDoc, SetChange, SetChangeResult
from .batch import Batch
from .keys import Db
from .kv import KvReader

__all__ = [
    "append_audit",
    "delete_doc",
    "get_doc",
    "list_docs",
    "put_doc",
    "scan_audit",
    "set_change",
    "set_contains",
    "set_members",
    "set_size",
]

_CHUNK: Final = 10_000
_MAX_U64: Final = (1 << 64) - 1


# ----------------------------------------------------------------------------- documents


def put_doc(batch: Batch, op: PutDoc) -> None:
    key = k.doc_key(op.kind, op.id)
    if op.if_absent and batch.txn.get(Db.DOCS, key) is not None:
        raise Conflict(f"document {op.kind}/{op.id} already exists", code="conflict", path="$.id")
    batch.txn.put(Db.DOCS, key, v.encode_doc(op.value))


def delete_doc(batch: Batch, op: DeleteDoc) -> bool:
    try:
        key = k.doc_key(op.kind, op.id)
    except InvalidInput:
        return False  # nothing can be stored under it
    return batch.txn.delete(Db.DOCS, key)


def get_doc(txn: KvReader, kind: str, doc_id: str) -> bytes | None:
    try:
        key = k.doc_key(kind, doc_id)
    except InvalidInput:
        return None
    raw = txn.get(Db.DOCS, key)
    return None if raw is None else v.decode_doc(raw)


def list_docs(txn: KvReader, kind: str) -> list[tuple[str, bytes]]:
    try:
        start, end = k.doc_range(kind)
    except InvalidInput:
        return []
    skip = len(start)
    return [(key[skip:].decode(), v.decode_doc(raw)) for key, raw in txn.scan(Db.DOCS, start, end)]


# ----------------------------------------------------------------------------- sets


def set_change(batch: Batch, op: SetChange) -> SetChangeResult:
    """clear, then remove, then add; counts only what really changed."""
    prefix = k.set_prefix(op.kind, op.id)
    to_remove = sorted({k.set_member_key(prefix, m, "remove") for m in op.remove})
    to_add = sorted({k.set_member_key(prefix, m, "add") for m in op.add})
    txn = batch.txn
    raw = txn.get(Db.SET_SIZES, prefix)
    size = 0 if raw is None else v.decode_int(raw)
    removed = 0
    if op.clear and size:
        start, end = k.set_range(prefix)
        while chunk := txn.take(Db.SETS, start, end, _CHUNK):
            removed += len(chunk)
        size = 0
    if to_remove and size:
        gone = txn.delete_many(Db.SETS, to_remove)
        removed += gone
        size -= gone
    added = txn.add_many(Db.SETS, [(key, b"") for key in to_add])
    size += added
    if added or removed:
        if size:
            txn.put(Db.SET_SIZES, prefix, v.encode_int(size))
        else:
            txn.delete(Db.SET_SIZES, prefix)
    return SetChangeResult(added=added, removed=removed)


def _prefix(kind: str, set_id: str) -> bytes | None:
    try:
        return k.set_prefix(kind, set_id)
    except InvalidInput:
        return None


def set_members(txn: KvReader, kind: str, set_id: str) -> list[str]:
    prefix = _prefix(kind, set_id)
    if prefix is None:
        return []
    skip = len(prefix)
    return [key[skip:].decode() for key, _ in txn.scan(Db.SETS, *k.set_range(prefix))]


def set_contains(txn: KvReader, kind: str, set_id: str, member: str) -> bool:
    prefix = _prefix(kind, set_id)
    raw = member.encode()
    if prefix is None or not 0 < len(raw) <= k.MAX_MEMBER_BYTES:
        return False
    return txn.get(Db.SETS, prefix + raw) is not None


def set_size(txn: KvReader, kind: str, set_id: str) -> int:
    prefix = _prefix(kind, set_id)
    raw = None if prefix is None else txn.get(Db.SET_SIZES, prefix)
    return 0 if raw is None else v.decode_int(raw)


# ----------------------------------------------------------------------------- audit


def append_audit(batch: Batch, op: AppendAudit) -> int:
    (count,) = append_audits(batch, [op])
    return count


def append_audits(batch: Batch, ops: Sequence[AppendAudit]) -> list[int]:
    """Append the events of ``ops``, in order, with ONE write; how many each op appended."""
    counts = [len(op.events) for op in ops]
    total = sum(counts)
    if total:
        first = batch.alloc_audit(total)
        now = batch.now
        audit_key = k.audit_key
        encode = v.encode_doc
        events = [event for op in ops for event in op.events]
        batch.txn.put_sorted(
            Db.AUDIT,
            [
                (audit_key(now, counter), encode(event))
                for counter, event in zip(range(first, first + total), events, strict=True)
            ],
        )
    return counts


def _clamp(ms: int) -> int:
    return min(max(ms, 0), _MAX_U64)


def scan_audit(
    txn: KvReader, since_ms: int, until_ms: int | None, limit: int, after: bytes | None
) -> list[tuple[bytes, bytes]]:
    if limit <= 0:
        return []
    start = k.audit_key(_clamp(since_ms), 0)
    if after is not None and after + b"\x00" > start:
        start = after + b"\x00"
    end = None if until_ms is None else k.audit_key(_clamp(until_ms), 0)
    if end is not None and start >= end:
        return []
    return [(key, v.decode_doc(raw)) for key, raw in txn.scan(Db.AUDIT, start, end, limit)]
