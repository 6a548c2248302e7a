"""Bad input: each case gets a specific 4xx code with a message naming the field, and nothing is
stored (the mailbox stays empty and the store holds no message body)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from broker.codec import MAX_ENVELOPE_BYTES
from broker.config import BrokerConfig
from broker.server import ServerInfo, serve
from tests.conftest import ADMIN_TOKEN, TYPE1, Api, FakeClock, envelope


async def _nothing_stored(sys: Api, mb: str, server: ServerInfo) -> None:
    st = await sys.stats(mb)
    assert (st["ready"], st["in_flight"], st["copy"], st["dead"]) == (0, 0, 0, 0)
    assert server.broker.store.statistics().messages == 0


def _without(path: list[str]) -> dict[str, Any]:
    env = envelope(TYPE1)
    node: Any = env
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return env


BAD_JSON = [
    pytest.param(b'{"BeskedId": ', "malformed", None, id="truncated"),
    pytest.param(b'{"BeskedVersion": "1.0", "BeskedI', "malformed", None, id="truncated-key"),
    pytest.param(b"[1, 2]", "invalid_envelope", "$", id="array-not-object"),
    pytest.param(b"{\xff}", "malformed", None, id="not-utf8"),
    pytest.param(b"", "malformed", None, id="empty"),
    pytest.param(
        json.dumps({**envelope(TYPE1), "Extra": 1}).encode(),
        "unknown_field",
        "$",
        id="unknown-top-field",
    ),
    pytest.param(
        json.dumps(_without(["Beskedkuvert", "Filtreringsdata", "Beskedtype"])).encode(),
        "invalid_envelope",
        "$.Beskedkuvert.Filtreringsdata",
        id="missing-beskedtype",
    ),
    pytest.param(
        json.dumps(
            {**envelope(TYPE1), "BeskedId": {"UUIDIdentifikator": "a", "URNIdentifikator": "urn:x"}}
        ).encode(),
        "invalid_envelope",
        "$.BeskedId",
        id="unikid-both-branches",
    ),
    pytest.param(
        json.dumps({**envelope(TYPE1), "BeskedId": {}}).encode(),
        "invalid_envelope",
        "$.BeskedId",
        id="unikid-empty",
    ),
    pytest.param(
        json.dumps({**envelope(TYPE1), "Beskeddata": [{"json": 1, "xml": "<a/>"}]}).encode(),
        "invalid_envelope",
        "$.Beskeddata[0]",
        id="content-two-kinds",
    ),
    pytest.param(
        json.dumps({**envelope(TYPE1), "Beskeddata": [{"base64": "!!notbase64"}]}).encode(),
        "invalid_envelope",
        "$.Beskeddata[0].base64",
        id="bad-base64",
    ),
]


@pytest.mark.parametrize(("body", "code", "path"), BAD_JSON)
async def test_bad_json_envelope(
    admin: Api, server: ServerInfo, body: bytes, code: str, path: str | None
) -> None:
    sys = await admin.system()
    mb = await sys.mailbox(TYPE1)
    r = await sys.call(
        "POST", "/v1/messages", content=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == code
    assert err["message"]
    if path is not None:
        assert err.get("path") == path
    await _nothing_stored(sys, mb, server)


async def test_bad_timestamp_names_field(admin: Api, server: ServerInfo) -> None:
    sys = await admin.system()
    mb = await sys.mailbox(TYPE1)
    env = envelope(TYPE1)
    env["Beskedkuvert"]["Leveranceinformation"]["Dannelsestidspunkt"] = {
        "TidsstempelDatoTid": "yesterday"
    }
    r = await sys.call("POST", "/v1/messages", json=env, expect=400)
    assert r.json()["error"]["path"].startswith(
        "$.Beskedkuvert.Leveranceinformation.Dannelsestidspunkt"
    )
    await _nothing_stored(sys, mb, server)


async def test_malformed_xml(admin: Api, server: ServerInfo) -> None:
    sys = await admin.system()
    mb = await sys.mailbox(TYPE1)
    r = await sys.call(
        "POST",
        "/v1/messages",
        content=b"<Haendelsesbesked><BeskedId>",
        headers={"Content-Type": "application/xml"},
        expect=400,
    )
    assert r.json()["error"]["code"] == "malformed"
    evil = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><Haendelsesbesked>&e;</Haendelsesbesked>'
    r = await sys.call(
        "POST",
        "/v1/messages",
        content=evil,
        headers={"Content-Type": "application/xml"},
        expect=400,
    )
    assert "passwd" not in r.text.replace("file:///etc/passwd", "")
    await _nothing_stored(sys, mb, server)


async def test_wrong_content_type(admin: Api, server: ServerInfo) -> None:
    sys = await admin.system()
    mb = await sys.mailbox(TYPE1)
    r = await sys.call(
        "POST", "/v1/messages", content=b"hello", headers={"Content-Type": "text/plain"}, expect=415
    )
    assert r.json()["error"]["code"] == "unsupported_media_type"
    r = await sys.call(
        "POST",
        "/v1/messages/batch",
        content=b"<a/>",
        headers={"Content-Type": "application/xml"},
        expect=415,
    )
    await _nothing_stored(sys, mb, server)


async def test_oversize_bodies(admin: Api, server: ServerInfo) -> None:
    sys = await admin.system()
    mb = await sys.mailbox(TYPE1)
    env = envelope(TYPE1)
    env["Beskeddata"] = [{"json": "x" * (MAX_ENVELOPE_BYTES + 10)}]
    r = await sys.call("POST", "/v1/messages", json=env, expect=413)
    assert r.json()["error"]["code"] == "too_large"
    await _nothing_stored(sys, mb, server)


async def test_request_over_the_body_limit(
    nursery: trio.Nursery, tmp_path: Path, clock: FakeClock
) -> None:
    limit = 16 * 1024  # small: httpx sends the whole body before reading the early 413
    config = BrokerConfig(
        data_dir=str(tmp_path),
        bind="127.0.0.1:0",
        admin_token=ADMIN_TOKEN,
        max_request_bytes=limit,
        access_control=False,
    )
    info = await nursery.start(partial(serve, config, clock=clock))
    async with httpx.AsyncClient(base_url=info.url, timeout=10) as http:
        sys = await Api(http, ADMIN_TOKEN).system()
        mb = await sys.mailbox(TYPE1)
        body = b" " * (limit + 1)
        r = await sys.call(
            "POST",
            "/v1/messages/batch",
            content=body,
            headers={"Content-Type": "application/json"},
            expect=413,
        )
        assert r.json()["error"]["code"] == "too_large"
        await _nothing_stored(sys, mb, info)


async def test_batch_too_many_items(admin: Api, server: ServerInfo) -> None:
    from broker.codec import MAX_BATCH_ITEMS

    sys = await admin.system()
    mb = await sys.mailbox(TYPE1)
    body = b"\n".join([json.dumps(envelope(TYPE1)).encode()] * (MAX_BATCH_ITEMS + 1))
    r = await sys.call(
        "POST",
        "/v1/messages/batch",
        content=body,
        headers={"Content-Type": "application/x-ndjson"},
        expect=413,
    )
    assert str(MAX_BATCH_ITEMS) in r.json()["error"]["message"]
    await _nothing_stored(sys, mb, server)


@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        pytest.param({}, 401, "unauthorized", id="missing"),
        pytest.param({"Authorization": "Bearer nope"}, 401, "unauthorized", id="unknown"),
        pytest.param(
            {"Authorization": "Basic dXNlcjpwYXNz"}, 401, "unauthorized", id="wrong-scheme"
        ),
    ],
)
async def test_missing_or_bad_token(
    admin: Api, server: ServerInfo, headers: dict[str, str], status: int, code: str
) -> None:
    sys = await admin.system()
    mb = await sys.mailbox(TYPE1)
    for method, path in [
        ("POST", "/v1/messages"),
        ("POST", "/v1/messages/batch"),
        ("GET", f"/v1/mailboxes/{mb}"),
        ("GET", f"/v1/mailboxes/{mb}/messages"),
        ("POST", "/v1/mailboxes"),
        ("POST", "/v1/systems"),
        ("GET", "/openapi.json"),
        ("GET", "/asyncapi.json"),
    ]:
        r = await admin.http.request(
            method, path, headers=headers, content=json.dumps(envelope(TYPE1))
        )
        assert r.status_code == status, (method, path, r.text)
        assert r.json()["error"]["code"] == code
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    await _nothing_stored(sys, mb, server)


async def test_admin_and_system_tokens_are_not_interchangeable(admin: Api) -> None:
    sys = await admin.system()
    r = await sys.call("POST", "/v1/systems", json={"name": "x"}, expect=403)
    assert r.json()["error"]["code"] == "forbidden"
    r = await admin.call("POST", "/v1/messages", json=envelope(TYPE1), expect=403)
    r = await admin.call("POST", "/v1/mailboxes", json={"name": "x"}, expect=403)


async def test_bad_query_and_bodies_on_receiving_side(admin: Api) -> None:
    sys = await admin.system()
    mb = await sys.mailbox(TYPE1)
    r = await sys.call("GET", f"/v1/mailboxes/{mb}/messages", params={"max": "0"}, expect=400)
    assert r.json()["error"]["path"] == "query.max"
    r = await sys.call("GET", f"/v1/mailboxes/{mb}/messages", params={"wait": "abc"}, expect=400)
    assert r.json()["error"]["path"] == "query.wait"
    r = await sys.call("POST", f"/v1/mailboxes/{mb}/ack", json={"delivery_ids": []}, expect=400)
    r = await sys.call("POST", f"/v1/mailboxes/{mb}/ack", json={"ids": ["1-1"]}, expect=400)
    assert r.json()["error"]["code"] == "unknown_field"
    r = await sys.call(
        "POST", f"/v1/mailboxes/{mb}/ack", json={"delivery_ids": ["garbage"]}, expect=409
    )
    assert r.json()["error"]["code"] == "unknown_delivery"
    r = await sys.call(
        "POST", "/v1/mailboxes", json={"name": "x", "retention_s": 31 * 86400}, expect=400
    )
    assert r.json()["error"]["path"] == "$.retention_s"
    r = await sys.call(
        "POST",
        f"/v1/mailboxes/{mb}/subscriptions",
        json={"message_types": ["not-a-uuid"]},
        expect=400,
    )
    assert r.json()["error"]["path"] == "$.message_types[0]"


async def test_unknown_endpoint_and_method(admin: Api) -> None:
    r = await admin.call("GET", "/v1/nothing-here", expect=404)
    assert r.json()["error"]["code"] == "not_found"
    r = await admin.call("PUT", "/v1/messages", expect=405)
    assert r.json()["error"]["code"] == "method_not_allowed"
