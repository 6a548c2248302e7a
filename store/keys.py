"""The on-disk format: named databases, key layout and value encodings (all of it, alone here).

Theory of operation
-------------------
Every key that is ordered by a number holds it as a fixed-width big-endian integer, so LMDB's
lexical key order is numeric order: ``seq`` is 8 bytes, a mailbox's internal ``num`` 4 bytes,
a time (epoch milliseconds) 8 bytes. Every non-empty value starts with a version byte
(:data:`VALUE_VERSION`); index entries whose key says everything have an empty value. The
``meta`` database's ``format`` key holds the format version of the whole layout
(:data:`FORMAT_VERSION`), checked when a store is opened.

==================  ==============================  ===============================================
database            key                             value
==================  ==============================  ===============================================
``meta``            ``format``                      u32 format version (no version byte)
                    ``next_seq`` / ``next_mailbox`` V u64: next sequence / mailbox number to hand out
``systems``         system id                       V msgpack :class:`SystemRecord`
``system_tokens``   token hash                      V system id (utf-8)
``mailboxes``       mailbox id                      V msgpack :class:`MailboxRecord`
``mailbox_nums``    num u32                         V mailbox id (utf-8)
``mailbox_owners``  len u8, owner, mailbox id       (empty)
``subscriptions``   subscription id                 V msgpack :class:`SubscriptionRecord`
``mailbox_subs``    num u32, subscription id        (empty)
``counters``        num u32                         V u64 ready, in_flight, copy, dead
``bodies``          seq u64                         V u64 received_ms, body bytes
``refs``            seq u64                         V u32 delivery records referring to the body
``dedup``           dedup key                       V msgpack [transaction_id, mailboxes, expires]
``dedup_expiry``    expires u64, dedup key          (empty)
``ready``           num u32, seq u64                V msgpack [attempt, subscription_id]
``in_flight``       num u32, seq u64                V msgpack [attempt, subscription_id, deadline]
``lease_expiry``    deadline u64, num u32, seq u64  (empty)
``copy``            num u32, seq u64                V msgpack [acked, attempt, sub_id, expires]
``copy_expiry``     expires u64, num u32, seq u64   (empty)
``dead``            num u32, seq u64                V msgpack [dead, attempt, sub_id, reason, expires]
``dead_expiry``     expires u64, num u32, seq u64   (empty)
==================  ==============================  ===============================================

Schema evolution: records are msgspec Structs, so a new field gets a default; the small
``array_like`` values only ever grow by appending fields with defaults. A change that old code
cannot read bumps :data:`FORMAT_VERSION` (refused on open by older code) or the value version.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from enum import IntEnum
from typing import Final, TypeVar

import msgspec
from msgspec import Struct

from broker.errors import InvalidInput, StoreError

from .base import MailboxRecord, SubscriptionRecord, SystemRecord

__all__ = [
    "DB_NAMES",
    "FORMAT_VERSION",
    "MAX_DEDUP_KEY",
    "MAX_ID_BYTES",
    "META_FORMAT",
    "META_NEXT_MAILBOX",
    "META_NEXT_SEQ",
    "VALUE_VERSION",
    "CopyValue",
    "Db",
    "DeadValue",
    "DedupValue",
    "FlightValue",
    "ReadyValue",
    "body_header",
    "check_format",
    "decode_body",
    "decode_counters",
    "decode_id",
    "decode_int",
    "decode_record",
    "decode_ref",
    "decode_value",
    "dedup_expiry_key",
    "delivery_key",
    "encode_body",
    "encode_counters",
    "encode_format",
    "encode_id",
    "encode_int",
    "encode_record",
    "encode_ref",
    "encode_value",
    "id_key",
    "mailbox_range",
    "mailbox_sub_key",
    "normalize_dedup_key",
    "num_key",
    "owner_key",
    "owner_range",
    "parse_delivery_key",
    "parse_time_key",
    "received_ms_of",
    "seq_key",
    "time_key",
    "time_range",
]

#: Version of the whole key layout; an environment with another version is refused on open.
FORMAT_VERSION: Final = 1
#: First byte of every non-empty stored value.
VALUE_VERSION: Final = 1
#: Ids (system, mailbox, subscription) are keys: LMDB limits keys to 511 bytes, we to this.
MAX_ID_BYTES: Final = 255
#: Dedup keys longer than this are stored as their SHA-256 (LMDB's key size limit).
MAX_DEDUP_KEY: Final = 255


class Db(IntEnum):
    """The named databases, in the order backends open them."""

    META = 0
    SYSTEMS = 1
    SYSTEM_TOKENS = 2
    MAILBOXES = 3
    MAILBOX_NUMS = 4
    MAILBOX_OWNERS = 5
    SUBSCRIPTIONS = 6
    MAILBOX_SUBS = 7
    COUNTERS = 8
    BODIES = 9
    REFS = 10
    DEDUP = 11
    DEDUP_EXPIRY = 12
    READY = 13
    IN_FLIGHT = 14
    LEASE_EXPIRY = 15
    COPY = 16
    COPY_EXPIRY = 17
    DEAD = 18
    DEAD_EXPIRY = 19


#: LMDB database names, indexed by :class:`Db`.
DB_NAMES: Final = tuple(db.name.lower().encode() for db in Db)

META_FORMAT: Final = b"format"
META_NEXT_SEQ: Final = b"next_seq"
META_NEXT_MAILBOX: Final = b"next_mailbox"

# ----------------------------------------------------------------------------- keys

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_DELIVERY = struct.Struct(">IQ")
_TIME = struct.Struct(">QIQ")


#: seq -> 8-byte key (the bodies and refs databases).
seq_key: Final[Callable[[int], bytes]] = _U64.pack
#: mailbox num -> 4-byte key (counters, mailbox_nums) and delivery key prefix.
num_key: Final[Callable[[int], bytes]] = _U32.pack
#: (num, seq) -> key of a delivery record (ready, in_flight, copy, dead).
delivery_key: Final[Callable[[int, int], bytes]] = _DELIVERY.pack
#: (ms, num, seq) -> key of a time index entry (lease deadline, copy/dead expiry).
time_key: Final[Callable[[int, int, int], bytes]] = _TIME.pack


def parse_delivery_key(key: bytes) -> tuple[int, int]:
    num, seq = _DELIVERY.unpack(key)
    return num, seq


def mailbox_range(num: int) -> tuple[bytes, bytes]:
    """[start, end) of one mailbox's delivery keys."""
    return _U32.pack(num), _U32.pack(num + 1)


