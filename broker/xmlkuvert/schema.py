"""The XSD complex types of the envelope, as data.

Theory of operation
-------------------
Everything that decides which element may appear where lives in :data:`SPECS`: one table per
XSD complex type, its children in XSD sequence order. The decoder walks a tree along these
tables and the encoder writes Structs along them, so the two cannot disagree on names, order or
cardinality. Each child element maps to the Struct field of the same name; its ``kind`` says
how its value is read and written:

* ``"id"`` / ``"time"``: a ``UnikIdType`` / ``TidspunktType`` choice of two leaves
  (:data:`CHOICES`), matched by local name in any namespace;
* ``"text"``: a trimmed string;
* ``"ext"`` / ``"rute_ext"``: a ``…LokalUdvidelse`` of content items (the route's also holds
  ``AntalLeveranceforsoeg``);
* ``"data"``: ``Beskeddata``, whose children are content items;
* a Struct class: a nested complex type with a table of its own.

Value constraints (id length, dateTime pattern, ``ge=0``) are not restated here: they live on
the Structs of :mod:`broker.envelope`, and ``msgspec.convert`` checks them.
"""

from __future__ import annotations

from typing import NamedTuple

from msgspec import Struct

from broker.envelope import (
    Beskedkuvert,
    Filtreringsdata,
    Haendelsesbesked,
    Leveranceinformation,
    Leverancerute,
    Leveranceruter,
    Modtagerhandling,
    ObjektRegistrering,
    RelateretObjekt,
)

__all__ = ["BY_NAME", "CHOICES", "SPECS", "Field"]


class Field(NamedTuple):
    """One child element of a complex type: name (= Struct field), kind, cardinality."""

    name: str
    kind: str | type[Struct]  # "id" "time" "text" "ext" "rute_ext" "data" or a nested Struct
    required: bool = False
    many: bool = False


SPECS: dict[type[Struct], tuple[Field, ...]] = {
    RelateretObjekt: (
        Field("ObjektId", "id", required=True),
        Field("ObjektType", "id", required=True),
        Field("ObjektRolle", "id"),
    ),
    ObjektRegistrering: (
        Field("ObjektRegistreringId", "id"),
        Field("RegistreringsAktoer", "id"),
        Field("Registreringstidspunkt", "time"),
        Field("ObjektAnsvarligMyndighed", "id"),
        Field("ObjektId", "id"),
        Field("ObjektType", "id"),
        Field("ObjektHandling", "id"),
        Field("OpgaveEmne", "id"),
        Field("ObjektRegistreringLokalUdvidelse", "ext"),
    ),
    Filtreringsdata: (
        Field("Beskedtype", "id", required=True),
        Field("BeskedAnsvarligAktoer", "id"),
        Field("TilladtModtager", "id", many=True),
        Field("RelateretObjekt", RelateretObjekt, many=True),
        Field("ObjektRegistrering", ObjektRegistrering, many=True),
        Field("TvaergaaendeProces", "id", many=True),
    ),
    Leverancerute: (
        Field("Fordelingssystem", "id"),
        Field("ModtagelsesTidspunkt", "time"),
        Field("LeveranceTidspunkt", "time"),
        Field("ModtagetFraSystem", "id"),
        Field("ErLeveretIHenholdTil", "id"),
        Field("LeveranceruteLokalUdvidelse", "rute_ext"),
    ),
    Leveranceruter: (Field("Leverancerute", Leverancerute, many=True),),
    Leveranceinformation: (
        Field("Dannelsestidspunkt", "time"),
        Field("TransaktionsId", "id"),
        Field("Kildesystem", "id"),
        Field("KildesystemIPAdresse", "text"),
        Field("KildesystemAkkreditiver", "text"),
        Field("Sikkerhedsklassificering", "id"),
        Field("Leveranceruter", Leveranceruter),
        Field("LeveranceinformationLokalUdvidelse", "ext"),
    ),
    Modtagerhandling: (Field("Handling", "id"), Field("Responsmodtager", "id")),
    Beskedkuvert: (
        Field("Filtreringsdata", Filtreringsdata, required=True),
        Field("Leveranceinformation", Leveranceinformation, required=True),
        Field("Modtagerhandling", Modtagerhandling),
        Field("GyldighedFra", "time"),
        Field("GyldighedTil", "time"),
    ),
    Haendelsesbesked: (
        Field("BeskedId", "id", required=True),
        Field("BeskedVersion", "text", required=True),
        Field("Beskedkuvert", Beskedkuvert, required=True),
        Field("Beskeddata", "data", many=True),
    ),
}
#: The same tables by element name, for the decoder's one pass over the children.
BY_NAME = {cls: {f.name: f for f in spec} for cls, spec in SPECS.items()}
#: The two leaves of each choice kind (exactly one of them is present).
CHOICES = {
    "id": ("UUIDIdentifikator", "URNIdentifikator"),
    "time": ("TidsstempelDatoTid", "GraenseIndikator"),
}
