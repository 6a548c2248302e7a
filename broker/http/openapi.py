"""The OpenAPI 3.1 document served at ``/openapi.json``.

Body schemas are generated from the same msgspec Structs the handlers decode with, so they cannot
drift; a test checks that every route of the app is documented here and nothing more.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

from broker.codec import MAX_BATCH_ITEMS
from broker.envelope import Haendelsesbesked
from broker.http.openapiparts import (
    REF,
    governance_paths,
    json_content,
    operation,
    path_param,
    query_param,
    ref,
)

__all__ = ["openapi_document"]


@cache
def openapi_document() -> dict[str, Any]:
    from broker.http import admin, mailboxes, messages

    structs = [
        Haendelsesbesked,
        messages.PublishOut,
        messages.BatchOut,
        mailboxes.MailboxIn,
        mailboxes.MailboxOut,
        mailboxes.SubscriptionIn,
        mailboxes.SubscriptionOut,
        mailboxes.SubscriptionPatch,
        mailboxes.AckIn,
        mailboxes.NackIn,
        mailboxes.RequeueIn,
        mailboxes.ReplayIn,
        mailboxes.PollOut,
        mailboxes.DeadOut,
        admin.SystemIn,
        admin.SystemOut,
    ]
    _, components = msgspec.json.schema_components(structs, ref_template=REF)
    components["Error"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "description": "stable machine-readable code"},
                    "message": {"type": "string"},
                    "path": {"type": "string", "description": "where in the input"},
                },
            }
        },
    }
    envelope_body = {
        "content": {
            "application/json": {"schema": ref("Haendelsesbesked")},
            "application/msgpack": {"schema": ref("Haendelsesbesked")},
            "application/xml": {
                "schema": {"type": "string", "description": "a Haendelsesbesked document"}
            },
        }
    }
    batch_body = {
        "description": f"up to {MAX_BATCH_ITEMS} envelopes",
        "content": {
            "application/json": {"schema": {"type": "array", "items": ref("Haendelsesbesked")}},
            "application/x-ndjson": {"schema": {"type": "string"}},
            "application/msgpack": {"schema": {"type": "array", "items": ref("Haendelsesbesked")}},
        },
    }
    mb = [path_param("mailbox_id")]

    def ids(name: str) -> dict[str, Any]:
        return json_content(ref(name))

    paths: dict[str, Any] = {
        "/v1/systems": {
            "post": operation(
                "Register a system; returns its token once",
                "201",
                ref("SystemOut"),
                auth="admin",
                body=ids("SystemIn"),
            ),
            "get": operation("List systems", "200", {"type": "object"}, auth="admin"),
        },
        "/v1/messages": {
            "post": operation(
                "Send one envelope",
                "202",
                ref("PublishOut"),
                body=envelope_body,
                errors=("400", "401", "403", "408", "413", "415", "503"),
            ),
        },
        "/v1/messages/batch": {
            "post": operation(
                "Send a batch of envelopes in one group commit",
                "200",
                ref("BatchOut"),
                body=batch_body,
                errors=("400", "401", "403", "408", "413", "415", "503"),
            ),
        },
        "/v1/mailboxes": {
            "post": operation(
                "Create a mailbox (dueslag)", "201", ref("MailboxOut"), body=ids("MailboxIn")
            ),
            "get": operation("List this system's mailboxes", "200", {"type": "object"}),
        },
        "/v1/mailboxes/{mailbox_id}": {
            "get": operation("Mailbox with queue counts", "200", ref("MailboxOut"), params=mb),
            "delete": operation("Delete a mailbox and everything in it", "204", None, params=mb),
        },
        "/v1/mailboxes/{mailbox_id}/subscriptions": {
            "post": operation(
                "Subscribe the mailbox to message types",
                "201",
                ref("SubscriptionOut"),
                body=ids("SubscriptionIn"),
                params=mb,
            ),
            "get": operation(
                "List the mailbox's subscriptions", "200", {"type": "object"}, params=mb
            ),
        },
        "/v1/mailboxes/{mailbox_id}/subscriptions/{subscription_id}": {
            "patch": operation(
                "Activate/deactivate a subscription or change its expression",
                "200",
                ref("SubscriptionOut"),
                params=[*mb, path_param("subscription_id")],
                body=ids("SubscriptionPatch"),
            ),
            "delete": operation(
                "Delete a subscription", "204", None, params=[*mb, path_param("subscription_id")]
            ),
        },
        "/v1/mailboxes/{mailbox_id}/messages": {
            "get": operation(
                "Lease deliveries (long-poll)",
                "200",
                ref("PollOut"),
                params=[
                    *mb,
                    query_param("max", "integer", "most deliveries to lease (1..1000, default 10)"),
                    query_param(
                        "wait", "number", "seconds to wait for the first one (0..30, default 0)"
                    ),
                    query_param(
                        "lease", "number", "lease length in seconds (1..43200, default 30)"
                    ),
                ],
            ),
        },
        "/v1/mailboxes/{mailbox_id}/deliveries/{delivery_id}": {
            "get": operation(
                "A leased delivery, as JSON or (Accept: application/xml) Haendelsesbesked XML",
                "200",
                {"type": "object"},
                params=[*mb, path_param("delivery_id")],
                errors=("401", "403", "404", "406", "409"),
            ),
        },
        "/v1/mailboxes/{mailbox_id}/ack": {
            "post": operation(
                "Acknowledge leased deliveries",
                "200",
                {"type": "object"},
                body=ids("AckIn"),
                params=mb,
                errors=("400", "401", "403", "404", "409"),
            ),
        },
        "/v1/mailboxes/{mailbox_id}/nack": {
            "post": operation(
                "Requeue or dead-letter leased deliveries",
                "200",
                {"type": "object"},
                body=ids("NackIn"),
                params=mb,
                errors=("400", "401", "403", "404", "409"),
            ),
        },
        "/v1/mailboxes/{mailbox_id}/dead-letters": {
            "get": operation(
                "List dead letters",
                "200",
                {"type": "object"},
                params=[*mb, query_param("limit", "integer", "1..1000, default 100")],
            ),
        },
        "/v1/mailboxes/{mailbox_id}/dead-letters/requeue": {
            "post": operation(
                "Move dead letters back to ready",
                "200",
                {"type": "object"},
                body=ids("RequeueIn"),
                params=mb,
            ),
        },
        "/v1/mailboxes/{mailbox_id}/replay": {
            "post": operation(
                "Move acknowledged copies back to ready",
                "200",
                {"type": "object"},
                body=ids("ReplayIn"),
                params=mb,
            ),
        },
        **governance_paths(),
        "/v1/stream/publish": {
            "get": operation(
                "WebSocket upgrade: the publish stream (pipelined envelopes, a durable confirm per"
                " frame after its commit); frames in /asyncapi.json, protocol in docs/streams.md",
                "101",
                None,
                params=[
                    query_param(
                        "window",
                        "integer",
                        "unconfirmed envelopes allowed (1..10000, default 1000)",
                    )
                ],
                errors=("400", "401", "403", "503"),
            ),
        },
        "/v1/stream/mailboxes/{mailbox_id}/consume": {
            "get": operation(
                "WebSocket upgrade: the consume stream (credit-based leases, acks and nacks);"
                " frames in /asyncapi.json, protocol in docs/streams.md",
                "101",
                None,
                params=[
                    *mb,
                    query_param(
                        "lease", "number", "lease length in seconds (1..43200, default 30)"
                    ),
                ],
                errors=("400", "401", "403", "404", "503"),
            ),
        },
        "/healthz": {
            "get": operation(
                "Liveness probe (no token)", "200", {"type": "object"}, auth=None, errors=()
            ),
            "post": operation(
                "Liveness probe with a request body (at most 64 KiB, dropped; no token): the "
                "trivial endpoint `dueslag bench` compares POST /v1/messages with",
                "200",
                {"type": "object"},
                auth=None,
                errors=("413",),
            ),
        },
        "/readyz": {
            "get": operation(
                "Readiness probe (no token)", "200", {"type": "object"}, auth=None, errors=("503",)
            )
        },
        "/metrics": {
            "get": operation("Prometheus metrics", "200", None, auth="admin", errors=("401", "403"))
        },
        "/openapi.json": {
            "get": operation(
                "This document", "200", {"type": "object"}, auth="any valid token", errors=("401",)
            )
        },
        "/asyncapi.json": {
            "get": operation(
                "The AsyncAPI 3.0 document of the streams: the frames of /v1/stream/...",
                "200",
                {"type": "object"},
                auth="any valid token",
                errors=("401",),
            )
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dueslag",
            "version": "1",
            "description": "Durable message distributor (Beskedfordeler). Errors: {error: {code, message, path?}}.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