def parse_time_key(key: bytes) -> tuple[int, int, int]:
    ms, num, seq = _TIME.unpack(key)
    return ms, num, seq


def time_range(now_ms: int) -> tuple[bytes, bytes]:
    """[start, end) of the time index keys whose time is <= now_ms."""
    return b"\x00", _U64.pack(now_ms + 1)


def dedup_expiry_key(expires_ms: int, dedup_key: bytes) -> bytes:
    return _U64.pack(expires_ms) + dedup_key


def normalize_dedup_key(key: bytes) -> bytes:
    """A dedup key as stored: as given, or its SHA-256 when too long for an LMDB key."""
    if len(key) <= MAX_DEDUP_KEY:
        return key
    return b"\xffsha256:" + hashlib.sha256(key).digest()


def id_key(field: str, value: str) -> bytes:
    """An id as a key; raises InvalidInput (naming ``field``) when empty or too long."""
    raw = value.encode()
    if not raw or len(raw) > MAX_ID_BYTES:
        raise InvalidInput(
            f"{field} must be 1..{MAX_ID_BYTES} bytes of UTF-8, got {len(raw)}", path=f"$.{field}"
        )
    return raw


def owner_key(owner: bytes, mailbox_id: bytes) -> bytes:
    return bytes((len(owner),)) + owner + mailbox_id


def owner_range(owner: bytes) -> tuple[bytes, bytes]:
    prefix = bytes((len(owner),)) + owner
    return prefix, prefix + b"\xff"


def mailbox_sub_key(num: int, subscription_id: bytes) -> bytes:
    return _U32.pack(num) + subscription_id


# ----------------------------------------------------------------------------- values


def _bad_version(what: str, value: bytes) -> StoreError:
    got = value[0] if value else None
    return StoreError(
        f"stored {what} has value version {got}, this build reads version {VALUE_VERSION}"
    )


class ReadyValue(Struct, array_like=True, frozen=True, gc=False):
    attempt: int
    subscription_id: str


class FlightValue(Struct, array_like=True, frozen=True, gc=False):
    attempt: int
    subscription_id: str
    deadline_ms: int


class CopyValue(Struct, array_like=True, frozen=True, gc=False):
    acked_ms: int
    attempt: int
    subscription_id: str
    expires_ms: int


class DeadValue(Struct, array_like=True, frozen=True, gc=False):
    dead_ms: int
    attempt: int
    subscription_id: str
    reason: str
    expires_ms: int


class DedupValue(Struct, array_like=True, frozen=True, gc=False):
    transaction_id: str
    mailboxes: int
    expires_ms: int


