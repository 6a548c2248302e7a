"""The storage seam: operations, records and the :class:`Store` protocol.

Theory of operation
-------------------
A store is driven by exactly two kinds of call, both synchronous and both complete within one
call (so each LMDB transaction begins and commits on one thread, see stack-notes §4):

* :meth:`Store.apply` takes a *batch* of write operations and applies all of them in ONE write
  transaction (group commit). It returns one result per operation, in order: either the
  operation's result value or the :class:`~broker.errors.BrokerError` that refused it. A refused
  operation changes nothing; the others in the batch still apply. Only when the commit itself
  fails does ``apply`` raise (:class:`~broker.errors.StoreError`), and then nothing of the batch
  was applied. When ``apply`` returns, the batch is durable (fsync'd, for a durable store).
* Read methods each run one short read transaction.

Nothing here knows about HTTP, trio or routing: callers hand in ready-made bodies and routes.

Delivery lifecycle (per mailbox, keyed by the message's sequence number, so a redelivery keeps
its original position)::

    ready --Lease--> in_flight --Ack--> copy --(retention)--> purged
      ^                 |  |
      |   lease expiry  |  +--Nack(requeue=False) or attempts exhausted--> dead --(retention)--> purged
      +-----------------+
      +---- Nack(requeue=True) / RequeueDead (dead -> ready) / Replay (copy -> ready)

A message body is stored once and deleted when no delivery record of any mailbox references it.

Besides the broker's own records a store keeps, for the catalog and access-control layer, opaque
*documents* (:class:`PutDoc`, bytes by kind and id), *sets* of strings (:class:`SetChange`, value
lists of up to millions of members, changed incrementally, with an O(1) size) and an append-only
*audit log* (:class:`AppendAudit`, time-ordered, purged by :class:`Sweep`). The store never
interprets documents or audit events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from msgspec import UNSET, Struct, UnsetType

from broker.errors import BrokerError

from .ops import (
    DEFAULT_AUDIT_RETENTION_MS,
    DEFAULT_MAX_DELIVERIES,
    DEFAULT_RETENTION_S,
    MAX_RETENTION_S,
    Ack,
    AppendAudit,
    CreateMailbox,
    CreateSubscription,
    CreateSystem,
    DeleteDoc,
    DeleteMailbox,
    DeleteSubscription,
    Lease,
    Nack,
    Op,
    Publish,
    PutDoc,
    Replay,
    RequeueDead,
    Route,
    SetChange,
    Sweep,
    UpdateSubscription,
)

__all__ = [
    "DEFAULT_AUDIT_RETENTION_MS",
    "DEFAULT_MAX_DELIVERIES",
    "DEFAULT_RETENTION_S",
    "MAX_RETENTION_S",
    "UNSET",
    "Ack",
    "AckResult",
    "AppendAudit",
    "ApplyOutcome",
    "CreateMailbox",
    "CreateSubscription",
    "CreateSystem",
    "DeleteDoc",
    "DeleteMailbox",
    "DeleteSubscription",
    "Delivery",
    "Lease",
    "MailboxRecord",
    "MailboxStats",
    "Nack",
    "Op",
    "OpResult",
    "Publish",
    "PublishResult",
    "PutDoc",
    "Replay",
    "RequeueDead",
    "Route",
    "SetChange",
    "SetChangeResult",
    "Store",
    "StoreStats",
    "SubscriptionRecord",
    "Sweep",
    "SweepResult",
    "SystemRecord",
    "UnsetType",
    "UpdateSubscription",
    "delivery_id",
    "parse_delivery_id",
]


class _Record(Struct, frozen=True, kw_only=True):
    """Stored and returned records; new fields always get defaults (schema evolution)."""


# ----------------------------------------------------------------------------- records


class SystemRecord(_Record, frozen=True):
    """An anvendersystem (a sending and/or receiving IT system)."""

    id: str  # UUID text
    name: str
    token_hash: bytes  # sha256 of the bearer token; the token itself is never stored
    created_ms: int


class MailboxRecord(_Record, frozen=True):
    """A dueslag. ``num`` is the store's compact internal number, used in its keys."""

    id: str  # UUID text
    num: int
    owner: str  # system id
    name: str
    strict: bool = False
    retention_s: int = DEFAULT_RETENTION_S
    max_deliveries: int = DEFAULT_MAX_DELIVERIES
    created_ms: int = 0


class SubscriptionRecord(_Record, frozen=True):
    """An abonnement: which envelopes go into one mailbox.

    ``expression`` is the seam for the filter language (a later issue); a store keeps it as text.
    """

    id: str  # UUID text
    mailbox_id: str
    owner: str
    message_types: tuple[str, ...]  # Beskedtype UUIDs, lower-case
    expression: str | None = None
    active: bool = True
    created_ms: int = 0


class MailboxStats(_Record, frozen=True):
    ready: int
    in_flight: int
    copy: int
    dead: int
    oldest_ready_ms: int | None  # receive time of the oldest ready delivery


class Delivery(_Record, frozen=True):
    """One delivery of one message to one mailbox, as handed to a receiver."""

    delivery_id: str  # "<seq>-<attempt>", see delivery_id()
    seq: int
    attempt: int  # 1 on the first lease, +1 on every later lease
    subscription_id: str
    received_ms: int
    body: bytes  # the canonical envelope JSON exactly as given to Publish
    leased_until_ms: int = 0  # 0 when not leased (dead letters)
    reason: str | None = None  # why it is dead, for dead letters
    #: the TilladtModtager list rewritten for this receiver (Route.tilladt_modtager), if any
    tilladt_modtager: tuple[str, ...] | None = None


