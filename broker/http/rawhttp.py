"""The hot HTTP endpoints served on the ASGI callables directly, in front of the Quart app.

Why: the send endpoints (``POST /v1/messages``, ``POST /v1/messages/batch``) and the probes need
nothing of Quart but a body, three headers and a JSON answer, while Quart's per-request machinery
(request context, werkzeug request and header objects, a task for the body, signals, the response
object) were about a fifth of the server's CPU for a one-envelope POST (py-spy). Measured with
``dueslag bench --scenario single``: 1.19x the envelopes/s of the Quart route (docs/performance.md).
The other endpoints stay in Quart; :class:`~broker.http.rawws.FrontRouter` picks the route.

Semantics kept from the Quart routes: the body limit (413 ``too_large`` at once when
``Content-Length`` says so, else as soon as the body passes it), the body timeout (408), the one
JSON error shape for every refusal, a 500 without details for a bug (the details go to the log),
``HEAD`` answered like ``GET`` without the body, and with ``serve --workers N`` the peer-notice
drain before each request and the worker's header on each answer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import msgspec
import trio

from broker.errors import BrokerError, Overloaded, PayloadTooLarge, RequestTimeout

__all__ = [
    "BODY_TIMEOUT_S",
    "HttpHandler",
    "RawRequest",
    "RawResponse",
    "error_parts",
    "internal_error_parts",
    "json_answer",
    "serve_http",
]

log = logging.getLogger("dueslag.http")

#: Seconds a client has to deliver a request body (Quart's BODY_TIMEOUT for the other routes).
BODY_TIMEOUT_S = 60.0

_encoder = msgspec.json.Encoder()
_JSON_CT = (b"content-type", b"application/json")
_INTERNAL = _encoder.encode({"error": {"code": "internal", "message": "internal error"}})

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class RawResponse(NamedTuple):
    """A JSON answer: status, encoded body, extra headers."""

    status: int
    body: bytes
    headers: dict[str, str] | None = None


def json_answer(body: Any, status: int = 200) -> RawResponse:
    return RawResponse(status, _encoder.encode(body))


def error_parts(err: BrokerError) -> RawResponse:
    """The one error shape of :func:`broker.http.common.error_response`, as raw parts."""
    headers = {"Retry-After": str(err.retry_after)} if isinstance(err, Overloaded) else None
    if err.code == "unauthorized":
        headers = {"WWW-Authenticate": 'Bearer realm="dueslag"'}
    return RawResponse(err.http_status, _encoder.encode({"error": err.to_dict()}), headers)


def internal_error_parts() -> RawResponse:
    """The answer to a bug: the one error shape, no details (those go to the log)."""
    return RawResponse(500, _INTERNAL)


class _ClientGone(Exception):
    """The client disconnected before its body arrived: nothing to answer."""


class RawRequest:
    """One HTTP request on the ASGI callables: what the raw handlers read of it."""

    __slots__ = ("_headers", "_limit", "_receive", "method", "path", "remote_addr")

    def __init__(self, scope: Scope, receive: Receive, limit: int) -> None:
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        client = scope.get("client")
        self.remote_addr: str | None = client[0] if client else None
        self._headers: list[tuple[bytes, bytes]] = scope["headers"]
        self._receive = receive
        self._limit = limit

    def header(self, name: bytes) -> str | None:
        """The first value of header ``name`` (lower-case bytes, as ASGI gives names)."""
        for key, value in self._headers:
            if key == name:
                return value.decode("latin1")
        return None

    async def body(self, limit: int | None = None) -> bytes:
        """The whole body, within the size limit (the route's, or ``limit`` when smaller) and
        :data:`BODY_TIMEOUT_S`.

        Error handling:
            :class:`PayloadTooLarge` when ``Content-Length`` or the bytes received pass the
            limit, :class:`RequestTimeout` when the body is slower than the timeout.
        """
        limit = self._limit if limit is None else min(limit, self._limit)
        declared = self.header(b"content-length")
        if declared is not None and declared.isdecimal() and int(declared) > limit:
            raise PayloadTooLarge("request body too large")
        chunks: list[bytes] = []
        size = 0
        with trio.move_on_after(BODY_TIMEOUT_S):
            while True:
                event = await self._receive()
                if event["type"] == "http.disconnect":
                    raise _ClientGone
                chunk: bytes = event.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge("request body too large")
                chunks.append(chunk)
                if not event.get("more_body", False):
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        raise RequestTimeout(f"the request body did not arrive within {BODY_TIMEOUT_S:g} s")


#: A raw route's handler: answers, or raises :class:`BrokerError` for the error response.
HttpHandler = Callable[[RawRequest], Awaitable[RawResponse]]


async def serve_http(
    handler: HttpHandler,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    limit: int,
    before: Callable[[], None] | None = None,
    headers: list[tuple[bytes, bytes]] = [],  # noqa: B006 - never mutated
) -> None:
    """Run ``handler`` for one request and send its answer (or the error response)."""
    request = RawRequest(scope, receive, limit)
    try:
        if before is not None:
            before()
        response = await handler(request)
    except BrokerError as err:
        response = error_parts(err)
    except _ClientGone:
        return
    except Exception:
        log.exception("unhandled error in a request handler")
        response = internal_error_parts()
    out = [_JSON_CT, (b"content-length", str(len(response.body)).encode()), *headers]
    if response.headers:
        out.extend((k.lower().encode(), v.encode()) for k, v in response.headers.items())
    await send({"type": "http.response.start", "status": response.status, "headers": out})
    body = b"" if scope["method"] == "HEAD" else response.body
    await send({"type": "http.response.body", "body": body, "more_body": False})
