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

__all__ = ["openapi_document"]

REF = "#/components/schemas/{name}"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=name)}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _op(
    summary: str,
    ok: str,
    ok_schema: dict[str, Any] | None,
    *,
    auth: str | None = "system",
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
    errors: tuple[str, ...] = ("400", "401", "403", "404"),
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {}}
    if auth is not None:
        op["security"] = [{"bearer": []}]
        op["description"] = f"Token: {auth}."
    if body is not None:
        op["requestBody"] = {"required": True, **body}
    if params:
        op["parameters"] = params
    op["responses"][ok] = {"description": "OK", **(_json(ok_schema) if ok_schema else {})}
    for code in errors:
        op["responses"][code] = {"description": "Error", **_json(_ref("Error"))}
    return op


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, kind: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": {"type": kind},
        "description": description,
    }


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
            "application/json": {"schema": _ref("Haendelsesbesked")},
            "application/msgpack": {"schema": _ref("Haendelsesbesked")},
            "application/xml": {
                "schema": {"type": "string", "description": "a Haendelsesbesked document"}
            },
        }
    }
    batch_body = {
        "description": f"up to {MAX_BATCH_ITEMS} envelopes",
        "content": {
            "application/json": {"schema": {"type": "array", "items": _ref("Haendelsesbesked")}},
            "application/x-ndjson": {"schema": {"type": "string"}},
            "application/msgpack": {"schema": {"type": "array", "items": _ref("Haendelsesbesked")}},
        },
    }
    mb = [_path_param("mailbox_id")]

    def ids(name: str) -> dict[str, Any]:
        return _json(_ref(name))

    paths: dict[str, Any] = {
        "/v1/systems": {
            "post": _op(
                "Register a system; returns its token once",
                "201",
                _ref("SystemOut"),
                auth="admin",
                body=ids("SystemIn"),
            ),
            "get": _op("List systems", "200", {"type": "object"}, auth="admin"),
        },
        "/v1/messages": {
            "post": _op(
                "Send one envelope",
                "202",
                _ref("PublishOut"),
                body=envelope_body,
                errors=("400", "401", "403", "413", "415", "503"),
            ),
        },
        "/v1/messages/batch": {
            "post": _op(
                "Send a batch of envelopes in one group commit",
                "200",
                _ref("BatchOut"),
                body=batch_body,
                errors=("400", "401", "403", "413", "415", "503"),
            ),
        },
        "/v1/mailboxes": {
            "post": _op(
                "Create a mailbox (dueslag)", "201", _ref("MailboxOut"), body=ids("MailboxIn")
            ),
            "get": _op("List this system's mailboxes", "200", {"type": "object"}),
        },
        "/v1/mailboxes/{mailbox_id}": {
            "get": _op("Mailbox with queue counts", "200", _ref("MailboxOut"), params=mb),
            "delete": _op("Delete a mailbox and everything in it", "204", None, params=mb),
        },
        "/v1/mailboxes/{mailbox_id}/subscriptions": {
            "post": _op(
                "Subscribe the mailbox to message types",
                "201",
                _ref("SubscriptionOut"),
                body=ids("SubscriptionIn"),
                params=mb,
            ),
            "get": _op("List the mailbox's subscriptions", "200", {"type": "object"}, params=mb),
        },
        "/v1/mailboxes/{mailbox_id}/subscriptions/{subscription_id}": {
            "patch": _op(
                "Activate/deactivate a subscription or change its expression",
                "200",
                _ref("SubscriptionOut"),
                params=[*mb, _path_param("subscription_id")],
                body=ids("SubscriptionPatch"),
            ),
            "delete": _op(
                "Delete a subscription", "204", None, params=[*mb, _path_param("subscription_id")]
            ),
        },
        "/v1/mailboxes/{mailbox_id}/messages": {
            "get": _op(
                "Lease deliveries (long-poll)",
                "200",
                _ref("PollOut"),
                params=[
                    *mb,
                    _query("max", "integer", "most deliveries to lease (1..1000, default 10)"),
                    _query(
                        "wait", "number", "seconds to wait for the first one (0..30, default 0)"
                    ),
                    _query("lease", "number", "lease length in seconds (1..43200, default 30)"),
                ],
            ),
        },
        "/v1/mailboxes/{mailbox_id}/deliveries/{delivery_id}": {
            "get": _op(
                "A leased delivery, as JSON or (Accept: application/xml) Haendelsesbesked XML",
                "200",
                {"type": "object"},
                params=[*mb, _path_param("delivery_id")],
                errors=("401", "403", "404", "406", "409"),
            ),
        },
        "/v1/mailboxes/{mailbox_id}/ack": {
            "post": _op(
                "Acknowledge leased deliveries",
                "200",
                {"type": "object"},
                body=ids("AckIn"),
                params=mb,
                errors=("400", "401", "403", "404", "409"),
            ),
        },
        "/v1/mailboxes/{mailbox_id}/nack": {
            "post": _op(
                "Requeue or dead-letter leased deliveries",
                "200",
                {"type": "object"},
                body=ids("NackIn"),
                params=mb,
                errors=("400", "401", "403", "404", "409"),
            ),
        },
        "/v1/mailboxes/{mailbox_id}/dead-letters": {
            "get": _op(
                "List dead letters",
                "200",
                {"type": "object"},
                params=[*mb, _query("limit", "integer", "1..1000, default 100")],
            ),
        },
        "/v1/mailboxes/{mailbox_id}/dead-letters/requeue": {
            "post": _op(
                "Move dead letters back to ready",
                "200",
                {"type": "object"},
                body=ids("RequeueIn"),
                params=mb,
            ),
        },
        "/v1/mailboxes/{mailbox_id}/replay": {
            "post": _op(
                "Move acknowledged copies back to ready",
                "200",
                {"type": "object"},
                body=ids("ReplayIn"),
                params=mb,
            ),
        },
        "/v1/catalog/message-types": {
            "get": _op(
                "The message catalog (beskedkatalog); public",
                "200",
                {"type": "object"},
                auth=None,
                errors=(),
            ),
            "post": _op(
                "Add a message type",
                "201",
                {"type": "object"},
                auth="admin",
                body=_json({"type": "object"}),
            ),
        },
        "/v1/catalog/message-types/{type_id}": {
            "get": _op(
                "One message type; public",
                "200",
                {"type": "object"},
                auth=None,
                params=[_path_param("type_id")],
                errors=("404",),
            ),
        },
        "/v1/catalog/message-types/{type_id}/active": {
            "post": _op(
                "Activate or deactivate a message type",
                "200",
                {"type": "object"},
                auth="admin",
                params=[_path_param("type_id")],
                body=_json({"type": "object", "properties": {"active": {"type": "boolean"}}}),
            ),
        },
        "/v1/authorities": {
            "post": _op(
                "Register an authority (CVR); returns its token once",
                "201",
                {"type": "object"},
                auth="admin",
                body=_json({"type": "object", "required": ["cvr", "name"]}),
            ),
            "get": _op(
                "List authorities (the 98 municipalities are bundled)",
                "200",
                {"type": "object"},
                auth="any valid token",
            ),
        },
        "/v1/authorities/{cvr}/token": {
            "post": _op(
                "Issue a (new) token for an authority",
                "200",
                {"type": "object"},
                auth="admin",
                params=[_path_param("cvr")],
            ),
        },
        "/v1/agreements": {
            "post": _op(
                "Request a service agreement (send or receive)",
                "201",
                {"type": "object"},
                body=_json({"type": "object"}),
                errors=("400", "401", "403", "422"),
            ),
            "get": _op(
                "Agreements: a system's own, those naming an authority, or all (admin)",
                "200",
                {"type": "object"},
                auth="system, authority or admin",
            ),
        },
        "/v1/agreements/{agreement_id}": {
            "get": _op(
                "One agreement with its derived status",
                "200",
                {"type": "object"},
                auth="system, authority or admin",
                params=[_path_param("agreement_id")],
            ),
        },
        "/v1/agreements/{agreement_id}/decision": {
            "post": _op(
                "An authority approves or rejects",
                "200",
                {"type": "object"},
                auth="authority",
                params=[_path_param("agreement_id")],
                body=_json({"type": "object", "required": ["approve"]}),
                errors=("400", "401", "403", "404", "409"),
            ),
        },
        "/v1/agreements/{agreement_id}/withdraw": {
            "post": _op(
                "The requesting system withdraws an agreement",
                "200",
                {"type": "object"},
                params=[_path_param("agreement_id")],
            ),
        },
        "/v1/value-lists": {
            "post": _op(
                "Create a value list",
                "201",
                {"type": "object"},
                body=_json({"type": "object", "required": ["name"]}),
                errors=("400", "401", "403", "409"),
            ),
            "get": _op("This system's value lists", "200", {"type": "object"}),
        },
        "/v1/value-lists/{list_id}": {
            "get": _op(
                "A value list with its values",
                "200",
                {"type": "object"},
                params=[_path_param("list_id")],
            ),
            "put": _op(
                "Import a value list with a given id (or reactivate a passivated one)",
                "200",
                {"type": "object"},
                params=[_path_param("list_id")],
                body=_json({"type": "object"}),
                errors=("400", "401", "403", "409"),
            ),
            "delete": _op(
                "Delete a value list (final; content wiped)",
                "200",
                {"type": "object"},
                params=[_path_param("list_id")],
                errors=("401", "403", "404", "409"),
            ),
        },
        "/v1/value-lists/{list_id}/values": {
            "post": _op(
                "Add and remove values",
                "200",
                {"type": "object"},
                params=[_path_param("list_id")],
                body=_json({"type": "object"}),
                errors=("400", "401", "403", "404", "409"),
            ),
            "put": _op(
                "Replace all values",
                "200",
                {"type": "object"},
                params=[_path_param("list_id")],
                body=_json({"type": "object", "required": ["values"]}),
                errors=("400", "401", "403", "404", "409"),
            ),
        },
        "/v1/value-lists/{list_id}/passivate": {
            "post": _op(
                "Passivate a value list (reversible by import)",
                "200",
                {"type": "object"},
                params=[_path_param("list_id")],
                errors=("401", "403", "404", "409"),
            ),
        },
        "/v1/audit": {
            "get": _op(
                "The audit log, newest first",
                "200",
                {"type": "object"},
                auth="admin",
                params=[
                    _query(n, "string", d)
                    for n, d in [
                        ("since", "epoch ms"),
                        ("until", "epoch ms"),
                        ("actor", "system id, CVR or admin"),
                        ("action", "exact, or a prefix ending in ."),
                        ("outcome", "ok|refused|error"),
                        ("limit", "1..1000"),
                    ]
                ],
            ),
        },
        "/v1/stream/publish": {
            "get": _op(
                "WebSocket upgrade: the publish stream (pipelined envelopes, a durable confirm per"
                " frame after its commit); protocol in docs/streams.md",
                "101",
                None,
                params=[
                    _query(
                        "window",
                        "integer",
                        "unconfirmed envelopes allowed (1..10000, default 1000)",
                    )
                ],
                errors=("400", "401", "403", "503"),
            ),
        },
        "/v1/stream/mailboxes/{mailbox_id}/consume": {
            "get": _op(
                "WebSocket upgrade: the consume stream (credit-based leases, acks and nacks);"
                " protocol in docs/streams.md",
                "101",
                None,
                params=[
                    *mb,
                    _query("lease", "number", "lease length in seconds (1..43200, default 30)"),
                ],
                errors=("400", "401", "403", "404", "503"),
            ),
        },
        "/healthz": {
            "get": _op("Liveness probe (no token)", "200", {"type": "object"}, auth=None, errors=())
        },
        "/readyz": {
            "get": _op(
                "Readiness probe (no token)", "200", {"type": "object"}, auth=None, errors=("503",)
            )
        },
        "/metrics": {
            "get": _op("Prometheus metrics", "200", None, auth="admin", errors=("401", "403"))
        },
        "/openapi.json": {
            "get": _op(
                "This document", "200", {"type": "object"}, auth="any valid token", errors=("401",)
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
