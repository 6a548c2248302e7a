"""Sending: ``POST /v1/messages`` (one envelope) and ``POST /v1/messages/batch`` (raw ASGI
routes, see :mod:`broker.http.rawhttp`)."""

from __future__ import annotations

import msgspec

from broker.codec import (
    JSON,
    MSGPACK,
    NDJSON,
    SINGLE_MEDIA,
    decode_envelope,
    media_type,
    split_batch,
)
from broker.envelope import Haendelsesbesked
from broker.errors import BrokerError, UnsupportedMediaType
from broker.http.common import ErrorBody
from broker.http.rawhttp import HttpHandler, RawRequest, RawResponse, json_answer
from broker.service import Broker
from store.base import PublishResult

__all__ = ["routes"]


class PublishOut(msgspec.Struct):
    transaction_id: str
    mailboxes: int
    duplicate: bool


class BatchItem(msgspec.Struct, omit_defaults=True, kw_only=True):
    """Per-item result: the fields of PublishOut, or only ``error``."""

    transaction_id: str | None = None
    mailboxes: int | None = None
    duplicate: bool | None = None
    error: ErrorBody | None = None


class BatchOut(msgspec.Struct):
    results: list[BatchItem]
    accepted: int
    failed: int


def _out(result: PublishResult) -> PublishOut:
    return PublishOut(result.transaction_id, result.mailboxes, result.duplicate)


def routes(broker: Broker) -> dict[tuple[str, str], HttpHandler]:
    """The send endpoints, served on raw ASGI (:mod:`broker.http.rawhttp` says why)."""

    async def post_message(request: RawRequest) -> RawResponse:
        sender = broker.system_of(request.header(b"authorization"))
        media = media_type(request.header(b"content-type"))
        if media not in SINGLE_MEDIA:
            raise UnsupportedMediaType(
                f"Content-Type {media!r} is not supported; use one of {', '.join(SINGLE_MEDIA)}"
            )
        data = await request.body()
        try:
            besked = decode_envelope(data, media)
        except BrokerError as err:
            broker.metrics.rejected.labels(err.code).inc()
            raise
        (result,) = await broker.publish(sender, [besked], request.remote_addr)
        if isinstance(result, BrokerError):
            raise result
        return json_answer(_out(result), 202)

    async def post_batch(request: RawRequest) -> RawResponse:
        sender = broker.system_of(request.header(b"authorization"))
        media = media_type(request.header(b"content-type"))
        data = await request.body()
        raw_items = split_batch(data, media)
        item_media = MSGPACK if media == MSGPACK else JSON
        if media not in (JSON, NDJSON, MSGPACK):  # pragma: no cover - split_batch refuses
            raise UnsupportedMediaType(f"Content-Type {media!r} is not supported for a batch")
        items: list[Haendelsesbesked | BrokerError] = []
        for i, raw in enumerate(raw_items):
            try:
                items.append(decode_envelope(raw, item_media, prefix=f"$[{i}]"))
            except BrokerError as err:
                items.append(err)
        results = await broker.publish(sender, items, request.remote_addr)
        out: list[BatchItem] = []
        failed = 0
        for r in results:
            if isinstance(r, BrokerError):
                failed += 1
                out.append(BatchItem(error=ErrorBody(r.code, r.message, r.path)))
            else:
                out.append(
                    BatchItem(
                        transaction_id=r.transaction_id,
                        mailboxes=r.mailboxes,
                        duplicate=r.duplicate,
                    )
                )
        return json_answer(BatchOut(out, len(out) - failed, failed), 200)

    return {("POST", "/v1/messages"): post_message, ("POST", "/v1/messages/batch"): post_batch}
