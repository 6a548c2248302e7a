"""The envelope model: KOMBIT's ``Haendelsesbesked`` (Beskedkuvert.xsd) as msgspec Structs.

Theory of operation
-------------------
Field names are the schema's element names, one to one, so the canonical JSON of an envelope
reads like the XML without namespaces. Two things are lenient on input, as real traffic is:

* a ``UnikId`` (``{"UUIDIdentifikator": …}`` or ``{"URNIdentifikator": …}``) may be given as a
  bare string: ``"urn:…"`` becomes a URN, anything else (UUIDs in any case, KOMBIT's test id
  ``"1"``) a UUIDIdentifikator;
* a ``TidspunktType`` may be given as a bare dateTime string (``TidsstempelDatoTid``) or a bare
  boolean (``GraenseIndikator``).

:func:`normalize` turns those shorthands into the canonical objects and checks what msgspec's
type system cannot express (exactly one branch of a choice). Everything is stored and delivered
in canonical form.

``Beskeddata`` is opaque: each item is exactly one of ``{"json": <any JSON>}`` (kept as the raw
bytes it arrived as, never parsed), ``{"xml": "<one serialized element>"}`` or
``{"base64": "…", "content_type"?: "…"}``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, Raw, Struct, UnsetType

from broker.errors import InvalidEnvelope

__all__ = [
    "BeskeddataItem",
    "Beskedkuvert",
    "Filtreringsdata",
    "Haendelsesbesked",
    "Leveranceinformation",
    "Leverancerute",
    "LeveranceruteLokalUdvidelse",
    "Leveranceruter",
    "LokalUdvidelse",
    "Modtagerhandling",
    "ObjektRegistrering",
    "RelateretObjekt",
    "StoredBesked",
    "Tidspunkt",
    "UnikId",
    "normalize",
    "uid_key",
    "uid_value",
]

MAX_ID_LENGTH = 1024
_DATETIME = r"^-?\d{4,}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?$"

#: Identifier text: no control characters or code points XML cannot carry, and no leading or
#: trailing white space (an XML round trip would trim it), so every accepted id can be delivered
#: as XML as well as JSON.
_ID_PATTERN = (
    r"^[^\x00-\x20\ufffe\uffff]"
    r"(?:[^\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]*[^\x00-\x20\ufffe\uffff])?$"
)
_ID_RE = re.compile(_ID_PATTERN)
#: The length limits stay in the type; the character rule is checked by UnikId.__post_init__,
#: where a fast path for printable ASCII costs a tenth of msgspec's per-string regex search.
IdText = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LENGTH)]
#: ValueError text for a bad identifier: ``codec.validation_error`` moves the field name that
#: leads it into the error's path, so the path still ends at the offending field.
ID_RULE = (
    "an identifier must be non-empty text without control characters and without "
    "leading or trailing white space"
)


def _id_ok(text: str) -> bool:
    if text.isascii() and text.isprintable():  # no controls; only the edges can be white space
        return text[0] != " " and text[-1] != " "
    return _ID_RE.match(text) is not None


DateTimeText = Annotated[str, Meta(pattern=_DATETIME)]


class _Model(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Project-wide defaults for the envelope: absent optional elements are omitted."""


class _Value(
    Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True, gc=False
):
    """Base of the small immutable value types (ids, times, content items)."""


class UnikId(_Value, frozen=True):
    """``sd:UnikIdType``: a choice of UUIDIdentifikator or URNIdentifikator (plain strings)."""

    UUIDIdentifikator: IdText | None = None
    URNIdentifikator: IdText | None = None

    def __post_init__(self) -> None:
        # Runs inside msgspec's decoder too, so a bad choice fails with the field's path.
        uuid, urn = self.UUIDIdentifikator, self.URNIdentifikator
        if (uuid is None) == (urn is None):
            raise ValueError("a UnikId needs exactly one of UUIDIdentifikator or URNIdentifikator")
        if not _id_ok(uuid or urn):  # type: ignore[arg-type]  # exactly one is a str
            raise ValueError(
                f"{'UUIDIdentifikator' if uuid is not None else 'URNIdentifikator'}: {ID_RULE}"
            )

    @property
    def value(self) -> str:
        return self.UUIDIdentifikator or self.URNIdentifikator or ""


#: Kept for readers written against the lenient model: a UnikId field always holds a UnikId.
UnikIdIn = UnikId


class Tidspunkt(_Value, frozen=True):
    """``sd:TidspunktType``: a dateTime (zone optional) or a boundary indicator."""

    TidsstempelDatoTid: DateTimeText | None = None
    GraenseIndikator: bool | None = None

    def __post_init__(self) -> None:
        if (self.TidsstempelDatoTid is None) == (self.GraenseIndikator is None):
            raise ValueError(
                "a Tidspunkt needs exactly one of TidsstempelDatoTid or GraenseIndikator"
            )


