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
from typing import Any, NoReturn

import msgspec
import trio

from broker.config import BrokerConfig
from broker.delivery import render_delivery
from broker.envelope import Haendelsesbesked, UnikId, uid_key
from broker.errors import BrokerError, Forbidden, InvalidInput, NotFound, Unauthorized
from broker.filters import compile_expression
from broker.governance import Governance
from broker.index import Subscription, SubscriptionIndex
from broker.metrics import Metrics
from broker.notifier import Notifier
from broker.registry import Registry
from broker.sweeper import Sweeper
from broker.writer import Writer, wall_ms
from catalog.access import check_send
from catalog.audit import AuditEvent
from catalog.authorities import Authority
from catalog.facts import EnvelopeFacts, extract_facts
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
    Op,
    OpResult,
    Publish,
    PublishResult,
    Replay,
    RequeueDead,
    Route,
    Store,
    SubscriptionRecord,
    SystemRecord,
    UnsetType,
    UpdateSubscription,
)

__all__ = ["ADMIN", "Broker", "Principal", "hash_token"]

ADMIN = "admin"
Principal = SystemRecord | Authority | str  # a system, an authority (municipality), or ADMIN

_encoder = msgspec.json.Encoder()


def _ignore(_: object) -> None:
    """Completion callback for fire-and-forget writes (audit lines)."""


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
        self.registry = Registry.load(store)
        self.routing = self._build_index()
        self.governance = Governance(self.registry, self.writer, store, clock)
        self._owners: dict[str, str] = {}  # mailbox id -> owning system, for receive decisions
        self._admin_hash = hash_token(admin_token)
        self._systems: dict[bytes, SystemRecord] = {}
        self._mailboxes: dict[str, MailboxRecord] = {}
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
                authority = self.registry.authority_by_token_hash(digest)
                if authority is not None:
                    return authority
                raise Unauthorized("unknown token")
            self._systems[digest] = system
        return system

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

    # ------------------------------------------------------------------ messages

    def prepare(
        self, sender: SystemRecord, besked: Haendelsesbesked, now_ms: int, ip: str | None
    ) -> Publish:
        """Authorize, enrich (as KOMBIT does) and route one accepted envelope. Pure, no I/O.

        Error handling:
            Raises the refusal (422 catalog / 403 agreement codes) when access control is on
            and the catalog or the sender's agreements do not allow the send.
        """
        facts = None
        if self.config.access_control:
            facts = extract_facts(besked)
            check_send(facts, self.registry.agreements_of(sender.id), self.registry.catalog, now_ms)
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
            routes=self._routes(besked, facts, now_ms),
            received_ms=now_ms,
            dedup_window_ms=self.config.dedup_window_s * 1000,
        )

    def _routes(
        self, besked: Haendelsesbesked, facts: EnvelopeFacts | None, now_ms: int
    ) -> tuple[Route, ...]:
        """Matching subscriptions, kept only where the receiver's agreements admit the envelope,
        each with the TilladtModtager rewritten for that receiver."""
        routes = [
            Route(mb, sub) for mb, sub in self.routing.match(besked, self.registry.value_lists)
        ]
        if facts is None or not routes:
            return tuple(routes)
        decisions: dict[str, Any] = {}
        out = []
        for route in routes:
            owner = self._owner(route.mailbox_id)
            decision = decisions.get(owner)
            if decision is None:
                decision = decisions[owner] = self.registry.receive.decide(owner, facts, now_ms)
            if decision.admitted:
                out.append(
                    Route(route.mailbox_id, route.subscription_id, decision.tilladt_modtager)
                )
        return tuple(out)

    def _build_index(self) -> SubscriptionIndex:
        """The subscription index over every stored subscription, watching the value lists so
        ``in valueliste(…)`` terms are filed under the lists' current values."""
        subs = [index_subscription(r) for r in self.store.list_subscriptions()]
        return SubscriptionIndex(subs, lists=self.registry.value_lists)

    def _owner(self, mailbox_id: str) -> str:
        owner = self._owners.get(mailbox_id)
        if owner is None:
            mb = self._mailboxes.get(mailbox_id) or self.store.get_mailbox(mailbox_id)
            owner = self._owners[mailbox_id] = mb.owner if mb is not None else ""
        return owner

    async def publish(
        self,
        sender: SystemRecord,
        items: Sequence[Haendelsesbesked | BrokerError],
        ip: str | None = None,
    ) -> list[PublishResult | BrokerError]:
        """Store every valid, authorized envelope in one group commit, with its audit events in
        the same commit; refusals pass through in place."""
        prepared, ops = self._publish_ops(sender, items, ip)
        results = await self.writer.submit(ops) if ops else []
        return self._publish_results(prepared, results)

    async def publish_enqueue(
        self,
        sender: SystemRecord,
        items: Sequence[Haendelsesbesked | BrokerError],
        ip: str | None,
        on_done: Callable[[list[PublishResult | BrokerError] | BrokerError], None],
    ) -> None:
        """:meth:`publish` without waiting for the commit: returns once the job is queued in
        the writer; ``on_done`` gets the same per-item results after the commit (or the error
        that kept the whole job from being applied), from the writer task (at once when
        there is nothing to store).

        Error handling:
            Raises :class:`Overloaded` (or ``trio.Cancelled``) only when nothing was queued;
            ``on_done`` is then never called. Otherwise it is called exactly once.
        """
        prepared, ops = self._publish_ops(sender, items, ip)

        def settled(results: list[OpResult] | BrokerError) -> None:
            if isinstance(results, BrokerError):
                on_done(results)
            else:
                on_done(self._publish_results(prepared, results))

        if ops:
            await self.writer.enqueue(ops, settled)
        else:  # nothing to store (no item left and audit off): settled at once, same contract
            await trio.lowlevel.checkpoint_if_cancelled()
            settled([])

    def _publish_ops(
        self, sender: SystemRecord, items: Sequence[Haendelsesbesked | BrokerError], ip: str | None
    ) -> tuple[list[Publish | BrokerError], list[Op]]:
        now = self.clock()
        prepared: list[Publish | BrokerError] = []
        for item in items:
            if isinstance(item, BrokerError):
                prepared.append(item)
                continue
            try:
                prepared.append(self.prepare(sender, item, now, ip))
            except BrokerError as err:
                prepared.append(err)
        ops: list[Op] = [p for p in prepared if isinstance(p, Publish)]
        if self.config.audit:
            ops.append(self.governance.audit_op(self._send_events(sender, items, prepared, now)))
        return prepared, ops

    def _publish_results(
        self, prepared: Sequence[Publish | BrokerError], results: Sequence[OpResult]
    ) -> list[PublishResult | BrokerError]:
        out: list[PublishResult | BrokerError] = []
        it = iter(results)
        for p in prepared:
            if isinstance(p, BrokerError):
                self.metrics.rejected.labels(p.code).inc()
                out.append(p)
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

    @staticmethod
    def _send_events(
        sender: SystemRecord,
        items: Sequence[Haendelsesbesked | BrokerError],
        prepared: Sequence[Publish | BrokerError],
        now: int,
    ) -> list[AuditEvent]:
        events = []
        for item, p in zip(items, prepared, strict=True):
            besked = item if isinstance(item, Haendelsesbesked) else None
            mt = None if besked is None else uid_key(besked.Beskedkuvert.Filtreringsdata.Beskedtype)
            if isinstance(p, Publish):
                events.append(
                    AuditEvent(
                        ts_ms=now,
                        actor=sender.id,
                        action="send.accepted",
                        transaction_id=p.transaction_id,
                        besked_id=None if besked is None else uid_key(besked.BeskedId),
                        message_type=mt,
                        detail={"routes": str(len(p.routes))},
                    )
                )
            else:
                events.append(
                    AuditEvent(
                        ts_ms=now,
                        actor=sender.id,
                        action="send.refused",
                        outcome="refused",
                        code=p.code,
                        reason=p.message[:500],
                        message_type=mt,
                    )
                )
        return events

    async def poll(
        self, mb: MailboxRecord, *, max: int, wait_s: float, lease_s: float
    ) -> list[Delivery]:
        """Lease up to ``max`` deliveries, long-polling up to ``wait_s`` for the first one."""
        deadline = trio.current_time() + wait_s
        while True:
            generation = self.notifier.generation(mb.id)
            if self.store.mailbox_stats(mb.id).ready:
                lease = Lease(mailbox_id=mb.id, max=max, lease_ms=int(lease_s * 1000))
                got = await self.writer.submit_one(lease)
                assert isinstance(got, list)
                if got:
                    self.metrics.leased.inc(len(got))
                    await self._audit_deliveries(
                        mb, "delivery.leased", [d.delivery_id for d in got]
                    )
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
        if result.count:
            refused = {d for d, _ in result.failed}
            done = [d for d in delivery_ids if d not in refused]
            await self._audit_deliveries(mb, "delivery.acked" if ack else "delivery.nacked", done)
        return result

    async def _audit_deliveries(self, mb: MailboxRecord, action: str, ids: Sequence[str]) -> None:
        """One audit event per request (not per delivery), listing the delivery ids it covered.

        Queued for the next group commit without waiting for it (the receiver's answer must
        not pay a second fsync): an audit record is never written for an operation that did
        not commit; a crash right after the lease/ack loses at most this audit line.
        """
        if not self.config.audit or not ids:
            return
        event = AuditEvent(
            ts_ms=self.clock(),
            actor=mb.owner,
            action=action,
            mailbox=mb.id,
            detail={"count": str(len(ids)), "delivery_ids": ",".join(ids)[:900]},
        )
        try:
            await self.writer.enqueue([self.governance.audit_op([event])], _ignore)
        except BrokerError:  # overload: the operation itself succeeded
            self.metrics.rejected.labels("audit_dropped").inc()

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
