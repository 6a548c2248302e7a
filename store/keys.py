"""The on-disk format: named databases and key layout (value encodings: :mod:`store.values`).

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
                    ``next_audit``                  V u64: next audit counter
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
``dedup``           (format 1 only, migrated)       V msgpack [transaction_id, mailboxes, expires]
``dedup_expiry``    (format 1 only, migrated)       (empty)
``ready``           num u32, seq u64                V msgpack [attempt, subscription_id(, tm)]
``in_flight``       num u32, seq u64                V msgpack [attempt, sub_id, deadline(, tm)]
``lease_expiry``    deadline u64, num u32, seq u64  (empty)
``copy``            num u32, seq u64                V msgpack [acked, attempt, sub_id, expires(, tm)]
``copy_expiry``     expires u64, num u32, seq u64   (empty)
``dead``            num u32, seq u64                V msgpack [dead, attempt, sub_id, reason, expires
                                                    (, tm)]
``dead_expiry``     expires u64, num u32, seq u64   (empty)
``dedup_gens``      gen u32, dedup id (16/24 B)     V2 u64 expires, u32 mailboxes, 16-byte UUID
                                                    transaction id (V3: utf-8 transaction id)
``docs``            len u8, kind, doc id            V document bytes
``sets``            len u8, kind, len u8, set id,   (empty)
                    member
``set_sizes``       len u8, kind, len u8, set id    V u64 member count
``audit``           ms u64, counter u64             V event bytes
==================  ==============================  ===============================================

``tm`` is a delivery's TilladtModtager list; a value without it (None) simply has one element
fewer, so None costs nothing and format-1 values read as None.

Dedup records live in time *generations* of :data:`DEDUP_GEN_MS`: ``gen = expires //
DEDUP_GEN_MS``. A lookup probes the hash in every generation that can hold a live record (those
at or after ``gen(now)``: a handful), and the sweep drops whole generations once every record
in them has expired: a sequential range delete instead of one random B-tree delete per record,
and no expiry index to maintain at publish. A record may so outlive its window by up to one
generation; it is never *treated* as live after ``expires``.

A dedup key is stored as a compact id (:func:`dedup_hash`), not as given (the service's keys
are 73 bytes): 16 bytes of BLAKE2b, or, for a key ending in NUL + lower-case UUID, 8 bytes of
BLAKE2b of the rest + the UUID's 16 bytes, which keeps time-ordered BeskedIds in order. Ids of
different keys collide with probability ~2^-128 per pair (a billion live records: ~1e-21), or,
for the UUID form, only for the same UUID under two prefixes whose 64-bit hashes collide
(~2^-64 per pair of senders that reuse one BeskedId). That risk is accepted: it keeps the
randomly-inserted B-tree small (a record is ~70 bytes in the page instead of ~140).

Measured with ``bench/store_bench.py --io`` (1 KiB envelopes, fan-out 2, bytes LMDB wrote per
envelope): uuid4 BeskedIds 6.0 -> 5.0 KB with 100k records in the index and 9.9 -> 8.0 KB with
1.1M; purging 1.3-4.4 KB -> 5 B per record; sequential BeskedIds 2.0 -> 1.8 KB. What is left for
random ids is the B-tree's floor: one 4 KiB leaf (plus its share of branch pages) per insert
once the index has more leaves than a commit has envelopes; only a log-structured index
(appended log + in-memory table merged in large sorted runs) would go below it.

Schema evolution: records are msgspec Structs, so a new field gets a default; the small
``array_like`` values only ever grow by appending fields with defaults. A change that old code
cannot read bumps :data:`FORMAT_VERSION` (refused on open by older code) or the value version.
Format 1 (the first release) is upgraded in place when opened: its dedup records move to
``dedup_gens`` in one transaction; every other format-1 value reads as it is.
"""

from __future__ import annotations

import binascii
import hashlib
import struct
from binascii import unhexlify
from collections.abc import Callable, Sequence
from enum import IntEnum
from typing import Final

from broker.errors import InvalidInput

_blake2b = hashlib.blake2b