class StoreStats(_Record, frozen=True):
    messages: int  # bodies currently stored
    next_seq: int
    mailboxes: int
    format_version: int


# ----------------------------------------------------------------------------- results


class PublishResult(_Record, frozen=True):
    transaction_id: str
    mailboxes: int
    duplicate: bool


class AckResult(_Record, frozen=True):
    """``failed`` lists (delivery_id, code) for ids that were not acked/nacked.

    Codes: ``unknown_delivery`` (not in flight in this mailbox, or a stale attempt),
    ``lease_expired`` (in flight, but its lease deadline has passed).
    """

    count: int
    failed: tuple[tuple[str, str], ...] = ()


class SweepResult(_Record, frozen=True):
    """Counts of one sweep. ``expired_leases`` counts every expired lease; ``dead_lettered``
    is the part of those that went to dead letters (attempts exhausted)."""

    expired_leases: int = 0
    dead_lettered: int = 0
    purged_copies: int = 0
    purged_dead: int = 0
    purged_dedup: int = 0
    bodies_deleted: int = 0
    more: bool = False
    purged_audit: int = 0


class SetChangeResult(_Record, frozen=True):
    """How many members a :class:`SetChange` added and removed (clear counts as removed)."""

    added: int
    removed: int


OpResult = (
    SystemRecord
    | MailboxRecord
    | SubscriptionRecord
    | PublishResult
    | AckResult
    | SweepResult
    | SetChangeResult
    | list[Delivery]
    | bool
    | int
    | None
    | BrokerError
)


class ApplyOutcome(_Record, frozen=True):
    """What :meth:`Store.apply` returns.

    ``results[i]`` belongs to ``ops[i]``. ``ready`` names every mailbox that gained ready
    deliveries in this commit (so long-polling receivers can be woken).
    """

    results: list[OpResult]
    ready: frozenset[str] = frozenset()


def delivery_id(seq: int, attempt: int) -> str:
    return f"{seq}-{attempt}"


def parse_delivery_id(text: str) -> tuple[int, int] | None:
    """``"<seq>-<attempt>"`` -> (seq, attempt), or None when it is not of that form."""
    seq, sep, attempt = text.partition("-")
    # ASCII digits only: str.isdigit() admits "²" (which int() refuses) and int() reads other
    # scripts' digits ("٣"), which would make a second spelling of the same id
    if not sep or len(text) > 40 or not text.isascii() or not (seq.isdigit() and attempt.isdigit()):
        return None
    return int(seq), int(attempt)


class Store(Protocol):
    """A durable (or, for tests, in-memory) home of systems, mailboxes and deliveries."""

    def apply(self, ops: Sequence[Op], now_ms: int) -> ApplyOutcome:
        """Apply every op in ONE write transaction; durable on return. See module docs."""
        ...

    def get_system(self, system_id: str) -> SystemRecord | None: ...

    def get_system_by_token_hash(self, token_hash: bytes) -> SystemRecord | None: ...

    def list_systems(self) -> list[SystemRecord]: ...

    def get_mailbox(self, mailbox_id: str) -> MailboxRecord | None: ...

    def list_mailboxes(self, owner: str) -> list[MailboxRecord]: ...

    def mailbox_stats(self, mailbox_id: str) -> MailboxStats:
        """Counts per queue; raises NotFound for an unknown mailbox. O(1), not a scan."""
        ...

    def get_subscription(self, subscription_id: str) -> SubscriptionRecord | None: ...

    def list_subscriptions(self, mailbox_id: str | None = None) -> list[SubscriptionRecord]:
        """Subscriptions of one mailbox, or of every mailbox (to build the routing index)."""
        ...

    def get_leased(self, mailbox_id: str, delivery_id: str, now_ms: int) -> Delivery:
        """A delivery currently leased (in flight, lease not expired) under this exact id.

        Raises NotFound, or Conflict with code ``lease_expired``/``unknown_delivery``.
        """
        ...

    def list_dead(self, mailbox_id: str, limit: int = 100) -> list[Delivery]: ...

    def statistics(self) -> StoreStats: ...

    # documents, sets and the audit log (catalog and access control)

    def get_doc(self, kind: str, id: str) -> bytes | None:
        """The document's bytes, or None (also for a kind or id that cannot be stored)."""
        ...

    def list_docs(self, kind: str) -> list[tuple[str, bytes]]:
        """(id, bytes) of every document of a kind, in id order (UTF-8 byte order)."""
        ...

    def set_members(self, kind: str, id: str) -> list[str]:
        """Every member, sorted (UTF-8 byte order = code point order)."""
        ...

    def set_contains(self, kind: str, id: str, member: str) -> bool: ...

    def set_size(self, kind: str, id: str) -> int:
        """Number of members (O(1): a counter)."""
        ...

    def scan_audit(
        self, since_ms: int, until_ms: int | None, limit: int, after: bytes | None = None
    ) -> list[tuple[bytes, bytes]]:
        """Up to ``limit`` (key, event) of the audit log with ``since_ms <= time`` (and
        ``time < until_ms``), in time order. Page with ``after`` = the last key of the previous
        page. A key is 16 bytes: u64 ms, u64 counter (big-endian)."""
        ...

    def close(self) -> None: ...
