"""Wire codecs for envelopes: JSON (canonical), msgpack and XML, single and batch.

Theory of operation
-------------------
Every decoder is built once at import. A single envelope is decoded straight into the typed
model (content items stay raw bytes). A batch is first split into raw items (a JSON or msgpack
array decoded as ``list[Raw]``, or NDJSON lines) and each item is then decoded on its own, so
one bad item fails only itself. msgpack content has no raw-JSON form, so a msgpack envelope is
decoded to builtins and re-encoded as JSON once; msgpack is a convenience, JSON the fast path.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from broker.envelope import Haendelsesbesked, expand_shorthands
from broker.errors import (
    BrokerError,
    InvalidEnvelope,
    InvalidInput,
    MalformedBody,
    PayloadTooLarge,
    UnsupportedMediaType,
)

__all__ = [
    "BATCH_MEDIA",
    "MAX_BATCH_ITEMS",
    "MAX_ENVELOPE_BYTES",
    "SINGLE_MEDIA",
    "decode_envelope",
    "decode_struct",
    "media_type",
    "split_batch",
]

#: Largest single envelope, in any encoding (KOMBIT's SF2900 caps a call at 10 MB).
MAX_ENVELOPE_BYTES = 10 * 1024 * 1024
#: Most envelopes in one batch request.
MAX_BATCH_ITEMS = 5000

JSON = "application/json"
MSGPACK = "application/msgpack"
XML = "application/xml"
NDJSON = "application/x-ndjson"

_ALIASES = {
    "application/json": JSON,
    "text/json": JSON,
    "application/msgpack": MSGPACK,
    "application/x-msgpack": MSGPACK,
    "application/vnd.msgpack": MSGPACK,
    "application/xml": XML,
    "text/xml": XML,
    "application/x-ndjson": NDJSON,
    "application/ndjson": NDJSON,
    "application/jsonl": NDJSON,
}
SINGLE_MEDIA = (JSON, MSGPACK, XML)
BATCH_MEDIA = (JSON, NDJSON, MSGPACK)

_json_envelope = msgspec.json.Decoder(Haendelsesbesked)
_json_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
_msgpack_raw_list = msgspec.msgpack.Decoder(list[msgspec.Raw])
_msgpack_any = msgspec.msgpack.Decoder()
_json_encoder = msgspec.json.Encoder()

_FRIENDLY_PATTERNS = {
    "ufffe": "an identifier must be non-empty text without control characters and without "
    "leading or trailing white space",
    "d{4,}": "expected an xs:dateTime such as 2016-03-15T08:00:00 or 2016-03-15T08:00:00.5+01:00",
}
_FIELD_RULE = re.compile(r"^(UUIDIdentifikator|URNIdentifikator): (.*)$", re.DOTALL)
_MSG_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.DOTALL)


def media_type(content_type: str | None, *, default: str = JSON) -> str:
    """The canonical media type of a Content-Type header (parameters dropped)."""
    if not content_type:
        return default
    base = content_type.split(";", 1)[0].strip().lower()
    return _ALIASES.get(base, base)


def validation_error(exc: msgspec.DecodeError, *, prefix: str = "$") -> BrokerError:
    """Map a msgspec error to a broker error with a stable code and a path."""
    if not isinstance(exc, msgspec.ValidationError):
        return MalformedBody(
            f"body is not well-formed: {exc}", path=None if prefix == "$" else prefix
        )
    m = _MSG_PATH.match(str(exc))
    msg = m.group("msg") if m else str(exc)
    path = m.group("path") if m and m.group("path") else "$"
    if prefix != "$":
        path = prefix + path[1:]
    field = _FIELD_RULE.match(msg)
    if field:  # a __post_init__ rule that names its field (see envelope.ID_RULE)
        path, msg = f"{path}.{field.group(1)}", field.group(2)
    if "matching regex" in msg:  # name the rule, not the regex (msgspec quotes it escaped)
        msg = next((text for marker, text in _FRIENDLY_PATTERNS.items() if marker in msg), msg)
    code = (
        "unknown_field" if msg.startswith("Object contains unknown field") else "invalid_envelope"
    )
    return InvalidEnvelope(msg, code=code, path=path)


def decode_struct(data: bytes, decoder: msgspec.json.Decoder[Any]) -> Any:
    """Decode a small JSON request body with a typed decoder, mapping errors."""
    try:
        return decoder.decode(data)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass: mapped inside
        err = validation_error(exc)
        if err.code == "invalid_envelope":
            err.code = "invalid"
        raise err from None


class _Loose(msgspec.Struct, forbid_unknown_fields=True):
    """The top level of an envelope with the kuvert as builtins and the content kept raw."""

    BeskedId: Any = msgspec.UNSET
    BeskedVersion: Any = msgspec.UNSET
    Beskedkuvert: Any = msgspec.UNSET
    Beskeddata: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


_json_loose = msgspec.json.Decoder(_Loose)


def _decode_json(data: bytes | memoryview, prefix: str) -> Haendelsesbesked:
    try:
        return _check_xml_items(_json_envelope.decode(data), prefix)
    except msgspec.ValidationError as exc:
        besked = _decode_shorthand(data)
        if besked is None:
            raise validation_error(exc, prefix=prefix) from None
        try:
            return _check_xml_items(_json_envelope.decode(besked), prefix)
        except msgspec.DecodeError as exc2:
            raise validation_error(exc2, prefix=prefix) from None
    except msgspec.DecodeError as exc:
        raise validation_error(exc, prefix=prefix) from None


def _check_xml_items(besked: Haendelsesbesked, prefix: str) -> Haendelsesbesked:
    """Refuse ``xml`` content items that are not one well-formed element (hardened parse), so
    every accepted envelope can also be delivered as XML. JSON and base64 items are not parsed."""
    for i, item in enumerate(besked.Beskeddata):
        if item.xml is not msgspec.UNSET:
            from broker.xmlcodec import check_xml_item

            check_xml_item(item.xml, path=f"{prefix}.Beskeddata[{i}].xml")
    return besked


def _decode_shorthand(data: bytes | memoryview) -> bytes | None:
    """The slow path: the envelope with its shorthand ids and times expanded, or None when it
    has none (then the strict decoder's error stands). Content stays raw bytes throughout."""
    try:
        loose = _json_loose.decode(data)
    except msgspec.DecodeError:
        return None
    top = {"BeskedId": loose.BeskedId}
    if expand_shorthands(top) + expand_shorthands(loose.Beskedkuvert) == 0:
        return None
    loose.BeskedId = top["BeskedId"]
    return _json_encoder.encode(loose)


def _decode_msgpack(data: bytes, prefix: str) -> Haendelsesbesked:
    try:
        obj = _msgpack_any.decode(data)
    except msgspec.DecodeError as exc:
        raise MalformedBody(f"body is not well-formed msgpack: {exc}", path=prefix) from None
    try:
        as_json = _json_encoder.encode(obj)
    except (TypeError, msgspec.EncodeError) as exc:
        raise InvalidEnvelope(f"msgpack value has no JSON form: {exc}", path=prefix) from None
    return _decode_json(as_json, prefix)


def _decode_xml(data: bytes) -> Haendelsesbesked:
    from broker.xmlcodec import decode_xml  # lxml import kept off the JSON path's start-up

    return decode_xml(data)


def decode_envelope(data: bytes, media: str, *, prefix: str = "$") -> Haendelsesbesked:
    """One envelope in canonical form.

    Error handling:
        :class:`MalformedBody` (not parseable), :class:`InvalidEnvelope` (breaks the model;
        code ``unknown_field`` for an unknown field), :class:`PayloadTooLarge`,
        :class:`UnsupportedMediaType`; each with the path of the offending field.
    """
    if len(data) > MAX_ENVELOPE_BYTES:
        raise PayloadTooLarge(
            f"an envelope may be at most {MAX_ENVELOPE_BYTES} bytes, this one is {len(data)}",
            path=prefix,
        )
    if media == JSON:
        return _decode_json(data, prefix)
    if media == MSGPACK:
        return _decode_msgpack(data, prefix)
    if media == XML:
        return _decode_xml(data)
    raise UnsupportedMediaType(
        f"Content-Type {media!r} is not supported for an envelope; use one of {', '.join(SINGLE_MEDIA)}"
    )


def split_batch(data: bytes, media: str) -> list[bytes]:
    """Split a batch body into the raw bytes of its items (not yet decoded).

    Error handling:
        The whole batch is refused (:class:`MalformedBody`, :class:`InvalidInput`,
        :class:`PayloadTooLarge`, :class:`UnsupportedMediaType`) only when it cannot be split
        or has too many items; a bad item is reported per item by :func:`decode_envelope`.
    """
    if media == NDJSON:
        items = [line for line in data.split(b"\n") if line.strip()]
    elif media == JSON:
        try:
            items = [bytes(r) for r in _json_raw_list.decode(data)]
        except msgspec.ValidationError:
            raise InvalidInput("a JSON batch must be an array of envelopes", path="$") from None
        except msgspec.DecodeError as exc:
            raise MalformedBody(f"batch is not well-formed JSON: {exc}") from None
    elif media == MSGPACK:
        try:
            items = [bytes(r) for r in _msgpack_raw_list.decode(data)]
        except msgspec.ValidationError:
            raise InvalidInput("a msgpack batch must be an array of envelopes", path="$") from None
        except msgspec.DecodeError as exc:
            raise MalformedBody(f"batch is not well-formed msgpack: {exc}") from None
    else:
        raise UnsupportedMediaType(
            f"Content-Type {media!r} is not supported for a batch; use one of {', '.join(BATCH_MEDIA)}"
        )
    if len(items) > MAX_BATCH_ITEMS:
        raise PayloadTooLarge(
            f"a batch may hold at most {MAX_BATCH_ITEMS} envelopes, this one holds {len(items)}"
        )
    return items
