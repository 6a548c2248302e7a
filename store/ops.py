"""Store operations: the write requests :meth:`store.base.Store.apply` takes, as tagged
msgspec Structs (see :mod:`store.base` for the lifecycle they drive)."""

from __future__ import annotations

from typing import Annotated

from msgspec import UNSET, Meta, Struct, UnsetType

__all__ = [
    "DEFAULT_AUDIT_RETENTION_MS",
    "DEFAULT_MAX_DELIVERIES",
    "DEFAULT_RETENTION_S",
    "MAX_RETENTION_S",
    "Ack",
    "AppendAudit",
    "CreateMailbox",
    "CreateSubscription",
    "CreateSystem",
    "DeleteDoc",
    "DeleteMailbox",
    "DeleteSubscription",
    "Lease",
    "Nack",
    "Op",
    "Publish",
    "PutDoc",
    "Replay",
    "RequeueDead",
    "Route",
    "SetChange",
    "Sweep",
    "UpdateSubscription",
]

DEFAULT_RETENTION_S = 7 * 24 * 3600
MAX_RETENTION_S = 30 * 24 * 3600
DEFAULT_MAX_DELIVERIES = 10
DEFAULT_AUDIT_RETENTION_MS = 90 * 24 * 3600 * 1000


Millis = Annotated[int, Meta(ge=0)]


class Op(Struct, frozen=True, kw_only=True, tag_field="op"):
    """Base of every write operation (a tagged union, dispatched with ``match``)."""


class CreateSystem(Op, frozen=True, tag="create_system"):
    id: str
    name: str
    token_hash: bytes


class CreateMailbox(Op, frozen=True, tag="create_mailbox"):
    id: str
    owner: str
    name: str
    strict: bool = False
    retention_s: int = DEFAULT_RETENTION_S
    max_deliveries: int = DEFAULT_MAX_DELIVERIES


class DeleteMailbox(Op, frozen=True, tag="delete_mailbox"):
    """Deletes the mailbox, its subscriptions and every delivery record it holds."""

    id: str


class CreateSubscription(Op, frozen=True, tag="create_subscription"):
    id: str
    mailbox_id: str
    message_types: tuple[str, ...]
    expression: str | None = None


class DeleteSubscription(Op, frozen=True, tag="delete_subscription"):
    id: str
    mailbox_id: str


class UpdateSubscription(Op, frozen=True, tag="update_subscription"):
    """Change a subscription of ``mailbox_id``; returns the new :class:`SubscriptionRecord`.

    A field left at its default is left unchanged: ``active`` and ``message_types`` when None,
    ``expression`` when :data:`UNSET` (None removes the expression). NotFound when the
    subscription does not exist in this mailbox.
    """

    id: str
    mailbox_id: str
    active: bool | None = None
    expression: str | UnsetType | None = UNSET
    message_types: tuple[str, ...] | None = None


class Route(Struct, frozen=True, array_like=True):
    """Where one envelope goes. ``tilladt_modtager``: the TilladtModtager list rewritten for this
    receiver, stored with its delivery and handed back on :attr:`Delivery.tilladt_modtager`
    (None, the default, costs nothing)."""

    mailbox_id: str
    subscription_id: str
    tilladt_modtager: tuple[str, ...] | None = None


class Publish(Op, frozen=True, tag="publish"):
    """Store one envelope once and put a ready delivery into each routed mailbox.

    ``dedup_key`` identifies (sending system, BeskedId); empty means "no dedup". If a live
    dedup record exists for it (``received_ms + dedup_window_ms`` of the original is after the
    ``now_ms`` of this apply), nothing is stored and the original result comes back
    with ``duplicate=True``. Routes to mailboxes that no longer exist are skipped. With no
    (remaining) route the body is not stored at all, but the dedup record is. A key that ends in
    NUL + a lower-case UUID (the service's ``sender \\0 BeskedId``) is stored in the UUID's
    order, so time-ordered BeskedIds (UUIDv7) cost the least (see ``store.keys``).
    """

    sender: str
    dedup_key: bytes
    transaction_id: str
    body: bytes
    routes: tuple[Route, ...]
    received_ms: int
    dedup_window_ms: int = 24 * 3600 * 1000


class Lease(Op, frozen=True, tag="lease"):
    """Lease up to ``max`` ready deliveries of a mailbox, in sequence order.

    A ``strict`` mailbox offers only ready deliveries older (lower seq) than every delivery in
    flight: nothing later is offered while an earlier one is in flight.
    """

    mailbox_id: str
    max: int
    lease_ms: int


class Ack(Op, frozen=True, tag="ack"):
    mailbox_id: str
    delivery_ids: tuple[str, ...]


class Nack(Op, frozen=True, tag="nack"):
    """Requeue (back to ready, same position) or dead-letter leased deliveries.

    A requeue of a delivery whose attempt already reached the mailbox's ``max_deliveries``
    dead-letters it instead.
    """

    mailbox_id: str
    delivery_ids: tuple[str, ...]
    requeue: bool = True


class RequeueDead(Op, frozen=True, tag="requeue_dead"):
    """Dead letters back to ready (attempt count reset to 0). Empty ``delivery_ids`` = all."""

    mailbox_id: str
    delivery_ids: tuple[str, ...] = ()
    limit: int = 10_000


class Replay(Op, frozen=True, tag="replay"):
    """Copies of acknowledged deliveries back to ready (attempt reset), oldest first.

    Only copies of messages *received* at or after ``since_ms`` are replayed.
    """

    mailbox_id: str
    since_ms: int = 0
    limit: int = 10_000


class Sweep(Op, frozen=True, tag="sweep"):
    """Expire leases, purge copies/dead letters past retention, old dedup records and audit
    events older than ``audit_retention_ms``.

    Bounded: touches at most ``max_items`` records per kind; ``SweepResult.more`` says whether
    anything was left for the next sweep. Dedup records are purged a generation at a time, so
    one may stay stored (never live) up to ``store.keys.DEDUP_GEN_MS`` past its window.
    """

    max_items: int = 10_000
    audit_retention_ms: int = DEFAULT_AUDIT_RETENTION_MS


class PutDoc(Op, frozen=True, tag="put_doc"):
    """Store an opaque document under (kind, id), replacing any; returns None.

    With ``if_absent`` an existing document is left alone and the result is
    ``Conflict(code="conflict")``. ``kind``: 1..50 bytes, ``id``: 1..255 bytes of UTF-8.
    """

    kind: str
    id: str
    value: bytes
    if_absent: bool = False


class DeleteDoc(Op, frozen=True, tag="delete_doc"):
    """Delete a document; returns whether it existed (bool)."""

    kind: str
    id: str


class SetChange(Op, frozen=True, tag="set_change"):
    """Change the set (kind, id): ``clear`` first, then ``remove``, then ``add``.

    Members are 1..200 bytes of UTF-8; adding a present or removing an absent member is
    ignored. Returns :class:`SetChangeResult`. A set that becomes empty no longer exists.
    """

    kind: str
    id: str
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    clear: bool = False


class AppendAudit(Op, frozen=True, tag="append_audit"):
    """Append opaque audit events at this apply's ``now_ms``, in order; returns how many.

    Each is keyed ``(now_ms, counter)``, the counter taken from a store-wide sequence, so the
    log is in time order and keys are unique (see :meth:`Store.scan_audit`).
    """

    events: tuple[bytes, ...]
