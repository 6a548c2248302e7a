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

IdText = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LENGTH)]
DateTimeText = Annotated[str, Meta(pattern=_DATETIME)]


class _Model(Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Project-wide defaults for the envelope: absent optional elements are omitted."""


class UnikId(_Model, frozen=True):
    """``sd:UnikIdType``: a choice of UUIDIdentifikator or URNIdentifikator (plain strings)."""

    UUIDIdentifikator: IdText | None = None
    URNIdentifikator: IdText | None = None

    @property
    def value(self) -> str:
        return self.UUIDIdentifikator or self.URNIdentifikator or ""


#: On input a UnikId may be a bare string; after :func:`normalize` it is always a :class:`UnikId`.
UnikIdIn = UnikId | IdText


class Tidspunkt(_Model, frozen=True):
    """``sd:TidspunktType``: a dateTime (zone optional) or a boundary indicator."""

    TidsstempelDatoTid: DateTimeText | None = None
    GraenseIndikator: bool | None = None


TidspunktIn = Tidspunkt | DateTimeText | bool


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


class BeskeddataItem(_Model, frozen=True):
    """One opaque content item; exactly one of ``json``, ``xml``, ``base64`` is present."""

    json: Raw | UnsetType = UNSET
    xml: Annotated[str, Meta(min_length=1)] | UnsetType = UNSET
    base64: bytes | UnsetType = UNSET
    content_type: Annotated[str, Meta(max_length=255)] | UnsetType = UNSET


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
# normalisation


def _uid(value: UnikIdIn, path: str) -> UnikId:
    if isinstance(value, str):
        if value[:4].lower() == "urn:":
            return UnikId(URNIdentifikator=value)
        return UnikId(UUIDIdentifikator=value)
    if (value.UUIDIdentifikator is None) == (value.URNIdentifikator is None):
        raise InvalidEnvelope(
            "a UnikId needs exactly one of UUIDIdentifikator or URNIdentifikator", path=path
        )
    return value


def _opt_uid(value: UnikIdIn | None, path: str) -> UnikId | None:
    return None if value is None else _uid(value, path)


def _time(value: TidspunktIn | None, path: str) -> Tidspunkt | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return Tidspunkt(GraenseIndikator=value)
    if isinstance(value, str):
        return Tidspunkt(TidsstempelDatoTid=value)
    if (value.TidsstempelDatoTid is None) == (value.GraenseIndikator is None):
        raise InvalidEnvelope(
            "a Tidspunkt needs exactly one of TidsstempelDatoTid or GraenseIndikator", path=path
        )
    return value


def _objektregistrering(o: ObjektRegistrering, p: str) -> None:
    o.ObjektRegistreringId = _opt_uid(o.ObjektRegistreringId, p + ".ObjektRegistreringId")
    o.RegistreringsAktoer = _opt_uid(o.RegistreringsAktoer, p + ".RegistreringsAktoer")
    o.Registreringstidspunkt = _time(o.Registreringstidspunkt, p + ".Registreringstidspunkt")
    o.ObjektAnsvarligMyndighed = _opt_uid(
        o.ObjektAnsvarligMyndighed, p + ".ObjektAnsvarligMyndighed"
    )
    o.ObjektId = _opt_uid(o.ObjektId, p + ".ObjektId")
    o.ObjektType = _opt_uid(o.ObjektType, p + ".ObjektType")
    o.ObjektHandling = _opt_uid(o.ObjektHandling, p + ".ObjektHandling")
    o.OpgaveEmne = _opt_uid(o.OpgaveEmne, p + ".OpgaveEmne")


def _leverancerute(r: Leverancerute, p: str) -> None:
    r.Fordelingssystem = _opt_uid(r.Fordelingssystem, p + ".Fordelingssystem")
    r.ModtagelsesTidspunkt = _time(r.ModtagelsesTidspunkt, p + ".ModtagelsesTidspunkt")
    r.LeveranceTidspunkt = _time(r.LeveranceTidspunkt, p + ".LeveranceTidspunkt")
    r.ModtagetFraSystem = _opt_uid(r.ModtagetFraSystem, p + ".ModtagetFraSystem")
    r.ErLeveretIHenholdTil = _opt_uid(r.ErLeveretIHenholdTil, p + ".ErLeveretIHenholdTil")


def normalize(besked: Haendelsesbesked) -> Haendelsesbesked:
    """Bring a decoded envelope into canonical form, in place, and return it.

    Error handling:
        Raises :class:`InvalidEnvelope` naming the path of the first choice element that has
        both or neither branch, and of a content item that is not exactly one kind.
    """
    besked.BeskedId = _uid(besked.BeskedId, "$.BeskedId")
    k = besked.Beskedkuvert
    f = k.Filtreringsdata
    fp = "$.Beskedkuvert.Filtreringsdata"
    f.Beskedtype = _uid(f.Beskedtype, fp + ".Beskedtype")
    f.BeskedAnsvarligAktoer = _opt_uid(f.BeskedAnsvarligAktoer, fp + ".BeskedAnsvarligAktoer")
    if f.TilladtModtager:
        f.TilladtModtager = [
            _uid(v, f"{fp}.TilladtModtager[{i}]") for i, v in enumerate(f.TilladtModtager)
        ]
    for i, ro in enumerate(f.RelateretObjekt):
        rp = f"{fp}.RelateretObjekt[{i}]"
        ro.ObjektId = _uid(ro.ObjektId, rp + ".ObjektId")
        ro.ObjektType = _uid(ro.ObjektType, rp + ".ObjektType")
        ro.ObjektRolle = _opt_uid(ro.ObjektRolle, rp + ".ObjektRolle")
    for i, o in enumerate(f.ObjektRegistrering):
        _objektregistrering(o, f"{fp}.ObjektRegistrering[{i}]")
    if f.TvaergaaendeProces:
        f.TvaergaaendeProces = [
            _uid(v, f"{fp}.TvaergaaendeProces[{i}]") for i, v in enumerate(f.TvaergaaendeProces)
        ]
    li = k.Leveranceinformation
    lp = "$.Beskedkuvert.Leveranceinformation"
    li.Dannelsestidspunkt = _time(li.Dannelsestidspunkt, lp + ".Dannelsestidspunkt")
    li.TransaktionsId = _opt_uid(li.TransaktionsId, lp + ".TransaktionsId")
    li.Kildesystem = _opt_uid(li.Kildesystem, lp + ".Kildesystem")
    li.Sikkerhedsklassificering = _opt_uid(
        li.Sikkerhedsklassificering, lp + ".Sikkerhedsklassificering"
    )
    if li.Leveranceruter is not None:
        for i, r in enumerate(li.Leveranceruter.Leverancerute):
            _leverancerute(r, f"{lp}.Leveranceruter.Leverancerute[{i}]")
    if k.Modtagerhandling is not None:
        mp = "$.Beskedkuvert.Modtagerhandling"
        k.Modtagerhandling.Handling = _opt_uid(k.Modtagerhandling.Handling, mp + ".Handling")
        k.Modtagerhandling.Responsmodtager = _opt_uid(
            k.Modtagerhandling.Responsmodtager, mp + ".Responsmodtager"
        )
    k.GyldighedFra = _time(k.GyldighedFra, "$.Beskedkuvert.GyldighedFra")
    k.GyldighedTil = _time(k.GyldighedTil, "$.Beskedkuvert.GyldighedTil")
    for i, item in enumerate(besked.Beskeddata):
        kinds = (item.json is not UNSET) + (item.xml is not UNSET) + (item.base64 is not UNSET)
        if kinds != 1:
            raise InvalidEnvelope(
                "a Beskeddata item needs exactly one of json, xml or base64",
                path=f"$.Beskeddata[{i}]",
            )
        if item.content_type is not UNSET and item.base64 is UNSET:
            raise InvalidEnvelope(
                "content_type is only allowed on a base64 item",
                path=f"$.Beskeddata[{i}].content_type",
            )
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


def uid_key(value: UnikIdIn | None) -> str | None:
    """A comparison key for an identifier: UUIDs are case-insensitive, so they are lowered."""
    text = uid_value(value)
    if text is None:
        return None
    return text.lower() if _UUID_RE.match(text) else text


def to_builtins(besked: Haendelsesbesked) -> Any:
    """The canonical JSON-compatible form (raw ``json`` content becomes Python values)."""
    return msgspec.json.decode(msgspec.json.encode(besked))
