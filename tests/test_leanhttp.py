"""The bench's lean HTTP client (broker/loadtest/leanhttp.py) against tiny real servers on
127.0.0.1: keep-alive, reconnects, and every transport failure as httpx.TransportError."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import httpx
import pytest
import trio

from broker.loadtest.leanhttp import LeanClient

Handler = Callable[[trio.SocketStream], Awaitable[None]]


async def start(nursery: trio.Nursery, handler: Handler) -> str:
    listeners: list[Any] = await nursery.start(
        partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
    )
    host, port = listeners[0].socket.getsockname()[:2]
    return f"http://{host}:{port}"


async def read_request(stream: trio.SocketStream, buf: bytearray) -> bytes | None:
    """One request (head and Content-Length body) from ``buf`` + the stream; None at EOF."""
    while b"\r\n\r\n" not in buf:
        data = await stream.receive_some(65536)
        if not data:
            return None
        buf += data
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        rest += await stream.receive_some(65536)
    buf[:] = rest[length:]
    return head + b"\r\n\r\n" + rest[:length]


def answer(body: bytes, *extra: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (
        len(body),
        b"".join(h + b"\r\n" for h in extra),
        body,
    )


async def test_requests_share_one_connection_and_carry_token_headers_and_body() -> None:
    connections: list[list[bytes]] = []

    async def echo(stream: trio.SocketStream) -> None:
        seen: list[bytes] = []
        connections.append(seen)
        buf = bytearray()
        while (req := await read_request(stream, buf)) is not None:
            seen.append(req)
            await stream.send_all(answer(req, b"X-Kind: echo"))

    async with trio.open_nursery() as nursery:
        url = await start(nursery, echo)
        async with LeanClient(url + "/base/", token="tok", timeout=5) as http:
            r = await http.get("/healthz")
            assert r.status_code == 200 and r.headers["x-kind"] == "echo"
            assert r.content.startswith(b"GET /base/healthz HTTP/1.1\r\n")
            assert b"authorization: Bearer tok\r\n" in r.content
            r = await http.post(
                "/v1/messages", content=b'{"a":1}', headers={"Content-Type": "application/json"}
            )
            assert r.content.startswith(b"POST /base/v1/messages HTTP/1.1\r\n")
            assert b"content-type: application/json\r\n" in r.content
            assert r.content.endswith(b'\r\n\r\n{"a":1}') and r.text.endswith('{"a":1}')
        nursery.cancel_scope.cancel()
    assert len(connections) == 1 and len(connections[0]) == 2  # keep-alive


async def test_a_closing_server_means_a_new_connection_for_the_next_request() -> None:
    opened = 0

    async def one_each(stream: trio.SocketStream) -> None:
        nonlocal opened
        opened += 1
        if await read_request(stream, bytearray()) is not None:
            await stream.send_all(answer(b"ok", b"Connection: close"))
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        url = await start(nursery, one_each)
        async with LeanClient(url, timeout=5) as http:
            for _ in range(3):
                assert (await http.get("/")).content == b"ok"
        nursery.cancel_scope.cancel()
    assert opened == 3


async def test_transport_failures_are_httpx_transport_errors_and_the_client_recovers() -> None:
    calls = 0

    async def flaky(stream: trio.SocketStream) -> None:
        nonlocal calls
        buf = bytearray()
        while await read_request(stream, buf) is not None:
            calls += 1
            if calls == 1:  # half an answer, then the connection drops
                await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
                await stream.aclose()
                return
            if calls == 2:  # no answer at all
                await trio.sleep_forever()
            await stream.send_all(answer(b"fine"))

    async with trio.open_nursery() as nursery:
        url = await start(nursery, flaky)
        async with LeanClient(url, timeout=0.5) as http:
            with pytest.raises(httpx.TransportError):
                await http.get("/")
            with pytest.raises(httpx.ReadTimeout):
                await http.get("/")
            assert (await http.get("/")).content == b"fine"
        nursery.cancel_scope.cancel()


async def test_a_refused_connection_is_a_transport_error() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    port = listener.getsockname()[1]
    try:
        async with LeanClient(f"http://127.0.0.1:{port}", timeout=5) as http:
            with pytest.raises(httpx.TransportError):
                await http.get("/")
    finally:
        listener.close()


def test_only_http_urls() -> None:
    with pytest.raises(ValueError, match="not an http"):
        LeanClient("ftp://127.0.0.1/", timeout=1)


async def test_a_cancelled_request_leaves_no_half_used_connection() -> None:
    opened = 0

    async def slow_then_fine(stream: trio.SocketStream) -> None:
        nonlocal opened
        opened += 1
        buf = bytearray()
        first = opened == 1
        while await read_request(stream, buf) is not None:
            if first:
                await trio.sleep(1)  # the client gives up before this answer
            await stream.send_all(answer(b"ok"))

    async with trio.open_nursery() as nursery:
        url = await start(nursery, slow_then_fine)
        async with LeanClient(url, timeout=5) as http:
            with trio.move_on_after(0.2):
                await http.get("/")
            assert (await http.get("/")).content == b"ok"  # not the late first answer's
        nursery.cancel_scope.cancel()
    assert opened == 2
