"""Turning a stored delivery into what a receiver gets: the envelope plus its Leverancerute.

The receiver's copy also gets the ``TilladtModtager`` list decided for it at distribution
(``*`` expanded, authorities it has no agreement with removed), as KOMBIT does.

The stored body is the canonical envelope as accepted. Per delivery KOMBIT appends a
Leverancerute (which distributor, when received, when delivered, from which system, under which
subscription, which attempt). The content (``Beskeddata``) is spliced back as the raw bytes it
was stored as: it is never parsed here.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from broker.envelope import (
    Leveranceinformation,
    Leverancerute,
    LeveranceruteLokalUdvidelse,
    Leveranceruter,
    StoredBesked,
    Tidspunkt,
    UnikId,
)
from store.base import Delivery

__all__ = ["DeliveryOut", "iso_ms", "render_delivery", "with_route"]

_stored = msgspec.json.Decoder(StoredBesked)
_encoder = msgspec.json.Encoder()


class DeliveryOut(msgspec.Struct, kw_only=True):
    """One item of a poll response. ``envelope`` is canonical JSON with the Leverancerute."""

    delivery_id: str
    attempt: int
    subscription_id: str
    lease_expires_ms: int
    envelope: msgspec.Raw


def iso_ms(ms: int) -> str:
    """An xs:dateTime in UTC with millisecond precision."""
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def with_route(delivery: Delivery, *, instance_id: str, now_ms: int) -> StoredBesked:
    """The stored envelope of a delivery with this delivery's Leverancerute appended."""
    besked = _stored.decode(delivery.body)
    if delivery.tilladt_modtager is not None:  # rewritten for this receiver at distribution
        besked.Beskedkuvert.Filtreringsdata.TilladtModtager = [
            UnikId(URNIdentifikator=cvr) for cvr in delivery.tilladt_modtager
        ]
    li: Leveranceinformation = besked.Beskedkuvert.Leveranceinformation
    route = Leverancerute(
        Fordelingssystem=UnikId(UUIDIdentifikator=instance_id),
        ModtagelsesTidspunkt=Tidspunkt(TidsstempelDatoTid=iso_ms(delivery.received_ms)),
        LeveranceTidspunkt=Tidspunkt(TidsstempelDatoTid=iso_ms(now_ms)),
        ModtagetFraSystem=li.Kildesystem,
        ErLeveretIHenholdTil=UnikId(UUIDIdentifikator=delivery.subscription_id),
        LeveranceruteLokalUdvidelse=LeveranceruteLokalUdvidelse(
            AntalLeveranceforsoeg=max(delivery.attempt, 1)
        ),
    )
    if li.Leveranceruter is None:
        li.Leveranceruter = Leveranceruter(Leverancerute=[route])
    else:
        li.Leveranceruter.Leverancerute.append(route)
    return besked


def render_delivery(delivery: Delivery, *, instance_id: str, now_ms: int) -> bytes:
    """Canonical JSON of the delivered envelope."""
    return _encoder.encode(with_route(delivery, instance_id=instance_id, now_ms=now_ms))


def delivery_out(delivery: Delivery, *, instance_id: str, now_ms: int) -> DeliveryOut:
    return DeliveryOut(
        delivery_id=delivery.delivery_id,
        attempt=delivery.attempt,
        subscription_id=delivery.subscription_id,
        lease_expires_ms=delivery.leased_until_ms,
        envelope=msgspec.Raw(render_delivery(delivery, instance_id=instance_id, now_ms=now_ms)),
    )
