"""The stack's floor for each stage of ``bench/pipeline_bench.py``: the least work the stage
needs from msgspec and py-lmdb, with none of the broker's logic.

``pipeline_bench.py --floor`` runs these beside the broker's own stages, on the same envelopes
in the same run, and prints each stage against its floor. What a floor does, per stage:

* ``decode``: split the batch into ``msgspec.Raw`` spans (no copies) and decode each into the
  standard's model (``Haendelsesbesked``, every field checked), as the broker must to refuse a
  bad envelope with the field's path. No error mapping, no shorthand expansion.
* ``prepare``: look up the mailboxes of the envelope's message type in a dict and encode the
  envelope once: the prototype's routing (``../shared/reference/perf-notes.md``). No access
  control, data restrictions, dedup key, transaction id or audit event.
* ``commit``: the prototype's commit. One write transaction with fsync, the bodies by
  ``putmulti(append=True)`` under an 8-byte sequence number, one ready key per mailbox (sorted,
  ``putmulti``), and the next sequence number in a meta key; nothing of an envelope routed
  nowhere. No dedup record, no body header, no reference count, no audit record.
* ``lease``: one write transaction: a cursor scan of the mailbox's ready keys that deletes each,
  a lease record per delivery (``putmulti``), and a ``get`` of each body. Leases are persisted,
  as the issue asks; no deadline index and no attempt count.
* ``render``: one msgspec encode of ``[[id, Raw(body)], …]``: the stored bytes as they are,
  without the Leverancerute the broker appends to every copy.
* ``ack``: one write transaction that deletes each lease record and its body (every envelope
  here goes to one mailbox). No receipt, no audit record.

The floor's LMDB environment is its own, in a temporary directory, with the same sync setting as
the broker's (on), so the two stores never share a transaction or a page.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lmdb
import msgspec

from broker.envelope import Haendelsesbesked

__all__ = ["StackFloor"]

_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
_envelope = msgspec.json.Decoder(Haendelsesbesked)
_encoder = msgspec.json.Encoder()
_MAILBOX = b"\x00\x00\x00\x01"  # the one mailbox's 4-byte number
MAP_SIZE = 8 << 30


class StackFloor:
    """The floor of each stage, on a raw LMDB environment in ``path`` (see the module docs).

    Each stage method takes what the broker's stage takes and returns what the next one needs.
    One mailbox is subscribed to ``message_types`` (UUIDs), as in the ``--demo`` set-up.
    """

    def __init__(self, path: Path, message_types: Iterable[str]) -> None:
        self.env = lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=4, sync=True, metasync=True)
        self.meta, self.bodies, self.ready, self.leases = (
            self.env.open_db(name) for name in (b"meta", b"bodies", b"ready", b"leases")
        )
        self.routes = {message_type: (_MAILBOX,) for message_type in message_types}

    def close(self) -> None:
        self.env.close()

    def decode(self, data: bytes) -> list[Haendelsesbesked]:
        return [_envelope.decode(raw) for raw in _raw_list.decode(data)]

    def prepare(self, items: list[Haendelsesbesked]) -> list[tuple[tuple[bytes, ...], bytes]]:
        routes = self.routes
        return [
            (
                routes.get(str(item.Beskedkuvert.Filtreringsdata.Beskedtype.UUIDIdentifikator), ()),
                _encoder.encode(item),
            )
            for item in items
        ]

    def commit(self, prepared: list[tuple[tuple[bytes, ...], bytes]]) -> int:
        """Stores the batch; the number of deliveries it made ready."""
        with self.env.begin(write=True) as txn:
            raw = txn.get(b"next_seq", db=self.meta)
            seq = int.from_bytes(raw, "big") if raw else 1
            bodies: list[tuple[bytes, bytes]] = []
            ready: list[tuple[bytes, bytes]] = []
            for mailboxes, body in prepared:
                if not mailboxes:  # routed nowhere: nothing to keep
                    continue
                key = seq.to_bytes(8, "big")
                bodies.append((key, body))
                ready.extend((mailbox + key, b"\x00") for mailbox in mailboxes)
                seq += 1
            txn.cursor(db=self.bodies).putmulti(bodies, append=True)
            ready.sort()
            txn.cursor(db=self.ready).putmulti(ready)
            txn.put(b"next_seq", seq.to_bytes(8, "big"), db=self.meta)
        return len(ready)

    def lease(self, most: int, until_ms: int) -> list[tuple[bytes, bytes]]:
        """Up to ``most`` ready deliveries of the mailbox, leased: (delivery key, body)."""
        taken: list[bytes] = []
        with self.env.begin(write=True) as txn:
            cursor = txn.cursor(db=self.ready)
            if cursor.set_range(_MAILBOX):
                while len(taken) < most and cursor.key()[:4] == _MAILBOX:
                    taken.append(cursor.key())
                    cursor.delete()
            deadline = until_ms.to_bytes(8, "big")
            txn.cursor(db=self.leases).putmulti([(key, deadline) for key in taken])
            return [(key, txn.get(key[4:], db=self.bodies)) for key in taken]

    def render(self, leased: list[tuple[bytes, bytes]]) -> bytes:
        out: list[Any] = [(key.hex(), msgspec.Raw(body)) for key, body in leased]
        return _encoder.encode(out)

    def ack(self, keys: list[bytes]) -> int:
        """Settles the leases of ``keys``; how many there were."""
        done = 0
        with self.env.begin(write=True) as txn:
            for key in keys:
                if txn.delete(key, db=self.leases):
                    txn.delete(key[4:], db=self.bodies)
                    done += 1
        return done
