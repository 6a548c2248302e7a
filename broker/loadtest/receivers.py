"""Receivers: per mailbox, long-poll tasks that lease deliveries and one task that acks them.

A poller loops ``GET /v1/mailboxes/{id}/messages?max=&wait=&lease=`` on its own keep-alive
connection. Each answer is booked at once (synchronously: no checkpoint between the answer and
the ledger) and its delivery ids are handed to the mailbox's acker over a bounded channel, so
the next poll goes out while the previous deliveries are being acknowledged. The acker merges
whatever is queued into one ``POST …/ack`` (at most :data:`MAX_ACK_IDS` ids).

Stopping (:meth:`Receivers.stop`): the pollers' in-flight polls are cancelled (a cancelled poll
books nothing; whatever it had leased comes back after the lease, as at-least-once promises),
then the ackers finish the acks already queued and exit.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx
import msgspec
import trio

from broker.loadtest.ledger import Receipt
from broker.loadtest.provision import MailboxInfo
from broker.loadtest.state import RunState
from broker.loadtest.transport import client

__all__ = [
    "BROKER_SAMPLE",
    "MAX_ACK_IDS",
    "MailboxConsumers",
    "Receivers",
    "book_deliveries",
    "book_poll",
    "broker_ms",
]

MAX_ACK_IDS = 5000
#: every BROKER_SAMPLE-th first copy booked also has the broker's own share of its latency read
#: from it (a small decode of its kuvert, so not every copy's). Counted by copy, not by envelope
#: number: the envelopes' types cycle, and every n-th envelope could be a subset of the types.
BROKER_SAMPLE = 4
ACK_QUEUE = 8  # poll answers waiting for their ack, per mailbox
ACK_RETRIES = 3
ACK_TIMEOUT_S = 30.0
BACKOFF_S = 0.1


class _Id(msgspec.Struct):
    UUIDIdentifikator: str | None = None
    URNIdentifikator: str | None = None


class _Envelope(msgspec.Struct):
    BeskedId: _Id
    Beskedkuvert: msgspec.Raw = msgspec.Raw()  # a span: read only for the sampled copies


# The Leverancerute the broker appends to every copy it hands out: when it received the
# envelope and when it handed this copy out, both by the broker's clock (to the millisecond).
class _Tidspunkt(msgspec.Struct):
    TidsstempelDatoTid: str | None = None


class _Rute(msgspec.Struct):  # routes from before the broker's may leave anything out
    ModtagelsesTidspunkt: _Tidspunkt | None = None
    LeveranceTidspunkt: _Tidspunkt | None = None


class _Ruter(msgspec.Struct):
    Leverancerute: list[_Rute] = []


class _Leverance(msgspec.Struct):
    Leveranceruter: _Ruter | None = None


class _Kuvert(msgspec.Struct):
    Leveranceinformation: _Leverance | None = None


class _Delivery(msgspec.Struct):
    delivery_id: str
    attempt: int
    envelope: _Envelope


class _Poll(msgspec.Struct):
    deliveries: list[_Delivery]


class _Failed(msgspec.Struct):
    delivery_id: str
    code: str


class _AckOut(msgspec.Struct):
    acked: int
    failed: list[_Failed] = []


_poll = msgspec.json.Decoder(_Poll)
_kuvert = msgspec.json.Decoder(_Kuvert)
_MS = timedelta(milliseconds=1)
_ack_out = msgspec.json.Decoder(_AckOut)


def book_poll(state: RunState, mailbox: int, body: bytes, received_at: float) -> list[str]:
    """Book one poll answer: classify every copy, record latencies; returns the ids to ack."""
    return book_deliveries(state, mailbox, _poll.decode(body).deliveries, received_at)


def broker_ms(kuvert: msgspec.Raw) -> int | None:
    """The broker's own share of a copy's latency, in ms: from receiving the envelope to
    handing this copy out, as its last Leverancerute says (None if it has none)."""
    if not kuvert:
        return None
    try:
        info = _kuvert.decode(kuvert).Leveranceinformation
        ruter = None if info is None else info.Leveranceruter
        route = ruter.Leverancerute[-1] if ruter is not None and ruter.Leverancerute else None
        if route is None or route.ModtagelsesTidspunkt is None or route.LeveranceTidspunkt is None:
            return None
        received = route.ModtagelsesTidspunkt.TidsstempelDatoTid
        handed_out = route.LeveranceTidspunkt.TidsstempelDatoTid
        if received is None or handed_out is None:
            return None
        return (datetime.fromisoformat(handed_out) - datetime.fromisoformat(received)) // _MS
    except (msgspec.DecodeError, ValueError, TypeError):  # TypeError: a time without a zone
        return None


def book_deliveries(
    state: RunState, mailbox: int, deliveries: list[_Delivery], received_at: float
) -> list[str]:
    """Book deliveries (of a poll or a consume-stream frame); returns the ids to ack."""
    ledger, parse, sent_at = state.ledger, state.ids.parse, state.ledger.sent_at
    latencies: list[int] = []
    broker: list[int] = []
    for d in deliveries:
        bid = d.envelope.BeskedId
        n = parse(bid.UUIDIdentifikator or bid.URNIdentifikator or "")
        if ledger.deliver(mailbox, n, d.attempt) is Receipt.FIRST:
            assert n is not None
            latencies.append(int((received_at - sent_at[n]) * 1e6))
            if ledger.delivered % BROKER_SAMPLE == 0:  # counts the first copies, this one too
                ms = broker_ms(d.envelope.Beskedkuvert)
                if ms is not None:
                    broker.append(ms * 1000)
    state.received += len(deliveries)
    if broker:
        state.broker_latency.record_many(broker)
    if latencies:
        state.deliver_latency.record_many(latencies)
        state.t_last_delivery = received_at
        state.check_drained()
    return [d.delivery_id for d in deliveries]


class MailboxConsumers:
    """What every kind of receiver shares: one task per mailbox (``_mailbox``), and the cancel
    scopes of waits that :meth:`stop` may end at once (a poll in flight, an idle stream).

    Arguments:
        state: the run.
        base_url: the broker.
        mailboxes: the mailboxes with their owners' tokens (index = the topology's mailbox).
    """

    def __init__(self, state: RunState, base_url: str, mailboxes: tuple[MailboxInfo, ...]) -> None:
        self.state = state
        self.base_url = base_url
        self.mailboxes = mailboxes
        self._waits: set[trio.CancelScope] = set()
        self._stopping = False

    def stop(self) -> None:
        """Stop receiving: end the waits that may end now; what is being settled finishes."""
        self._stopping = True
        self.state.stop_receiving.set()
        for scope in list(self._waits):
            scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Consume until :meth:`stop`; returns when every mailbox's task has finished."""
        async with trio.open_nursery() as nursery:
            for index, mb in enumerate(self.mailboxes):
                nursery.start_soon(self._mailbox, index, mb)
            task_status.started()

    async def _mailbox(self, index: int, mb: MailboxInfo) -> None:
        raise NotImplementedError


