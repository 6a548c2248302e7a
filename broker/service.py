"""The broker: store + actors + routing, with the operations the HTTP layer exposes.

Theory of operation
-------------------
:class:`Broker` is what a request handler talks to. It owns the routing index and the small
in-memory caches (systems by token hash, mailboxes by id); all durable state lives in the store
and every write goes through the writer actor. ``run()`` starts the writer and the sweeper in
the caller's nursery (``await nursery.start(broker.run)``).

Who owns what: the writer owns store writes; the notifier owns wake-up state; the broker owns
the routing index and caches, which it updates only after the commit that made a change durable.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid
from collections.abc import Callable, Sequence
from typing import NoReturn

import msgspec
import trio

from broker.config import BrokerConfig
from broker.decisions import DecisionCache
from broker.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from broker.filters import compile_expression
from broker.governance import Governance
from broker.index import Subscription, SubscriptionIndex
from broker.metrics import Metrics
from broker.notifier import Notifier
from broker.peers import Peers
from broker.publishing import Publishing, new_uuid
from broker.receiving import Receiving
from broker.registry import Registry
from broker.sweeper import Sweeper
from broker.writer import Writer, wall_ms
from catalog.authorities import Authority
from store.base import (
    MAX_RETENTION_S,
    CreateMailbox,
    CreateSubscription,
    CreateSystem,
    DeleteMailbox,
    DeleteSubscription,
    MailboxRecord,
    MailboxStats,
    Store,
    SubscriptionRecord,
    SystemRecord,
    UnsetType,
    UpdateSubscription,
)

__all__ = [
    "ADMIN",
    "Broker",
    "Principal",
    "hash_token",
    "index_subscription",
    "new_token",
    "new_uuid",
]

ADMIN = "admin"
Principal = SystemRecord | Authority | str  # a system, an authority (municipality), or ADMIN

_encoder = msgspec.json.Encoder()


def index_subscription(record: SubscriptionRecord) -> Subscription:
    """A stored subscription as the routing index holds it (expression compiled)."""
    return Subscription(
        id=record.id,
        mailbox_id=record.mailbox_id,
        owner=record.owner,
        message_types=record.message_types,
        expression=None if record.expression is None else compile_expression(record.expression),
        active=record.active,
    )


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token(prefix: str) -> str:
    return prefix + "_" + os.urandom(24).hex()


class Broker(Publishing, Receiving):
    def __init__(
        self,
        store: Store,
        config: BrokerConfig,
        *,
        admin_token: str,
        instance_id: str | None = None,
        clock: Callable[[], int] = wall_ms,
        peers: Peers | None = None,
        sweep: bool = True,
    ) -> None:
        """``peers``: this process is one of several workers (``serve --workers N``); commits
        are announced to the others and their notices applied here (broker/peers.py).
        ``sweep``: run the sweeper (exactly one worker of several does)."""
        self.store = store
        self.config = config
        self.instance_id = instance_id or str(uuid.uuid4())
        self.metrics = Metrics()
        self.notifier = Notifier()
        self.clock = clock
        self.writer = Writer(
            store,
            self.notifier,
            metrics=self.metrics,
            queue_size=config.writer_queue,
            admission_timeout=config.admission_timeout_s,
            clock=self.clock,
            on_commit=None if peers is None else peers.on_commit,
        )
        self.peers = peers
        self._sweep = sweep
        self.sweeper = Sweeper(
            self.writer,
            metrics=self.metrics,
            interval=config.sweep_interval_s,
            on_sweep=self.audit_sweep,
        )
        self.registry = Registry.load(store)
        self.routing = self._build_index()
        self.governance = Governance(self.registry, self.writer, store, clock)
        self._admin_hash = hash_token(admin_token)
        self._systems: dict[bytes, SystemRecord] = {}
        self._mailboxes: dict[str, MailboxRecord] = {}
        self.decisions = DecisionCache()
        self.ready = False

    def reload(self) -> None:
        """Rebuild the routing index and drop caches after the store was changed directly."""
        self.routing.close()
        self.registry = Registry.load(self.store)
        self.routing = self._build_index()
        self.governance = Governance(self.registry, self.writer, self.store, self.clock)
        self._systems.clear()
        self._mailboxes.clear()

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.writer.run)
            if self._sweep:
                await nursery.start(self.sweeper.run)
            if self.peers is not None:
                await nursery.start(self.peers.run, self)
            self.ready = True
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self.ready = False
        raise AssertionError("unreachable")  # pragma: no cover

    def forget_mailbox(self, mailbox_id: str) -> None:
        """Drop a mailbox deleted by another worker from the index and caches."""
        self._mailboxes.pop(mailbox_id, None)
        self.routing.remove_mailbox(mailbox_id)
        self.notifier.forget(mailbox_id)

    def refresh_subscription(self, sub_id: str) -> None:
        """Re-read one subscription changed by another worker into the routing index."""
        record = self.store.get_subscription(sub_id)
        if record is None:
            if sub_id in self.routing:
                self.routing.remove(sub_id)
        elif sub_id in self.routing:
            self.routing.replace(index_subscription(record))
        else:
            self.routing.add(index_subscription(record))

    def _build_index(self) -> SubscriptionIndex:
        """The subscription index over every stored subscription, watching the value lists so
        ``in valueliste(…)`` terms are filed under the lists' current values."""
        subs = [index_subscription(r) for r in self.store.list_subscriptions()]
        return SubscriptionIndex(subs, lists=self.registry.value_lists)

    # ------------------------------------------------------------------ authentication

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer`` header. Never logs the token."""
        if not authorization:
            raise Unauthorized("missing Authorization header; send 'Authorization: Bearer <token>'")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        digest = hash_token(token)
        if hmac.compare_digest(digest, self._admin_hash):
            return ADMIN
        system = self._systems.get(digest)
        if system is None:
            system = self.store.get_system_by_token_hash(digest)
            if system is None:
                authority = self.registry.authority_by_token_hash(digest)
                if authority is not None:
                    return authority
                raise Unauthorized("unknown token")
            self._systems[digest] = system
        return system

    def system_of(self, authorization: str | None) -> SystemRecord:
        """The system an ``Authorization`` header authenticates (401 without a valid token,
        403 for a token that is not a system's)."""
        return self.require_system(self.authenticate(authorization))

    @staticmethod
    def require_admin(principal: Principal) -> None:
        if principal != ADMIN:
            raise Forbidden("this endpoint needs the admin token")

    @staticmethod
    def require_authority(principal: Principal) -> Authority:
        if not isinstance(principal, Authority):
            raise Forbidden(
                "this endpoint needs an authority token (POST /v1/authorities issues one)"
            )
        return principal

    @staticmethod
    def require_system(principal: Principal) -> SystemRecord:
        if not isinstance(principal, SystemRecord):
            raise Forbidden("this endpoint needs a system token (POST /v1/systems issues one)")
        return principal

    # ------------------------------------------------------------------ systems

    async def create_system(self, name: str) -> tuple[SystemRecord, str]:
        token = new_token("sys")
        op = CreateSystem(id=str(uuid.uuid4()), name=name, token_hash=hash_token(token))
        record = await self.writer.submit_one(op)
        assert isinstance(record, SystemRecord)
        return record, token

    # ------------------------------------------------------------------ mailboxes

    async def create_mailbox(
        self, owner: SystemRecord, name: str, *, strict: bool, retention_s: int, max_deliveries: int
    ) -> MailboxRecord:
        if not 1 <= retention_s <= MAX_RETENTION_S:
            raise InvalidInput(
                f"retention_s must be between 1 and {MAX_RETENTION_S} (30 days)",
                path="$.retention_s",
            )
        op = CreateMailbox(
            id=str(uuid.uuid4()),
            owner=owner.id,
            name=name,
            strict=strict,
            retention_s=retention_s,
            max_deliveries=max_deliveries,
        )
        record = await self.writer.submit_one(op)
        assert isinstance(record, MailboxRecord)
        self._mailboxes[record.id] = record
        return record

    def mailbox_of(self, owner: SystemRecord, mailbox_id: str) -> MailboxRecord:
        """The caller's own mailbox; another system's mailbox is reported as not found."""
        mb = self._mailboxes.get(mailbox_id)
        if mb is None:
            mb = self.store.get_mailbox(mailbox_id)
            if mb is not None:
                self._mailboxes[mailbox_id] = mb
        if mb is None or mb.owner != owner.id:
            raise NotFound(f"no mailbox {mailbox_id!r} of this system", path="mailbox_id")
        return mb

    def mailbox_stats(self, mb: MailboxRecord) -> MailboxStats:
        return self.store.mailbox_stats(mb.id)

    async def delete_mailbox(self, owner: SystemRecord, mailbox_id: str) -> None:
        mb = self.mailbox_of(owner, mailbox_id)
        await self.writer.submit_one(DeleteMailbox(id=mb.id))
        self._mailboxes.pop(mb.id, None)
        self.routing.remove_mailbox(mb.id)
        self.notifier.forget(mb.id)

    async def create_subscription(
        self,
        owner: SystemRecord,
        mailbox_id: str,
        message_types: Sequence[str],
        expression: str | None,
    ) -> SubscriptionRecord:
        mb = self.mailbox_of(owner, mailbox_id)
        if expression is not None:
            compile_expression(expression)  # refuse a bad expression before anything is stored
        if self.config.access_control:
            self.governance.require_receivable(owner.id, message_types)
        op = CreateSubscription(
            id=str(uuid.uuid4()),
            mailbox_id=mb.id,
            message_types=tuple(dict.fromkeys(t.lower() for t in message_types)),
            expression=expression,
        )
        record = await self.writer.submit_one(op)
        assert isinstance(record, SubscriptionRecord)
        self.routing.add(index_subscription(record))
        return record

    def list_subscriptions(self, owner: SystemRecord, mailbox_id: str) -> list[SubscriptionRecord]:
        return self.store.list_subscriptions(self.mailbox_of(owner, mailbox_id).id)

    async def update_subscription(
        self,
        owner: SystemRecord,
        mailbox_id: str,
        sub_id: str,
        *,
        active: bool | None,
        expression: str | UnsetType | None,
    ) -> SubscriptionRecord:
        """Activate/deactivate a subscription or change its expression (None removes it)."""
        mb = self.mailbox_of(owner, mailbox_id)
        if isinstance(expression, str):
            compile_expression(expression)
        op = UpdateSubscription(id=sub_id, mailbox_id=mb.id, active=active, expression=expression)
        record = await self.writer.submit_one(op)
        assert isinstance(record, SubscriptionRecord)
        if record.id in self.routing:
            self.routing.replace(index_subscription(record))
        else:
            self.routing.add(index_subscription(record))
        return record

    async def delete_subscription(self, owner: SystemRecord, mailbox_id: str, sub_id: str) -> None:
        mb = self.mailbox_of(owner, mailbox_id)
        await self.writer.submit_one(DeleteSubscription(id=sub_id, mailbox_id=mb.id))
        if sub_id in self.routing:
            self.routing.remove(sub_id)
