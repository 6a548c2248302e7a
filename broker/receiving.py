"""Receiving: leases (long-poll), acks/nacks, dead letters, replay (a mixin of :class:`Broker`).

Every operation is one store op through the writer; a lease or ack is audited with one event per
request, deferred to the next group commit without waiting for it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import trio

from broker.config import BrokerConfig
from broker.delivery import render_delivery
from broker.errors import BrokerError
from broker.governance import Governance
from broker.index import SubscriptionIndex
from broker.metrics import Metrics
from broker.notifier import Notifier
from broker.registry import Registry
from broker.standing import StandingLease
from broker.writer import Writer
from catalog.audit import AuditEvent
from store.base import (
    Ack,
    AckResult,
    Delivery,
    Lease,
    MailboxRecord,
    Nack,
    OpResult,
    Replay,
    RequeueDead,
    Store,
    SweepResult,
)

__all__ = ["Receiving"]


class Receiving:
    # State the Broker provides (see broker/service.py).
    config: BrokerConfig
    store: Store
    writer: Writer
    notifier: Notifier
    metrics: Metrics
    registry: Registry
    governance: Governance
    routing: SubscriptionIndex
    instance_id: str
    clock: Callable[[], int]
    _mailboxes: dict[str, MailboxRecord]

    async def poll(
        self, mb: MailboxRecord, *, max: int, wait_s: float, lease_s: float
    ) -> list[Delivery]:
        """Lease up to ``max`` deliveries, long-polling up to ``wait_s`` for the first one.

        While it waits, its lease stands (:mod:`broker.standing`): the commit that publishes to
        the mailbox leases for it (see :meth:`wait_leased`).
        """
        deadline = trio.current_time() + wait_s
        lease = Lease(mailbox_id=mb.id, max=max, lease_ms=int(lease_s * 1000))
        while True:
            generation = self.notifier.generation(mb.id)
            if self.store.mailbox_stats(mb.id).ready:
                got = await self.writer.submit_one(lease)
                assert isinstance(got, list)
                if got:
                    return self._leased(mb, got)
            if trio.current_time() >= deadline:
                return []
            got = await self.wait_leased(mb, lease, generation, deadline)
            if got:
                return got

    async def wait_leased(
        self,
        mb: MailboxRecord,
        lease: Lease,
        generation: int,
        deadline: float,
        until: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
    ) -> list[Delivery]:
        """Wait until the mailbox's generation moves past ``generation`` (or ``deadline``) with
        ``lease`` standing; what the commit that took it leased (counted and audited), or
        nothing (then lease anew).

        ``until()`` wraps the wait: a consume stream passes its stop scope, so that a stop
        ends the wait like a wake-up and what a commit leased for the stream in that moment
        is still returned (to be sent). Cancelled otherwise while that commit runs, its
        deliveries stay leased until the lease expires, and are delivered again then.
        """
        standing = self.writer.stand(lease)
        try:
            with until():
                await self.notifier.wait_ready(mb.id, generation, deadline)
        except BaseException:  # cancelled: withdraw it, or see the commit that took it through
            with contextlib.suppress(BrokerError):
                await self._standing_result(standing)
            raise
        got = await self._standing_result(standing)
        return self._leased(mb, got) if got else got

    async def _standing_result(self, standing: StandingLease) -> list[Delivery]:
        """What a standing lease leased, after its receiver's wait: nothing if it could be
        withdrawn, else the result of the commit that took it (waited for, even when
        cancelled: that commit cannot be stopped).

        Error handling:
            Raises the batch's :class:`StoreError` or the op's refusal (mailbox gone).
        """
        if self.writer.withdraw(standing):
            return []
        with trio.CancelScope(shield=True):
            await standing.done.wait()
        if standing.error is not None:
            raise standing.error
        return standing.results

    def _leased(self, mb: MailboxRecord, got: list[Delivery]) -> list[Delivery]:
        """Count and audit deliveries just leased to ``mb``'s receiver; returns them."""
        self.metrics.leased.inc(len(got))
        self._audit_deliveries(mb, "delivery.leased", [d.delivery_id for d in got])
        return got

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
            self._audit_deliveries(mb, "delivery.acked" if ack else "delivery.nacked", done)
        return result

    async def audit_sweep(self, result: SweepResult) -> None:
        """One audit event per sweep pass that expired leases (redelivery follows, or a dead
        letter when the attempts are used up); the store reports counts, not ids."""
        if not self.config.audit or not result.expired_leases:
            return
        event = AuditEvent(
            ts_ms=self.clock(),
            actor="broker",
            action="delivery.expired",
            detail={
                "expired_leases": str(result.expired_leases),
                "dead_lettered": str(result.dead_lettered),
            },
        )
        self._audit_later(event)

    def _audit_deliveries(self, mb: MailboxRecord, action: str, ids: Sequence[str]) -> None:
        """One audit event per request (not per delivery), listing the delivery ids it covered.

        Deferred to the next group commit without waiting for it (the receiver's answer must
        not pay a second fsync, and at low load the line rides with the next commit instead
        of making one: :meth:`Writer.defer`): an audit record is never written for an
        operation that did not commit; a crash right after the lease/ack loses at most the
        lines of the writer's linger (25 ms).
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
        self._audit_later(event)

    def _audit_later(self, event: AuditEvent) -> None:
        """Defer ``event`` to the next group commit (see above)."""
        try:
            self.writer.defer([self.governance.audit_op([event])])
        except BrokerError:  # overload: the operation it records has already committed
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
