"""Streaming channels over WebSocket: ``/v1/stream/publish`` and ``/v1/stream/mailboxes/{id}/consume``.

Theory of operation
-------------------
Both handlers authenticate the upgrade request exactly like an HTTP request and refuse it with
the same JSON error (401/403/404/503) *before* accepting. After that each connection runs its
tasks in a nursery owned by the handler; when the client goes away the router
(:mod:`broker.http.rawws`) cancels the handler, nursery included, so no task outlives its
connection. The protocol is in docs/streams.md; the flow-control state lives in
:mod:`broker.streaming`. The streams themselves are in :mod:`broker.http.publish` and
:mod:`broker.http.consume`; this module holds what they share (wire shapes, the stop/drain/close
of :class:`_Stream`), the hub and the routes.

Shutdown. :meth:`StreamHub.close` (see :func:`hub_of`) stops every stream: it stops reading
(and leasing), lets what is in flight finish and be confirmed (at most ``DRAIN_TIMEOUT_S``), and
closes with 1001. Without that call, hypercorn cancels the streams at its graceful timeout.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
import trio
from msgspec import UNSET, Struct, UnsetType

from broker.envelope import Haendelsesbesked
from broker.errors import BrokerError, Overloaded
from broker.http.common import ErrorBody, query_number
from broker.http.mailboxes import DeliveryIds, FailedOut
from broker.http.messages import BatchItem
from broker.http.rawws import StreamHandler, StreamSocket
from broker.service import Broker
from broker.streamhub import StreamHub
from broker.streaming import DEFAULT_WINDOW, INTERNAL_ERROR, MAX_WINDOW, PublishFrame
from store.base import PublishResult

__all__ = [
    "ConfirmOut",
    "ConfirmsOut",
    "ConsumeIn",
    "ErrorOut",
    "PublishIn",
    "SettledOut",
    "hub_of",
    "routes",
]

#: How long a stopping stream waits for its in-flight work before it closes anyway.
DRAIN_TIMEOUT_S = 5.0
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


class SettledOut(Struct, omit_defaults=True, kw_only=True):
    """The reply to one consume-stream ack or nack frame: how many it settled (``acked`` or
    ``nacked``, by the frame's kind), the ids it did not, and the frame's ``seq`` if it had one."""

    acked: int | UnsetType = UNSET
    nacked: int | UnsetType = UNSET
    failed: list[FailedOut]
    seq: int | UnsetType = UNSET


class ConsumeIn(Struct, forbid_unknown_fields=True, kw_only=True):
    """A consume-stream client frame: credit, an ack or a nack (credit may ride along)."""

    credit: int | UnsetType = UNSET
    ack: DeliveryIds | UnsetType = UNSET
    nack: DeliveryIds | UnsetType = UNSET
    requeue: bool = True
    seq: int | UnsetType = UNSET


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


# ---------------------------------------------------------------------------- a stream


class _Stream:
    """What both streams share: stopping (cancels the idle waits) and the close."""

    kind = "stream"

    def __init__(self, ws: StreamSocket) -> None:
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


# ---------------------------------------------------------------------------- routes


def routes(broker: Broker) -> dict[str, StreamHandler]:
    """The stream routes (path pattern -> handler) for :class:`~broker.http.rawws.FrontRouter`.

    Each handler authenticates the upgrade exactly like an HTTP request; a refusal is raised as
    the :class:`BrokerError` before the upgrade is accepted, and the router answers it with the
    same JSON error response as the HTTP endpoints.
    """
    # Imported here: the stream modules import their shared pieces from this one.
    from broker.http.consume import ConsumeStream
    from broker.http.publish import PublishStream

    hub = hub_of(broker)
    cfg = broker.config

    def refuse_when_closing() -> None:
        if hub.closing:
            raise Overloaded("the broker is shutting down", code="shutting_down", retry_after=5)

    async def publish_stream(ws: StreamSocket, params: dict[str, str]) -> None:
        refuse_when_closing()
        sender = broker.system_of(ws.headers.get("Authorization"))
        window = int(
            query_number(ws.args, "window", DEFAULT_WINDOW, lo=1, hi=MAX_WINDOW, integer=True)
        )
        await ws.accept()
        stream = PublishStream(broker, ws, sender, window)
        with hub.track(stream):
            await stream.serve()

    async def consume_stream(ws: StreamSocket, params: dict[str, str]) -> None:
        refuse_when_closing()
        owner = broker.system_of(ws.headers.get("Authorization"))
        mb = broker.mailbox_of(owner, params["mailbox_id"])
        lease = query_number(
            ws.args, "lease", cfg.default_lease_s, lo=1.0, hi=cfg.max_lease_s, integer=False
        )
        await ws.accept()
        stream = ConsumeStream(broker, ws, mb, lease)
        with hub.track(stream):
            await stream.serve()

    return {
        "/v1/stream/publish": publish_stream,
        "/v1/stream/mailboxes/(?P<mailbox_id>[^/]+)/consume": consume_stream,
    }
