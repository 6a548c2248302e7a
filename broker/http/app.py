"""The ASGI application: the stream routes (:mod:`broker.http.rawws`) in front of the quart-trio
app, which has every HTTP route from the sibling modules; one error shape for all."""

from __future__ import annotations

import logging

from quart import Response
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from broker.errors import BrokerError
from broker.http import admin, governance, mailboxes, messages, streams
from broker.http.common import error_response, http_exception_response, internal_error_response
from broker.http.rawhttp import HttpHandler
from broker.http.rawws import FrontRouter
from broker.service import Broker

__all__ = ["WORKER_HEADER", "create_app", "create_asgi", "raw_routes"]

#: Response header naming the worker process that answered (only with ``serve --workers N``).
WORKER_HEADER = "X-Dueslag-Worker"

log = logging.getLogger("dueslag.http")


def create_asgi(broker: Broker) -> FrontRouter:
    """What hypercorn serves: the WebSocket streams, the send endpoints and the probes on raw
    ASGI (:mod:`broker.http.rawws`, :mod:`broker.http.rawhttp`), everything else through Quart."""
    peers = broker.peers
    return FrontRouter(
        create_app(broker),
        streams.routes(broker),
        None if peers is None else peers.drain,
        http=raw_routes(broker),
        limit=broker.config.max_request_bytes,
        headers=[]
        if peers is None
        else [(WORKER_HEADER.lower().encode(), str(peers.index).encode())],
    )


def raw_routes(broker: Broker) -> dict[tuple[str, str], HttpHandler]:
    """The HTTP routes served on raw ASGI, in front of Quart: (method, path) -> handler."""
    return {**messages.routes(broker), **admin.probes(broker)}


def create_app(broker: Broker) -> QuartTrio:
    """The quart-trio app with the HTTP routes but the raw ones (:func:`create_asgi` serves those
    and the streams)."""
    app = QuartTrio("dueslag")
    app.config["RESPONSE_TIMEOUT"] = None  # long polls and streams outlive Quart's 60 s default
    app.config["MAX_CONTENT_LENGTH"] = broker.config.max_request_bytes
    app.config["BODY_TIMEOUT"] = 60
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.extensions["dueslag"] = broker

    @app.errorhandler(BrokerError)
    async def broker_error(err: BrokerError) -> Response:
        return error_response(err)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        return http_exception_response(exc)

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        log.exception("unhandled error in a request handler")
        return internal_error_response()

    if broker.peers is not None:
        _serve_as_worker(app, broker)
    mailboxes.register(app, broker)
    admin.register(app, broker)
    governance.register(app, broker)
    return app


def _serve_as_worker(app: QuartTrio, broker: Broker) -> None:
    """One of several workers: apply queued peer notices before each request (so a change
    another worker acknowledged is seen here, see broker/peers.py), and name the worker."""
    peers = broker.peers
    assert peers is not None
    worker = str(peers.index)

    @app.before_request
    async def drain_peer_notices() -> None:
        peers.drain()

    @app.after_request
    async def name_worker(response: Response) -> Response:
        response.headers[WORKER_HEADER] = worker
        return response
