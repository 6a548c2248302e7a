"""Systems (admin), health probes (raw ASGI routes, as probes are hit often and must stay
cheap: :mod:`broker.http.rawhttp`), metrics and the OpenAPI and AsyncAPI documents."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta
from quart import Quart, Response

from broker.delivery import iso_ms
from broker.http.asyncapi import asyncapi_document
from broker.http.common import body_struct, json_response, principal
from broker.http.openapi import openapi_document
from broker.http.rawhttp import HttpHandler, RawRequest, RawResponse, json_answer
from broker.service import Broker

__all__ = ["probes", "register"]


class SystemIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=200)]


class SystemOut(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    name: str
    created: str
    token: str | None = None  # only in the reply that created it


_system_in = msgspec.json.Decoder(SystemIn)


def register(app: Quart, broker: Broker) -> None:
    @app.post("/v1/systems")
    async def create_system() -> Response:
        broker.require_admin(principal(broker))
        body: SystemIn = await body_struct(_system_in)
        record, token = await broker.create_system(body.name)
        return json_response(
            SystemOut(
                id=record.id, name=record.name, created=iso_ms(record.created_ms), token=token
            ),
            201,
        )

    @app.get("/v1/systems")
    async def list_systems() -> Response:
        broker.require_admin(principal(broker))
        systems = broker.store.list_systems()
        return json_response(
            {
                "systems": [
                    SystemOut(id=s.id, name=s.name, created=iso_ms(s.created_ms)) for s in systems
                ]
            }
        )

    @app.get("/metrics")
    async def metrics() -> Response:
        broker.require_admin(principal(broker))
        broker.metrics.queued.set(broker.writer.statistics().queued_jobs)
        return Response(
            broker.metrics.render(),
            status=200,
            content_type="text/plain; version=0.0.4; charset=utf-8",
        )

    @app.get("/openapi.json")
    async def openapi() -> Response:
        principal(broker)  # any valid token: the API description is for registered parties
        return json_response(openapi_document())

    @app.get("/asyncapi.json")
    async def asyncapi() -> Response:
        principal(broker)  # as /openapi.json
        return json_response(asyncapi_document())


#: The largest body ``POST /healthz`` reads (it takes no token: kept to an envelope's size).
PROBE_BODY_BYTES = 64 * 1024


def probes(broker: Broker) -> dict[tuple[str, str], HttpHandler]:
    """``GET /healthz`` (the process answers) and ``GET /readyz`` (it is ready for traffic).

    ``POST /healthz`` reads a body (at most :data:`PROBE_BODY_BYTES`), drops it and answers as
    ``GET`` does: the trivial endpoint for a request shaped like ``POST /v1/messages``, which
    ``dueslag bench``'s ``single`` compares with (docs/performance.md).
    """
    ok = json_answer({"status": "ok"})

    async def healthz(request: RawRequest) -> RawResponse:
        return ok

    async def healthz_post(request: RawRequest) -> RawResponse:
        await request.body(limit=PROBE_BODY_BYTES)  # PayloadTooLarge past it
        return ok

    async def readyz(request: RawRequest) -> RawResponse:
        if not broker.ready:
            return json_answer({"status": "starting"}, 503)
        stats = broker.writer.statistics()
        return json_answer({"status": "ready", "writer_queued_jobs": stats.queued_jobs})

    return {
        ("GET", "/healthz"): healthz,
        ("POST", "/healthz"): healthz_post,
        ("GET", "/readyz"): readyz,
    }
