"""The ASGI app in front of Quart (:class:`FrontRouter`) and the stream routes it serves on the
ASGI callables directly (the raw HTTP routes are :mod:`broker.http.rawhttp`'s).

Why not Quart's own WebSocket routes: quart-trio relays every received message through a second
task and a memory channel, and fires its ``websocket_received``/``websocket_sent`` signals on
every message. At one envelope per frame that relay is a large share of a stream's cost
(docs/performance.md), while the streams need nothing of Quart but the upgrade's headers and query.
So :class:`FrontRouter` takes every WebSocket upgrade itself (the streams are the only
WebSocket routes; any other path is refused with the 404 error response), serves the few raw HTTP
routes (exact method and path), and hands everything else (HTTP, lifespan) to Quart unchanged.

Semantics kept from Quart: a refused upgrade is the HTTP error response (ASGI's
``websocket.http.response`` extension, which hypercorn has; a bare 403 close otherwise); when the
client goes away the handler is cancelled (Quart cancels it the moment its relay sees the
disconnect; here :meth:`RawWebsocket.receive` sees it, since a stream always reads unless its
window is full, and a full window empties as confirms are sent to the closed socket, which
hypercorn ignores).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import parse_qsl

import trio
from werkzeug.datastructures import Headers, MultiDict

from broker.config import MAX_REQUEST_BYTES
from broker.errors import BrokerError, NotFound
from broker.http.common import error_response, internal_error_response, no_such_endpoint
from broker.http.rawhttp import HttpHandler, RawRequest, RawResponse, serve_http

__all__ = ["FrontRouter", "RawWebsocket", "StreamHandler", "StreamSocket"]

log = logging.getLogger("dueslag.streams")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
#: Quart's own ASGI signature is narrower typed; any ASGI app is served the same way
ASGIApp = Callable[..., Awaitable[None]]


class StreamSocket(Protocol):
    """What a stream handler uses of its WebSocket."""

    headers: Headers
    args: MultiDict[str, str]
    path: str
    remote_addr: str | None

    async def accept(self) -> None: ...
    async def receive(self) -> str | bytes | None: ...
    def receive_nowait(self) -> str | bytes | None: ...
    async def send(self, data: str | bytes) -> None: ...
    async def close(self, code: int, reason: str = "") -> None: ...


class RawWebsocket:
    """One upgraded connection on the ASGI ``receive``/``send`` callables.

    ``receive`` returns ``None`` once the client has gone, after cancelling ``scope`` (the
    handler's), as Quart would have done. ``receive_nowait`` returns a message the server has
    already read, else ``None``: hypercorn's trio worker hands the app its queue's bound
    ``MemoryReceiveChannel.receive``, whose ``receive_nowait`` takes what is queued without a
    trip through the scheduler (a client that writes many frames at once has them parsed from
    one read). With any other ``receive`` it is always ``None``, and every message comes
    through ``receive`` as before.
    """

    def __init__(self, scope: Scope, receive: Receive, send: Send, cancel: trio.CancelScope):
        client = scope.get("client")
        self.remote_addr: str | None = client[0] if client else None
        headers = Headers()
        headers["Remote-Addr"] = self.remote_addr or "<local>"
        for name, value in scope["headers"]:
            headers.add(name.decode("latin1").title(), value.decode("latin1"))
        self.headers = headers
        query = scope.get("query_string", b"").decode("ascii", errors="replace")
        self.args: MultiDict[str, str] = MultiDict(parse_qsl(query, keep_blank_values=True))
        self.path: str = scope["path"]
        self._extensions: dict[str, Any] = scope.get("extensions") or {}
        self._receive = receive
        channel = getattr(receive, "__self__", None)
        self._queued = channel if isinstance(channel, trio.MemoryReceiveChannel) else None
        self._send = send
        self._cancel = cancel
        self.accepted = False
        self.gone = False

    async def accept(self) -> None:
        await self._send({"type": "websocket.accept", "subprotocol": None, "headers": []})
        self.accepted = True

    async def receive(self) -> str | bytes | None:
        while not self.gone:
            data = self._message(await self._receive())
            if data is not None:
                return data
        self._cancel.cancel()  # (again, if receive_nowait took the disconnect: cancelled now)
        return None

    def receive_nowait(self) -> str | bytes | None:
        while self._queued is not None and not self.gone:
            try:
                event = self._queued.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return None
            data = self._message(event)
            if data is not None:
                return data
        return None

    def _message(self, event: dict[str, Any]) -> str | bytes | None:
        """A received message's data; None for any other event (a disconnect: now gone, and
        the handler is cancelled by the next ``receive``, so that what ``receive_nowait``
        took before the disconnect is still handled)."""
        kind = event["type"]
        if kind == "websocket.receive":
            data: str | bytes | None = event.get("bytes")
            return data if data is not None else event["text"]
        if kind == "websocket.disconnect":
            self.gone = True
        return None

    async def send(self, data: str | bytes) -> None:
        if isinstance(data, str):
            await self._send({"type": "websocket.send", "bytes": None, "text": data})
        else:
            await self._send({"type": "websocket.send", "bytes": data, "text": None})

    async def close(self, code: int, reason: str = "") -> None:
        await self._send({"type": "websocket.close", "code": code, "reason": reason})

    async def refuse(self, status: int, headers: Headers, body: bytes) -> None:
        """Answer the upgrade with an HTTP response instead (only before :meth:`accept`)."""
        if "websocket.http.response" not in self._extensions:
            await self._send({"type": "websocket.close", "code": 1008})  # the server's 403
            return
        await self._send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
            }
        )
        await self._send({"type": "websocket.http.response.body", "body": body})


#: A stream route's handler: refuses by raising :class:`BrokerError` before ``ws.accept()``.
StreamHandler = Callable[[StreamSocket, dict[str, str]], Awaitable[None]]


class FrontRouter:
    """ASGI app: ``routes`` (path regex -> handler) for WebSocket upgrades (404 for any other
    path), ``http`` ((method, path) -> handler; ``HEAD`` too where ``GET`` is routed) for the raw
    HTTP routes, ``app`` for everything else.

    ``before`` runs ahead of every stream and raw HTTP handler, and ``headers`` go on every raw
    HTTP answer (the workers' peer-notice drain and worker header, as Quart's hooks do for its
    routes). ``limit`` is the raw HTTP routes' request body limit.
    """

    def __init__(
        self,
        app: ASGIApp,
        routes: dict[str, StreamHandler],
        before: Callable[[], None] | None = None,
        *,
        http: dict[tuple[str, str], HttpHandler] | None = None,
        limit: int = MAX_REQUEST_BYTES,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.app = app
        self.routes = [(re.compile(pattern), handler) for pattern, handler in routes.items()]
        self.before = before
        self.http = dict(http or {})
        for (method, path), handler in list(self.http.items()):
            if method == "GET":
                self.http.setdefault(("HEAD", path), handler)
        self.limit = limit
        self.headers = list(headers or [])
        methods: dict[str, list[str]] = {}
        for method, path in sorted(self.http):
            methods.setdefault(path, []).append(method)
        # raw path -> the headers of its 405 (Quart's answer to another method)
        self._allow_headers = {
            path: [*self.headers, (b"allow", ", ".join(m).encode())] for path, m in methods.items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            handler = self.http.get((scope["method"], path))
            headers = self.headers
            if handler is None and path in self._allow_headers:
                handler, headers = _not_allowed, self._allow_headers[path]
            if handler is not None:
                await serve_http(
                    handler,
                    scope,
                    receive,
                    send,
                    limit=self.limit,
                    before=self.before,
                    headers=headers,
                )
                return
        elif kind == "websocket":
            for pattern, stream in self.routes:
                match = pattern.fullmatch(scope["path"])
                if match is not None:
                    await self._serve(stream, match.groupdict(), scope, receive, send)
                    return
            await self._serve(_no_such_stream, {}, scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _serve(
        self,
        handler: StreamHandler,
        params: dict[str, str],
        scope: Scope,
        receive: Receive,
        send: Send,
    ) -> None:
        event = await receive()  # hypercorn opens with websocket.connect; nothing else is sent
        if event["type"] != "websocket.connect":
            return
        with trio.CancelScope() as cancel:
            ws = RawWebsocket(scope, receive, send, cancel)
            try:
                if self.before is not None:
                    self.before()
                await handler(ws, params)
            except BrokerError as err:
                if ws.accepted:
                    raise
                response = error_response(err)
                await ws.refuse(
                    response.status_code, _closing(response.headers), await _body(response)
                )
            except Exception:
                if ws.accepted:
                    raise
                log.exception("unhandled error in a stream upgrade")
                response = internal_error_response()
                await ws.refuse(500, _closing(response.headers), await _body(response))


async def _not_allowed(request: RawRequest) -> RawResponse:
    raise BrokerError(
        f"method {request.method} is not allowed on {request.path}", code="method_not_allowed"
    )


async def _no_such_stream(ws: StreamSocket, params: dict[str, str]) -> None:
    raise NotFound(no_such_endpoint("GET", ws.path))


def _closing(headers: Headers) -> Headers:
    """A refused upgrade closes its connection (hypercorn would otherwise keep a connection whose
    upgrade it refused, and trip over the next request)."""
    headers["Connection"] = "close"
    return headers


async def _body(response: Any) -> bytes:
    data: bytes = await response.get_data(as_text=False)
    return data
