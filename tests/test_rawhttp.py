"""The raw HTTP routes (broker/http/rawhttp.py, routed by broker/http/rawws.py's FrontRouter):
first on fake ASGI callables (the answer's framing, the error shape, the body's limit and timeout,
the routing), then end to end on a real server (the probes and the send endpoints)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import httpx
import pytest
import trio
import trio.testing

from broker.errors import (
    BrokerError,
    Forbidden,
    InvalidInput,
    NotFound,
    Overloaded,
    Unauthorized,
)
from broker.http import admin as admin_routes
from broker.http import rawhttp
from broker.http.admin import PROBE_BODY_BYTES
from broker.http.rawhttp import (
    BODY_TIMEOUT_S,
    HttpHandler,
    RawRequest,
    RawResponse,
    json_answer,
    serve_http,
)
from broker.http.rawws import FrontRouter
from broker.server import ServerInfo
from broker.service import Broker
from tests.asgifake import FakeConnection
from tests.conftest import TYPE1, Api, envelope

JSON_CT = (b"content-type", b"application/json")
INTERNAL = {"error": {"code": "internal", "message": "internal error"}}

# --------------------------------------------------------------------------------------------
# fake ASGI callables


def chunk(data: bytes, more: bool) -> dict[str, Any]:
    return {"type": "http.request", "body": data, "more_body": more}


def http_scope(
    method: str = "POST", path: str = "/x", headers: list[tuple[bytes, bytes]] | None = None
) -> dict[str, Any]:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "query_string": b"",
        "headers": headers if headers is not None else [],
        "client": ("10.1.2.3", 5000),
    }


def extra(headers: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """The headers but content-type and content-length (which every answer has)."""
    return {k: v for k, v in headers if k not in (b"content-type", b"content-length")}


async def _never(scope: dict[str, Any], receive: Any, send: Any) -> None:
    raise AssertionError("not for the wrapped app")


async def _echo(request: RawRequest) -> RawResponse:
    body = await request.body()
    return json_answer({"body": body.decode()})


# --------------------------------------------------------------------------------------------
# 1. the answer


async def test_an_answer_is_start_and_body_with_every_header() -> None:
    seen: list[Any] = []

    async def handler(request: RawRequest) -> RawResponse:
        seen.append((request.method, request.path, request.remote_addr))
        seen.append((request.header(b"x-twice"), request.header(b"x-latin"), request.header(b"no")))
        return RawResponse(201, json_answer({"name": "æøå"}).body, {"X-Extra": "v"})

    router = FrontRouter(
        _never, {}, http={("POST", "/x"): handler}, headers=[(b"x-dueslag-worker", b"3")]
    )
    conn = FakeConnection()
    scope = http_scope(headers=[(b"x-twice", b"1"), (b"x-twice", b"2"), (b"x-latin", b"\xe6")])
    await router(scope, conn.receive, conn.send)
    body = '{"name":"æøå"}'.encode()
    assert conn.sent == [
        {
            "type": "http.response.start",
            "status": 201,
            "headers": [
                JSON_CT,
                (b"content-length", str(len(body)).encode()),  # bytes, not characters
                (b"x-dueslag-worker", b"3"),
                (b"x-extra", b"v"),
            ],
        },
        {"type": "http.response.body", "body": body, "more_body": False},
    ]
    assert len(body) == 17 and len(body.decode()) == 14
    assert seen == [("POST", "/x", "10.1.2.3"), ("1", "\xe6", None)]
    assert conn.received == 0  # a handler that reads no body reads nothing


# --------------------------------------------------------------------------------------------
# 2. and 3. the error shape


@pytest.mark.parametrize(
    ("err", "status", "error", "headers"),
    [
        pytest.param(
            InvalidInput("bad field", path="$.x"),
            400,
            {"code": "invalid", "message": "bad field", "path": "$.x"},
            {},
            id="with-path",
        ),
        pytest.param(
            Forbidden("not yours"), 403, {"code": "forbidden", "message": "not yours"}, {}, id="403"
        ),
        pytest.param(
            Overloaded("busy", retry_after=7),
            503,
            {"code": "overloaded", "message": "busy"},
            {b"retry-after": b"7"},
            id="overloaded",
        ),
        pytest.param(
            Unauthorized("who are you"),
            401,
            {"code": "unauthorized", "message": "who are you"},
            {b"www-authenticate": b'Bearer realm="dueslag"'},
            id="unauthorized",
        ),
        pytest.param(
            BrokerError("gone", code="lease_expired"),
            409,
            {"code": "lease_expired", "message": "gone"},
            {},
            id="by-code",
        ),
    ],
)
async def test_a_broker_error_is_the_one_error_shape(
    err: BrokerError, status: int, error: dict[str, str], headers: dict[bytes, bytes]
) -> None:
    async def handler(request: RawRequest) -> RawResponse:
        raise err

    conn = FakeConnection()
    await serve_http(
        handler, http_scope(), conn.receive, conn.send, limit=10, headers=[(b"x-w", b"1")]
    )
    got_status, got_headers, body = conn.answer()
    assert got_status == status
    assert json.loads(body) == {"error": error}
    assert got_headers[:2] == [JSON_CT, (b"content-length", str(len(body)).encode())]
    assert extra(got_headers) == {b"x-w": b"1", **headers}


async def test_a_bug_is_a_500_without_details_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(request: RawRequest) -> RawResponse:
        raise RuntimeError("secret detail 4711")

    conn = FakeConnection()
    with caplog.at_level(logging.ERROR, logger="dueslag.http"):
        await serve_http(handler, http_scope(), conn.receive, conn.send, limit=10)
    status, headers, body = conn.answer()
    assert status == 500
    assert json.loads(body) == INTERNAL
    assert b"4711" not in body and b"RuntimeError" not in body
    assert headers == [JSON_CT, (b"content-length", str(len(body)).encode())]
    (record,) = [r for r in caplog.records if r.name == "dueslag.http"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], RuntimeError)
    assert "secret detail 4711" in caplog.text  # the details are in the log


async def test_a_failing_before_hook_is_a_500_and_the_handler_does_not_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []

    async def handler(request: RawRequest) -> RawResponse:
        ran.append("handler")
        return json_answer({})

    def before() -> None:
        raise ValueError("drain failed")

    conn = FakeConnection()
    with caplog.at_level(logging.ERROR, logger="dueslag.http"):
        await serve_http(handler, http_scope(), conn.receive, conn.send, limit=10, before=before)
    status, _, body = conn.answer()
    assert (status, json.loads(body), ran) == (500, INTERNAL, [])
    assert "drain failed" in caplog.text


# --------------------------------------------------------------------------------------------
# 4. the body


async def test_a_body_in_several_chunks_is_joined() -> None:
    conn = FakeConnection(
        chunk(b"ab", True),
        chunk(b"", True),
        {"type": "http.request", "more_body": True},  # no body key at all
        chunk(b"cd", False),
        chunk(b"never read", False),
    )
    await serve_http(_echo, http_scope(), conn.receive, conn.send, limit=10)
    status, _, body = conn.answer()
    assert (status, json.loads(body)) == (200, {"body": "abcd"})
    assert conn.received == 4  # stops at the event without more_body


async def test_a_body_of_exactly_the_limit_is_accepted() -> None:
    conn = FakeConnection(chunk(b"0123456789", False))
    headers = [(b"content-length", b"10")]
    await serve_http(_echo, http_scope(headers=headers), conn.receive, conn.send, limit=10)
    status, _, body = conn.answer()
    assert (status, json.loads(body)) == (200, {"body": "0123456789"})


async def test_a_content_length_over_the_limit_is_413_before_any_receive() -> None:
    conn = FakeConnection(chunk(b"x" * 11, False))
    headers = [(b"content-length", b"11")]
    await serve_http(_echo, http_scope(headers=headers), conn.receive, conn.send, limit=10)
    status, _, body = conn.answer()
    assert status == 413
    assert json.loads(body)["error"] == {"code": "too_large", "message": "request body too large"}
    assert conn.received == 0


async def test_a_chunked_body_passing_the_limit_is_413_as_soon_as_it_passes() -> None:
    conn = FakeConnection(chunk(b"x" * 6, True), chunk(b"y" * 6, True), chunk(b"z", False))
    await serve_http(_echo, http_scope(), conn.receive, conn.send, limit=10)
    status, _, body = conn.answer()
    assert (status, json.loads(body)["error"]["code"]) == (413, "too_large")
    assert conn.received == 2  # the third chunk is never read


async def test_a_client_gone_while_sending_its_body_gets_nothing() -> None:
    reached: list[str] = []

    async def handler(request: RawRequest) -> RawResponse:
        await request.body()
        reached.append("after body")
        return json_answer({})

    conn = FakeConnection(chunk(b"ab", True), {"type": "http.disconnect"})
    with trio.fail_after(5):
        await serve_http(handler, http_scope(), conn.receive, conn.send, limit=10)
    assert conn.sent == []
    assert reached == []


async def test_a_body_that_never_completes_is_408(autojump_clock: trio.testing.MockClock) -> None:
    conn = FakeConnection(chunk(b"ab", True))  # then nothing, ever
    start = trio.current_time()
    with trio.fail_after(2 * BODY_TIMEOUT_S):  # virtual seconds: the clock jumps
        await serve_http(_echo, http_scope(), conn.receive, conn.send, limit=10)
    assert trio.current_time() - start == pytest.approx(BODY_TIMEOUT_S)
    status, _, body = conn.answer()
    assert status == 408
    assert json.loads(body)["error"] == {
        "code": "request_timeout",
        "message": "the request body did not arrive within 60 s",
    }


async def test_the_body_timeout_is_for_the_whole_body_not_each_chunk(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # every chunk comes well within the timeout, but all of them take longer than it
    events = [chunk(b"a", True), chunk(b"b", True), chunk(b"c", False)]
    slow = FakeConnection(*events, delays=[25.0, 25.0, 25.0])
    with trio.fail_after(2 * BODY_TIMEOUT_S):
        await serve_http(_echo, http_scope(), slow.receive, slow.send, limit=10)
    assert slow.answer()[0] == 408
    # and a body slower than any one chunk but within the timeout as a whole is fine
    fine = FakeConnection(*events, delays=[19.0, 19.0, 19.0])
    await serve_http(_echo, http_scope(), fine.receive, fine.send, limit=10)
    status, _, body = fine.answer()
    assert (status, json.loads(body)) == (200, {"body": "abc"})


# --------------------------------------------------------------------------------------------
# 5. the routing


async def test_head_on_a_get_route_is_the_get_answer_without_its_body() -> None:
    methods: list[str] = []

    async def probe(request: RawRequest) -> RawResponse:
        methods.append(request.method)
        return json_answer({"status": "ok"})

    async def missing(request: RawRequest) -> RawResponse:
        raise NotFound("nothing here")

    router = FrontRouter(_never, {}, http={("GET", "/probe"): probe, ("GET", "/missing"): missing})
    get, head = FakeConnection(), FakeConnection()
    await router(http_scope("GET", "/probe"), get.receive, get.send)
    await router(http_scope("HEAD", "/probe"), head.receive, head.send)
    get_status, get_headers, get_body = get.answer()
    head_status, head_headers, head_body = head.answer()
    assert get_body == b'{"status":"ok"}'
    assert (head_status, head_headers, head_body) == (get_status, get_headers, b"")
    assert (b"content-length", str(len(get_body)).encode()) in head_headers
    assert methods == ["GET", "HEAD"]

    err = FakeConnection()  # an error answer to HEAD has no body either
    await router(http_scope("HEAD", "/missing"), err.receive, err.send)
    status, headers, body = err.answer()
    assert (status, body) == (404, b"")
    length = int(dict(headers)[b"content-length"])
    assert length == len(b'{"error":{"code":"not_found","message":"nothing here"}}')


async def test_another_method_on_a_raw_path_is_405_with_allow() -> None:
    called: list[str] = []

    async def handler(request: RawRequest) -> RawResponse:
        called.append(request.method)
        return json_answer({})

    router = FrontRouter(
        _never,
        {},
        http={("POST", "/send"): handler, ("GET", "/both"): handler, ("POST", "/both"): handler},
    )
    cases = [
        ("PUT", "/send", b"POST"),
        ("GET", "/send", b"POST"),
        ("HEAD", "/send", b"POST"),  # HEAD is only routed where GET is
        ("DELETE", "/both", b"GET, HEAD, POST"),
    ]
    for method, path, allow in cases:
        conn = FakeConnection()
        await router(http_scope(method, path), conn.receive, conn.send)
        status, headers, body = conn.answer()
        assert status == 405, method
        assert extra(headers) == {b"allow": allow}
        if method == "HEAD":
            assert body == b""
            continue
        assert json.loads(body) == {
            "error": {
                "code": "method_not_allowed",
                "message": f"method {method} is not allowed on {path}",
            }
        }
    assert called == []


async def test_other_paths_and_scopes_go_to_the_wrapped_app() -> None:
    seen: list[tuple[str, str | None]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append((scope["type"], scope.get("path")))
        await send({"type": "marker"})

    async def handler(request: RawRequest) -> RawResponse:
        raise AssertionError("not the raw route")

    calls: list[str] = []
    router = FrontRouter(
        app, {}, before=lambda: calls.append("before"), http={("POST", "/v1/messages"): handler}
    )
    for scope in [
        http_scope("GET", "/v1/mailboxes"),
        http_scope("POST", "/v1/messages/"),  # exact paths only
        http_scope("POST", "/v1/messages/other"),
        {"type": "lifespan"},
    ]:
        conn = FakeConnection()
        await router(scope, conn.receive, conn.send)
        assert conn.sent == [{"type": "marker"}]
    assert seen == [
        ("http", "/v1/mailboxes"),
        ("http", "/v1/messages/"),
        ("http", "/v1/messages/other"),
        ("lifespan", None),
    ]
    assert calls == []  # the wrapped app runs its own hooks


async def test_before_runs_ahead_of_each_raw_handler() -> None:
    calls: list[str] = []

    async def handler(request: RawRequest) -> RawResponse:
        calls.append("handler")
        await request.body()
        calls.append("body")
        return json_answer({})

    router = FrontRouter(
        _never, {}, before=lambda: calls.append("before"), http={("POST", "/x"): handler}
    )
    for _ in range(2):
        conn = FakeConnection(chunk(b"{}", False))
        await router(http_scope(), conn.receive, conn.send)
        assert conn.answer()[0] == 200
    assert calls == ["before", "handler", "body"] * 2


async def test_the_405_on_a_raw_path_has_the_worker_header_and_runs_before() -> None:
    calls: list[str] = []

    async def handler(request: RawRequest) -> RawResponse:
        return json_answer({})

    router = FrontRouter(
        _never,
        {},
        before=lambda: calls.append("before"),
        http={("POST", "/x"): handler},
        headers=[(b"x-dueslag-worker", b"3")],
    )
    conn = FakeConnection()
    await router(http_scope("PUT", "/x"), conn.receive, conn.send)
    status, headers, _ = conn.answer()
    assert status == 405
    assert extra(headers) == {b"allow": b"POST", b"x-dueslag-worker": b"3"}
    assert calls == ["before"]


async def test_readyz_is_503_starting_until_the_broker_is_ready() -> None:
    stats = SimpleNamespace(queued_jobs=4)
    broker = SimpleNamespace(ready=False, writer=SimpleNamespace(statistics=lambda: stats))
    routes = admin_routes.probes(cast(Broker, broker))
    readyz: HttpHandler = routes[("GET", "/readyz")]
    request = RawRequest(http_scope("GET", "/readyz"), FakeConnection().receive, 10)
    assert await readyz(request) == (503, b'{"status":"starting"}', None)
    broker.ready = True
    answer = await readyz(request)
    assert answer.status == 200
    assert json.loads(answer.body) == {"status": "ready", "writer_queued_jobs": 4}


# --------------------------------------------------------------------------------------------
# end to end: hypercorn on 127.0.0.1, LMDB in tmp


async def raw_exchange(server: ServerInfo, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send a request's head (and maybe part of its body) on a plain socket and read one answer
    without sending more: its status and body."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            more = await stream.receive_some()
            assert more, data
            data += more
        head_part, _, rest = data.partition(b"\r\n\r\n")
        lines = head_part.split(b"\r\n")
        status = int(lines[0].split()[1])
        fields = dict(line.split(b": ", 1) for line in lines[1:])
        length = int(fields[b"content-length"])
        while len(rest) < length:
            more = await stream.receive_some()
            assert more, rest
            rest += more
        return status, rest


def request_head(server: ServerInfo, token: str, content_length: int) -> bytes:
    return (
        "POST /v1/messages HTTP/1.1\r\n"
        f"Host: {server.url.removeprefix('http://')}\r\n"
        f"Authorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()


async def test_probes_answer_without_a_token(http: httpx.AsyncClient) -> None:
    r = await http.get("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    assert r.headers["content-type"] == "application/json"
    head = await http.head("/healthz")
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-length"] == str(len(r.content))
    r = await http.get("/readyz")
    assert r.status_code == 200
    ready = r.json()
    assert ready["status"] == "ready" and isinstance(ready["writer_queued_jobs"], int)
    head = await http.head("/readyz")
    assert (head.status_code, head.content) == (200, b"")
    # POST reads its body and drops it (the bench's trivial endpoint for a request with one)
    r = await http.post("/healthz", content=b'{"any": "envelope"}' * 100)
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    r = await http.post("/healthz")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    r = await http.post("/healthz", content=b"x" * (PROBE_BODY_BYTES + 1))
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "too_large"

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for _ in range(3):
            yield b"x" * (PROBE_BODY_BYTES // 2)

    r = await http.post("/healthz", content=chunked())
    assert r.status_code == 413
    r = await http.put("/healthz")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, HEAD, POST"
    assert r.json()["error"]["code"] == "method_not_allowed"


async def test_send_endpoint_refusals(admin: Api, server: ServerInfo) -> None:
    sys = await admin.system()
    mb = await sys.mailbox(TYPE1)
    r = await admin.http.post("/v1/messages", json=envelope(TYPE1))  # no token
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="dueslag"'
    assert set(r.json()["error"]) == {"code", "message"}
    r = await sys.call(
        "POST",
        "/v1/messages",
        content=json.dumps(envelope(TYPE1)),
        headers={"Content-Type": "text/csv"},
        expect=415,
    )
    assert r.json()["error"]["code"] == "unsupported_media_type"
    assert "application/json" in r.json()["error"]["message"]
    for method, path in [("PUT", "/v1/messages"), ("GET", "/v1/messages/batch")]:
        r = await sys.call(method, path, expect=405)
        assert r.headers["allow"] == "POST"
        assert r.json()["error"] == {
            "code": "method_not_allowed",
            "message": f"method {method} is not allowed on {path}",
        }
    assert (await sys.stats(mb))["ready"] == 0


async def test_an_envelope_sent_in_chunks_is_accepted_and_delivered(admin: Api) -> None:
    sys = await admin.system()
    mb = await sys.mailbox(TYPE1)
    env = envelope(TYPE1)
    data = json.dumps(env).encode()

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: chunked transfer encoding
        for i in range(0, len(data), 40):
            yield data[i : i + 40]

    r = await sys.call(
        "POST",
        "/v1/messages",
        content=chunks(),
        headers={"Content-Type": "application/json"},
        expect=202,
    )
    assert r.request.headers.get("transfer-encoding") == "chunked"
    res = r.json()
    assert len(res["transaction_id"]) == 36
    assert (res["mailboxes"], res["duplicate"]) == (1, False)
    (d,) = await sys.poll(mb, max=10)
    got = d["envelope"]
    assert got["BeskedId"] == env["BeskedId"] and got["Beskeddata"] == env["Beskeddata"]
    li = got["Beskedkuvert"]["Leveranceinformation"]
    assert li["TransaktionsId"] == {"UUIDIdentifikator": res["transaction_id"]}


async def test_a_declared_length_over_the_limit_is_413_before_the_body(
    admin: Api, server: ServerInfo
) -> None:
    sys = await admin.system()
    mb = await sys.mailbox(TYPE1)
    token = sys.headers["Authorization"].removeprefix("Bearer ")
    limit = server.broker.config.max_request_bytes
    with trio.fail_after(10):  # the body is never sent: the answer cannot wait for it
        status, body = await raw_exchange(server, request_head(server, token, limit + 1))
    assert status == 413
    assert json.loads(body)["error"]["code"] == "too_large"
    assert (await sys.stats(mb))["ready"] == 0


async def test_a_body_slower_than_the_timeout_is_408(
    admin: Api, server: ServerInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rawhttp, "BODY_TIMEOUT_S", 0.5)
    sys = await admin.system()
    token = sys.headers["Authorization"].removeprefix("Bearer ")
    with trio.fail_after(10):
        status, body = await raw_exchange(server, request_head(server, token, 100), b'{"Be')
    assert status == 408
    assert json.loads(body)["error"] == {
        "code": "request_timeout",
        "message": "the request body did not arrive within 0.5 s",
    }


async def test_a_batch_with_a_malformed_item_fails_only_that_item(admin: Api) -> None:
    sys = await admin.system()
    mb = await sys.mailbox(TYPE1)
    good = envelope(TYPE1)
    body = json.dumps(good).encode() + b"\n{not json\n"
    r = await sys.call(
        "POST",
        "/v1/messages/batch",
        content=body,
        headers={"Content-Type": "application/x-ndjson"},
        expect=200,
    )
    out = r.json()
    assert (out["accepted"], out["failed"]) == (1, 1)
    first, second = out["results"]
    assert (first["mailboxes"], first["duplicate"]) == (1, False)
    assert len(first["transaction_id"]) == 36 and "error" not in first
    assert list(second) == ["error"]
    assert second["error"]["code"] == "malformed"
    assert second["error"]["path"] == "$[1]"
    (d,) = await sys.poll(mb, max=10)
    assert d["envelope"]["BeskedId"] == good["BeskedId"]
