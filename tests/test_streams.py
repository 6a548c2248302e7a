"""The streaming channels: the WebSocket publish and consume streams (broker/http/streams.py)
and their flow-control state (broker/streaming.py).

Rules: real hypercorn on 127.0.0.1:0 (the ``server`` fixture) and a real WebSocket client
(trio-websocket); every test has an absolute ``trio.fail_after``; time that matters to the
broker (leases) moves with the FakeClock, never with sleeps. Refused upgrades are plain HTTP
responses, checked with httpx.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_client_stream

from broker.config import BrokerConfig
from broker.errors import InvalidInput, Overloaded
from broker.http import streams
from broker.http.publish import READ_AHEAD_FRAMES
from broker.http.streams import hub_of
from broker.loadtest.leanws import ConnectionClosed as ConnectionClosedLean
from broker.loadtest.leanws import open_websocket
from broker.server import ServerInfo, serve
from broker.streamhub import Credit
from broker.streaming import PublishFrame, PublishWindow, decode_publish_frame
from store.base import PublishResult
from tests.conftest import ADMIN_TOKEN, TYPE1, TYPE2, Api, FakeClock, envelope

MAX_MESSAGE = 16 * 1024 * 1024


# ---------------------------------------------------------------------------- helpers


@asynccontextmanager
async def connect(server: ServerInfo, path: str, api: Api) -> AsyncIterator[WebSocketConnection]:
    """A WebSocket client connection authenticated as ``api``.

    The TCP stream is ours to close: trio-websocket 0.12 leaves it open when the server closes
    the WebSocket first (the client waits for the server's TCP close, and hypercorn keeps the
    connection for keep-alive), which would leak the socket.
    """
    host, _, port = server.url.removeprefix("http://").partition(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream, trio.open_nursery() as nursery:
        ws = await wrap_client_stream(
            nursery,
            stream,
            f"{host}:{port}",
            path,
            extra_headers=[(b"Authorization", api.headers["Authorization"].encode())],
            max_message_size=MAX_MESSAGE,
        )
        try:
            yield ws
        finally:
            with trio.move_on_after(5):
                await ws.aclose()
            await stream.aclose()  # also ends the client's reader task


async def upgrade(server: ServerInfo, path: str, token: str | None) -> httpx.Response:
    """A WebSocket upgrade request that is expected to be refused with an HTTP answer (which
    closes the connection)."""
    headers = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        response = await client.get(path, headers=headers)
    assert response.headers["Connection"] == "close"
    return response


async def receive(ws: WebSocketConnection) -> dict[str, Any]:
    return json.loads(await ws.get_message())  # type: ignore[no-any-return]


async def confirms(ws: WebSocketConnection, n: int) -> tuple[dict[int, dict[str, Any]], int]:
    """Read confirm messages until ``n`` frames are confirmed; every seq must come once.
    Returns the confirms by seq and how many messages carried them."""
    got: dict[int, dict[str, Any]] = {}
    messages = 0
    while len(got) < n:
        msg = await receive(ws)
        messages += 1
        for c in msg["confirms"]:
            assert c["seq"] not in got, f"seq {c['seq']} confirmed twice"
            got[c["seq"]] = c
    return got, messages


async def nothing_arrives(ws: WebSocketConnection, seconds: float = 0.3) -> None:
    with trio.move_on_after(seconds):
        msg = await ws.get_message()
        raise AssertionError(f"unexpected message {msg[:200]!r}")


async def close_code(ws: WebSocketConnection, on_message: Any = None) -> int:
    """Read until the server closes the connection; the close code."""
    while True:
        try:
            msg = await receive(ws)
        except ConnectionClosed as closed:
            if closed.reason is None:
                raise AssertionError("closed without a reason") from None
            return closed.reason.code
        if on_message is not None:
            on_message(msg)


async def wait_until(predicate: Any, what: str) -> None:
    """Poll server-side state (the stream tasks run in the same trio run)."""
    while not predicate():
        await trio.sleep(0.01)


def bad_envelope() -> dict[str, Any]:
    env = envelope(TYPE1)
    del env["BeskedVersion"]
    return env


class Gate:
    """Holds every store commit until opened: the writer's commit thread waits in
    ``store.apply``, or its event-loop side before a batch goes to the writer process."""

    def __init__(self, server: ServerInfo, monkeypatch: pytest.MonkeyPatch) -> None:
        self._open = threading.Event()
        remote = server.broker.writer.remote
        if remote is None:
            store = server.broker.store
            apply = store.apply

            def gated_apply(*args: Any, **kw: Any) -> Any:
                self._open.wait(10)
                return apply(*args, **kw)

            monkeypatch.setattr(store, "apply", gated_apply)
            return
        send = remote.apply

        async def gated_send(*args: Any, **kw: Any) -> Any:
            await trio.to_thread.run_sync(self._open.wait, 10)
            return await send(*args, **kw)

        monkeypatch.setattr(remote, "apply", gated_send)

    def open(self) -> None:
        self._open.set()


# ---------------------------------------------------------------------------- publish


async def test_publish_pipelined_each_frame_confirmed_once(admin: Api, server: ServerInfo) -> None:
    with trio.fail_after(30):
        sys = await admin.system()
        mb1, mb2 = await sys.mailbox(TYPE1), await sys.mailbox(TYPE1, TYPE2)
        frames = 600
        expected_envelopes = 0
        async with connect(server, "/v1/stream/publish", sys) as ws:
            for seq in range(frames):  # all sent before any confirm is read
                if seq % 5 == 0:
                    body = {"seq": seq, "envelopes": [envelope(TYPE1), envelope(TYPE2)]}
                    expected_envelopes += 2
                else:
                    body = {"seq": seq, "envelope": envelope(TYPE1)}
                    expected_envelopes += 1
                await ws.send_message(json.dumps(body))
            got, messages = await confirms(ws, frames)
            await nothing_arrives(ws)
        assert sorted(got) == list(range(frames))
        tids = set()
        for seq, c in got.items():
            results = c["results"]
            assert len(results) == (2 if seq % 5 == 0 else 1)
            for i, r in enumerate(results):
                assert r["duplicate"] is False
                assert r["mailboxes"] == (1 if i == 1 else 2)  # TYPE2 only matches mb2
                tids.add(r["transaction_id"])
        assert len(tids) == expected_envelopes
        assert messages < frames  # confirms ready together went out as one message
        n_type1 = expected_envelopes - frames // 5
        assert (await sys.stats(mb1))["ready"] == n_type1
        assert (await sys.stats(mb2))["ready"] == expected_envelopes


async def test_frames_written_at_once_are_read_ahead_into_one_job(
    admin: Api, server: ServerInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Frames that reach the server in one write are queued as few writer jobs (at most
    READ_AHEAD_FRAMES frames each), and each frame is still confirmed with its own results,
    in order; a frame that breaks the stream ends it after the good ones before it."""
    calls: list[int] = []
    publish_enqueue = server.broker.publish_enqueue

    async def counted(sender: Any, items: Any, ip: Any, on_done: Any) -> None:
        calls.append(len(items))
        await publish_enqueue(sender, items, ip, on_done)
        # as a busy event loop would: meanwhile hypercorn queues the frames it has parsed
        # (up to its app queue's 10); idle, the two tasks take turns, one frame each
        await trio.sleep(0.01)

    monkeypatch.setattr(server.broker, "publish_enqueue", counted)
    with trio.fail_after(30):
        sys = await admin.system()
        mb = await sys.mailbox(TYPE1)
        url = server.url.replace("http://", "ws://") + "/v1/stream/publish"
        headers = [(b"authorization", sys.headers["Authorization"].encode())]
        frames = []
        for seq in range(150):
            if seq % 7 == 3:  # a bad item in a frame of its own
                frames.append(json.dumps({"seq": seq, "envelope": bad_envelope()}))
            elif seq % 10 == 0:
                frames.append(
                    json.dumps({"seq": seq, "envelopes": [envelope(TYPE1), envelope(TYPE1)]})
                )
            else:
                frames.append(json.dumps({"seq": seq, "envelope": envelope(TYPE1)}))
        async with open_websocket(url, headers=headers, max_message_bytes=MAX_MESSAGE) as ws:
            await ws.send_many(frames)
            got: dict[int, dict[str, Any]] = {}
            while len(got) < len(frames):
                for c in json.loads(await ws.receive())["confirms"]:
                    assert c["seq"] not in got
                    got[c["seq"]] = c
            await ws.send_many([json.dumps({"seq": 200, "envelope": envelope(TYPE1)}), "{}"])
            last = [json.loads(await ws.receive()) for _ in range(2)]
            with pytest.raises(ConnectionClosedLean) as info:
                await ws.receive()
        assert [c["seq"] for c in last[0]["confirms"]] == [200]  # stored before the bad frame
        assert last[1]["error"]["code"] == "invalid"
        assert info.value.code == 1007
    stored = 0
    for seq, c in got.items():
        results = c["results"]
        if seq % 7 == 3:
            assert [r["error"]["code"] for r in results] == ["invalid_envelope"]
        else:
            assert len(results) == (2 if seq % 10 == 0 else 1)
            assert all(r["mailboxes"] == 1 and not r["duplicate"] for r in results)
            stored += len(results)
    items = sum(len(c["results"]) for c in got.values())
    assert sum(calls) == items + 1  # every item once (a bad one too: refused in place)
    assert len(calls) < len(frames) // 4  # read ahead: far fewer jobs than frames
    assert max(calls) <= READ_AHEAD_FRAMES * 2  # at most 64 frames of at most 2 items
    assert (await sys.stats(mb))["ready"] == stored + 1  # with seq 200


