"""Parts of the OpenAPI document (:mod:`broker.http.openapi`): the operation builders, and the
paths of the governance endpoints (catalog, authorities, agreements, value lists, audit)."""

from __future__ import annotations

from typing import Any

__all__ = [
    "REF",
    "governance_paths",
    "json_content",
    "operation",
    "path_param",
    "query_param",
    "ref",
]

REF = "#/components/schemas/{name}"


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=name)}


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def operation(
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
    op["responses"][ok] = {"description": "OK", **(json_content(ok_schema) if ok_schema else {})}
    for code in errors:
        op["responses"][code] = {"description": "Error", **json_content(ref("Error"))}
    return op


def path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def query_param(name: str, kind: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": {"type": kind},
        "description": description,
    }


def governance_paths() -> dict[str, Any]:
    """The catalog, authority, agreement, value-list and audit endpoints."""
    return {
        "/v1/catalog/message-types": {
            "get": operation(
                "The message catalog (beskedkatalog); public",
                "200",
                {"type": "object"},
                auth=None,
                errors=(),
            ),
            "post": operation(
                "Add a message type",
                "201",
                {"type": "object"},
                auth="admin",
                body=json_content({"type": "object"}),
            ),
        },
        "/v1/catalog/message-types/{type_id}": {
            "get": operation(
                "One message type; public",
                "200",
                {"type": "object"},
                auth=None,
                params=[path_param("type_id")],
                errors=("404",),
            ),
        },
        "/v1/catalog/message-types/{type_id}/active": {
            "post": operation(
                "Activate or deactivate a message type",
                "200",
                {"type": "object"},
                auth="admin",
                params=[path_param("type_id")],
                body=json_content(
                    {"type": "object", "properties": {"active": {"type": "boolean"}}}
                ),
            ),
        },
        "/v1/authorities": {
            "post": operation(
                "Register an authority (CVR); returns its token once",
                "201",
                {"type": "object"},
                auth="admin",
                body=json_content({"type": "object", "required": ["cvr", "name"]}),
            ),
            "get": operation(
                "List authorities (the 98 municipalities are bundled)",
                "200",
                {"type": "object"},
                auth="any valid token",
            ),
        },
        "/v1/authorities/{cvr}/token": {
            "post": operation(
                "Issue a (new) token for an authority",
                "200",
                {"type": "object"},
                auth="admin",
                params=[path_param("cvr")],
            ),
        },
        "/v1/agreements": {
            "post": operation(
                "Request a service agreement (send or receive)",
                "201",
                {"type": "object"},
                body=json_content({"type": "object"}),
                errors=("400", "401", "403", "422"),
            ),
            "get": operation(
                "Agreements: a system's own, those naming an authority, or all (admin)",
                "200",
                {"type": "object"},
                auth="system, authority or admin",
            ),
        },
        "/v1/agreements/{agreement_id}": {
            "get": operation(
                "One agreement with its derived status",
                "200",
                {"type": "object"},
                auth="system, authority or admin",
                params=[path_param("agreement_id")],
            ),
        },
        "/v1/agreements/{agreement_id}/decision": {
            "post": operation(
                "An authority approves or rejects",
                "200",
                {"type": "object"},
                auth="authority",
                params=[path_param("agreement_id")],
                body=json_content({"type": "object", "required": ["approve"]}),
                errors=("400", "401", "403", "404", "409"),
            ),
        },
        "/v1/agreements/{agreement_id}/withdraw": {
            "post": operation(
                "The requesting system withdraws an agreement",
                "200",
                {"type": "object"},
                params=[path_param("agreement_id")],
            ),
        },
        "/v1/value-lists": {
            "post": operation(
                "Create a value list",
                "201",
                {"type": "object"},
                body=json_content({"type": "object", "required": ["name"]}),
                errors=("400", "401", "403", "409"),
            ),
            "get": operation("This system's value lists", "200", {"type": "object"}),
        },
        "/v1/value-lists/{list_id}": {
            "get": operation(
                "A value list with its values",
                "200",
                {"type": "object"},
                params=[path_param("list_id")],
            ),
            "put": operation(
                "Import a value list with a given id (or reactivate a passivated one)",
                "200",
                {"type": "object"},
                params=[path_param("list_id")],
                body=json_content({"type": "object"}),
                errors=("400", "401", "403", "409"),
            ),
            "delete": operation(
                "Delete a value list (final; content wiped)",
                "200",
                {"type": "object"},
                params=[path_param("list_id")],
                errors=("401", "403", "404", "409"),
            ),
        },
        "/v1/value-lists/{list_id}/values": {
            "post": operation(
                "Add and remove values",
                "200",
                {"type": "object"},
                params=[path_param("list_id")],
                body=json_content({"type": "object"}),
                errors=("400", "401", "403", "404", "409"),
            ),
            "put": operation(
                "Replace all values",
                "200",
                {"type": "object"},
                params=[path_param("list_id")],
                body=json_content({"type": "object", "required": ["values"]}),
                errors=("400", "401", "403", "404", "409"),
            ),
        },
        "/v1/value-lists/{list_id}/passivate": {
            "post": operation(
                "Passivate a value list (reversible by import)",
                "200",
                {"type": "object"},
                params=[path_param("list_id")],
                errors=("401", "403", "404", "409"),
            ),
        },
        "/v1/audit": {
            "get": operation(
                "The audit log, newest first",
                "200",
                {"type": "object"},
                auth="admin",
                params=[
                    query_param(n, "string", d)
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
    }
