"""The raw-ASGI stream router (broker/http/rawws.py), on fake ASGI callables: what it routes,
how it refuses, and that a client going away cancels its handler (as Quart did)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from broker.errors import Forbidden
from broker.http.rawws import FrontRouter, RawWebsocket, StreamSocket
from tests.asgifake import FakeConnection

HTTP_RESPONSE: dict[str, Any] = {"websocket.http.response": {}}


def ws_scope(
    path: str, query: bytes = b"", extensions: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "type": "websocket",
        "path": path,
        "query_string": query,
        "headers": [(b"authorization", b"Bearer t"), (b"x-thing", b"\xe6")],
        "client": ("127.0.0.1", 5000),
        "extensions": HTTP_RESPONSE if extensions is None else extensions,
    }


CONNECT = {"type": "websocket.connect"}


async def test_routes_stream_paths_with_their_parameters_and_passes_the_rest_on() -> None:
    seen: list[tuple[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(("quart", scope["path"]))

    async def consume(ws: StreamSocket, params: dict[str, str]) -> None:
        seen.append(("consume", params))
        await ws.accept()
        assert await ws.receive() == b"\x01"
        assert await ws.receive() == "text"
        await ws.send("reply")
        await ws.send(b"raw")
        await ws.close(1000, "bye")

    router = FrontRouter(app, {"/s/(?P<mailbox_id>[^/]+)/consume": consume})
    conn = FakeConnection(
        CONNECT,
        {"type": "websocket.receive", "bytes": b"\x01", "text": None},
        {"type": "websocket.receive", "text": "text"},
    )
    await router(ws_scope("/s/mb-1/consume"), conn.receive, conn.send)
    await router(
        {"type": "http", "method": "GET", "path": "/s/mb-1/consume"}, conn.receive, conn.send
    )
    assert seen == [
        ("consume", {"mailbox_id": "mb-1"}),
        ("quart", "/s/mb-1/consume"),
    ]
    assert [m["type"] for m in conn.sent] == [
        "websocket.accept",
        "websocket.send",
        "websocket.send",
        "websocket.close",
    ]
    assert conn.sent[1]["text"] == "reply" and conn.sent[2]["bytes"] == b"raw"
    assert (conn.sent[3]["code"], conn.sent[3]["reason"]) == (1000, "bye")

    other = FakeConnection(CONNECT)  # a WebSocket path that is no stream: 404, not Quart's
    await router(ws_scope("/s/a/b/consume"), other.receive, other.send)
    assert other.sent[0]["status"] == 404
    assert json.loads(other.sent[1]["body"])["error"] == {
        "code": "not_found",
        "message": "no such endpoint: GET /s/a/b/consume",
    }


async def test_upgrade_headers_query_and_peer() -> None:
    conn = FakeConnection()
    scope = ws_scope("/p", b"window=5&x=&window=7&bad=%ZZ")
    ws = RawWebsocket(scope, conn.receive, conn.send, trio.CancelScope())
    assert ws.headers["Authorization"] == "Bearer t"
    assert ws.headers["X-Thing"] == "\xe6"  # latin-1, as Quart decodes header bytes
    assert ws.headers["Remote-Addr"] == ws.remote_addr == "127.0.0.1"
    assert ws.args.getlist("window") == ["5", "7"] and ws.args["x"] == ""
    assert ws.args["bad"] == "%ZZ"


@pytest.mark.parametrize("extensions", [HTTP_RESPONSE, {}])
async def test_a_refusal_before_accept_is_the_http_error_or_a_403_close(
    extensions: dict[str, Any],
) -> None:
    async def handler(ws: StreamSocket, params: dict[str, str]) -> None:
        raise Forbidden("not yours")

    conn = FakeConnection(CONNECT)
    await FrontRouter(_never, {"/p": handler})(
        ws_scope("/p", extensions=extensions), conn.receive, conn.send
    )
    if not extensions:  # no way to send an HTTP response: the server refuses with 403
        assert conn.sent == [{"type": "websocket.close", "code": 1008}]
        return
    start, body = conn.sent
    assert start["type"] == "websocket.http.response.start" and start["status"] == 403
    headers = dict(start["headers"])
    assert headers[b"connection"] == b"close"
    assert headers[b"content-type"].startswith(b"application/json")
    assert body["type"] == "websocket.http.response.body"
    assert json.loads(body["body"])["error"] == {"code": "forbidden", "message": "not yours"}


async def test_a_bug_before_accept_is_a_500_and_after_accept_propagates() -> None:
    async def early(ws: StreamSocket, params: dict[str, str]) -> None:
        raise RuntimeError("boom")

    async def late(ws: StreamSocket, params: dict[str, str]) -> None:
        await ws.accept()
        raise RuntimeError("late")

    router = FrontRouter(_never, {"/early": early, "/late": late})
    conn = FakeConnection(CONNECT)
    await router(ws_scope("/early"), conn.receive, conn.send)
    assert conn.sent[0]["status"] == 500
    assert json.loads(conn.sent[1]["body"])["error"]["code"] == "internal"
    conn = FakeConnection(CONNECT)
    with pytest.raises(RuntimeError, match="late"):
        await router(ws_scope("/late"), conn.receive, conn.send)


async def test_the_client_going_away_cancels_the_handler() -> None:
    reached: list[str] = []

    async def handler(ws: StreamSocket, params: dict[str, str]) -> None:
        await ws.accept()
        assert await ws.receive() is None  # gone
        assert await ws.receive() is None  # and stays gone, without reading again
        reached.append("after receive")
        await trio.sleep_forever()  # cancelled: the router returns
        reached.append("never")

    conn = FakeConnection(CONNECT, {"type": "websocket.disconnect", "code": 1001})
    with trio.fail_after(5):
        await FrontRouter(_never, {"/p": handler})(ws_scope("/p"), conn.receive, conn.send)
    assert reached == ["after receive"]


async def test_before_runs_ahead_of_each_stream_handler() -> None:
    calls: list[str] = []

    async def handler(ws: StreamSocket, params: dict[str, str]) -> None:
        calls.append("handler")

    router = FrontRouter(_never, {"/p": handler}, before=lambda: calls.append("before"))
    conn = FakeConnection(CONNECT)
    await router(ws_scope("/p"), conn.receive, conn.send)
    assert calls == ["before", "handler"]


async def _never(scope: dict[str, Any], receive: Any, send: Any) -> None:
    raise AssertionError("not for the Quart app")


async def test_receive_nowait_takes_what_a_trio_channel_already_holds() -> None:
    """hypercorn's trio worker hands the app its queue's bound ``receive``: frames already
    queued are taken without waiting; a disconnect among them ends the stream at the next
    ``receive``, as a disconnect it reads itself does."""
    send, receive = trio.open_memory_channel[dict[str, Any]](10)
    cancel = trio.CancelScope()
    conn = FakeConnection()
    ws = RawWebsocket(ws_scope("/s"), receive.receive, conn.send, cancel)
    assert ws.receive_nowait() is None  # nothing queued
    for event in (
        {"type": "websocket.receive", "text": "one"},
        {"type": "websocket.receive", "bytes": b"two", "text": None},
        {"type": "websocket.receive", "text": "three"},
        {"type": "websocket.disconnect", "code": 1000},
        {"type": "websocket.receive", "text": "after"},
    ):
        send.send_nowait(event)
    assert await ws.receive() == "one"
    assert ws.receive_nowait() == b"two"
    assert ws.receive_nowait() == "three"
    assert not ws.gone
    assert ws.receive_nowait() is None  # the disconnect: what was taken is handled first,
    assert ws.gone and not cancel.cancel_called  # and the next receive cancels the handler
    assert ws.receive_nowait() is None
    assert await ws.receive() is None and cancel.cancel_called


async def test_receive_nowait_without_a_trio_channel_is_always_none() -> None:
    conn = FakeConnection({"type": "websocket.receive", "text": "one"})
    ws = RawWebsocket(ws_scope("/s"), conn.receive, conn.send, trio.CancelScope())
    assert ws.receive_nowait() is None and conn.received == 0  # never calls receive
    assert await ws.receive() == "one"
