"""The consume stream, ``/v1/stream/mailboxes/{id}/consume`` (routed and shut down by
:mod:`broker.http.streams`).

The handler task reads ``credit``/``ack``/``nack`` frames: credit is counted at once, settlements
are queued (bounded) for the settler task, which settles them one at a time, in order, through
:meth:`Broker.settle`. The deliverer leases up to the available credit with the same store op as a
poll (leases are persisted, so a dropped connection's deliveries expire and are delivered again)
and waits on the notifier when the mailbox is empty, never polling.
"""

from __future__ import annotations

import math

import msgspec
import trio
from msgspec import UNSET, Struct, UnsetType

from broker.codec import validation_error
from broker.delivery import deliveries_out
from broker.errors import BrokerError, InvalidInput
from broker.http import streams
from broker.http.mailboxes import FailedOut, PollOut
from broker.http.rawws import StreamSocket
from broker.http.streams import (
    DRAIN_TIMEOUT_S,
    ConsumeIn,
    ErrorOut,
    SettledOut,
    _error_body,
    _Stream,
    _text,
)
from broker.service import Broker
from broker.streamhub import Credit
from broker.streaming import GOING_AWAY, MAX_FRAME_BYTES
from store.base import Lease, MailboxRecord

__all__ = ["SETTLE_QUEUE", "ConsumeStream"]

#: ack/nack frames queued for the settler before the consume stream stops reading.
SETTLE_QUEUE = 16

_consume_json = msgspec.json.Decoder(ConsumeIn)
_consume_msgpack = msgspec.msgpack.Decoder(ConsumeIn)


class _Settle(Struct):
    ids: list[str]
    ack: bool
    requeue: bool
    seq: int | None


class ConsumeStream(_Stream):
    kind = "consume"

    def __init__(
        self, broker: Broker, ws: StreamSocket, mailbox: MailboxRecord, lease_s: float
    ) -> None:
        super().__init__(ws)
        self.broker = broker
        self.mailbox = mailbox
        self.lease_s = lease_s
        self.credit = Credit()
        self._credit = trio.lowlevel.ParkingLot()

    async def run(self) -> None:
        send, receive = trio.open_memory_channel[_Settle](SETTLE_QUEUE)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._settler, receive)
            nursery.start_soon(self._deliverer)
            with send:
                await self._read(send)
                self.stop(1000, "")  # the deliverer stops too (a no-op if already stopped)
            nursery.cancel_scope.deadline = trio.current_time() + DRAIN_TIMEOUT_S
        await self._finish()

    async def _read(self, settle: trio.MemorySendChannel[_Settle]) -> None:
        while not self._stopped:
            data: str | bytes | None = None
            with self._until_stopped():
                data = await self.ws.receive()
            if data is None:
                return
            try:
                frame = self._decode(data)
            except BrokerError as err:
                await self.ws.send(_text(ErrorOut(_error_body(err))))
                continue
            seq = None if isinstance(frame.seq, UnsetType) else frame.seq
            if not isinstance(frame.credit, UnsetType):
                try:
                    self.credit.add(frame.credit)
                except BrokerError as err:
                    await self.ws.send(_text(ErrorOut(_error_body(err), seq)))
                    continue
                self._credit.unpark_all()
            if not isinstance(frame.ack, UnsetType):
                await settle.send(_Settle(frame.ack, True, True, seq))
            elif not isinstance(frame.nack, UnsetType):
                await settle.send(_Settle(frame.nack, False, frame.requeue, seq))

    @staticmethod
    def _decode(data: str | bytes) -> ConsumeIn:
        if len(data) > MAX_FRAME_BYTES:
            raise InvalidInput(f"a frame may be at most {MAX_FRAME_BYTES} bytes", code="too_large")
        as_json = isinstance(data, str) or data[:1] == b"{"
        try:
            frame = (
                _consume_json.decode(data)
                if isinstance(data, str) or as_json
                else _consume_msgpack.decode(data)
            )
        except msgspec.DecodeError as exc:  # ValidationError too: mapped inside
            err = validation_error(exc)
            if err.code == "invalid_envelope":
                err.code = "invalid"
            raise err from None
        has_ack, has_nack = frame.ack is not UNSET, frame.nack is not UNSET
        if has_ack and has_nack:
            raise InvalidInput("a frame has at most one of 'ack' and 'nack'", path="$")
        if not (has_ack or has_nack or frame.credit is not UNSET):
            raise InvalidInput("a consume frame has 'credit', 'ack' or 'nack'", path="$")
        return frame

    async def _deliverer(self) -> None:
        broker, mb, credit = self.broker, self.mailbox, self.credit
        notifier = broker.notifier
        lease_ms = int(self.lease_s * 1000)
        while not self._stopped:
            with self._until_stopped():
                while credit.available == 0:
                    await self._credit.park()
            if self._stopped:
                return
            generation = notifier.generation(mb.id)
            n = min(credit.available, broker.config.max_poll)
            # A lease that started is committed anyway (the writer's thread call cannot be
            # cancelled), so finish it and send what it leased rather than strand it until
            # the lease expires; a stop only ends the waits.
            try:
                with trio.CancelScope(shield=True):
                    got = await broker.poll(mb, max=n, wait_s=0, lease_s=self.lease_s)
                if not got:
                    # nothing ready: wait with a standing lease, so that the commit that
                    # publishes to the mailbox leases for this stream (broker.standing)
                    lease = Lease(mb.id, n, lease_ms)
                    got = await broker.wait_leased(
                        mb, lease, generation, math.inf, until=self._until_stopped
                    )
            except BrokerError as err:  # overloaded, store error, shutting down
                await self.ws.send(_text(ErrorOut(_error_body(err))))
                if err.code == "shutting_down":
                    self.stop(GOING_AWAY, "server shutting down")
                    return
                with self._until_stopped():
                    await trio.sleep(streams.RETRY_PAUSE_S)
                continue
            if got:
                credit.delivered(len(got))
                now = broker.clock()
                out = deliveries_out(got, instance_id=broker.instance_id, now_ms=now)
                await self.ws.send(_text(PollOut(out)))

    async def _settler(self, queue: trio.MemoryReceiveChannel[_Settle]) -> None:
        async with queue:
            async for req in queue:
                reply: SettledOut | ErrorOut
                try:
                    result = await self.broker.settle(
                        self.mailbox, req.ids, ack=req.ack, requeue=req.requeue
                    )
                except BrokerError as err:
                    reply = ErrorOut(_error_body(err), req.seq)
                else:
                    failed = [FailedOut(i, c) for i, c in result.failed]
                    seq = UNSET if req.seq is None else req.seq
                    if req.ack:
                        reply = SettledOut(acked=result.count, failed=failed, seq=seq)
                    else:
                        reply = SettledOut(nacked=result.count, failed=failed, seq=seq)
                    if result.count and self.mailbox.strict:
                        # settling the head of a strict mailbox frees the next delivery, but
                        # the store reports only mailboxes that gained ready ones: wake up
                        self.broker.notifier.notify([self.mailbox.id])
                await self.ws.send(_text(reply))