_ENCODER = msgspec.msgpack.Encoder()
_V = bytes((VALUE_VERSION,))
_DECODERS: dict[type, msgspec.msgpack.Decoder[object]] = {}

T = TypeVar("T")


def encode_value(value: Struct) -> bytes:
    """A record or small value: version byte + msgpack."""
    return _V + _ENCODER.encode(value)


def decode_value(raw: bytes, kind: type[T]) -> T:
    if not raw or raw[0] != VALUE_VERSION:
        raise _bad_version(kind.__name__, raw)
    decoder = _DECODERS.get(kind)
    if decoder is None:
        decoder = _DECODERS[kind] = msgspec.msgpack.Decoder(kind)
    try:
        result: T = decoder.decode(memoryview(raw)[1:])  # type: ignore[assignment]
    except msgspec.DecodeError as exc:
        raise StoreError(f"stored {kind.__name__} is corrupt: {exc}") from exc
    return result


encode_record = encode_value

R = TypeVar("R", SystemRecord, MailboxRecord, SubscriptionRecord)


def decode_record(raw: bytes, kind: type[R]) -> R:
    return decode_value(raw, kind)


_BODY_HEAD = struct.Struct(">BQ")
_BODY_OFFSET: Final = _BODY_HEAD.size


def encode_body(received_ms: int, body: bytes) -> bytes:
    """Message body: version byte, u64 received_ms, then the body bytes exactly as given."""
    return _BODY_HEAD.pack(VALUE_VERSION, received_ms) + body


def body_header(received_ms: int) -> bytes:
    """The header :func:`encode_body` puts before the body (to build many bodies cheaply)."""
    return _BODY_HEAD.pack(VALUE_VERSION, received_ms)


def decode_body(raw: bytes) -> tuple[int, bytes]:
    """(received_ms, body) of a stored body."""
    version, received = _BODY_HEAD.unpack_from(raw)
    if version != VALUE_VERSION:
        raise _bad_version("body", raw)
    return received, raw[_BODY_OFFSET:]


def received_ms_of(raw: bytes) -> int:
    """Just the receive time of a stored body (its header)."""
    version, received = _BODY_HEAD.unpack_from(raw)
    if version != VALUE_VERSION:
        raise _bad_version("body", raw)
    result: int = received
    return result


_REF = struct.Struct(">BI")


_REFS_SMALL = tuple(_REF.pack(VALUE_VERSION, n) for n in range(64))


def encode_ref(count: int) -> bytes:
    return _REFS_SMALL[count] if count < 64 else _REF.pack(VALUE_VERSION, count)


def decode_ref(raw: bytes) -> int:
    version, count = _REF.unpack(raw)
    if version != VALUE_VERSION:
        raise _bad_version("reference count", raw)
    result: int = count
    return result


_COUNTERS = struct.Struct(">BQQQQ")


def encode_counters(counts: list[int]) -> bytes:
    """Per-mailbox counters: ready, in_flight, copy, dead."""
    return _COUNTERS.pack(VALUE_VERSION, *counts)


def decode_counters(raw: bytes) -> list[int]:
    version, *counts = _COUNTERS.unpack(raw)
    if version != VALUE_VERSION:
        raise _bad_version("counters", raw)
    return counts


_INT = struct.Struct(">BQ")


def encode_int(value: int) -> bytes:
    return _INT.pack(VALUE_VERSION, value)


def decode_int(raw: bytes) -> int:
    version, value = _INT.unpack(raw)
    if version != VALUE_VERSION:
        raise _bad_version("meta integer", raw)
    result: int = value
    return result


def encode_id(value: bytes) -> bytes:
    return _V + value


def decode_id(raw: bytes) -> str:
    if raw[:1] != _V:
        raise _bad_version("id reference", raw)
    return raw[1:].decode()


def encode_format(version: int = FORMAT_VERSION) -> bytes:
    return _U32.pack(version)


def check_format(raw: bytes) -> int:
    """The format version stored under ``meta/format``; StoreError if this build can't read it."""
    if len(raw) != _U32.size:
        raise StoreError(
            f"store format marker is {len(raw)} bytes, expected 4: not a dueslag store?"
        )
    (version,) = _U32.unpack(raw)
    if version > FORMAT_VERSION:
        raise StoreError(
            f"store format version {version} is newer than this build supports "
            f"({FORMAT_VERSION}); upgrade dueslag to open it"
        )
    if version != FORMAT_VERSION:
        raise StoreError(
            f"store format version {version} is not supported (this build reads {FORMAT_VERSION})"
        )
    result: int = version
    return result
