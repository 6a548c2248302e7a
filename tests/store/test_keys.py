"""The on-disk format: key order is numeric order, values round-trip and carry a version."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.errors import StoreError
from store import keys as k
from store import values as v
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
    raw = v.encode_record(record)
    assert raw[0] == k.VALUE_VERSION
    assert v.decode_record(raw, MailboxRecord) == record
    flight = v.FlightValue(3, "sub", 99)
    assert v.decode_value(v.encode_value(flight), v.FlightValue) == flight
    assert v.decode_body(v.encode_body(5, b"body")) == (5, b"body")
    assert v.received_ms_of(v.encode_body(5, b"body")) == 5
    assert v.decode_counters(v.encode_counters([1, 2, 3, 4])) == [1, 2, 3, 4]
    assert v.decode_ref(v.encode_ref(9)) == 9
    assert v.decode_int(v.encode_int(1 << 40)) == 1 << 40
    assert v.decode_id(v.encode_id(b"abc")) == "abc"


def _ready(raw: bytes) -> object:
    return v.decode_value(raw, v.ReadyValue)


@pytest.mark.parametrize(
    ("decode", "sample"),
    [
        (_ready, v.encode_value(v.ReadyValue(0, "s"))),
        (v.decode_body, v.encode_body(1, b"x")),
        (v.received_ms_of, v.encode_body(1, b"x")),
        (v.decode_counters, v.encode_counters([0, 0, 0, 0])),
        (v.decode_ref, v.encode_ref(1)),
        (v.decode_int, v.encode_int(1)),
        (v.decode_id, v.encode_id(b"x")),
    ],
)
def test_unknown_value_version_is_refused(decode: Callable[[bytes], object], sample: bytes) -> None:
    decode(sample)
    with pytest.raises(StoreError, match="value version 2"):
        decode(b"\x02" + sample[1:])


def test_corrupt_record() -> None:
    with pytest.raises(StoreError, match="corrupt"):
        v.decode_value(b"\x01\xc1", v.ReadyValue)


def test_long_dedup_keys_are_hashed() -> None:
    assert k.normalize_dedup_key(b"short") == b"short"
    long = k.normalize_dedup_key(b"x" * 256)
    assert len(long) < 64
    assert long != k.normalize_dedup_key(b"x" * 257)


def test_dedup_ids() -> None:
    sender = b"5b8ad3d1-92b2-4b2a-9a1f-63b6f1d0c2f7\x00"
    ids = [sender + f"00000000-0000-7000-8000-{n:012d}".encode() for n in range(3)]
    hashed = [k.dedup_hash(key) for key in ids]
    assert [len(h) for h in hashed] == [24, 24, 24]
    assert hashed == sorted(hashed)  # time-ordered BeskedIds stay in order
    assert len({h[:8] for h in hashed}) == 1
    assert k.dedup_hash(b"other\x00" + ids[0][-36:]) != hashed[0]  # another sender
    # anything else: 16 bytes of hash (an upper-case UUID is not the canonical form)
    assert len(k.dedup_hash(sender + b"0F8FAD5B-D9CB-469F-A165-70867728950E")) == 16
    assert len(k.dedup_hash(sender + b"0f8fad5b-d9cb-469f-a165-70867728950e")) == 24
    assert len(k.dedup_hash(b"sys/17")) == 16
    assert k.dedup_hash(b"x" * 300) == k.dedup_hash(k.normalize_dedup_key(b"x" * 300))


def test_dedup_records_round_trip() -> None:
    tid = "0f8fad5b-d9cb-469f-a165-70867728950e"
    uuid_form = v.encode_dedup(tid, 3, 1 << 40)
    assert (uuid_form[0], len(uuid_form)) == (k.DEDUP_UUID, 29)
    assert v.decode_dedup(uuid_form) == v.DedupValue(tid, 3, 1 << 40)
    assert v.dedup_expires(uuid_form) == 1 << 40
    for text in ("tx-1", tid.upper(), "", "æøå"):
        raw = v.encode_dedup(text, 0, 5)
        assert raw[0] == k.DEDUP_TEXT
        assert v.decode_dedup(raw) == v.DedupValue(text, 0, 5)
    legacy = v.encode_value(v.DedupValue("tx", 1, 7))  # format 1: msgpack, value version 1
    assert v.decode_dedup(legacy) == v.DedupValue("tx", 1, 7)
    assert v.dedup_expires(legacy) == 7
    with pytest.raises(StoreError, match="value version 9"):
        v.decode_dedup(b"\x09" + uuid_form[1:])
    with pytest.raises(StoreError, match="corrupt"):
        v.decode_dedup(uuid_form[:5])


def test_delivery_values_leave_out_a_none_tm() -> None:
    assert v.delivery_value(0, "s", None) == b"\x01\x92\x00\xa1s"  # [0, "s"], as format 1
    assert v.encode_value(v.ReadyValue(0, "s")) == b"\x01\x93\x00\xa1s\xc0"  # [0, "s", nil]
    raw = v.delivery_value(1, "s", 9, ("a",))
    assert v.decode_value(raw, v.FlightValue) == v.FlightValue(1, "s", 9, ("a",))
    assert v.decode_value(v.delivery_value(1, "s", 9, None), v.FlightValue).tm is None


def test_other_keys() -> None:
    assert k.parse_audit_key(k.audit_key(5, 7)) == (5, 7)
    start, end = k.doc_range("mt")
    assert start <= k.doc_key("mt", "\U0010ffff" * 60) < end
    assert not start <= k.doc_key("mtx", "a") < end
    prefix = k.set_prefix("vl", "id")
    lo, hi = k.set_range(prefix)
    assert lo < k.set_member_key(prefix, "\U0010ffff" * 50) < hi
    assert v.decode_doc(v.encode_doc(b"x")) == b"x"
    with pytest.raises(StoreError, match="value version 2"):
        v.decode_doc(b"\x02x")
