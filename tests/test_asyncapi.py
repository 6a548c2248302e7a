"""The AsyncAPI document of the streams (``/asyncapi.json``, broker/http/asyncapi.py): it names
exactly the stream routes, every reference in it resolves, and real frames of a live server,
both ways, are valid against its payload schemas (jsonschema)."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import msgspec
import pytest
import trio

from broker.config import BrokerConfig
from broker.http.asyncapi import asyncapi_document
from broker.server import ServerInfo
from broker.service import Broker
from store import MemoryStore
from tests.conftest import TYPE1, Api, envelope
from tests.test_openapi_cli import stream_paths
from tests.test_streams import bad_envelope, connect, consumer, deliveries, receive

DOC = asyncapi_document()


def payload_of(message: str) -> dict[str, Any]:
    """The payload schema of one of the document's messages, as a standalone JSON Schema."""
    ref = DOC["components"]["messages"][message]["payload"]["$ref"]
    return {"$ref": ref, "components": DOC["components"]}


def check(message: str, frame: Any) -> None:
    """``frame`` (decoded JSON) is valid against ``message``'s payload schema."""
    jsonschema.Draft202012Validator(payload_of(message)).validate(frame)


def resolve(pointer: str) -> Any:
    node: Any = DOC
    for part in pointer.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in refs(value)]
    return []


def test_the_document_describes_exactly_the_stream_routes() -> None:
    broker = Broker(MemoryStore(), BrokerConfig(), admin_token="x")
    assert {c["address"] for c in DOC["channels"].values()} == stream_paths(broker)
    assert DOC["asyncapi"] == "3.0.0"
    for name, channel in DOC["channels"].items():
        # every parameter of the address is declared, and nothing else
        assert set(re.findall(r"\{([^}]+)\}", channel["address"])) == set(
            channel.get("parameters", {})
        ), name
        assert channel["bindings"]["ws"]["method"] == "GET"


def test_every_reference_resolves_and_operations_use_their_channel() -> None:
    found = refs(DOC)
    assert len(found) > 30
    for ref in found:
        assert ref.startswith("#/"), ref
        resolve(ref)  # raises KeyError when dangling
    for name, op in DOC["operations"].items():
        assert op["action"] in ("send", "receive"), name
        channel = op["channel"]["$ref"]
        assert op["messages"], name
        for message in op["messages"]:
            assert message["$ref"].startswith(channel + "/messages/"), (name, message)
        assert op["security"] == [{"$ref": "#/components/securitySchemes/bearer"}]
    # each channel's messages are used by an operation on it, each in one direction
    for name, channel in DOC["channels"].items():
        used = [
            m["$ref"].rsplit("/", 1)[1]
            for op in DOC["operations"].values()
            if op["channel"]["$ref"] == f"#/channels/{name}"
            for m in op["messages"]
        ]
        assert sorted(used) == sorted(channel["messages"]), name


def test_the_schemas_tell_frames_apart() -> None:
    """A control for the live test: the validator refuses a frame of another kind."""
    check("Settled", {"acked": 2, "failed": []})
    with pytest.raises(jsonschema.ValidationError):
        check("Deliveries", {"confirms": []})
    with pytest.raises(jsonschema.ValidationError):
        check("PublishFrame", {"seq": "one", "envelope": envelope(TYPE1)})
    with pytest.raises(jsonschema.ValidationError):
        check("ConsumeFrame", {"credit": 1, "surprise": True})
    with pytest.raises(jsonschema.ValidationError):
        check("PublishFrame", {"seq": 1, "envelope": bad_envelope()})


async def test_live_publish_frames_match_the_document(admin: Api, server: ServerInfo) -> None:
    with trio.fail_after(30):
        sys = await admin.system()
        await sys.mailbox(TYPE1)
        frames = [
            {"seq": 1, "envelope": envelope(TYPE1)},
            {"seq": 2, "envelopes": [envelope(TYPE1), envelope(TYPE1)]},
        ]
        async with connect(server, "/v1/stream/publish", sys) as ws:
            for frame in frames:
                check("PublishFrame", frame)
                await ws.send_message(json.dumps(frame))
            # one whole-frame refusal (both keys) and one bad item: their confirms too
            await ws.send_message(json.dumps({"seq": 3, "envelope": envelope(), "envelopes": []}))
            await ws.send_message(json.dumps({"seq": 4, "envelopes": [bad_envelope()]}))
            seen: dict[int, dict[str, Any]] = {}
            while len(seen) < 4:
                msg = await receive(ws)
                check("Confirms", msg)
                seen.update((c["seq"], c) for c in msg["confirms"])
            assert "error" in seen[3] and "error" in seen[4]["results"][0]
            # a frame without a seq: the last frame before the close
            await ws.send_message(json.dumps({"envelope": envelope(TYPE1)}))
            last = await receive(ws)
            check("PublishError", last)
            assert last["error"]["code"] == "invalid"


async def test_live_consume_frames_match_the_document(admin: Api, server: ServerInfo) -> None:
    with trio.fail_after(30):
        async with consumer(admin, server, 3) as (_, _, ws):
            credit = {"credit": 3}
            check("ConsumeFrame", credit)
            await ws.send_message(json.dumps(credit))
            got = await deliveries(ws, 3)
            # the delivered envelopes, with the broker's Leverancerute, are Haendelsesbesked
            check("Deliveries", {"deliveries": got})
            assert all("Leveranceruter" in json.dumps(d["envelope"]) for d in got)
            ack = {"ack": [got[0]["delivery_id"], "9-1"], "seq": 7}
            check("ConsumeFrame", ack)
            await ws.send_message(json.dumps(ack))
            raw = await ws.get_message()
            check("Settled", json.loads(raw))
            # the reply's bytes, as before it was a Struct
            assert raw == (
                '{"acked":1,"failed":[{"delivery_id":"9-1","code":"unknown_delivery"}],"seq":7}'
            )
            nack = {"nack": [got[1]["delivery_id"]], "requeue": False}
            check("ConsumeFrame", nack)
            await ws.send_message(msgspec.msgpack.encode(nack))
            settled = await receive(ws)
            check("Settled", settled)
            assert settled == {"nacked": 1, "failed": []}
            await ws.send_message(json.dumps({"ack": ["1-1"], "nack": ["2-1"]}))
            refused = await receive(ws)
            check("ConsumeError", refused)
            assert refused["error"]["code"] == "invalid"


async def test_the_document_is_served_to_any_valid_token(admin: Api, server: ServerInfo) -> None:
    sys = await admin.system()
    doc = (await sys.call("GET", "/asyncapi.json", expect=200)).json()
    assert doc == json.loads(json.dumps(DOC))
    assert (await admin.http.get("/asyncapi.json")).status_code == 401
