"""Receiving: mailboxes, subscriptions, poll/lease, ack/nack, dead letters and replay.

A system only ever sees its own mailboxes: another system's mailbox answers 404, exactly like
one that does not exist, so mailbox ids cannot be probed.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta
from quart import Quart, Response, request

from broker.delivery import DeliveryOut, deliveries_out, delivery_out, iso_ms, with_route
from broker.errors import Conflict, NotAcceptable
from broker.http.common import body_struct, json_response, query_float, query_int, system
from broker.service import Broker
from store.base import (
    DEFAULT_MAX_DELIVERIES,
    DEFAULT_RETENTION_S,
    MailboxRecord,
    SubscriptionRecord,
)

__all__ = ["register"]

MAX_IDS = 5000
Uuid = Annotated[
    str,
    Meta(pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"),
]
Name = Annotated[str, Meta(min_length=1, max_length=200)]
DeliveryIds = Annotated[
    list[Annotated[str, Meta(max_length=64)]], Meta(min_length=1, max_length=MAX_IDS)
]


class MailboxIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: Name
    strict: bool = False
    retention_s: Annotated[int, Meta(ge=1)] = DEFAULT_RETENTION_S
    max_deliveries: Annotated[int, Meta(ge=1, le=1000)] = DEFAULT_MAX_DELIVERIES


class SubscriptionIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    message_types: Annotated[list[Uuid], Meta(min_length=1, max_length=1000)]
    expression: Annotated[str, Meta(max_length=4096)] | None = None


class SubscriptionPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Fields left out stay as they are; ``"expression": null`` removes the expression."""

    active: bool | None = None
    expression: Annotated[str, Meta(max_length=4096)] | msgspec.UnsetType | None = msgspec.UNSET


class AckIn(msgspec.Struct, forbid_unknown_fields=True):
    delivery_ids: DeliveryIds


class NackIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    delivery_ids: DeliveryIds
    requeue: bool = True


class RequeueIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    delivery_ids: Annotated[list[str], Meta(max_length=MAX_IDS)] = []


class ReplayIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    since_ms: Annotated[int, Meta(ge=0)] = 0


class MailboxOut(msgspec.Struct, kw_only=True):
    id: str
    name: str
    strict: bool
    retention_s: int
    max_deliveries: int
    created: str
    ready: int
    in_flight: int
    copy: int
    dead: int
    oldest_ready_age_s: float | None


class SubscriptionOut(msgspec.Struct, kw_only=True):
    id: str
    mailbox_id: str
    message_types: list[str]
    expression: str | None
    active: bool
    created: str


class PollOut(msgspec.Struct):
    deliveries: list[DeliveryOut]


class FailedOut(msgspec.Struct):
    delivery_id: str
    code: str


class DeadOut(msgspec.Struct):
    delivery_id: str
    attempt: int
    reason: str | None
    envelope: msgspec.Raw


_mailbox_in = msgspec.json.Decoder(MailboxIn)
_subscription_in = msgspec.json.Decoder(SubscriptionIn)
_subscription_patch = msgspec.json.Decoder(SubscriptionPatch)
_ack_in = msgspec.json.Decoder(AckIn)
_nack_in = msgspec.json.Decoder(NackIn)
_requeue_in = msgspec.json.Decoder(RequeueIn)
_replay_in = msgspec.json.Decoder(ReplayIn)


def _sub_out(s: SubscriptionRecord) -> SubscriptionOut:
    return SubscriptionOut(
        id=s.id,
        mailbox_id=s.mailbox_id,
        message_types=list(s.message_types),
        expression=s.expression,
        active=s.active,
        created=iso_ms(s.created_ms),
    )


