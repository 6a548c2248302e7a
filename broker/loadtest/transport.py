"""The bench's httpx clients (set-up, metrics, polls, clean-up): keep-alive, no proxies from the
environment, one TLS context (shared with :mod:`broker.loadtest.leanhttp`, the senders' client),
and the read size of every client the bench owns.

Every httpx client of a run comes from :func:`client`. ``trust_env=False`` keeps ``HTTP_PROXY`` and
friends from sending the load anywhere but the broker. httpx builds a TLS context (loading the
CA bundle, ~20 ms of CPU) for every client it creates, even for plain-HTTP URLs; a run creates
one client per sender and two per mailbox, so they share one context, made once.
"""

from __future__ import annotations

import ssl
from functools import cache
from typing import Any

import httpx

__all__ = ["RECEIVE_BYTES", "client", "tls_context"]

#: Bytes per socket read of the bench's own clients (the lean HTTP senders and the WebSocket
#: streams). trio-websocket reads 4 KiB by default: a 1,000-delivery frame (~1 MB) took 256
#: reads, each a trip through trio and wsproto, and that was most of the bench's own CPU.
RECEIVE_BYTES = 256 * 1024


@cache
def tls_context() -> ssl.SSLContext:
    """The run's one TLS context (for https brokers), shared by every client."""
    return ssl.create_default_context()


def client(base_url: str, *, token: str | None = None, **kw: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for ``base_url`` (with ``Authorization: Bearer token``)."""
    headers = dict(kw.pop("headers", None) or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.AsyncClient(
        base_url=base_url, headers=headers, verify=tls_context(), trust_env=False, **kw
    )
