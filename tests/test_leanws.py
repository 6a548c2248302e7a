"""The bench's lean WebSocket client (broker/loadtest/leanws.py) against tiny wsproto servers on
127.0.0.1: the handshake, messages both ways (one write for many), fragments, pings, closes,
size limits, refused upgrades and broken connections."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from broker.loadtest.leanws import (
    ConnectionClosed,
    ConnectionRejected,
    HandshakeError,
    open_websocket,
)

MAX = 1 << 20


class Peer:
    """The server side of one connection: wsproto over the accepted stream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.SERVER)
        self.events: list[Event] = []
        self.reads = 0  # socket reads that carried data

    async def next_event(self) -> Event:
        while not self.events:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError
            self.reads += 1
            self.ws.receive_data(data)
            self.events.extend(self.ws.events())
        return self.events.pop(0)

    async def send(self, *events: Event) -> None:
        await self.stream.send_all(b"".join(self.ws.send(e) for e in events))


Script = Callable[[Peer, Request], Awaitable[None]]


async def serve(nursery: trio.Nursery, script: Script, accept: bool = True) -> str:
    async def handler(stream: trio.SocketStream) -> None:
        peer = Peer(stream)
        async with stream:
            request = await peer.next_event()
            assert isinstance(request, Request)
            if accept:
                await peer.send(AcceptConnection())
            await script(peer, request)

    listeners: list[Any] = await nursery.start(
        partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
    )
    port = listeners[0].socket.getsockname()[1]
    return f"ws://127.0.0.1:{port}/v1/stream/publish?window=5"


async def closed_after(url: str, first: str) -> ConnectionClosed:
    """Receive ``first``, then the close the next receive raises; sending fails after it."""
    with trio.fail_after(10):
        async with open_websocket(url, max_message_bytes=MAX) as ws:
            assert await ws.receive() == first
            with pytest.raises(ConnectionClosed) as info:
                await ws.receive()
            with pytest.raises(ConnectionClosed):
                await ws.send("too late")
            return info.value


async def test_handshake_and_messages_both_ways(nursery: trio.Nursery) -> None:
    seen: list[Any] = []

    async def echo(peer: Peer, request: Request) -> None:
        seen.append(request)
        parts: list[Any] = []  # wsproto hands a big message over in parts as it arrives
        while True:
            event = await peer.next_event()
            if isinstance(event, CloseConnection):
                seen.append(event.code)
                await peer.send(event.response())
                return
            assert isinstance(event, Message)
            parts.append(event.data)
            if event.message_finished:
                data, parts = parts[0][:0].join(parts), []
                seen.append(data)
                await peer.send(type(event)(data=data))

    url = await serve(nursery, echo)
    with trio.fail_after(10):
        async with open_websocket(
            url, headers=[(b"authorization", b"Bearer tok")], max_message_bytes=MAX
        ) as ws:
            await ws.send("hej")
            assert await ws.receive() == "hej"
            await ws.send(b"\x00\x01")
            assert await ws.receive() == b"\x00\x01"
            await ws.send_many(["a", b"b", "c" * 70_000])  # separate frames, in order
            assert [await ws.receive() for _ in range(3)] == ["a", b"b", "c" * 70_000]
        await trio.sleep(0.05)
    request = seen[0]
    assert request.target == "/v1/stream/publish?window=5"
    assert (b"authorization", b"Bearer tok") in request.extra_headers
    assert seen[1:] == ["hej", b"\x00\x01", "a", b"b", "c" * 70_000, 1000]


async def test_send_many_is_one_socket_write(nursery: trio.Nursery) -> None:
    reads: list[int] = []
    messages: list[str] = []

    async def count(peer: Peer, request: Request) -> None:
        with trio.move_on_after(0.5):  # let all of it arrive before reading
            await trio.sleep_forever()
        while len(messages) < 20:
            event = await peer.next_event()
            assert isinstance(event, TextMessage)
            messages.append(event.data)
        reads.append(peer.reads)

    url = await serve(nursery, count)
    with trio.fail_after(10):
        async with open_websocket(url, max_message_bytes=MAX) as ws:
            await ws.send_many([str(i) for i in range(20)])
            while not reads:
                await trio.sleep(0.01)
    assert messages == [str(i) for i in range(20)]
    assert reads == [2]  # the upgrade request, then all twenty frames in one read


