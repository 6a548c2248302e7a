"""The poll renderer (Raw views, spliced) against the full model (decode, append, encode)."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.delivery import deliveries_out, iso_ms, render_delivery, with_route
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


def _iso_reference(ms: int) -> str:
    """iso_ms as it was first written (the formatter's specification)."""
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


# every time datetime can show: years 1..9999
_ANY_MS = st.integers(-62_135_596_800_000, 253_402_300_799_999)


@settings(max_examples=2000, deadline=None)
@given(
    ms=_ANY_MS
    | st.integers(0, 4_102_444_800_000)  # 1970..2100, where the times are
    | st.integers((1 << 33) * 1000 - 10**7, (1 << 33) * 1000 + 10**7)  # the fast path's edge
)
def test_iso_ms_is_datetime_isoformat(ms: int) -> None:
    assert iso_ms(ms) == _iso_reference(ms)


def test_iso_ms_every_millisecond_of_a_few_seconds() -> None:
    for start in (0, 1_800_000_000_000, (1 << 33) * 1000 - 1500):
        for ms in range(start, start + 3000):
            assert iso_ms(ms) == _iso_reference(ms)


_sub_ids = st.sampled_from([SUB, "1b2c3d4e-0000-4000-8000-000000000001", "sub-æøå"])


@settings(max_examples=40, deadline=None)
@given(
    beskeder=st.lists(haendelsesbesked(), min_size=1, max_size=4),
    picks=st.lists(
        st.tuples(
            st.integers(0, 3),
            _cvrs,
            st.integers(0, 3),
            _sub_ids,
            st.sampled_from([5, 1_800_000_000_123, 1_800_000_000_999]),
        ),
        min_size=1,
        max_size=12,
    ),
)
def test_a_poll_of_many_renders_each_as_the_model(
    beskeder: list[Haendelsesbesked],
    picks: list[tuple[int, list[str] | None, int, str, int]],
) -> None:
    """Deliveries rendered together share encoded parts (routes, lists, times): each must
    still come out as its own full-model rendering."""
    deliveries = [
        Delivery(
            delivery_id=f"{i}-{attempt}",
            seq=i,
            attempt=attempt,
            subscription_id=sub,
            received_ms=received,
            body=_encode(beskeder[which % len(beskeder)]),
            leased_until_ms=1_800_000_030_000,
            tilladt_modtager=None if tilladt is None else tuple(tilladt),
        )
        for i, (which, tilladt, attempt, sub, received) in enumerate(picks)
    ]
    now = 1_800_000_001_456
    out = deliveries_out(deliveries, instance_id=INSTANCE, now_ms=now)
    for d, item in zip(deliveries, out, strict=True):
        assert bytes(item.envelope) == _encode(with_route(d, instance_id=INSTANCE, now_ms=now))
