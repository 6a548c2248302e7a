"""The on-disk format: key order is numeric order, values round-trip and carry a version."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.errors import StoreError
from store import keys as k
from store.base import MailboxRecord

u32 = st.integers(0, (1 << 32) - 1)
u64 = st.integers(0, (1 << 64) - 1)


@given(st.tuples(u32, u64), st.tuples(u32, u64))
def test_delivery_key_order_is_numeric(a: tuple[int, int], b: tuple[int, int]) -> None:
    assert (k.delivery_key(*a) < k.delivery_key(*b)) == (a < b)
    assert k.parse_delivery_key(k.delivery_key(*a)) == a


@given(st.tuples(u64, u32, u64), st.tuples(u64, u32, u64))
def test_time_key_order_is_numeric(a: tuple[int, int, int], b: tuple[int, int, int]) -> None:
    assert (k.time_key(*a) < k.time_key(*b)) == (a < b)
    assert k.parse_time_key(k.time_key(*a)) == a


@given(u64.filter(lambda n: n < (1 << 64) - 1), st.tuples(u64, u32, u64))
def test_time_range(now: int, key: tuple[int, int, int]) -> None:
    start, end = k.time_range(now)
    assert (start <= k.time_key(*key) < end) == (key[0] <= now)


def test_values_round_trip() -> None:
    record = MailboxRecord(id="m", num=7, owner="o", name="n")
    raw = k.encode_record(record)
    assert raw[0] == k.VALUE_VERSION
    assert k.decode_record(raw, MailboxRecord) == record
    flight = k.FlightValue(3, "sub", 99)
    assert k.decode_value(k.encode_value(flight), k.FlightValue) == flight
    assert k.decode_body(k.encode_body(5, b"body")) == (5, b"body")
    assert k.received_ms_of(k.encode_body(5, b"body")) == 5
    assert k.decode_counters(k.encode_counters([1, 2, 3, 4])) == [1, 2, 3, 4]
    assert k.decode_ref(k.encode_ref(9)) == 9
    assert k.decode_int(k.encode_int(1 << 40)) == 1 << 40
    assert k.decode_id(k.encode_id(b"abc")) == "abc"


def _ready(raw: bytes) -> object:
    return k.decode_value(raw, k.ReadyValue)


@pytest.mark.parametrize(
    ("decode", "sample"),
    [
        (_ready, k.encode_value(k.ReadyValue(0, "s"))),
        (k.decode_body, k.encode_body(1, b"x")),
        (k.received_ms_of, k.encode_body(1, b"x")),
        (k.decode_counters, k.encode_counters([0, 0, 0, 0])),
        (k.decode_ref, k.encode_ref(1)),
        (k.decode_int, k.encode_int(1)),
        (k.decode_id, k.encode_id(b"x")),
    ],
)
def test_unknown_value_version_is_refused(decode: Callable[[bytes], object], sample: bytes) -> None:
    decode(sample)
    with pytest.raises(StoreError, match="value version 2"):
        decode(b"\x02" + sample[1:])


def test_corrupt_record() -> None:
    with pytest.raises(StoreError, match="corrupt"):
        k.decode_value(b"\x01\xc1", k.ReadyValue)


def test_long_dedup_keys_are_hashed() -> None:
    assert k.normalize_dedup_key(b"short") == b"short"
    long = k.normalize_dedup_key(b"x" * 256)
    assert len(long) < 64
    assert long != k.normalize_dedup_key(b"x" * 257)