def register(app: Quart, broker: Broker) -> None:
    def mailbox_out(mb: MailboxRecord) -> MailboxOut:
        st = broker.mailbox_stats(mb)
        age = (
            None
            if st.oldest_ready_ms is None
            else max(0.0, (broker.clock() - st.oldest_ready_ms) / 1000)
        )
        return MailboxOut(
            id=mb.id,
            name=mb.name,
            strict=mb.strict,
            retention_s=mb.retention_s,
            max_deliveries=mb.max_deliveries,
            created=iso_ms(mb.created_ms),
            ready=st.ready,
            in_flight=st.in_flight,
            copy=st.copy,
            dead=st.dead,
            oldest_ready_age_s=age,
        )

    @app.post("/v1/mailboxes")
    async def create_mailbox() -> Response:
        owner = system(broker)
        body: MailboxIn = await body_struct(_mailbox_in)
        mb = await broker.create_mailbox(
            owner,
            body.name,
            strict=body.strict,
            retention_s=body.retention_s,
            max_deliveries=body.max_deliveries,
        )
        return json_response(mailbox_out(mb), 201)

    @app.get("/v1/mailboxes")
    async def list_mailboxes() -> Response:
        owner = system(broker)
        return json_response(
            {"mailboxes": [mailbox_out(mb) for mb in broker.store.list_mailboxes(owner.id)]}
        )

    @app.get("/v1/mailboxes/<mailbox_id>")
    async def get_mailbox(mailbox_id: str) -> Response:
        return json_response(mailbox_out(broker.mailbox_of(system(broker), mailbox_id)))

    @app.delete("/v1/mailboxes/<mailbox_id>")
    async def delete_mailbox(mailbox_id: str) -> Response:
        await broker.delete_mailbox(system(broker), mailbox_id)
        return Response(b"", status=204)

    @app.post("/v1/mailboxes/<mailbox_id>/subscriptions")
    async def create_subscription(mailbox_id: str) -> Response:
        owner = system(broker)
        broker.mailbox_of(owner, mailbox_id)
        body: SubscriptionIn = await body_struct(_subscription_in)
        sub = await broker.create_subscription(
            owner, mailbox_id, body.message_types, body.expression
        )
        return json_response(_sub_out(sub), 201)

    @app.get("/v1/mailboxes/<mailbox_id>/subscriptions")
    async def list_subscriptions(mailbox_id: str) -> Response:
        subs = broker.list_subscriptions(system(broker), mailbox_id)
        return json_response({"subscriptions": [_sub_out(s) for s in subs]})

    @app.patch("/v1/mailboxes/<mailbox_id>/subscriptions/<sub_id>")
    async def update_subscription(mailbox_id: str, sub_id: str) -> Response:
        owner = system(broker)
        broker.mailbox_of(owner, mailbox_id)
        body: SubscriptionPatch = await body_struct(_subscription_patch)
        sub = await broker.update_subscription(
            owner, mailbox_id, sub_id, active=body.active, expression=body.expression
        )
        return json_response(_sub_out(sub))

    @app.delete("/v1/mailboxes/<mailbox_id>/subscriptions/<sub_id>")
    async def delete_subscription(mailbox_id: str, sub_id: str) -> Response:
        await broker.delete_subscription(system(broker), mailbox_id, sub_id)
        return Response(b"", status=204)

    @app.get("/v1/mailboxes/<mailbox_id>/messages")
    async def poll(mailbox_id: str) -> Response:
        mb = broker.mailbox_of(system(broker), mailbox_id)
        cfg = broker.config
        n = query_int("max", 10, lo=1, hi=cfg.max_poll)
        wait = query_float("wait", 0.0, lo=0.0, hi=cfg.max_wait_s)
        lease = query_float("lease", cfg.default_lease_s, lo=1.0, hi=cfg.max_lease_s)
        got = await broker.poll(mb, max=n, wait_s=wait, lease_s=lease)
        now = broker.clock()
        out = deliveries_out(got, instance_id=broker.instance_id, now_ms=now)
        return json_response(PollOut(out))

    @app.get("/v1/mailboxes/<mailbox_id>/deliveries/<delivery_id>")
    async def get_delivery(mailbox_id: str, delivery_id: str) -> Response:
        mb = broker.mailbox_of(system(broker), mailbox_id)
        d = broker.store.get_leased(mb.id, delivery_id, broker.clock())
        accept = request.accept_mimetypes
        wants_xml = accept.best_match(["application/json", "application/xml", "text/xml"]) in (
            "application/xml",
            "text/xml",
        )
        if not wants_xml and accept and not accept.best_match(["application/json"]):
            raise NotAcceptable("this endpoint serves application/json or application/xml")
        if wants_xml:
            from broker.xmlcodec import encode_stored

            besked = with_route(d, instance_id=broker.instance_id, now_ms=broker.clock())
            return Response(
                encode_stored(besked), status=200, content_type="application/xml; charset=utf-8"
            )
        return json_response(delivery_out(d, instance_id=broker.instance_id, now_ms=broker.clock()))

    async def settle(mailbox_id: str, *, ack: bool) -> Response:
        mb = broker.mailbox_of(system(broker), mailbox_id)
        if ack:
            body = await body_struct(_ack_in)
            result = await broker.settle(mb, body.delivery_ids, ack=True)
        else:
            body = await body_struct(_nack_in)
            result = await broker.settle(mb, body.delivery_ids, ack=False, requeue=body.requeue)
        if result.count == 0 and result.failed:
            first_id, code = result.failed[0]
            index = body.delivery_ids.index(first_id)
            what = (
                "lease has expired"
                if code == "lease_expired"
                else "is not in flight in this mailbox"
            )
            raise Conflict(
                f"delivery {first_id!r} {what}", code=code, path=f"$.delivery_ids[{index}]"
            )
        key = "acked" if ack else "nacked"
        return json_response(
            {key: result.count, "failed": [FailedOut(i, c) for i, c in result.failed]}
        )

    @app.post("/v1/mailboxes/<mailbox_id>/ack")
    async def ack(mailbox_id: str) -> Response:
        return await settle(mailbox_id, ack=True)

    @app.post("/v1/mailboxes/<mailbox_id>/nack")
    async def nack(mailbox_id: str) -> Response:
        return await settle(mailbox_id, ack=False)

    @app.get("/v1/mailboxes/<mailbox_id>/dead-letters")
    async def dead_letters(mailbox_id: str) -> Response:
        mb = broker.mailbox_of(system(broker), mailbox_id)
        limit = query_int("limit", 100, lo=1, hi=1000)
        dead = await broker.list_dead(mb, limit)
        out = [
            DeadOut(d.delivery_id, d.attempt, d.reason, msgspec.Raw(broker.render(d))) for d in dead
        ]
        return json_response({"dead_letters": out})

    @app.post("/v1/mailboxes/<mailbox_id>/dead-letters/requeue")
    async def requeue_dead(mailbox_id: str) -> Response:
        mb = broker.mailbox_of(system(broker), mailbox_id)
        body: RequeueIn = await body_struct(_requeue_in, empty_ok=True)
        return json_response({"requeued": await broker.requeue_dead(mb, body.delivery_ids)})

    @app.post("/v1/mailboxes/<mailbox_id>/replay")
    async def replay(mailbox_id: str) -> Response:
        mb = broker.mailbox_of(system(broker), mailbox_id)
        body: ReplayIn = await body_struct(_replay_in, empty_ok=True)
        return json_response({"replayed": await broker.replay(mb, body.since_ms)})