class Receivers(MailboxConsumers):
    """Long-poll receivers: pollers per mailbox, and an acker that merges their acks."""

    async def _mailbox(self, index: int, mb: MailboxInfo) -> None:
        sc = self.state.scenario
        limits = httpx.Limits(
            max_connections=sc.pollers + 1, max_keepalive_connections=sc.pollers + 1
        )
        timeout = httpx.Timeout(sc.poll_wait_s + 30.0)
        async with client(self.base_url, token=mb.token, limits=limits, timeout=timeout) as http:
            send, recv = trio.open_memory_channel[list[str]](ACK_QUEUE)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._acker, http, mb.id, recv)
                async with send, trio.open_nursery() as pollers:
                    for _ in range(sc.pollers):
                        pollers.start_soon(self._poller, http, index, mb.id, send.clone())

    async def _poller(
        self,
        http: httpx.AsyncClient,
        index: int,
        mailbox_id: str,
        acks: trio.MemorySendChannel[list[str]],
    ) -> None:
        state, sc = self.state, self.state.scenario
        params = {"max": sc.poll_max, "wait": sc.poll_wait_s, "lease": sc.lease_s}
        path = f"/v1/mailboxes/{mailbox_id}/messages"
        async with acks:
            while not self._stopping:
                resp: httpx.Response | None = None
                with trio.CancelScope() as scope:
                    self._waits.add(scope)
                    try:
                        resp = await http.get(path, params=params)
                    except httpx.TransportError as exc:
                        state.note_error("poll_transport_error", repr(exc))
                    finally:
                        self._waits.discard(scope)
                if scope.cancelled_caught or (self._stopping and resp is None):
                    return
                if resp is None:
                    await trio.sleep(BACKOFF_S)
                    continue
                if resp.status_code != 200:
                    state.note_error("poll_error", f"{resp.status_code} {resp.text[:200]}")
                    await trio.sleep(BACKOFF_S)
                    continue
                ids = book_poll(state, index, resp.content, state.clock())
                if ids:
                    await acks.send(ids)

    async def _acker(
        self, http: httpx.AsyncClient, mailbox_id: str, queue: trio.MemoryReceiveChannel[list[str]]
    ) -> None:
        path = f"/v1/mailboxes/{mailbox_id}/ack"
        async with queue:
            async for ids in queue:
                while len(ids) < MAX_ACK_IDS:  # merge what is already queued
                    try:
                        more = queue.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    ids.extend(more)
                for i in range(0, len(ids), MAX_ACK_IDS):
                    await self._ack(http, path, ids[i : i + MAX_ACK_IDS])

    async def _ack(self, http: httpx.AsyncClient, path: str, ids: list[str]) -> None:
        state = self.state
        body = msgspec.json.encode({"delivery_ids": ids})
        headers = {"Content-Type": "application/json"}
        for attempt in range(ACK_RETRIES + 1):
            try:
                resp = await http.post(path, content=body, headers=headers, timeout=ACK_TIMEOUT_S)
            except httpx.TransportError as exc:
                state.note_error("ack_transport_error", repr(exc))
                await trio.sleep(BACKOFF_S * 2**attempt)
                continue
            if resp.status_code == 200:
                out = _ack_out.decode(resp.content)
                state.acked += out.acked
                for f in out.failed:
                    state.ack_failed[f.code] += 1
                return
            if resp.status_code == 409:  # every id failed (lease expired / unknown)
                code = resp.json().get("error", {}).get("code", "conflict")
                state.ack_failed[code] += len(ids)
                return
            state.note_error("ack_error", f"{resp.status_code} {resp.text[:200]}")
            if resp.status_code < 500:
                return
            await trio.sleep(BACKOFF_S * 2**attempt)
        state.ack_failed["gave_up"] += len(ids)
