"""Receiving: leases (long-poll), acks/nacks, dead letters, replay (a mixin of :class:`Broker`).

Every operation is one store op through the writer; a lease or ack is audited with one event per
request, queued for the next group commit without waiting for it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import trio

from broker.config import BrokerConfig
from broker.delivery import render_delivery
from broker.errors import BrokerError
from broker.governance import Governance
from broker.index import SubscriptionIndex
from broker.metrics import Metrics
from broker.notifier import Notifier
from broker.registry import Registry
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


def _ignore(_: object) -> None:
    """Completion callback for fire-and-forget writes (audit lines)."""


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
        await self._audit_later(event)

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
        await self._audit_later(event)

    async def _audit_later(self, event: AuditEvent) -> None:
        """Queue ``event`` for the next group commit without waiting for it (see above)."""
        try:
            await self.writer.enqueue([self.governance.audit_op([event])], _ignore)
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
