"""The HTTP API (quart-trio on hypercorn's trio worker): thin handlers over :class:`Broker`."""

from broker.http.app import create_app, create_asgi

__all__ = ["create_app", "create_asgi"]
