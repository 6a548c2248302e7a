"""Publishing: authorize, enrich, route and store envelopes (a mixin of :class:`Broker`).

Theory of operation
-------------------
Per envelope the hot path is: catalog + agreement check (``catalog.access``), enrichment (ids,
Kildesystem), routing through the subscription index, one receive decision per receiving system,
one msgspec encode. No I/O and no await per envelope: a whole request (or stream frame) becomes
one writer job, committed with its audit events in one group commit.
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import trio

from broker.config import BrokerConfig
from broker.decisions import DecisionCache
from broker.envelope import Haendelsesbesked, UnikId, uid_key
from broker.errors import BrokerError
from broker.governance import Governance
from broker.index import SubscriptionIndex
from broker.metrics import Metrics
from broker.notifier import Notifier
from broker.registry import Registry
from broker.writer import Writer
from catalog.access import check_send
from catalog.audit import AuditEvent
from catalog.facts import EnvelopeFacts, extract_facts
from store.base import (
    MailboxRecord,
    Op,
    OpResult,
    Publish,
    PublishResult,
    Route,
    Store,
    SystemRecord,
)

_encoder = msgspec.json.Encoder()


def new_uuid() -> str:
    """A random (version 4) UUID as text; several times cheaper than ``str(uuid.uuid4())``."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


@functools.lru_cache(maxsize=1024)
def _source_id(system_id: str) -> UnikId:
    """The Kildesystem of a sender's envelopes: UnikIds are frozen, so one serves them all (and
    its construction, with its id check, runs once per sender, not per envelope)."""
    return UnikId(UUIDIdentifikator=system_id)


__all__ = ["Publishing"]


class Publishing:
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
    decisions: DecisionCache
    # ------------------------------------------------------------------ messages

    def prepare(
        self,
        sender: SystemRecord,
        besked: Haendelsesbesked,
        now_ms: int,
        ip: str | None,
        memo: dict[Any, Any] | None = None,
    ) -> Publish:
        """Authorize, enrich (as KOMBIT does) and route one accepted envelope. Pure, no I/O.

        ``memo`` holds the send and receive decisions already made, by (kind, system, access
        facts): the envelopes of a feed mostly share their facts, so each distinct set is
        decided once. :meth:`_publish_ops` passes the :class:`~broker.decisions.DecisionCache`
        table, which is valid for the registry's state at ``now_ms``.

        Error handling:
            Raises the refusal (422 catalog / 403 agreement codes) when access control is on
            and the catalog or the sender's agreements do not allow the send.
        """
        facts = None
        if self.config.access_control:
            facts = extract_facts(besked)
            memo = {} if memo is None else memo
            key = ("send", sender.id, facts)
            verdict = memo.get(key)
            if verdict is None:
                try:
                    verdict = check_send(
                        facts, self.registry.agreements_of(sender.id), self.registry.catalog, now_ms
                    )
                except BrokerError as err:
                    verdict = err
                memo[key] = verdict
            if isinstance(verdict, BrokerError):
                raise copy.copy(verdict)  # a fresh traceback per envelope
        tid = new_uuid()
        li = besked.Beskedkuvert.Leveranceinformation
        li.TransaktionsId = UnikId(UUIDIdentifikator=tid)
        li.Kildesystem = _source_id(sender.id)
        if ip:
            li.KildesystemIPAdresse = ip
        return Publish(
            sender=sender.id,
            dedup_key=f"{sender.id}\0{uid_key(besked.BeskedId)}".encode(),
            transaction_id=tid,
            body=_encoder.encode(besked),
            routes=self._routes(besked, facts, now_ms, memo),
            received_ms=now_ms,
            dedup_window_ms=self.config.dedup_window_s * 1000,
        )

    def _routes(
        self,
        besked: Haendelsesbesked,
        facts: EnvelopeFacts | None,
        now_ms: int,
        memo: dict[Any, Any] | None,
    ) -> tuple[Route, ...]:
        """Matching subscriptions, kept only where the receiver's agreements admit the envelope,
        each with the TilladtModtager rewritten for that receiver."""
        matched = self.routing.match(besked, self.registry.value_lists)
        if facts is None:
            return tuple([Route(mb, sub) for mb, sub in matched])
        memo = {} if memo is None else memo
        out = []
        for mailbox_id, subscription_id in matched:
            owner = self._owner(mailbox_id)
            key = ("receive", owner, facts)
            decision = memo.get(key)
            if decision is None:
                decision = memo[key] = self.registry.receive.decide(owner, facts, now_ms)
            if decision.admitted:
                out.append(Route(mailbox_id, subscription_id, decision.tilladt_modtager))
        return tuple(out)

    def _owner(self, mailbox_id: str) -> str:
        """The owning system of a routed mailbox, from the broker's mailbox cache."""
        mb = self._mailboxes.get(mailbox_id)
        if mb is None:
            mb = self.store.get_mailbox(mailbox_id)
            if mb is None:  # deleted since routing: the store drops such routes anyway
                return ""
            self._mailboxes[mailbox_id] = mb
        return mb.owner

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
        memo = self.decisions.table(self.registry, now)
        for item in items:
            if isinstance(item, BrokerError):
                prepared.append(item)
                continue
            try:
                prepared.append(self.prepare(sender, item, now, ip, memo))
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
