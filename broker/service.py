"""The broker: store + actors + routing, with the operations the HTTP layer exposes.

Theory of operation
-------------------
:class:`Broker` is what a request handler talks to. It owns the routing table and the small
in-memory caches (systems by token hash, mailboxes by id); all durable state lives in the store
and every write goes through the writer actor. ``run()`` starts the writer and the sweeper in
the caller's nursery (``await nursery.start(broker.run)``).

Who owns what: the writer owns store writes; the notifier owns wake-up state; the broker owns
the routing table and caches, which it updates only after the commit that made a change durable.
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
from broker.delivery import render_delivery
from broker.envelope import Haendelsesbesked, UnikId, uid_key
from broker.errors import BrokerError, Forbidden, InvalidInput, NotFound, Unauthorized
from broker.metrics import Metrics
from broker.notifier import Notifier
from broker.routing import RoutingTable
from broker.sweeper import Sweeper
from broker.writer import Writer, wall_ms
from store.base import (
    MAX_RETENTION_S,
    Ack,
    AckResult,
    CreateMailbox,
    CreateSubscription,
    CreateSystem,
    DeleteMailbox,
    DeleteSubscription,
    Delivery,
    Lease,
    MailboxRecord,
    MailboxStats,
    Nack,
    OpResult,
    Publish,
    PublishResult,
    Replay,
    RequeueDead,
    Store,
    SubscriptionRecord,
    SystemRecord,
)

__all__ = ["ADMIN", "Broker", "Principal", "hash_token"]

ADMIN = "admin"
Principal = SystemRecord | str  # a system, or ADMIN

_encoder = msgspec.json.Encoder()


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_uuid() -> str:
    """A random (version 4) UUID as text; several times cheaper than ``str(uuid.uuid4())``."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


def new_token(prefix: str) -> str:
    return prefix + "_" + os.urandom(24).hex()


