"""The on-disk format: key order is numeric order, values round-trip and carry a version."""

from __future__ import annotations

import hashlib
import re
import struct
from binascii import unhexlify
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.errors import StoreError
from store import keys as k
from store import values as v
from store.base import MailboxRecord, delivery_id, parse_delivery_id

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


# ----------------------------------------------------------------------------- fast codecs
# The hot-path codecs check UUID text with byte operations; these references are the regular
# expressions they replaced, and the fast ones must agree with them on every input.

_UUID_RE = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_UUID_TEXT_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


def _reference_dedup_hash(key: bytes) -> bytes:
    key = k.normalize_dedup_key(key)
    if len(key) >= 37 and key[-37] == 0 and _UUID_RE.match(key, len(key) - 36):
        prefix = hashlib.blake2b(key[:-37], digest_size=8).digest()
        return prefix + unhexlify(key[-36:].replace(b"-", b""))
    return hashlib.blake2b(key, digest_size=16).digest()


def _reference_encode_dedup(transaction_id: str, mailboxes: int, expires_ms: int) -> bytes:
    if len(transaction_id) == 36 and _UUID_TEXT_RE.match(transaction_id):
        head = struct.pack(">BQI", k.DEDUP_UUID, expires_ms, mailboxes)
        return head + bytes.fromhex(transaction_id.replace("-", ""))
    return struct.pack(">BQI", k.DEDUP_TEXT, expires_ms, mailboxes) + transaction_id.encode()


# near-UUID text: hex of both cases, stray dashes, other letters, digits only, other lengths
_near_uuid = st.one_of(
    st.uuids().map(lambda u: str(u).encode()),
    st.uuids().map(lambda u: str(u).upper().encode()),
    st.text("0123456789abcdefABCDEFg- \n", min_size=34, max_size=38).map(str.encode),
    st.text("0123456789", min_size=32, max_size=32).map(
        lambda d: f"{d[:8]}-{d[8:12]}-{d[12:16]}-{d[16:20]}-{d[20:]}".encode()
    ),
    st.binary(min_size=36, max_size=36),
)


@given(_near_uuid)
def test_uuid_bytes_matches_the_regex(text: bytes) -> None:
    expected = unhexlify(text.replace(b"-", b"")) if _UUID_RE.match(text) else None
    assert k.uuid_bytes(text) == expected


@given(st.binary(max_size=8), _near_uuid, st.sampled_from([b"\x00", b"\x01", b""]))
def test_dedup_hash_matches_the_reference(prefix: bytes, tail: bytes, sep: bytes) -> None:
    key = prefix + sep + tail
    assert k.dedup_hash(key) == _reference_dedup_hash(key)
    long = prefix * 40 + b"\x00" + tail
    assert k.dedup_hash(long) == _reference_dedup_hash(long)


@given(
    st.one_of(_near_uuid.map(lambda b: b.decode("latin-1")), st.text(max_size=40)),
    st.integers(0, (1 << 32) - 1),
    u64,
)
def test_encode_dedup_matches_the_reference(text: str, mailboxes: int, expires: int) -> None:
    assert v.encode_dedup(text, mailboxes, expires) == _reference_encode_dedup(
        text, mailboxes, expires
    )
    assert v.decode_dedup(v.encode_dedup(text, mailboxes, expires)) == v.DedupValue(
        text, mailboxes, expires
    )


@given(st.lists(st.tuples(u32, u64), max_size=20), u64)
def test_batch_key_helpers(pairs: list[tuple[int, int]], ms: int) -> None:
    keys = [k.delivery_key(num, seq) for num, seq in pairs]
    assert k.delivery_seqs(keys) == [seq for _, seq in pairs]
    assert k.seq_keys(keys) == [k.seq_key(seq) for _, seq in pairs]
    assert [k.time_prefix(ms) + key for key in keys] == [
        k.time_key(ms, num, seq) for num, seq in pairs
    ]


@given(st.lists(st.tuples(st.integers(0, k.DEDUP_GEN_MS * 9), st.binary(max_size=30)), max_size=9))
def test_received_times(bodies: list[tuple[int, bytes]]) -> None:
    raws = [v.encode_body(ms, body) for ms, body in bodies]
    assert v.received_times(raws) == [ms for ms, _ in bodies]
    assert [raw[v.BODY_OFFSET :] for raw in raws] == [body for _, body in bodies]
    if raws:
        with pytest.raises(StoreError, match="value version 7"):
            v.received_times([*raws, b"\x07" + raws[0][1:]])


@pytest.mark.parametrize("text", ["²-1", "1-²", "٣-1", "1-٣", "-1", "1-", "1", "1--1", "a-1"])
def test_delivery_ids_are_ascii_digits_only(text: str) -> None:
    assert parse_delivery_id(text) is None


@given(st.integers(0, 2**63), st.integers(0, 2**31))
def test_delivery_id_round_trip(seq: int, attempt: int) -> None:
    assert parse_delivery_id(delivery_id(seq, attempt)) == (seq, attempt)
