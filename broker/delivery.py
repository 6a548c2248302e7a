"""Turning a stored delivery into what a receiver gets: the envelope plus its Leverancerute.

The receiver's copy also gets the ``TilladtModtager`` list decided for it at distribution
(``*`` expanded, authorities it has no agreement with removed), as KOMBIT does.

The stored body is the canonical envelope as accepted. Per delivery KOMBIT appends a
Leverancerute (which distributor, when received, when delivered, from which system, under which
subscription, which attempt). The content (``Beskeddata``) is spliced back as the raw bytes it
was stored as: it is never parsed here.

Two renderings of one result. :func:`with_route` builds the full model (the XML encoder needs
it). :func:`render_delivery`, the hot path of every poll and consume stream, never builds it: it
decodes the stored JSON into *views* whose fields are ``msgspec.Raw`` spans, except the two
places a delivery changes (``TilladtModtager`` and ``Leveranceruter``), and re-encodes them, so
every other byte is copied, not parsed. A property test holds the two byte-identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Final

import msgspec
from msgspec import UNSET, Raw, Struct, UnsetType

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

__all__ = [
    "DeliveryOut",
    "Renderer",
    "deliveries_out",
    "delivery_out",
    "iso_ms",
    "render_delivery",
    "with_route",
]

_stored = msgspec.json.Decoder(StoredBesked)
_encoder = msgspec.json.Encoder()


class DeliveryOut(msgspec.Struct, kw_only=True):
    """One item of a poll response. ``envelope`` is canonical JSON with the Leverancerute."""

    delivery_id: str
    attempt: int
    subscription_id: str
    lease_expires_ms: int
    envelope: msgspec.Raw


#: Below this (2^33 s, in 2242) ``ms / 1000`` is within half a microsecond of the exact time,
#: so :func:`_iso_ms_datetime` shows exactly the milliseconds of ``ms`` and the cached seconds of
#: :func:`iso_ms` give the same text. Above it the float can be off by one ms, and only the
#: datetime path reproduces that (a property test holds the two equal).
_FAST_MS_LIMIT: Final = (1 << 33) * 1000
#: "YYYY-MM-DDTHH:MM:SS" by epoch second: one poll's or one batch's times share a few seconds.
#: Bounded: cleared when full.
_SECONDS: dict[int, str] = {}
_CACHE_MAX: Final = 4096


def iso_ms(ms: int) -> str:
    """An xs:dateTime in UTC with millisecond precision."""
    if 0 <= ms < _FAST_MS_LIMIT:
        second, milli = divmod(ms, 1000)
        head = _SECONDS.get(second)
        if head is None:
            if len(_SECONDS) >= _CACHE_MAX:
                _SECONDS.clear()
            head = _SECONDS[second] = datetime.fromtimestamp(second, UTC).isoformat()[:19]
        return f"{head}.{milli:03d}Z"
    return _iso_ms_datetime(ms)


def _iso_ms_datetime(ms: int) -> str:
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


# Views of the stored canonical JSON. Field order is the model's (encoding keeps it); every
# field the delivery does not change is a Raw span. Unknown fields are dropped, as the model does.
class _Ruter(Struct, omit_defaults=True):
    Leverancerute: list[Raw] = []


class _Leverance(Struct, omit_defaults=True):
    Dannelsestidspunkt: Raw | UnsetType = UNSET
    TransaktionsId: Raw | UnsetType = UNSET
    Kildesystem: Raw | UnsetType = UNSET
    KildesystemIPAdresse: Raw | UnsetType = UNSET
    KildesystemAkkreditiver: Raw | UnsetType = UNSET
    Sikkerhedsklassificering: Raw | UnsetType = UNSET
    Leveranceruter: _Ruter | UnsetType = UNSET
    LeveranceinformationLokalUdvidelse: Raw | UnsetType = UNSET


class _Filtrering(Struct, omit_defaults=True):
    Beskedtype: Raw
    BeskedAnsvarligAktoer: Raw | UnsetType = UNSET
    TilladtModtager: Raw | UnsetType = UNSET
    RelateretObjekt: Raw | UnsetType = UNSET
    ObjektRegistrering: Raw | UnsetType = UNSET
    TvaergaaendeProces: Raw | UnsetType = UNSET


class _Kuvert(Struct, omit_defaults=True):
    Filtreringsdata: _Filtrering
    Leveranceinformation: _Leverance
    Modtagerhandling: Raw | UnsetType = UNSET
    GyldighedFra: Raw | UnsetType = UNSET
    GyldighedTil: Raw | UnsetType = UNSET


class _Besked(Struct, omit_defaults=True):
    BeskedId: Raw
    BeskedVersion: Raw
    Beskedkuvert: _Kuvert
    Beskeddata: Raw | UnsetType = UNSET


_view = msgspec.json.Decoder(_Besked)


class _Route(Struct, omit_defaults=True):
    """A Leverancerute with its ids and times pre-encoded (same fields and order)."""

    Fordelingssystem: Raw
    ModtagelsesTidspunkt: Raw
    LeveranceTidspunkt: Raw
    ModtagetFraSystem: Raw | UnsetType
    ErLeveretIHenholdTil: Raw
    LeveranceruteLokalUdvidelse: Raw


@lru_cache(maxsize=64)
def _fordeling_json(instance_id: str) -> Raw:
    return Raw(_encoder.encode(UnikId(UUIDIdentifikator=instance_id)))


#: Encoded Tidspunkt by ms, and encoded TilladtModtager lists: shared by every poll, since a
#: receiver's list (its authorities, up to the 98 municipalities) and a batch's receive time
#: recur across polls. Bounded: cleared when full.
_TIMES: dict[int, Raw] = {}
_TILLADT: dict[tuple[str, ...], Raw | UnsetType] = {}


def _time_json(ms: int) -> Raw:
    raw = _TIMES.get(ms)
    if raw is None:
        if len(_TIMES) >= _CACHE_MAX:
            _TIMES.clear()
        raw = _TIMES[ms] = Raw(_encoder.encode(Tidspunkt(TidsstempelDatoTid=iso_ms(ms))))
    return raw


def _tilladt_json(cvrs: tuple[str, ...]) -> Raw | UnsetType:
    raw = _TILLADT.get(cvrs)
    if raw is None:
        if len(_TILLADT) >= _CACHE_MAX:
            _TILLADT.clear()
        # an empty list is omitted, as the model's default would be
        raw = _TILLADT[cvrs] = (
            Raw(_encoder.encode([UnikId(URNIdentifikator=c) for c in cvrs])) if cvrs else UNSET
        )
    return raw


class Renderer:
    """Renders many deliveries at one delivery time (one poll, one consume batch): the parts
    every route of the batch shares are encoded once, and so is each distinct route (a poll's
    deliveries mostly come from a few publish batches: same receive time, sender, subscription
    and attempt)."""

    def __init__(self, *, instance_id: str, now_ms: int) -> None:
        self._fordeling = _fordeling_json(instance_id)
        self._delivered = _time_json(now_ms)
        self._routes: dict[tuple[int, bytes | None, str, int], Raw] = {}

    def render(self, delivery: Delivery) -> bytes:
        """Canonical JSON of the delivered envelope (byte-identical to :func:`with_route`)."""
        besked = _view.decode(delivery.body)
        filt = besked.Beskedkuvert.Filtreringsdata
        if delivery.tilladt_modtager is not None:
            filt.TilladtModtager = _tilladt_json(delivery.tilladt_modtager)
        li = besked.Beskedkuvert.Leveranceinformation
        route = self._route(delivery, li.Kildesystem)
        if li.Leveranceruter is UNSET:
            li.Leveranceruter = _Ruter([route])
        else:
            li.Leveranceruter.Leverancerute.append(route)
        return _encoder.encode(besked)

    def _route(self, delivery: Delivery, source: Raw | UnsetType) -> Raw:
        """This delivery's Leverancerute, encoded."""
        attempt = max(delivery.attempt, 1)
        key = (
            delivery.received_ms,
            None if source is UNSET else bytes(source),
            delivery.subscription_id,
            attempt,
        )
        raw = self._routes.get(key)
        if raw is None:
            route = _Route(
                Fordelingssystem=self._fordeling,
                ModtagelsesTidspunkt=_time_json(delivery.received_ms),
                LeveranceTidspunkt=self._delivered,
                ModtagetFraSystem=source,
                ErLeveretIHenholdTil=Raw(
                    b'{"UUIDIdentifikator":%s}' % _encoder.encode(delivery.subscription_id)
                ),
                LeveranceruteLokalUdvidelse=Raw(b'{"AntalLeveranceforsoeg":%d}' % attempt),
            )
            raw = self._routes[key] = Raw(_encoder.encode(route))
        return raw


def render_delivery(delivery: Delivery, *, instance_id: str, now_ms: int) -> bytes:
    """Canonical JSON of the delivered envelope."""
    return Renderer(instance_id=instance_id, now_ms=now_ms).render(delivery)


def delivery_out(delivery: Delivery, *, instance_id: str, now_ms: int) -> DeliveryOut:
    return deliveries_out([delivery], instance_id=instance_id, now_ms=now_ms)[0]


def deliveries_out(
    deliveries: Sequence[Delivery], *, instance_id: str, now_ms: int
) -> list[DeliveryOut]:
    """Poll items for deliveries handed out together at ``now_ms``."""
    renderer = Renderer(instance_id=instance_id, now_ms=now_ms)
    return [
        DeliveryOut(
            delivery_id=d.delivery_id,
            attempt=d.attempt,
            subscription_id=d.subscription_id,
            lease_expires_ms=d.leased_until_ms,
            envelope=Raw(renderer.render(d)),
        )
        for d in deliveries
    ]