__all__ = [
    "DB_NAMES",
    "DEDUP_GEN_MS",
    "FORMAT_VERSION",
    "MAX_DEDUP_KEY",
    "MAX_ID_BYTES",
    "META_FORMAT",
    "META_NEXT_AUDIT",
    "META_NEXT_MAILBOX",
    "META_NEXT_SEQ",
    "VALUE_VERSION",
    "Db",
    "audit_key",
    "dedup_expiry_key",
    "dedup_gen",
    "dedup_hash",
    "dedup_key_of",
    "delivery_key",
    "delivery_seqs",
    "doc_key",
    "doc_range",
    "id_key",
    "mailbox_range",
    "mailbox_sub_key",
    "normalize_dedup_key",
    "num_key",
    "owner_key",
    "owner_range",
    "parse_audit_key",
    "parse_delivery_key",
    "parse_time_key",
    "seq_key",
    "seq_keys",
    "set_member_key",
    "set_prefix",
    "set_range",
    "time_key",
    "time_prefix",
    "time_range",
    "uuid_bytes",
]

#: Version of the whole key layout; an environment with another version is refused on open
#: (except format 1, which this build upgrades).
FORMAT_VERSION: Final = 2
#: First byte of every non-empty stored value.
VALUE_VERSION: Final = 1
#: Ids (system, mailbox, subscription) are keys: LMDB limits keys to 511 bytes, we to this.
MAX_ID_BYTES: Final = 255
#: Dedup keys longer than this are stored as their SHA-256 (LMDB's key size limit).
MAX_DEDUP_KEY: Final = 255
#: Length of one dedup generation (see the module docs).
DEDUP_GEN_MS: Final = 6 * 3600 * 1000
#: Value versions of a dedup record: transaction id as 16 UUID bytes / as utf-8 text.
DEDUP_UUID: Final = 2
DEDUP_TEXT: Final = 3
#: Bounds of document kinds, set ids and set members (all within LMDB's 511-byte keys).
MAX_KIND_BYTES: Final = 50
MAX_MEMBER_BYTES: Final = 200


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
    DEDUP_GENS = 20
    DOCS = 21
    SETS = 22
    SET_SIZES = 23
    AUDIT = 24


#: LMDB database names, indexed by :class:`Db`.
DB_NAMES: Final = tuple(db.name.lower().encode() for db in Db)

META_FORMAT: Final = b"format"
META_NEXT_SEQ: Final = b"next_seq"
META_NEXT_MAILBOX: Final = b"next_mailbox"
META_NEXT_AUDIT: Final = b"next_audit"

# ----------------------------------------------------------------------------- keys

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_DELIVERY = struct.Struct(">IQ")
_TIME = struct.Struct(">QIQ")
_AUDIT = struct.Struct(">QQ")


#: seq -> 8-byte key (the bodies and refs databases).
seq_key: Final[Callable[[int], bytes]] = _U64.pack
#: mailbox num -> 4-byte key (counters, mailbox_nums) and delivery key prefix.
num_key: Final[Callable[[int], bytes]] = _U32.pack
#: (num, seq) -> key of a delivery record (ready, in_flight, copy, dead).
delivery_key: Final[Callable[[int, int], bytes]] = _DELIVERY.pack
#: (ms, num, seq) -> key of a time index entry (lease deadline, copy/dead expiry).
time_key: Final[Callable[[int, int, int], bytes]] = _TIME.pack


def time_prefix(ms: int) -> bytes:
    """``time_key(ms, num, seq) == time_prefix(ms) + delivery_key(num, seq)``: index keys of
    many deliveries with one time are built by concatenation instead of a pack each."""
    return _U64.pack(ms)


_SEQ_OF_DELIVERY = struct.Struct(">4xQ")


def delivery_seqs(keys: Sequence[bytes]) -> list[int]:
    """The seq of each delivery key (one C-level unpack for all of them)."""
    return [seq for (seq,) in _SEQ_OF_DELIVERY.iter_unpack(b"".join(keys))]


def seq_keys(keys: Sequence[bytes]) -> list[bytes]:
    """The ``seq_key`` of each delivery key: its last 8 bytes."""
    return [key[4:] for key in keys]


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


#: (ms, counter) -> key of an audit event.
audit_key: Final[Callable[[int, int], bytes]] = _AUDIT.pack


def parse_audit_key(key: bytes) -> tuple[int, int]:
    """(ms, counter) of an audit event's key (as :meth:`Store.scan_audit` returns it)."""
    ms, counter = _AUDIT.unpack(key)
    return ms, counter


