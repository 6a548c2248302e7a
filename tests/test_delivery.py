"""The poll renderer (Raw views, spliced) against the full model (decode, append, encode)."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.delivery import deliveries_out, render_delivery, with_route
from broker.envelope import Haendelsesbesked
from store.base import Delivery
from tests.strategies import haendelsesbesked

_encode = msgspec.json.Encoder().encode
INSTANCE = "7a1c0c55-4a2e-4c33-9f0b-1d2e3f405162"
SUB = "0f1e2d3c-4b5a-4968-8776-655443322110"


def _delivery(besked: Haendelsesbesked, tilladt: tuple[str, ...] | None, attempt: int) -> Delivery:
    return Delivery(
        delivery_id=f"42-{attempt}",
        seq=42,
        attempt=attempt,
        subscription_id=SUB,
        received_ms=1_800_000_000_123,
        body=_encode(besked),
        leased_until_ms=1_800_000_030_000,
        tilladt_modtager=tilladt,
    )


_cvrs = st.none() | st.lists(st.from_regex(r"urn:oio:cvr-nr:[0-9]{8}", fullmatch=True), max_size=3)


@settings(max_examples=60, deadline=None)
@given(besked=haendelsesbesked(), tilladt=_cvrs, attempt=st.integers(0, 5))
def test_fast_render_is_byte_identical_to_the_model(
    besked: Haendelsesbesked, tilladt: list[str] | None, attempt: int
) -> None:
    d = _delivery(besked, None if tilladt is None else tuple(tilladt), attempt)
    now = 1_800_000_001_456
    slow = _encode(with_route(d, instance_id=INSTANCE, now_ms=now))
    assert render_delivery(d, instance_id=INSTANCE, now_ms=now) == slow


def test_deliveries_out_carries_the_lease_fields() -> None:
    d = Delivery(
        delivery_id="7-2",
        seq=7,
        attempt=2,
        subscription_id=SUB,
        received_ms=5,
        body=b'{"BeskedId":{"UUIDIdentifikator":"x"},"BeskedVersion":"1","Beskedkuvert":'
        b'{"Filtreringsdata":{"Beskedtype":{"UUIDIdentifikator":"t"}},'
        b'"Leveranceinformation":{"Kildesystem":{"UUIDIdentifikator":"s"}}}}',
        leased_until_ms=99,
    )
    (out,) = deliveries_out([d], instance_id=INSTANCE, now_ms=6)
    assert (out.delivery_id, out.attempt, out.subscription_id, out.lease_expires_ms) == (
        "7-2",
        2,
        SUB,
        99,
    )
    env = msgspec.json.decode(out.envelope)
    (route,) = env["Beskedkuvert"]["Leveranceinformation"]["Leveranceruter"]["Leverancerute"]
    assert route["ModtagetFraSystem"] == {"UUIDIdentifikator": "s"}
    assert route["ErLeveretIHenholdTil"] == {"UUIDIdentifikator": SUB}
    assert route["ModtagelsesTidspunkt"] == {"TidsstempelDatoTid": "1970-01-01T00:00:00.005Z"}
