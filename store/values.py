"""Value encodings of the on-disk format: what is stored under the keys of :mod:`store.keys`.

Every value starts with a version byte (``VALUE_VERSION``); a value of another version is a
:class:`~broker.errors.StoreError`, never a guess. Delivery values are msgpack arrays; bodies,
dedup records, counters and references have fixed binary heads (``struct``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final, TypeVar

import msgspec
from msgspec import Struct

from broker.errors import StoreError

from .base import MailboxRecord, SubscriptionRecord, SystemRecord
from .keys import DEDUP_TEXT, DEDUP_UUID, FORMAT_VERSION, VALUE_VERSION, uuid_bytes

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

__all__ = [
    "BODY_OFFSET",
    "CopyValue",
    "DeadValue",
    "DedupValue",
    "FlightValue",
    "ReadyValue",
    "body_header",
    "check_format",
    "decode_body",
    "decode_counters",
    "decode_dedup",
    "decode_doc",
    "decode_id",
    "decode_int",
    "decode_record",
    "decode_ref",
    "decode_value",
    "dedup_expires",
    "delivery_value",
    "encode_body",
    "encode_counters",
    "encode_dedup",
    "encode_doc",
    "encode_format",
    "encode_id",
    "encode_int",
    "encode_record",
    "encode_ref",
    "encode_value",
    "received_ms_of",
    "received_times",
]


def _bad_version(what: str, value: bytes) -> StoreError:
    got = value[0] if value else None
    return StoreError(
        f"stored {what} has value version {got}, this build reads version {VALUE_VERSION}"
    )


# Delivery values end with the optional TilladtModtager list ``tm``; encode them with
# delivery_value(), which leaves a None ``tm`` out (one element fewer, as format 1 wrote them).


class ReadyValue(Struct, array_like=True, frozen=True, gc=False):
    attempt: int
    subscription_id: str
    tm: tuple[str, ...] | None = None


class FlightValue(Struct, array_like=True, frozen=True, gc=False):
    attempt: int
    subscription_id: str
    deadline_ms: int
    tm: tuple[str, ...] | None = None


class CopyValue(Struct, array_like=True, frozen=True, gc=False):
    acked_ms: int
    attempt: int
    subscription_id: str
    expires_ms: int
    tm: tuple[str, ...] | None = None


class DeadValue(Struct, array_like=True, frozen=True, gc=False):
    dead_ms: int
    attempt: int
    subscription_id: str
    reason: str
    expires_ms: int
    tm: tuple[str, ...] | None = None


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


def delivery_value(*fields: object) -> bytes:
    """A delivery value (ReadyValue ... DeadValue, fields in order) whose last field, ``tm``,
    is left out when None."""
    if fields[-1] is None:
        fields = fields[:-1]
    return _V + _ENCODER.encode(fields)


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


_DEDUP_HEAD = struct.Struct(">BQI")
_DEDUP_HEAD_SIZE: Final = _DEDUP_HEAD.size


def encode_dedup(transaction_id: str, mailboxes: int, expires_ms: int) -> bytes:
    """A dedup record: the transaction id as 16 bytes when it is a lower-case UUID, else text."""
    text = transaction_id.encode()
    raw = uuid_bytes(text) if len(text) == 36 else None
    if raw is not None:
        return _DEDUP_HEAD.pack(DEDUP_UUID, expires_ms, mailboxes) + raw
    return _DEDUP_HEAD.pack(DEDUP_TEXT, expires_ms, mailboxes) + text


def _uuid_text(raw: bytes) -> str:
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def decode_dedup(raw: bytes) -> DedupValue:
    """A dedup record of any version (format 1 wrote msgpack under value version 1)."""
    if raw[:1] == _V:
        return decode_value(raw, DedupValue)
    try:
        version, expires, mailboxes = _DEDUP_HEAD.unpack_from(raw)
    except struct.error as exc:
        raise StoreError(f"stored dedup record is corrupt: {exc}") from exc
    rest = raw[_DEDUP_HEAD_SIZE:]
    if version == DEDUP_UUID:
        if len(rest) != 16:
            raise StoreError(f"stored dedup record is corrupt: UUID of {len(rest)} bytes")
        return DedupValue(_uuid_text(rest), mailboxes, expires)
    if version == DEDUP_TEXT:
        return DedupValue(rest.decode(), mailboxes, expires)
    raise _bad_version("dedup record", raw)


def dedup_expires(raw: bytes) -> int:
    """Just the expiry of a stored dedup record."""
    if raw[:1] == _V:
        return decode_dedup(raw).expires_ms
    result: int = _U64.unpack_from(raw, 1)[0]
    return result


def encode_doc(value: bytes) -> bytes:
    return _V + value


def decode_doc(raw: bytes) -> bytes:
    if raw[:1] != _V:
        raise _bad_version("document", raw)
    return raw[1:]


_BODY_HEAD = struct.Struct(">BQ")
_BODY_OFFSET: Final = _BODY_HEAD.size


def encode_body(received_ms: int, body: bytes) -> bytes:
    """Message body: version byte, u64 received_ms, then the body bytes exactly as given."""
    return _BODY_HEAD.pack(VALUE_VERSION, received_ms) + body


def body_header(received_ms: int) -> bytes:
    """The header :func:`encode_body` puts before the body (to build many bodies cheaply)."""
    return _BODY_HEAD.pack(VALUE_VERSION, received_ms)


#: Where the body bytes start in a stored body (``raw[BODY_OFFSET:]``), after
#: :func:`received_times` checked the heads of a list of them.
BODY_OFFSET: Final = _BODY_OFFSET


def received_times(raws: Sequence[bytes]) -> list[int]:
    """The receive time of each stored body (what :func:`decode_body` checks and returns first,
    for a whole lease in one go)."""
    heads = list(map(_BODY_HEAD.unpack_from, raws))
    times = [received for version, received in heads if version == VALUE_VERSION]
    if len(times) != len(raws):
        raise next(_bad_version("body", raw) for raw in raws if raw[0] != VALUE_VERSION)
    return times


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
    """The format version stored under ``meta/format``; StoreError if this build can't open it.

    Format 1 is returned as is: the caller upgrades it (see ``store.engine``)."""
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
    if version not in (1, FORMAT_VERSION):
        raise StoreError(
            f"store format version {version} is not supported (this build reads {FORMAT_VERSION})"
        )
    result: int = version
    return result
