"""The bench's WebSocket client for its streams: wsproto over one trio stream, no helper tasks.

Why not trio-websocket there: the load generator runs on the same cores as the broker, and
trio-websocket relays every message through a reader task and a memory channel, and every
send through a lock and a task switch. In ``stream`` and ``latency`` the bench spent ~260 µs of
CPU per envelope (docs/performance.md, seventh session), as much as the broker it measured, and
its own queueing showed up as the broker's latency. wsproto alone does the framing (masking,
fragments, the close handshake) for a fraction of that; this module only moves bytes.

One :class:`LeanWebSocket` is read by one task at a time (:meth:`receive`) and may be written
by another (:meth:`send`, :meth:`send_many`: one socket write for many messages, serialized by
a lock); a ping is answered from :meth:`receive`. Every failure after the handshake (a closed
or broken connection, a protocol error) is raised as :class:`ConnectionClosed`; a handshake the
server refuses is :class:`ConnectionRejected` (with its status), any other handshake failure
:class:`HandshakeError`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from urllib.parse import urlsplit

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import ProtocolError

from broker.loadtest.transport import RECEIVE_BYTES, tls_context

__all__ = [
    "ConnectionClosed",
    "ConnectionRejected",
    "HandshakeError",
    "LeanWebSocket",
    "open_websocket",
]

#: Close code for "no close frame was received" (RFC 6455 §7.1.5), as trio-websocket reports it.
ABNORMAL_CLOSURE = 1006

_TRANSPORT_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, ProtocolError)


class HandshakeError(Exception):
    """The upgrade failed before the server answered it (connection refused, dropped, timeout)."""


class ConnectionRejected(HandshakeError):
    """The server answered the upgrade with an HTTP status instead of 101."""

    def __init__(self, status_code: int, body: bytes) -> None:
        super().__init__(f"the server refused the upgrade with HTTP {status_code}")
        self.status_code = status_code
        self.body = body


class ConnectionClosed(Exception):
    """The connection is closed: by the server (its ``code`` and ``reason``) or broken."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}".strip())
        self.code = code
        self.reason = reason