class Broker:
    def __init__(
        self,
        store: Store,
        config: BrokerConfig,
        *,
        admin_token: str,
        instance_id: str | None = None,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
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
        )
        self.sweeper = Sweeper(self.writer, metrics=self.metrics, interval=config.sweep_interval_s)
        self.routing = RoutingTable(store.list_subscriptions())
        self._admin_hash = hash_token(admin_token)
        self._systems: dict[bytes, SystemRecord] = {}
        self._mailboxes: dict[str, MailboxRecord] = {}
        self.ready = False

    def reload(self) -> None:
        """Rebuild the routing table and drop caches after the store was changed directly."""
        self.routing = RoutingTable(self.store.list_subscriptions())
        self._systems.clear()
        self._mailboxes.clear()

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.writer.run)
            await nursery.start(self.sweeper.run)
            self.ready = True
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                self.ready = False
        raise AssertionError("unreachable")  # pragma: no cover

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
                raise Unauthorized("unknown token")
            self._systems[digest] = system
        return system

    @staticmethod
    def require_admin(principal: Principal) -> None:
        if principal != ADMIN:
            raise Forbidden("this endpoint needs the admin token")

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
            raise InvalidInput(
                "subscription expressions are not supported yet; subscribe by message_types",
                path="$.expression",
            )
        op = CreateSubscription(
            id=str(uuid.uuid4()),
            mailbox_id=mb.id,
            message_types=tuple(dict.fromkeys(t.lower() for t in message_types)),
            expression=expression,
        )
        record = await self.writer.submit_one(op)
        assert isinstance(record, SubscriptionRecord)
        self.routing.add(record)
        return record

    def list_subscriptions(self, owner: SystemRecord, mailbox_id: str) -> list[SubscriptionRecord]:
        return self.store.list_subscriptions(self.mailbox_of(owner, mailbox_id).id)

    async def delete_subscription(self, owner: SystemRecord, mailbox_id: str, sub_id: str) -> None:
        mb = self.mailbox_of(owner, mailbox_id)
        await self.writer.submit_one(DeleteSubscription(id=sub_id, mailbox_id=mb.id))
        self.routing.remove(sub_id)

    # ------------------------------------------------------------------ messages

    def prepare(
        self, sender: SystemRecord, besked: Haendelsesbesked, now_ms: int, ip: str | None
    ) -> Publish:
        """Enrich an accepted envelope as KOMBIT does and route it. Pure, no I/O."""
        tid = new_uuid()
        li = besked.Beskedkuvert.Leveranceinformation
        li.TransaktionsId = UnikId(UUIDIdentifikator=tid)
        li.Kildesystem = UnikId(UUIDIdentifikator=sender.id)
        if ip:
            li.KildesystemIPAdresse = ip
        return Publish(
            sender=sender.id,
            dedup_key=f"{sender.id}\0{uid_key(besked.BeskedId)}".encode(),
            transaction_id=tid,
            body=_encoder.encode(besked),
            routes=self.routing.route(besked),
            received_ms=now_ms,
            dedup_window_ms=self.config.dedup_window_s * 1000,
        )

    async def publish(
        self,
        sender: SystemRecord,
        items: Sequence[Haendelsesbesked | BrokerError],
        ip: str | None = None,
    ) -> list[PublishResult | BrokerError]:
        """Store every valid envelope in one group commit; errors pass through in place."""
        now = self.clock()
        ops: list[Publish] = []
        for item in items:
            if not isinstance(item, BrokerError):
                ops.append(self.prepare(sender, item, now, ip))
        results = await self.writer.submit(ops) if ops else []
        out: list[PublishResult | BrokerError] = []
        it = iter(results)
        for item in items:
            if isinstance(item, BrokerError):
                self.metrics.rejected.labels(item.code).inc()
                out.append(item)
                continue
            res = next(it)
            assert isinstance(res, PublishResult | BrokerError)
            if isinstance(res, PublishResult):
                if res.duplicate:
                    self.metrics.duplicates.inc()
                else:
                    self.metrics.accepted.inc()
                    self.metrics.routed.inc(res.mailboxes)
            out.append(res)
        return out

    async def poll(
        self, mb: MailboxRecord, *, max: int, wait_s: float, lease_s: float
    ) -> list[Delivery]:
        """Lease up to ``max`` deliveries, long-polling up to ``wait_s`` for the first one."""
        deadline = trio.current_time() + wait_s
        while True:
            generation = self.notifier.generation(mb.id)
            if self.store.mailbox_stats(mb.id).ready:
                got = await self.writer.submit_one(
                    Lease(mailbox_id=mb.id, max=max, lease_ms=int(lease_s * 1000))
                )
                assert isinstance(got, list)
                if got:
                    self.metrics.leased.inc(len(got))
                    return got
            if trio.current_time() >= deadline:
                return []
            await self.notifier.wait_ready(mb.id, generation, deadline)

    def render(self, delivery: Delivery) -> bytes:
        return render_delivery(delivery, instance_id=self.instance_id, now_ms=self.clock())

    async def settle(
        self, mb: MailboxRecord, delivery_ids: Sequence[str], *, ack: bool, requeue: bool = True
    ) -> AckResult:
        op = (
            Ack(mailbox_id=mb.id, delivery_ids=tuple(delivery_ids))
            if ack
            else Nack(mailbox_id=mb.id, delivery_ids=tuple(delivery_ids), requeue=requeue)
        )
        result = await self.writer.submit_one(op)
        assert isinstance(result, AckResult)
        (self.metrics.acked if ack else self.metrics.nacked).inc(result.count)
        return result

    async def requeue_dead(self, mb: MailboxRecord, delivery_ids: Sequence[str]) -> int:
        return self._count(
            await self.writer.submit_one(
                RequeueDead(mailbox_id=mb.id, delivery_ids=tuple(delivery_ids))
            )
        )

    async def replay(self, mb: MailboxRecord, since_ms: int) -> int:
        return self._count(
            await self.writer.submit_one(Replay(mailbox_id=mb.id, since_ms=since_ms))
        )

    async def list_dead(self, mb: MailboxRecord, limit: int) -> list[Delivery]:
        return await trio.to_thread.run_sync(self.store.list_dead, mb.id, limit)

    @staticmethod
    def _count(result: OpResult) -> int:
        assert isinstance(result, int)
        return result