async def test_publish_keeps_order_and_dedups(admin: Api, server: ServerInfo) -> None:
    with trio.fail_after(30):
        sys = await admin.system()
        mb = await sys.mailbox(TYPE1)
        ids = [f"00000000-0000-4000-8000-{i:012d}" for i in range(300)]
        async with connect(server, "/v1/stream/publish", sys) as ws:
            for seq, besked_id in enumerate(ids):
                await ws.send_message(
                    json.dumps({"seq": seq, "envelope": envelope(TYPE1, besked_id)})
                )
            await ws.send_message(json.dumps({"seq": 300, "envelope": envelope(TYPE1, ids[0])}))
            got, _ = await confirms(ws, 301)
        assert got[300]["results"][0]["duplicate"] is True
        assert got[300]["results"][0]["transaction_id"] == got[0]["results"][0]["transaction_id"]
        delivered = await sys.poll(mb, max=1000)
        assert [d["envelope"]["BeskedId"]["UUIDIdentifikator"] for d in delivered] == ids


async def test_publish_bad_item_fails_only_itself(admin: Api, server: ServerInfo) -> None:
    with trio.fail_after(30):
        sys = await admin.system()
        mb = await sys.mailbox(TYPE1)
        async with connect(server, "/v1/stream/publish", sys) as ws:
            mixed = [envelope(TYPE1), bad_envelope(), envelope(TYPE1), 42]
            await ws.send_message(json.dumps({"seq": 1, "envelopes": mixed}))
            await ws.send_message(json.dumps({"seq": 2, "envelope": bad_envelope()}))
            await ws.send_message(
                json.dumps({"seq": 3, "envelope": envelope(TYPE1), "envelopes": []})
            )
            await ws.send_message(json.dumps({"seq": 4, "envelope": envelope(TYPE1), "extra": 1}))
            await ws.send_message(json.dumps({"seq": 5, "envelopes": [{}] * 5001}))
            await ws.send_message(json.dumps({"seq": 6, "envelopes": []}))
            packed = msgspec.msgpack.encode({"seq": 7, "envelopes": [envelope(TYPE1), {"x": 1}]})
            await ws.send_message(packed)  # a binary frame is msgpack
            await ws.send_message(json.dumps({"seq": 8, "envelope": envelope(TYPE1)}).encode())
            got, _ = await confirms(ws, 8)
        r = got[1]["results"]
        assert r[0]["mailboxes"] == 1 and r[2]["mailboxes"] == 1
        assert r[1] == {
            "error": {
                "code": "invalid_envelope",
                "message": "Object missing required field `BeskedVersion`",
                "path": "$.envelopes[1]",
            }
        }
        assert r[3]["error"]["code"] == "invalid_envelope"
        assert r[3]["error"]["path"] == "$.envelopes[3]"
        assert got[2]["results"][0]["error"]["path"] == "$.envelope"
        assert got[3]["error"]["code"] == "invalid" and "results" not in got[3]
        assert got[4]["error"]["code"] == "unknown_field"
        assert got[5]["error"]["code"] == "too_large"
        assert got[6] == {"seq": 6, "results": []}
        assert got[7]["results"][0]["mailboxes"] == 1
        assert got[7]["results"][1]["error"]["code"] == "unknown_field"
        assert got[8]["results"][0]["mailboxes"] == 1  # JSON in a binary frame
        assert (await sys.stats(mb))["ready"] == 4