TidspunktIn = Tidspunkt


class LokalUdvidelse(_Model):
    """A ``…LokalUdvidelse`` element: signatures and ``##other`` extensions, kept as XML."""

    xml: list[str] = []


class LeveranceruteLokalUdvidelse(_Model):
    AntalLeveranceforsoeg: Annotated[int, Meta(ge=0)] | None = None
    xml: list[str] = []


class RelateretObjekt(_Model):
    ObjektId: UnikIdIn
    ObjektType: UnikIdIn
    ObjektRolle: UnikIdIn | None = None


class ObjektRegistrering(_Model):
    ObjektRegistreringId: UnikIdIn | None = None
    RegistreringsAktoer: UnikIdIn | None = None
    Registreringstidspunkt: TidspunktIn | None = None
    ObjektAnsvarligMyndighed: UnikIdIn | None = None
    ObjektId: UnikIdIn | None = None
    ObjektType: UnikIdIn | None = None
    ObjektHandling: UnikIdIn | None = None
    OpgaveEmne: UnikIdIn | None = None
    ObjektRegistreringLokalUdvidelse: LokalUdvidelse | None = None


class Filtreringsdata(_Model):
    Beskedtype: UnikIdIn
    BeskedAnsvarligAktoer: UnikIdIn | None = None
    TilladtModtager: list[UnikIdIn] = []
    RelateretObjekt: list[RelateretObjekt] = []
    ObjektRegistrering: list[ObjektRegistrering] = []
    TvaergaaendeProces: list[UnikIdIn] = []


class Leverancerute(_Model):
    Fordelingssystem: UnikIdIn | None = None
    ModtagelsesTidspunkt: TidspunktIn | None = None
    LeveranceTidspunkt: TidspunktIn | None = None
    ModtagetFraSystem: UnikIdIn | None = None
    ErLeveretIHenholdTil: UnikIdIn | None = None
    LeveranceruteLokalUdvidelse: LeveranceruteLokalUdvidelse | None = None


class Leveranceruter(_Model):
    Leverancerute: list[Leverancerute] = []


class Leveranceinformation(_Model):
    Dannelsestidspunkt: TidspunktIn | None = None
    TransaktionsId: UnikIdIn | None = None
    Kildesystem: UnikIdIn | None = None
    KildesystemIPAdresse: Annotated[str, Meta(max_length=256)] | None = None
    KildesystemAkkreditiver: Annotated[str, Meta(max_length=8192)] | None = None
    Sikkerhedsklassificering: UnikIdIn | None = None
    Leveranceruter: Leveranceruter | None = None
    LeveranceinformationLokalUdvidelse: LokalUdvidelse | None = None


class Modtagerhandling(_Model):
    Handling: UnikIdIn | None = None
    Responsmodtager: UnikIdIn | None = None


class Beskedkuvert(_Model):
    Filtreringsdata: Filtreringsdata
    Leveranceinformation: Leveranceinformation
    Modtagerhandling: Modtagerhandling | None = None
    GyldighedFra: TidspunktIn | None = None
    GyldighedTil: TidspunktIn | None = None


class BeskeddataItem(_Value, frozen=True):
    """One opaque content item; exactly one of ``json``, ``xml``, ``base64`` is present."""

    json: Raw | UnsetType = UNSET
    xml: Annotated[str, Meta(min_length=1)] | UnsetType = UNSET
    base64: bytes | UnsetType = UNSET
    content_type: Annotated[str, Meta(max_length=255)] | UnsetType = UNSET

    def __post_init__(self) -> None:
        kinds = (self.json is not UNSET) + (self.xml is not UNSET) + (self.base64 is not UNSET)
        if kinds != 1:
            raise ValueError("a Beskeddata item needs exactly one of json, xml or base64")
        if self.content_type is not UNSET and self.base64 is UNSET:
            raise ValueError("content_type is only allowed on a base64 item")


class Haendelsesbesked(_Model):
    """The envelope as it arrives from a sender and as it is stored (canonical form)."""

    BeskedId: UnikIdIn
    BeskedVersion: Annotated[str, Meta(max_length=64)]
    Beskedkuvert: Beskedkuvert
    Beskeddata: list[BeskeddataItem] = []


class StoredBesked(Struct, kw_only=True, omit_defaults=True):
    """View of a stored envelope for delivery: content stays raw bytes, never re-parsed.

    Unlike the inbound model this one tolerates unknown fields, so envelopes written by a newer
    version still deliver.
    """

    BeskedId: UnikId
    BeskedVersion: str
    Beskedkuvert: Beskedkuvert
    Beskeddata: Raw | UnsetType = UNSET


# --------------------------------------------------------------------------------------------
# shorthand expansion (the slow path: only for input that the strict model refused)