async def test_fragments_are_joined_and_pings_answered(nursery: trio.Nursery) -> None:
    got: list[Event] = []

    async def fragments(peer: Peer, request: Request) -> None:
        await peer.send(
            Ping(b"p1"),
            TextMessage("he", message_finished=False),
            TextMessage("j", message_finished=True),
            BytesMessage(b"x", message_finished=False),
            BytesMessage(b"yz", message_finished=True),
        )
        got.append(await peer.next_event())

    url = await serve(nursery, fragments)
    with trio.fail_after(10):
        async with open_websocket(url, max_message_bytes=MAX) as ws:
            assert await ws.receive() == "hej"
            assert await ws.receive() == b"xyz"
            while not got:
                await trio.sleep(0.01)
    assert isinstance(got[0], Pong) and got[0].payload == b"p1"


async def test_a_close_from_the_server_comes_after_the_messages_before_it(
    nursery: trio.Nursery,
) -> None:
    async def bye(peer: Peer, request: Request) -> None:
        await peer.send(TextMessage("last"), CloseConnection(4000, "bye"))
        event = await peer.next_event()
        assert isinstance(event, CloseConnection) and event.code == 4000  # answered

    closed = await closed_after(await serve(nursery, bye), "last")
    assert (closed.code, closed.reason) == (4000, "bye")


async def test_a_message_over_the_limit_closes_the_connection(nursery: trio.Nursery) -> None:
    closes: list[int | None] = []

    async def big(peer: Peer, request: Request) -> None:
        await peer.send(BytesMessage(b"x" * 2000))
        event = await peer.next_event()
        closes.append(event.code if isinstance(event, CloseConnection) else None)

    url = await serve(nursery, big)
    with trio.fail_after(10):
        async with open_websocket(url, max_message_bytes=1000) as ws:
            with pytest.raises(ConnectionClosed) as info:
                await ws.receive()
            assert info.value.code == 1009
        while not closes:
            await trio.sleep(0.01)
    assert closes == [1009]


async def test_a_broken_connection_is_connection_closed(nursery: trio.Nursery) -> None:
    async def drop(peer: Peer, request: Request) -> None:
        await peer.send(TextMessage("one"))  # then the stream closes without a close frame

    closed = await closed_after(await serve(nursery, drop), "one")
    assert closed.code == 1006


async def test_a_cancelled_receive_loses_nothing(nursery: trio.Nursery) -> None:
    go = trio.Event()

    async def late(peer: Peer, request: Request) -> None:
        await go.wait()
        await peer.send(TextMessage("a"), TextMessage("b"))
        await peer.next_event()

    url = await serve(nursery, late)
    with trio.fail_after(10):
        async with open_websocket(url, max_message_bytes=MAX) as ws:
            with trio.move_on_after(0.05) as idle:
                await ws.receive()
            assert idle.cancelled_caught
            go.set()
            assert [await ws.receive(), await ws.receive()] == ["a", "b"]


async def test_a_refused_upgrade_carries_its_status_and_body(nursery: trio.Nursery) -> None:
    async def refuse(peer: Peer, request: Request) -> None:
        body = b'{"error":{"code":"unauthorized"}}'
        headers = [(b"content-length", str(len(body)).encode())]
        await peer.send(
            RejectConnection(status_code=401, headers=headers, has_body=True),
            RejectData(data=body),
        )

    url = await serve(nursery, refuse, accept=False)
    with trio.fail_after(10), pytest.raises(ConnectionRejected) as info:
        async with open_websocket(url, max_message_bytes=MAX):
            pass
    assert info.value.status_code == 401
    assert info.value.body == b'{"error":{"code":"unauthorized"}}'


async def test_nobody_listening_is_a_handshake_error() -> None:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # the port is free: the connection is refused
    with trio.fail_after(10), pytest.raises(HandshakeError) as info:
        async with open_websocket(f"ws://127.0.0.1:{port}/", max_message_bytes=MAX):
            pass
    assert not isinstance(info.value, ConnectionRejected)
    with pytest.raises(HandshakeError, match="not a ws"):
        async with open_websocket("http://127.0.0.1/", max_message_bytes=MAX):
            pass