async def test_publish_frame_without_seq_closes_the_stream(admin: Api, server: ServerInfo) -> None:
    with trio.fail_after(30):
        sys = await admin.system()
        mb = await sys.mailbox(TYPE1)
        async with connect(server, "/v1/stream/publish", sys) as ws:
            for seq in range(20):
                await ws.send_message(json.dumps({"seq": seq, "envelope": envelope(TYPE1)}))
            await ws.send_message('{"envelope": {}}')
            await ws.send_message(json.dumps({"seq": 99, "envelope": envelope(TYPE1)}))
            got, _ = await confirms(ws, 20)  # what was read before is still confirmed
            err = await receive(ws)
            assert err["error"]["code"] == "invalid"
            assert "missing required field `seq`" in err["error"]["message"]
            assert await close_code(ws) == 1007
        assert 99 not in got
        assert (await sys.stats(mb))["ready"] == 20


async def test_a_bug_closes_the_stream_with_1011(
    admin: Api, server: ServerInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(frame: Any) -> Any:
        raise RuntimeError("a bug")

    with trio.fail_after(30):
        sys = await admin.system()
        await sys.mailbox(TYPE1)
        monkeypatch.setattr(streams, "_confirm_out", broken)
        async with connect(server, "/v1/stream/publish", sys) as ws:
            await ws.send_message(json.dumps({"seq": 1, "envelope": envelope(TYPE1)}))
            msgs: list[Any] = []
            assert await close_code(ws, msgs.append) == 1011
        assert msgs == [{"error": {"code": "internal", "message": "internal error"}}]


async def test_confirms_only_after_commit(
    admin: Api, server: ServerInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(30):
        sys = await admin.system()
        mb = await sys.mailbox(TYPE1)
        async with connect(server, "/v1/stream/publish", sys) as ws:
            gate = Gate(server, monkeypatch)
            try:
                for seq in range(5):
                    await ws.send_message(json.dumps({"seq": seq, "envelope": envelope(TYPE1)}))
                await nothing_arrives(ws)
                assert (await sys.stats(mb))["ready"] == 0
            finally:
                gate.open()
            got, _ = await confirms(ws, 5)
            assert (await sys.stats(mb))["ready"] == 5
        assert all(c["results"][0]["mailboxes"] == 1 for c in got.values())


async def test_full_window_stops_reading(
    admin: Api, server: ServerInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(30):
        sys = await admin.system()
        mb = await sys.mailbox(TYPE1)
        hub = hub_of(server.broker)
        async with connect(server, "/v1/stream/publish?window=4", sys) as ws:
            gate = Gate(server, monkeypatch)
            try:
                for seq in range(30):  # more than the window; the framework buffers the rest
                    await ws.send_message(json.dumps({"seq": seq, "envelope": envelope(TYPE1)}))
                (stream,) = hub.streams()
                window = stream.window  # type: ignore[attr-defined]
                await wait_until(lambda: window.statistics().accepted_frames == 4, "4 read")
                await trio.sleep(0.3)
                s = window.statistics()
                assert (s.accepted_frames, s.unconfirmed_frames, s.confirmed_frames) == (4, 4, 0)
            finally:
                gate.open()
            await confirms(ws, 30)
            s = window.statistics()
            assert (s.accepted_frames, s.confirmed_frames, s.unconfirmed_frames) == (30, 30, 0)
            assert s.high_water == 4  # never more than the window unconfirmed
        assert (await sys.stats(mb))["ready"] == 30


async def test_stream_refusals_use_the_http_error_shape(admin: Api, server: ServerInfo) -> None:
    with trio.fail_after(30):
        a, b = await admin.system("a"), await admin.system("b")
        mb = await a.mailbox(TYPE1)
        token_b = b.headers["Authorization"].removeprefix("Bearer ")
        consume = f"/v1/stream/mailboxes/{mb}/consume"

        r = await upgrade(server, "/v1/stream/publish", None)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        r = await upgrade(server, "/v1/stream/publish", "nope")
        assert r.status_code == 401 and r.json()["error"]["message"] == "unknown token"
        r = await upgrade(server, "/v1/stream/publish", ADMIN_TOKEN)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        r = await upgrade(server, "/v1/stream/publish?window=0", token_b)
        assert r.status_code == 400
        assert r.json()["error"] == {
            "code": "invalid",
            "message": "query parameter window must be between 1 and 10000",
            "path": "query.window",
        }
        r = await upgrade(server, consume, None)
        assert r.status_code == 401
        r = await upgrade(server, consume, token_b)  # another system's mailbox: as if missing
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = await upgrade(server, "/v1/stream/mailboxes/missing/consume", token_b)
        assert r.status_code == 404
        r = await upgrade(server, consume + "?lease=0.5", a.headers["Authorization"][7:])
        assert r.status_code == 400 and r.json()["error"]["path"] == "query.lease"
        # not a stream route: Quart's answer, in the same error shape
        r = await upgrade(server, "/v1/stream/nope", token_b)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


# ---------------------------------------------------------------------------- consume


async def send_batch(sys: Api, n: int, message_type: str = TYPE1) -> None:
    body = json.dumps([envelope(message_type) for _ in range(n)])
    r = await sys.call(
        "POST", "/v1/messages/batch", content=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 200 and r.json()["accepted"] == n


@asynccontextmanager
async def consumer(
    admin: Api, server: ServerInfo, backlog: int, *, strict: bool = False
) -> AsyncIterator[tuple[Api, str, WebSocketConnection]]:
    """A new system with a mailbox of TYPE1 holding ``backlog`` envelopes, and a consume stream
    of it: (system, mailbox id, stream)."""
    sys = await admin.system()
    mb = await sys.mailbox(TYPE1, strict=strict)
    await send_batch(sys, backlog)
    async with connect(server, f"/v1/stream/mailboxes/{mb}/consume", sys) as ws:
        yield sys, mb, ws


async def deliveries(ws: WebSocketConnection, n: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    while len(got) < n:
        msg = await receive(ws)
        got += msg["deliveries"]
    assert len(got) == n
    return got


async def test_consume_never_exceeds_credit(admin: Api, server: ServerInfo) -> None:
    with trio.fail_after(30):
        async with consumer(admin, server, 25) as (sys, mb, ws):
            await nothing_arrives(ws, 0.1)  # no credit, nothing sent
            await ws.send_message(json.dumps({"credit": 10}))
            first = await deliveries(ws, 10)
            await nothing_arrives(ws)
            assert (await sys.stats(mb))["in_flight"] == 10
            ids = [d["delivery_id"] for d in first]
            await ws.send_message(json.dumps({"ack": ids, "credit": 5, "seq": 1}))
            replies: list[dict[str, Any]] = []
            more: list[dict[str, Any]] = []
            while len(more) < 5 or not replies:
                msg = await receive(ws)
                if "deliveries" in msg:
                    more += msg["deliveries"]
                else:
                    replies.append(msg)
            assert replies == [{"acked": 10, "failed": [], "seq": 1}]
            assert len(more) == 5
            await nothing_arrives(ws)
            (stream,) = hub_of(server.broker).streams()
            c = stream.credit.statistics()  # type: ignore[attr-defined]
            assert (c.granted, c.delivered, c.available) == (15, 15, 0)
        st = await sys.stats(mb)
        assert (st["ready"], st["in_flight"], st["copy"]) == (10, 5, 10)
        seqs = [int(d["delivery_id"].split("-")[0]) for d in first + more]
        assert seqs == sorted(seqs) and len(set(seqs)) == 15


async def test_consume_ack_nack_through_the_stream(admin: Api, server: ServerInfo) -> None:
    with trio.fail_after(30):
        async with consumer(admin, server, 3) as (sys, mb, ws):
            await ws.send_message(json.dumps({"credit": 3}))
            d1, d2, d3 = await deliveries(ws, 3)
            assert d1["attempt"] == 1 and "Leveranceruter" in json.dumps(d1["envelope"])
            await ws.send_message(json.dumps({"nack": [d1["delivery_id"]], "requeue": True}))
            assert await receive(ws) == {"nacked": 1, "failed": []}
            await ws.send_message(json.dumps({"nack": [d2["delivery_id"]], "requeue": False}))
            assert await receive(ws) == {"nacked": 1, "failed": []}
            await ws.send_message(json.dumps({"ack": [d3["delivery_id"], "9-1"], "seq": 4}))
            assert await receive(ws) == {
                "acked": 1,
                "failed": [{"delivery_id": "9-1", "code": "unknown_delivery"}],
                "seq": 4,
            }
            await ws.send_message(json.dumps({"credit": 1}))
            (again,) = await deliveries(ws, 1)
            assert again["attempt"] == 2
            assert again["delivery_id"].split("-")[0] == d1["delivery_id"].split("-")[0]
            # bad frames are answered with an error and the stream stays open
            await ws.send_message(json.dumps({"ack": []}))
            assert (await receive(ws))["error"]["code"] == "invalid"
            await ws.send_message(json.dumps({"ack": ["1-1"], "nack": ["2-1"]}))
            assert (await receive(ws))["error"]["code"] == "invalid"
            await ws.send_message(json.dumps({"credit": 1, "surprise": True}))
            assert (await receive(ws))["error"]["code"] == "unknown_field"
            await ws.send_message("not json")
            assert (await receive(ws))["error"]["code"] == "malformed"
            await ws.send_message(json.dumps({"credit": 2_000_000}))
            assert (await receive(ws))["error"]["path"] == "$.credit"
            await ws.send_message(msgspec.msgpack.encode({"ack": [again["delivery_id"]]}))
            assert await receive(ws) == {"acked": 1, "failed": []}
        st = await sys.stats(mb)
        assert (st["ready"], st["in_flight"], st["copy"], st["dead"]) == (0, 0, 2, 1)


async def test_consume_strict_mailbox_moves_on_after_an_ack(admin: Api, server: ServerInfo) -> None:
    with trio.fail_after(30):
        async with consumer(admin, server, 2, strict=True) as (_, _, ws):
            await ws.send_message(json.dumps({"credit": 1}))
            (first,) = await deliveries(ws, 1)
            await ws.send_message(json.dumps({"credit": 1}))
            await nothing_arrives(ws)  # the head is in flight: nothing later is offered
            await ws.send_message(json.dumps({"ack": [first["delivery_id"]]}))
            assert await receive(ws) == {"acked": 1, "failed": []}
            (second,) = await deliveries(ws, 1)
        assert int(second["delivery_id"].split("-")[0]) > int(first["delivery_id"].split("-")[0])


async def test_consume_wakes_on_publish_without_polling(admin: Api, server: ServerInfo) -> None:
    with trio.fail_after(30):
        sys = await admin.system()
        mb = await sys.mailbox(TYPE1)
        writer = server.broker.writer
        async with connect(server, f"/v1/stream/mailboxes/{mb}/consume", sys) as ws:
            await ws.send_message(json.dumps({"credit": 100}))
            await nothing_arrives(ws, 0.2)
            batches = writer.statistics().batches
            await trio.sleep(0.3)
            assert writer.statistics().batches == batches  # idle: no lease attempts
            async with connect(server, "/v1/stream/publish", sys) as pub:
                await pub.send_message(json.dumps({"seq": 1, "envelope": envelope(TYPE1)}))
                (d,) = await deliveries(ws, 1)
                await confirms(pub, 1)
            assert d["attempt"] == 1
            await sys.send(envelope(TYPE1))
            await deliveries(ws, 1)


async def test_consume_reports_a_refused_lease_and_retries(
    admin: Api, server: ServerInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(30):
        sys = await admin.system()
        mb = await sys.mailbox(TYPE1)
        await sys.send(envelope(TYPE1))
        broker = server.broker
        poll = broker.poll
        refusals = [Overloaded("write queue full for 2 s", retry_after=1)]

        async def flaky_poll(*args: Any, **kw: Any) -> Any:
            if refusals:
                raise refusals.pop()
            return await poll(*args, **kw)

        monkeypatch.setattr(broker, "poll", flaky_poll)
        monkeypatch.setattr(streams, "RETRY_PAUSE_S", 0.01)
        async with connect(server, f"/v1/stream/mailboxes/{mb}/consume", sys) as ws:
            await ws.send_message(json.dumps({"credit": 1}))
            assert (await receive(ws))["error"]["code"] == "overloaded"
            (d,) = await deliveries(ws, 1)
        assert d["attempt"] == 1


async def test_dropped_consumer_leases_expire_and_redeliver(
    admin: Api, server: ServerInfo, clock: FakeClock
) -> None:
    with trio.fail_after(30):
        sys = await admin.system()
        mb = await sys.mailbox(TYPE1)
        await sys.send(envelope(TYPE1))
        path = f"/v1/stream/mailboxes/{mb}/consume?lease=5"
        async with connect(server, path, sys) as ws:
            await ws.send_message(json.dumps({"credit": 1}))
            (d,) = await deliveries(ws, 1)
            assert d["lease_expires_ms"] == clock.now + 5000
        # gone without acking: the lease is on disk and runs out
        assert (await sys.stats(mb))["in_flight"] == 1
        clock.advance(6)
        await server.broker.sweeper.sweep_once()
        async with connect(server, path, sys) as ws:
            await ws.send_message(json.dumps({"credit": 5}))
            (again,) = await deliveries(ws, 1)
            await ws.send_message(json.dumps({"ack": [d["delivery_id"]]}))
            reply = await receive(ws)
            assert reply["failed"] == [
                {"delivery_id": d["delivery_id"], "code": "unknown_delivery"}
            ]
        assert again["attempt"] == 2
        assert again["delivery_id"].split("-")[0] == d["delivery_id"].split("-")[0]


# ---------------------------------------------------------------------------- shutdown


async def test_hub_close_drains_and_closes_streams(admin: Api, server: ServerInfo) -> None:
    with trio.fail_after(30):
        sys = await admin.system()
        mb = await sys.mailbox(TYPE1)
        hub = hub_of(server.broker)
        async with (
            connect(server, "/v1/stream/publish", sys) as pub,
            connect(server, f"/v1/stream/mailboxes/{mb}/consume", sys) as con,
        ):
            await con.send_message(json.dumps({"credit": 1000}))
            await wait_until(lambda: hub.statistics().open_consume == 1, "consumer open")
            for seq in range(50):
                await pub.send_message(json.dumps({"seq": seq, "envelope": envelope(TYPE1)}))
            await wait_until(lambda: hub.statistics().open_publish == 1, "publisher open")
            (stream,) = [s for s in hub.streams() if s.kind == "publish"]
            window = stream.window  # type: ignore[attr-defined]
            await wait_until(lambda: window.statistics().accepted_frames > 0, "frames read")
            hub.close()
            got: dict[int, Any] = {}
            leased: list[Any] = []
            assert (
                await close_code(pub, lambda m: got.update((c["seq"], c) for c in m["confirms"]))
                == 1001
            )
            # every frame the server read was confirmed before the close; none after
            assert len(got) == window.statistics().accepted_frames
            assert await close_code(con, lambda m: leased.extend(m["deliveries"])) == 1001
            received = len(leased)
        assert hub.statistics().open_publish == hub.statistics().open_consume == 0
        r = await upgrade(server, "/v1/stream/publish", sys.headers["Authorization"][7:])
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
        st = await sys.stats(mb)
        assert st["ready"] + st["in_flight"] == len(got)
        assert st["in_flight"] == received


async def test_server_shutdown_with_open_streams_is_bounded(admin: Api, tmp_path: Path) -> None:
    """Without the hub call, hypercorn still ends the streams at its graceful timeout."""
    with trio.fail_after(30):
        config = BrokerConfig(
            data_dir=str(tmp_path / "own"),
            bind="127.0.0.1:0",
            admin_token=ADMIN_TOKEN,
            graceful_timeout_s=0.5,
            access_control=False,
        )
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            info: ServerInfo = await nursery.start(
                partial(serve, config, shutdown_trigger=stop.wait)
            )
            async with httpx.AsyncClient(base_url=info.url, timeout=10) as http:
                sys = await Api(http, ADMIN_TOKEN).system()
                mb = await sys.mailbox(TYPE1)
                async with connect(info, f"/v1/stream/mailboxes/{mb}/consume", sys) as ws:
                    await ws.send_message(json.dumps({"credit": 1}))
                    await nothing_arrives(ws, 0.1)
                    t0 = trio.current_time()
                    stop.set()
                    with pytest.raises(ConnectionClosed):
                        await ws.get_message()
                    assert trio.current_time() - t0 < 3
        assert trio.current_time() - t0 < 5  # serve() returned: nothing kept it alive


# ---------------------------------------------------------------------------- sans-IO state


def _frame(seq: int, n: int = 1) -> PublishFrame:
    return PublishFrame(seq, [InvalidInput("x")] * n, nbytes=100)


def test_window_counts_frames_until_their_confirm_is_sent() -> None:
    w = PublishWindow(max_frames=3, max_envelopes=100, max_bytes=10_000)
    frames = [_frame(seq, n=2) for seq in range(3)]
    for frame in frames:
        assert w.has_room()
        assert w.accept(frame) is True
    assert not w.has_room()
    ok = PublishResult(transaction_id="t", mailboxes=1, duplicate=False)
    w.complete(frames[1], [ok, ok])  # commits may settle in any order
    w.complete(frames[0], [ok, ok])
    assert not w.has_room() and w.statistics().committing == 1  # committed is not confirmed
    sent = w.take_confirms(max_results=100)
    assert [f.seq for f in sent] == [1, 0] and list(sent[0].results) == [ok, ok]
    w.release(sent)
    assert w.has_room() and not w.empty
    w.fail(frames[2], InvalidInput("boom"))
    (last,) = w.take_confirms(max_results=1)  # one confirm always goes, even over the max
    assert last.error is not None and last.error.message == "boom"
    w.release([last])
    s = w.statistics()
    assert w.empty and (s.accepted_frames, s.confirmed_frames, s.high_water) == (3, 3, 3)
    assert repr(w).startswith("<PublishWindow [0/3 unconfirmed")
    with pytest.raises(ValueError, match="1 results for 2 items"):
        w.complete(_frame(9, n=2), [ok])


def test_window_limits_envelopes_and_bytes_too() -> None:
    w = PublishWindow(max_frames=100, max_envelopes=5, max_bytes=250)
    w.accept(_frame(1, n=3))
    w.accept(_frame(2, n=3))  # passes the limit by at most this one frame
    assert not w.has_room()
    w = PublishWindow(max_frames=100, max_envelopes=100, max_bytes=250)
    for seq in range(3):
        w.accept(_frame(seq))
    assert not w.has_room()
    assert w.accept(PublishFrame(9, [], 10)) is False  # nothing to store: straight to confirm
    assert w.statistics().to_confirm == 1


def test_credit() -> None:
    c = Credit(max_credit=10)
    assert c.available == 0
    c.add(4)
    c.delivered(3)
    c.add(9)
    assert c.available == 10
    with pytest.raises(InvalidInput, match="at most 10"):
        c.add(1)
    with pytest.raises(InvalidInput):
        c.add(0)
    with pytest.raises(ValueError, match="delivered 11"):
        c.delivered(11)
    assert repr(c) == "<Credit [10 available | 13 granted, 3 delivered]>"


@pytest.mark.parametrize(
    ("data", "seq", "items", "error"),
    [
        ('{"seq": 1, "envelopes": [{}, {}]}', 1, 2, None),
        ('{"seq": 2, "envelope": {}}', 2, 1, None),
        ('{"seq": 3}', 3, 0, "invalid"),
        ('{"seq": 4, "envelopes": {}}', 4, 0, "invalid"),
        (msgspec.msgpack.encode({"seq": 5, "envelope": {}}), 5, 1, None),
        (b'{"seq": 6, "envelopes": []}', 6, 0, None),
    ],
)
def test_decode_publish_frame(data: str | bytes, seq: int, items: int, error: str | None) -> None:
    frame = decode_publish_frame(data)
    assert frame.seq == seq and len(frame.items) == items
    assert (frame.error.code if frame.error else None) == error


@pytest.mark.parametrize("data", ['{"envelope": {}}', "[1]", "{", b"\xc1", b"\x92\x01\x02"])
def test_frames_without_a_seq_are_fatal(data: Sequence[Any]) -> None:
    from broker.streaming import FrameError

    with pytest.raises(FrameError) as exc:
        decode_publish_frame(data)  # type: ignore[arg-type]
    assert exc.value.close_code == 1007