def dedup_expiry_key(expires_ms: int, dedup_key: bytes) -> bytes:
    """A format-1 ``dedup_expiry`` key (read only by the format-1 upgrade and its tests)."""
    return _U64.pack(expires_ms) + dedup_key


def normalize_dedup_key(key: bytes) -> bytes:
    """A dedup key as format 1 stored it: as given, or its SHA-256 when longer than 255 bytes."""
    if len(key) <= MAX_DEDUP_KEY:
        return key
    return b"\xffsha256:" + hashlib.sha256(key).digest()


def uuid_bytes(text: bytes) -> bytes | None:
    """The 16 bytes of a lower-case canonical UUID text (36 bytes), else None.

    Byte operations instead of a regular expression: this runs once or twice per envelope,
    and the regex match alone cost more than all of this."""
    if len(text) != 36 or text[8:24:5] != b"----":  # dashes at 8, 13, 18 and 23
        return None
    digits = text.replace(b"-", b"")
    if len(digits) != 32 or not (digits.islower() or digits.isdigit()):  # no upper case
        return None
    try:
        return unhexlify(digits)  # refuses anything but hex digits
    except binascii.Error:
        return None


def dedup_hash(key: bytes) -> bytes:
    """The compact id a dedup key is stored under (see the module docs).

    A key ending in NUL + a lower-case UUID (the service's ``sender \\0 BeskedId``) becomes 8
    bytes of BLAKE2b of the part before the NUL + the UUID's 16 bytes: 24 bytes that keep the
    order of time-ordered BeskedIds (UUIDv7, sequential GUIDs), so their records append. Any
    other key becomes 16 bytes of BLAKE2b. Both of the key's format-1 form (so the upgrade
    maps old records to the same ids).
    """
    if len(key) > MAX_DEDUP_KEY:
        key = normalize_dedup_key(key)
    if len(key) >= 37 and key[-37] == 0 and (tail := uuid_bytes(key[-36:])) is not None:
        prefix = key[:-37]
        digest = _PREFIX_HASHES.get(prefix)
        if digest is None:
            if len(_PREFIX_HASHES) >= 4096:
                _PREFIX_HASHES.clear()
            digest = _PREFIX_HASHES[prefix] = _blake2b(prefix, digest_size=8).digest()
        return digest + tail
    return _blake2b(key, digest_size=16).digest()


#: 8-byte hashes of recent dedup key prefixes (senders): one per batch instead of per key
_PREFIX_HASHES: dict[bytes, bytes] = {}


def dedup_gen(ms: int) -> int:
    """The dedup generation holding records that expire at ``ms``."""
    return ms // DEDUP_GEN_MS


def dedup_key_of(gen: int, digest: bytes) -> bytes:
    """(generation, dedup hash) -> key in ``dedup_gens``."""
    return _U32.pack(gen) + digest


def _name(field: str, value: str, most: int) -> bytes:
    raw = value.encode()
    if not raw or len(raw) > most:
        raise InvalidInput(
            f"{field} must be 1..{most} bytes of UTF-8, got {len(raw)}", path=f"$.{field}"
        )
    return raw


def doc_range(kind: str) -> tuple[bytes, bytes]:
    """[start, end) of the documents of one kind; InvalidInput for a bad kind."""
    prefix = _name("kind", kind, MAX_KIND_BYTES)
    start = bytes((len(prefix),)) + prefix
    return start, start + b"\xff"


def doc_key(kind: str, doc_id: str) -> bytes:
    return doc_range(kind)[0] + _name("id", doc_id, MAX_ID_BYTES)


def set_prefix(kind: str, set_id: str) -> bytes:
    """Key of a set in ``set_sizes`` and the prefix of its members in ``sets``."""
    raw_kind = _name("kind", kind, MAX_KIND_BYTES)
    raw_id = _name("id", set_id, MAX_ID_BYTES)
    return bytes((len(raw_kind),)) + raw_kind + bytes((len(raw_id),)) + raw_id


def set_range(prefix: bytes) -> tuple[bytes, bytes]:
    """[start, end) of a set's member keys (members are non-empty UTF-8: never 0xff)."""
    return prefix, prefix + b"\xff"


def set_member_key(prefix: bytes, member: str, field: str = "add") -> bytes:
    return prefix + _name(field, member, MAX_MEMBER_BYTES)


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
