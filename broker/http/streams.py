"""Streaming channels over WebSocket: ``/v1/stream/publish`` and ``/v1/stream/mailboxes/{id}/consume``.

Theory of operation
-------------------
Both handlers authenticate the upgrade request exactly like an HTTP request and refuse it with
the same JSON error (401/403/404/503) *before* accepting. After that each connection runs its
tasks in a nursery owned by the handler; when the client goes away quart-trio cancels the
handler, nursery included, so no task outlives its connection. The protocol is in
docs/streams.md; the flow-control state lives in :mod:`broker.streaming`.

Publish. The handler task reads a frame only while the
:class:`~broker.streaming.PublishWindow` has room, decodes it, and hands it to
:meth:`Broker.publish_enqueue`: the same validation, authorization, routing and audit as
``POST /v1/messages/batch``, but the writer job is queued without waiting for its commit (no
await and no task per frame), so every frame read while one commit fsyncs joins the next group
commit. After the commit the writer reports the frame's results; the confirmer task sends every
confirm that is ready as ONE message and only then frees the frames' room, so a client that
stops reading its confirms stops being read (TCP pushes back). Frames enter the writer queue in
the order they were read, so the store keeps a publisher's order.

Consume. The handler task reads ``credit``/``ack``/``nack`` frames: credit is counted at once,
settlements are queued (bounded) for the settler task, which settles them one at a time, in
order, through :meth:`Broker.settle`. The deliverer leases up to the available credit with the
same store op as a poll (leases are persisted, so a dropped connection's deliveries expire and
are delivered again) and waits on the notifier when the mailbox is empty, never polling.

Shutdown. :meth:`StreamHub.close` (see :func:`hub_of`) stops every stream: it stops reading
(and leasing), lets what is in flight finish and be confirmed (at most ``DRAIN_TIMEOUT_S``), and
closes with 1001. Without that call, hypercorn cancels the streams at its graceful timeout.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import msgspec
import trio
from msgspec import UNSET, Struct, UnsetType
from quart import Quart, Response, websocket
from quart.wrappers import Websocket
from werkzeug.datastructures import MultiDict

from broker.codec import validation_error
from broker.delivery import delivery_out
from broker.envelope import Haendelsesbesked
from broker.errors import BrokerError, InvalidInput, Overloaded
from broker.http.common import ErrorBody, error_response
from broker.http.mailboxes import DeliveryIds, FailedOut, PollOut
from broker.http.messages import BatchItem
from broker.service import Broker
from broker.streaming import (
    DEFAULT_WINDOW,
    GOING_AWAY,
    INTERNAL_ERROR,
    MAX_FRAME_BYTES,
    MAX_WINDOW,
    Credit,
    FrameError,
    PublishFrame,
    PublishWindow,
    StreamHub,
    decode_publish_frame,
)
from store.base import MailboxRecord, PublishResult, SystemRecord

__all__ = [
    "ConfirmOut",
    "ConfirmsOut",
    "ConsumeIn",
    "ErrorOut",
    "PublishIn",
    "hub_of",
    "register",
]

#: Most per-envelope results in one confirm message.
MAX_CONFIRM_RESULTS = 10_000
#: How long a stopping stream waits for its in-flight work before it closes anyway.
DRAIN_TIMEOUT_S = 5.0
#: ack/nack frames queued for the settler before the consume stream stops reading.
SETTLE_QUEUE = 16
#: How long the consume stream waits before leasing again after the writer refused a lease.
RETRY_PAUSE_S = 1.0

log = logging.getLogger("dueslag.streams")
_hubs: weakref.WeakKeyDictionary[Broker, StreamHub] = weakref.WeakKeyDictionary()
_encoder = msgspec.json.Encoder()


def hub_of(broker: Broker) -> StreamHub:
    """The stream hub of the app serving ``broker``; ``hub_of(b).close()`` ends its streams."""
    hub = _hubs.get(broker)
    if hub is None:
        hub = _hubs[broker] = StreamHub()
    return hub


# ---------------------------------------------------------------------------- wire shapes


class PublishIn(Struct, forbid_unknown_fields=True):
    """A publish-stream client frame, for the API document (:mod:`broker.streaming` decodes
    frames item by item, so that one bad envelope fails only itself)."""

    seq: int
    envelope: Haendelsesbesked | UnsetType = UNSET
    envelopes: list[Haendelsesbesked] | UnsetType = UNSET


class ConfirmOut(Struct, omit_defaults=True):
    """One frame's confirm: per-envelope results (as ``POST /v1/messages/batch``) or, when the
    whole frame was refused and nothing of it stored, ``error``."""

    seq: int
    results: list[BatchItem] | None = None
    error: ErrorBody | None = None


class ConfirmsOut(Struct):
    confirms: list[ConfirmOut]


class ErrorOut(Struct, omit_defaults=True):
    error: ErrorBody
    seq: int | None = None


class ConsumeIn(Struct, forbid_unknown_fields=True, kw_only=True):
    """A consume-stream client frame: credit, an ack or a nack (credit may ride along)."""

    credit: int | UnsetType = UNSET
    ack: DeliveryIds | UnsetType = UNSET
    nack: DeliveryIds | UnsetType = UNSET
    requeue: bool = True
    seq: int | UnsetType = UNSET


_consume_json = msgspec.json.Decoder(ConsumeIn)
_consume_msgpack = msgspec.msgpack.Decoder(ConsumeIn)


def _error_body(err: BrokerError) -> ErrorBody:
    return ErrorBody(err.code, err.message, err.path)


def _result_out(r: PublishResult | BrokerError) -> BatchItem:
    if isinstance(r, BrokerError):
        return BatchItem(error=_error_body(r))
    return BatchItem(transaction_id=r.transaction_id, mailboxes=r.mailboxes, duplicate=r.duplicate)


def _confirm_out(frame: PublishFrame) -> ConfirmOut:
    if frame.error is not None:
        return ConfirmOut(frame.seq, error=_error_body(frame.error))
    return ConfirmOut(frame.seq, results=[_result_out(r) for r in frame.results])


def _text(body: Any) -> str:
    """Replies are JSON text frames."""
    return _encoder.encode(body).decode()


def _query_number(
    args: MultiDict[str, str], name: str, default: float, *, lo: float, hi: float, integer: bool
) -> float:
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    kind = "an integer" if integer else "a number"
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        raise InvalidInput(f"query parameter {name} must be {kind}", path=f"query.{name}") from None
    if not lo <= value <= hi:
        raise InvalidInput(
            f"query parameter {name} must be between {lo:g} and {hi:g}", path=f"query.{name}"
        )
    return value


# ---------------------------------------------------------------------------- a stream


class _Stream:
    """What both streams share: stopping (cancels the idle waits) and the close."""

    kind = "stream"

    def __init__(self, ws: Websocket) -> None:
        self.ws = ws
        self._stopped = False
        self._close: tuple[int, str] = (1000, "")
        self._error: ErrorOut | None = None
        self._scopes: set[trio.CancelScope] = set()
        self._closed = False

    def stop(self, code: int, reason: str, error: ErrorOut | None = None) -> None:
        """Stop reading and waiting; the handler then drains and closes with ``code``. Only the
        first stop counts. Never blocks."""
        if self._stopped:
            return
        self._stopped = True
        self._close = (code, reason[:120])
        self._error = error
        for scope in self._scopes:
            scope.cancel()

    @contextmanager
    def _until_stopped(self) -> Iterator[trio.CancelScope]:
        """Run the block unless and until the stream is stopped (it is cancelled then)."""
        scope = trio.CancelScope()
        if self._stopped:
            scope.cancel()
        self._scopes.add(scope)
        try:
            with scope:
                yield scope
        finally:
            self._scopes.discard(scope)

    async def _finish(self) -> None:
        if self._error is not None:
            await self.ws.send(_text(self._error))
        code, reason = self._close
        self._closed = True
        await self.ws.close(code, reason)

    async def serve(self) -> None:
        """Run the stream; a bug ends it with 1011 and the one error shape, not a silent 1000."""
        try:
            await self.run()
        except Exception:
            log.exception("%s stream failed", self.kind)
            if not self._closed:
                self._closed = True
                await self.ws.send(_text(ErrorOut(ErrorBody("internal", "internal error"))))
                await self.ws.close(INTERNAL_ERROR, "internal error")

    async def run(self) -> None:
        raise NotImplementedError


class _PublishStream(_Stream):
    kind = "publish"

    def __init__(self, broker: Broker, ws: Websocket, sender: SystemRecord, window: int) -> None:
        super().__init__(ws)
        self.broker = broker
        self.sender = sender
        self.ip = ws.remote_addr
        self.window = PublishWindow(max_frames=window)
        self._room = trio.lowlevel.ParkingLot()
        self._ready = trio.lowlevel.ParkingLot()
        self._idle = trio.lowlevel.ParkingLot()
        self._unqueued: PublishFrame | None = None

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._confirmer)
            with self._until_stopped():
                await self._read()
            if self._unqueued is not None:  # read just before the stop: store it all the same
                await self._enqueue(self._unqueued)
            with trio.move_on_after(DRAIN_TIMEOUT_S):
                while not self.window.empty:
                    await self._idle.park()
            nursery.cancel_scope.cancel()
        await self._finish()

    async def _read(self) -> None:
        window = self.window
        while True:
            while not window.has_room():
                await self._room.park()
            data = await self.ws.receive()  # a cancelled receive takes no frame
            try:
                frame = decode_publish_frame(data)
            except FrameError as exc:
                self.stop(exc.close_code, exc.error.code, ErrorOut(_error_body(exc.error)))
                return
            if window.accept(frame):
                await self._enqueue(frame)
            else:
                self._ready.unpark_all()

    async def _enqueue(self, frame: PublishFrame) -> None:
        try:
            await self.broker.publish_enqueue(
                self.sender, frame.items, self.ip, partial(self._settled, frame)
            )
        except BrokerError as err:  # overloaded or shutting down: nothing of it stored
            self._settled(frame, err)
        except trio.Cancelled:  # not queued (stopped, or the client left)
            self._unqueued = frame
            raise
        else:
            self._unqueued = None
            frame.drop_items()

    def _settled(self, frame: PublishFrame, results: list[Any] | BrokerError) -> None:
        """From the writer task, after the frame's commit (or its failure)."""
        if isinstance(results, BrokerError):
            self.window.fail(frame, results)
        else:
            self.window.complete(frame, results)
        self._ready.unpark_all()

    async def _confirmer(self) -> None:
        window = self.window
        while True:
            while not window.has_confirms():
                await self._ready.park()
            frames = window.take_confirms(MAX_CONFIRM_RESULTS)
            await self.ws.send(_text(ConfirmsOut([_confirm_out(f) for f in frames])))
            window.release(frames)
            self._room.unpark_all()
            if window.empty:
                self._idle.unpark_all()