class LeanWebSocket:
    """One open client connection (made by :func:`open_websocket`)."""

    def __init__(self, stream: trio.abc.Stream, conn: WSConnection, max_message_bytes: int) -> None:
        self._stream = stream
        self._conn = conn
        self._max = max_message_bytes
        self._messages: deque[str | bytes] = deque()
        self._parts: list[str | bytes] = []  # the fragments of a message not yet finished
        self._size = 0
        self._closed: ConnectionClosed | None = None
        self._send_lock = trio.Lock()

    async def send(self, data: str | bytes) -> None:
        """One message: text for ``str``, binary for ``bytes``."""
        await self.send_many((data,))

    async def send_many(self, messages: Sequence[str | bytes]) -> None:
        """Several messages (one frame each) in one socket write."""
        if self._closed is not None:
            raise self._closed
        try:
            out = b"".join(
                self._conn.send(TextMessage(m) if isinstance(m, str) else BytesMessage(m))
                for m in messages
            )
        except ProtocolError as exc:  # the close handshake has started
            raise self._fail(repr(exc)) from None
        await self._write(out)

    async def receive(self) -> str | bytes:
        """The next message (``str`` for a text frame). Cancelling it loses nothing."""
        while not self._messages:
            if self._closed is not None:
                raise self._closed
            try:
                data = await self._stream.receive_some(RECEIVE_BYTES)
            except _TRANSPORT_ERRORS as exc:
                raise self._fail(repr(exc)) from None
            if not data:
                raise self._fail("the server closed the connection without a close frame")
            self._conn.receive_data(bytes(data))  # the same object when bytes
            await self._take_events()
        return self._messages.popleft()

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Start the close handshake (if still open) and drop the connection."""
        if self._closed is None:
            self._closed = ConnectionClosed(code, reason)
            with suppress(ConnectionClosed, ProtocolError), trio.move_on_after(1.0):
                await self._write(self._conn.send(CloseConnection(code, reason)))
        with trio.CancelScope(shield=True):
            await self._stream.aclose()

    async def _take_events(self) -> None:
        """Take what wsproto parsed. Never raises: a close or a failure is kept in ``_closed``
        and raised by :meth:`receive` once the messages that came before it are handed out."""
        for event in self._conn.events():
            if isinstance(event, Message):
                self._size += len(event.data)
                if self._size > self._max:
                    self._closed = ConnectionClosed(1009, f"a message exceeded {self._max} bytes")
                    with suppress(ConnectionClosed, ProtocolError), trio.move_on_after(1.0):
                        await self._write(self._conn.send(CloseConnection(1009, "too big")))
                    return
                self._parts.append(event.data)
                if event.message_finished:
                    parts, self._parts, self._size = self._parts, [], 0
                    joined = parts[0] if len(parts) == 1 else parts[0][:0].join(parts)  # type: ignore[arg-type]
                    self._messages.append(joined)
            elif isinstance(event, Ping):
                with suppress(ConnectionClosed):  # kept in _closed
                    await self._write(self._conn.send(event.response()))
            elif isinstance(event, CloseConnection):
                closed = ConnectionClosed(event.code, event.reason or "")
                with suppress(ConnectionClosed):  # the server may drop it right after
                    await self._write(self._conn.send(event.response()))
                self._closed = closed
                return

    async def _write(self, data: bytes) -> None:
        if not data:
            return
        try:
            async with self._send_lock:
                await self._stream.send_all(data)
        except _TRANSPORT_ERRORS as exc:
            raise self._fail(repr(exc)) from None

    def _fail(self, reason: str) -> ConnectionClosed:
        if self._closed is None:
            self._closed = ConnectionClosed(ABNORMAL_CLOSURE, reason)
        return self._closed


@asynccontextmanager
async def open_websocket(
    url: str,
    *,
    headers: Sequence[tuple[bytes, bytes]] = (),
    max_message_bytes: int,
    connect_timeout: float = 10.0,
) -> AsyncIterator[LeanWebSocket]:
    """Connect to ``ws://`` or ``wss://`` ``url`` and upgrade; closed (code 1000) on exit.

    Error handling:
        :class:`ConnectionRejected` when the server answers the upgrade with a status (its
        body read, bounded), :class:`HandshakeError` for any other failure before the upgrade.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise HandshakeError(f"not a ws(s) URL: {url!r}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn = WSConnection(ConnectionType.CLIENT)
    try:
        with trio.fail_after(connect_timeout):
            if secure:
                stream: trio.abc.Stream = await trio.open_ssl_over_tcp_stream(
                    parts.hostname, port, ssl_context=tls_context()
                )
            else:
                stream = await trio.open_tcp_stream(parts.hostname, port)
            try:
                request = Request(host=parts.netloc, target=target, extra_headers=list(headers))
                await stream.send_all(conn.send(request))
                await _handshake(stream, conn)
            except BaseException:
                with trio.CancelScope(shield=True):
                    await stream.aclose()
                raise
    except (trio.TooSlowError, *_TRANSPORT_ERRORS) as exc:
        raise HandshakeError(repr(exc)) from None
    ws = LeanWebSocket(stream, conn, max_message_bytes)
    await ws._take_events()  # frames that came in the same read as the 101
    try:
        yield ws
    finally:
        with trio.CancelScope(shield=True):
            await ws.aclose()


async def _handshake(stream: trio.abc.Stream, conn: WSConnection) -> None:
    """Read the server's answer to the upgrade (frames read with it stay in ``conn``).

    Error handling:
        Raises :class:`ConnectionRejected` for an answer other than 101 (after its body, at most
        64 KiB of it), :class:`HandshakeError` if the connection ends first.
    """
    status, body = 0, b""
    while True:
        data = await stream.receive_some(RECEIVE_BYTES)
        if not data:
            if status:
                raise ConnectionRejected(status, body)
            raise HandshakeError("the server closed the connection during the upgrade")
        conn.receive_data(bytes(data))
        for event in conn.events():
            if isinstance(event, AcceptConnection):
                return
            if isinstance(event, RejectConnection):
                status = event.status_code
                if not event.has_body:
                    raise ConnectionRejected(status, b"")
            elif isinstance(event, RejectData):
                body = (body + event.data)[: 64 * 1024]
                if event.body_finished:
                    raise ConnectionRejected(status, body)