#: Element names whose type is ``sd:UnikIdType`` (or an AktoerType), anywhere in the kuvert.
UNIKID_FIELDS = frozenset(
    {
        "BeskedId", "Beskedtype", "BeskedAnsvarligAktoer", "TilladtModtager", "TvaergaaendeProces",
        "ObjektId", "ObjektType", "ObjektRolle", "ObjektRegistreringId", "RegistreringsAktoer",
        "ObjektAnsvarligMyndighed", "ObjektHandling", "OpgaveEmne", "TransaktionsId",
        "Kildesystem", "Sikkerhedsklassificering", "Fordelingssystem", "ModtagetFraSystem",
        "ErLeveretIHenholdTil", "Handling", "Responsmodtager",
    }
)  # fmt: skip
#: Element names whose type is ``sd:TidspunktType``.
TIDSPUNKT_FIELDS = frozenset(
    {
        "Registreringstidspunkt", "Dannelsestidspunkt", "ModtagelsesTidspunkt",
        "LeveranceTidspunkt", "GyldighedFra", "GyldighedTil",
    }
)  # fmt: skip


def _expand_id(value: Any) -> Any:
    if isinstance(value, str):
        key = "URNIdentifikator" if value[:4].lower() == "urn:" else "UUIDIdentifikator"
        return {key: value}
    return value


def _expand_time(value: Any) -> Any:
    if isinstance(value, bool):
        return {"GraenseIndikator": value}
    if isinstance(value, str):
        return {"TidsstempelDatoTid": value}
    return value


def expand_shorthands(node: Any) -> int:
    """Rewrite, in place, bare-string UnikIds and bare Tidspunkt values of a kuvert tree given
    as builtins (dicts and lists); returns how many were rewritten.

    ``"urn:…"`` becomes a URNIdentifikator, any other string a UUIDIdentifikator (so KOMBIT's
    test id ``"1"`` works); a dateTime string becomes TidsstempelDatoTid, a bool GraenseIndikator.
    Content (``Beskeddata``) is never passed here.
    """
    count = 0
    if isinstance(node, list):
        for item in node:
            count += expand_shorthands(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            if key in UNIKID_FIELDS:
                if isinstance(value, list):
                    new: Any = [_expand_id(v) for v in value]
                    count += sum(1 for a, b in zip(value, new, strict=True) if a is not b)
                else:
                    new = _expand_id(value)
                    count += new is not value
                node[key] = new
            elif key in TIDSPUNKT_FIELDS:
                new = _expand_time(value)
                count += new is not value
                node[key] = new
            else:
                count += expand_shorthands(value)
    return count


def normalize(besked: Haendelsesbesked) -> Haendelsesbesked:
    """Check an envelope built in code (decoded envelopes are checked by the decoder).

    Error handling:
        Raises :class:`InvalidEnvelope` naming the path of the first choice element with both or
        neither branch (possible only when a Struct was built with ``msgspec.structs.replace``
        or ``msgspec.convert``-free construction that skipped validation).
    """
    try:
        msgspec.json.decode(msgspec.json.encode(besked), type=Haendelsesbesked)
    except msgspec.ValidationError as exc:
        text = str(exc)
        msg, _, path = text.partition(" - at `")
        raise InvalidEnvelope(msg, path=path.rstrip("`") or "$") from None
    return besked


# --------------------------------------------------------------------------------------------
# helpers for readers of canonical envelopes

_UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


def uid_value(value: UnikIdIn | None) -> str | None:
    """The identifier text of a (possibly not yet normalised) UnikId."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return value.value


#: Keys of UUID-shaped ids with upper-case letters seen lately: message types, actions and
#: classifications repeat in every envelope, so the regex runs once per distinct id. Bounded:
#: cleared when full (upper-case BeskedIds pass through it too, and the vocabulary refills it).
_UUID_KEYS: dict[str, str] = {}
_UUID_KEYS_MAX = 65_536


def uid_key(value: UnikIdIn | None) -> str | None:
    """A comparison key for an identifier: UUIDs are case-insensitive, so they are lowered."""
    if value is None:
        return None
    text = value if isinstance(value, str) else value.value
    if len(text) != 36 or text[8] != "-":  # cheap shape test: this is the hot path
        return text
    lower = text.lower()
    if lower == text:
        # nothing to lower (ids mostly arrive lower-case), UUID or not: skips the regex and
        # keeps unique ids (BeskedIds) out of the cache
        return text
    key = _UUID_KEYS.get(text)
    if key is None:
        key = lower if _UUID_RE.match(text) else text
        if len(_UUID_KEYS) >= _UUID_KEYS_MAX:
            _UUID_KEYS.clear()
        _UUID_KEYS[text] = key
    return key


def to_builtins(besked: Haendelsesbesked) -> Any:
    """The canonical JSON-compatible form (raw ``json`` content becomes Python values)."""
    return msgspec.json.decode(msgspec.json.encode(besked))