class _Settle(Struct):
    ids: list[str]
    ack: bool
    requeue: bool
    seq: int | None


class _ConsumeStream(_Stream):
    kind = "consume"

    def __init__(
        self, broker: Broker, ws: Websocket, mailbox: MailboxRecord, lease_s: float
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
            except BrokerError as err:  # overloaded, store error, shutting down
                await self.ws.send(_text(ErrorOut(_error_body(err))))
                if err.code == "shutting_down":
                    self.stop(GOING_AWAY, "server shutting down")
                    return
                with self._until_stopped():
                    await trio.sleep(RETRY_PAUSE_S)
                continue
            if got:
                credit.delivered(len(got))
                now = broker.clock()
                out = [delivery_out(d, instance_id=broker.instance_id, now_ms=now) for d in got]
                await self.ws.send(_text(PollOut(out)))
            else:
                with self._until_stopped():
                    await notifier.wait_ready(mb.id, generation, math.inf)

    async def _settler(self, queue: trio.MemoryReceiveChannel[_Settle]) -> None:
        async with queue:
            async for req in queue:
                reply: dict[str, Any]
                try:
                    result = await self.broker.settle(
                        self.mailbox, req.ids, ack=req.ack, requeue=req.requeue
                    )
                except BrokerError as err:
                    reply = {"error": _error_body(err)}
                else:
                    reply = {
                        "acked" if req.ack else "nacked": result.count,
                        "failed": [FailedOut(i, c) for i, c in result.failed],
                    }
                    if result.count and self.mailbox.strict:
                        # settling the head of a strict mailbox frees the next delivery, but
                        # the store reports only mailboxes that gained ready ones: wake up
                        self.broker.notifier.notify([self.mailbox.id])
                if req.seq is not None:
                    reply["seq"] = req.seq
                await self.ws.send(_text(reply))


# ---------------------------------------------------------------------------- routes


def _refusal(err: BrokerError) -> Response:
    """A refused upgrade: the HTTP error response, and the connection closed after it (hypercorn
    would otherwise keep a connection whose upgrade it refused, and trip over the next request)."""
    response = error_response(err)
    response.headers["Connection"] = "close"
    return response


def register(app: Quart, broker: Broker) -> None:
    hub = hub_of(broker)
    app.extensions["dueslag.streams"] = hub

    def refuse_when_closing() -> None:
        if hub.closing:
            raise Overloaded("the broker is shutting down", code="shutting_down", retry_after=5)

    @app.websocket("/v1/stream/publish")
    async def publish_stream() -> Response | None:
        ws: Websocket = websocket._get_current_object()  # type: ignore[attr-defined]
        try:
            refuse_when_closing()
            sender = broker.require_system(broker.authenticate(ws.headers.get("Authorization")))
            window = int(
                _query_number(ws.args, "window", DEFAULT_WINDOW, lo=1, hi=MAX_WINDOW, integer=True)
            )
        except BrokerError as err:
            return _refusal(err)
        await ws.accept()
        stream = _PublishStream(broker, ws, sender, window)
        with hub.track(stream):
            await stream.serve()
        return None

    @app.websocket("/v1/stream/mailboxes/<mailbox_id>/consume")
    async def consume_stream(mailbox_id: str) -> Response | None:
        ws: Websocket = websocket._get_current_object()  # type: ignore[attr-defined]
        cfg = broker.config
        try:
            refuse_when_closing()
            owner = broker.require_system(broker.authenticate(ws.headers.get("Authorization")))
            mb = broker.mailbox_of(owner, mailbox_id)
            lease = _query_number(
                ws.args, "lease", cfg.default_lease_s, lo=1.0, hi=cfg.max_lease_s, integer=False
            )
        except BrokerError as err:
            return _refusal(err)
        await ws.accept()
        stream = _ConsumeStream(broker, ws, mb, lease)
        with hub.track(stream):
            await stream.serve()
        return None
