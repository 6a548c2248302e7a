"""The AsyncAPI 3.0 document of the streaming channels, served at ``/asyncapi.json``.

The OpenAPI document (:mod:`broker.http.openapi`) can only say that ``/v1/stream/...`` upgrades
to a WebSocket; this one describes what flows over it, per channel: the frames a client sends,
the frames the broker sends back, the query parameters and the token. It is written from the
broker's side, as AsyncAPI asks: ``receive`` operations are the client's frames, ``send``
operations the broker's.

Payload schemas are generated from the msgspec Structs the streams decode and encode with
(:mod:`broker.http.streams`), so they cannot drift; a test validates real frames of a live
server against them. The protocol itself, in prose, is docs/streams.md.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

from broker.codec import MAX_BATCH_ITEMS
from broker.config import BrokerConfig
from broker.envelope import Haendelsesbesked
from broker.http.mailboxes import MAX_IDS, PollOut
from broker.streamhub import MAX_CREDIT
from broker.streaming import DEFAULT_WINDOW, MAX_FRAME_BYTES, MAX_WINDOW

__all__ = ["asyncapi_document"]

_SCHEMA = "#/components/schemas/{name}"
_TOKEN = {"$ref": "#/components/securitySchemes/bearer"}


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _key(name: str) -> str:
    """A component message's key within its channel, and its ``name``: ``PublishFrame`` ->
    ``publishFrame``."""
    return name[0].lower() + name[1:]


def _ws_binding(query: dict[str, Any]) -> dict[str, Any]:
    """The WebSocket channel binding: a GET upgrade with the token and these query parameters."""
    return {
        "ws": {
            "method": "GET",
            "query": {"type": "object", "properties": query},
            "headers": {
                "type": "object",
                "required": ["Authorization"],
                "properties": {
                    "Authorization": {"type": "string", "description": "Bearer <system token>"}
                },
            },
            "bindingVersion": "0.1.0",
        }
    }


def _message(name: str, payload: str, summary: str, description: str = "") -> dict[str, Any]:
    message: dict[str, Any] = {
        "name": _key(name),
        "summary": summary,
        "contentType": "application/json",
        "payload": {"$ref": _SCHEMA.format(name=payload)},
    }
    if description:
        message["description"] = description
    return message


def _messages() -> dict[str, Any]:
    return {
        "PublishFrame": _message(
            "PublishFrame",
            "PublishIn",
            "A frame of envelopes to publish, with a seq of the client's choosing",
            "Exactly one of `envelope` and `envelopes` (at most "
            f"{MAX_BATCH_ITEMS}). A text frame is JSON; a binary frame is msgpack of the same "
            f"structure (one that starts with `{{` is read as JSON). At most {MAX_FRAME_BYTES} "
            "bytes (larger: closed with 1009).",
        ),
        "Confirms": _message(
            "Confirms",
            "ConfirmsOut",
            "Confirms of the frames whose commit (fsync) returned",
            "One entry per frame, each exactly once, in any order: per-envelope results in the "
            "shape of POST /v1/messages/batch, or the frame's `error` when nothing of it was "
            "stored.",
        ),
        "PublishError": _message(
            "PublishError",
            "ErrorOut",
            "The stream's last frame before the broker closes it",
            "Sent before closing with 1007 (a frame without a readable seq), 1009 (a frame "
            "too large), 1011 (an internal error).",
        ),
        "ConsumeFrame": _message(
            "ConsumeFrame",
            "ConsumeIn",
            "Credit, an ack or a nack (credit may ride along)",
            f"At most one of `ack` and `nack`, each with 1 to {MAX_IDS} delivery ids. Unused "
            f"credit may not pass {MAX_CREDIT}. Text frames are JSON, binary frames msgpack.",
        ),
        "Deliveries": _message(
            "Deliveries",
            "PollOut",
            "Leased deliveries, never more than the credit granted",
            "The items of a poll (GET /v1/mailboxes/{id}/messages): the lease is committed "
            "before they are sent; at most 1000 a frame.",
        ),
        "Settled": _message(
            "Settled",
            "SettledOut",
            "The reply to one ack or nack frame, in the order the frames came",
            "`acked` or `nacked` by the frame's kind; ids that were not settled are in `failed` "
            "(`lease_expired`, `unknown_delivery`); `seq` if the frame had one.",
        ),
        "ConsumeError": _message(
            "ConsumeError",
            "ErrorOut",
            "A refused client frame (nothing changed; the stream stays open)",
            "Also the last frame before a close with 1011 (an internal error).",
        ),
    }


@cache
def asyncapi_document() -> dict[str, Any]:
    from broker.http import streams  # imported here: the stream modules import the app's

    _, schemas = msgspec.json.schema_components(
        [
            streams.PublishIn,
            streams.ConfirmsOut,
            streams.ErrorOut,
            streams.ConsumeIn,
            PollOut,
            streams.SettledOut,
            Haendelsesbesked,
        ],
        ref_template=_SCHEMA,
    )
    # a delivery's envelope is stored JSON handed out as it is (msgspec.Raw, which has no
    # schema of its own): the envelope as published, with the broker's Leverancerute added
    schemas["DeliveryOut"]["properties"]["envelope"] = {
        "$ref": _SCHEMA.format(name="Haendelsesbesked")
    }
    config = BrokerConfig()

    def channel_messages(*names: str) -> dict[str, Any]:
        return {_key(name): _ref("messages", name) for name in names}

    def operation(action: str, channel: str, summary: str, *messages: str) -> dict[str, Any]:
        return {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": summary,
            "security": [_TOKEN],
            "messages": [{"$ref": f"#/channels/{channel}/messages/{_key(m)}"} for m in messages],
        }

    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "dueslag streams",
            "version": "1",
            "description": "The WebSocket publish and consume streams of dueslag: the same "
            "token, validation, access control, leases and durability as the HTTP API "
            "(/openapi.json). A refused upgrade is an HTTP error response. Close codes: 1000 "
            "normal, 1001 the broker is shutting down, 1007 a publish frame without a "
            "readable seq, 1009 a frame too large, 1011 an internal error. Protocol: "
            "docs/streams.md.",
        },
        "defaultContentType": "application/json",
        "channels": {
            "publish": {
                "address": "/v1/stream/publish",
                "title": "The publish stream",
                "messages": channel_messages("PublishFrame", "Confirms", "PublishError"),
                "bindings": _ws_binding(
                    {
                        "window": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_WINDOW,
                            "default": DEFAULT_WINDOW,
                            "description": "frames read and not yet confirmed; the broker "
                            "stops reading while the window is full",
                        }
                    }
                ),
            },
            "consume": {
                "address": "/v1/stream/mailboxes/{mailbox_id}/consume",
                "title": "The consume stream of one of the system's mailboxes",
                "parameters": {"mailbox_id": {"description": "the mailbox's id"}},
                "messages": channel_messages(
                    "ConsumeFrame", "Deliveries", "Settled", "ConsumeError"
                ),
                "bindings": _ws_binding(
                    {
                        "lease": {
                            "type": "number",
                            "minimum": 1,
                            "maximum": config.max_lease_s,
                            "default": config.default_lease_s,
                            "description": "seconds a delivery stays leased to this stream",
                        }
                    }
                ),
            },
        },
        "operations": {
            "receivePublishFrames": operation(
                "receive", "publish", "Frames of envelopes to publish", "PublishFrame"
            ),
            "sendConfirms": operation(
                "send", "publish", "Durable confirms, and a last error", "Confirms", "PublishError"
            ),
            "receiveConsumeFrames": operation(
                "receive", "consume", "Credit, acks and nacks", "ConsumeFrame"
            ),
            "sendDeliveries": operation(
                "send",
                "consume",
                "Deliveries, settle replies and refusals",
                "Deliveries",
                "Settled",
                "ConsumeError",
            ),
        },
        "components": {
            "schemas": schemas,
            "messages": _messages(),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a system token (admin and authority tokens cannot stream)",
                }
            },
        },
    }
