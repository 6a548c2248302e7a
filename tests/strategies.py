"""Hypothesis strategies for envelopes, for any test that needs ``Haendelsesbesked`` objects.

Everything generated is in canonical form (``UnikId``/``Tidspunkt`` objects, never the bare
shorthands) and survives XML: texts hold only characters XML 1.0 can carry, and have no
leading or trailing XML whitespace (the XML codec trims it). Ids and texts deliberately include
non-ASCII and XML-special characters (``<&"'>``).

``xml`` content (Beskeddata items and ``…LokalUdvidelse`` children) is written by lxml, so it is
in the form the XML codec produces when it decodes.
"""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import strategies as st
from lxml import etree

from broker.envelope import (
    BeskeddataItem,
    Beskedkuvert,
    Filtreringsdata,
    Haendelsesbesked,
    Leveranceinformation,
    Leverancerute,
    LeveranceruteLokalUdvidelse,
    Leveranceruter,
    LokalUdvidelse,
    Modtagerhandling,
    ObjektRegistrering,
    RelateretObjekt,
    Tidspunkt,
    UnikId,
)

__all__ = [
    "beskeddata_items",
    "haendelsesbesked",
    "json_items",
    "lokal_udvidelse",
    "safe_text",
    "tidspunkt",
    "unik_id",
    "xml_content",
]

_XML_WS = " \t\r\n"
# Letters and symbols from all planes, plus the characters XML escapes. No control characters,
# surrogates or the non-characters U+FFFE/U+FFFF: XML 1.0 cannot carry those.
_CHARS = st.one_of(
    st.sampled_from("<>&\"'=:/; -_.æøåÆØÅ"),
    st.characters(
        exclude_categories=("Cs", "Cc", "Co"),
        exclude_characters="\ufffe\uffff",
    ),
)


def safe_text(min_size: int = 1, max_size: int = 40) -> st.SearchStrategy[str]:
    """Text that XML carries unchanged and the codec does not trim."""
    text = st.text(_CHARS, min_size=min_size, max_size=max_size)
    if min_size:
        return text.map(lambda t: t.strip(_XML_WS) or "x")
    return text.map(lambda t: t.strip(_XML_WS))


# built once: building text strategies is not cheap
_TEXT0 = safe_text(min_size=0, max_size=20)
_MAYBE_TEXT = st.none() | _TEXT0


_UUIDS = st.uuids().map(str)
_ID_TEXT = st.one_of(
    _UUIDS,
    _UUIDS.map(str.upper),
    st.just("1"),
    safe_text(),
    st.builds("urn:oio:cvr-nr:{:08d}".format, st.integers(0, 99_999_999)),
)


@st.composite
def unik_id(draw: st.DrawFn) -> UnikId:
    """A canonical ``UnikId``: a UUID (any case), KOMBIT's ``1``, a URN or any safe text."""
    text = draw(_ID_TEXT)
    if draw(st.booleans()):
        return UnikId(URNIdentifikator=text)
    return UnikId(UUIDIdentifikator=text)


@st.composite
def _datetime(draw: st.DrawFn) -> str:
    year = draw(st.integers(1, 9999))
    month, day = draw(st.integers(1, 12)), draw(st.integers(1, 28))
    h, m, s = draw(st.integers(0, 23)), draw(st.integers(0, 59)), draw(st.integers(0, 59))
    text = f"{year:04d}-{month:02d}-{day:02d}T{h:02d}:{m:02d}:{s:02d}"
    if draw(st.booleans()):
        text += "." + str(draw(st.integers(0, 999_999)))
    zone = draw(st.sampled_from(["", "Z", "+01:00", "-05:30", "+00:00"]))
    return text + zone


def tidspunkt() -> st.SearchStrategy[Tidspunkt]:
    """A canonical ``Tidspunkt``: a dateTime (zone optional) or a boundary indicator."""
    return st.one_of(
        _datetime().map(lambda t: Tidspunkt(TidsstempelDatoTid=t)),
        st.booleans().map(lambda b: Tidspunkt(GraenseIndikator=b)),
    )


_NAMESPACES = st.sampled_from(
    [None, "urn:x:content", "http://example.org/x?a=1&b=2", "urn:kombit:test"]
)
_PREFIXES = st.sampled_from([None, "x", "tns", "ns7", "ø"])
_NAMES = st.sampled_from(["a", "Person", "navn", "Beskeddata", "ø-tal", "_x.y"])


@st.composite
def _element(draw: st.DrawFn, parent: Any | None, depth: int) -> Any:
    ns = draw(_NAMESPACES)
    prefix = draw(_PREFIXES) if ns else None
    tag = f"{{{ns}}}{draw(_NAMES)}" if ns else draw(_NAMES)
    nsmap = {prefix: ns} if ns else {}
    if parent is None:
        el = etree.Element(tag, nsmap=nsmap)
    elif ns is None and None in parent.nsmap:
        # lxml would not write xmlns="" for an unqualified child of a default namespace
        return None
    else:
        el = etree.SubElement(parent, tag, nsmap=nsmap)
    for name in draw(st.lists(st.sampled_from(["id", "type", "{urn:attr}v"]), unique=True)):
        el.set(name, draw(_TEXT0))
    el.text = draw(_MAYBE_TEXT)
    if depth < 2:
        for kind in draw(st.lists(st.sampled_from(["element", "comment"]), max_size=2)):
            if kind == "comment":
                # "--" and a trailing "-" are not allowed in comments
                text = draw(_TEXT0).replace("-", "")
                el.append(etree.Comment(text))
                child = el[-1]
            else:
                child = draw(_element(el, depth + 1))
            if child is not None:
                child.tail = draw(_MAYBE_TEXT)
    return el


def xml_content() -> st.SearchStrategy[str]:
    """One serialized XML element with attributes, text, comments and children."""
    return _element(None, 0).map(lambda el: etree.tostring(el, encoding="unicode"))


_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT0,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT0, inner, max_size=3),
    max_leaves=8,
)


def json_items() -> st.SearchStrategy[BeskeddataItem]:
    """``json`` items with raw text as msgspec writes it or with extra whitespace."""
    encoded = _JSON_VALUES.map(msgspec.json.encode)
    spaced = _JSON_VALUES.map(lambda v: msgspec.json.format(msgspec.json.encode(v), indent=2))
    return (encoded | spaced).map(lambda raw: BeskeddataItem(json=msgspec.Raw(raw)))


def _base64_item(data: bytes, content_type: str | None) -> BeskeddataItem:
    if content_type is None:
        return BeskeddataItem(base64=data)
    return BeskeddataItem(base64=data, content_type=content_type)


def beskeddata_items(max_size: int = 3) -> st.SearchStrategy[list[BeskeddataItem]]:
    """A mix of ``xml``, ``json`` and ``base64`` content items."""
    content_types = st.none() | st.sampled_from(["application/pdf", "text/plain", "image/png"])
    item = st.one_of(
        xml_content().map(lambda xml: BeskeddataItem(xml=xml)),
        json_items(),
        st.builds(_base64_item, st.binary(max_size=64), content_types),
    )
    return st.lists(item, max_size=max_size)


def lokal_udvidelse() -> st.SearchStrategy[LokalUdvidelse]:
    return st.builds(LokalUdvidelse, xml=st.lists(xml_content(), max_size=1))


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


def _small_list(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(strategy, max_size=2)


_OBJEKT_REGISTRERING = st.builds(
    ObjektRegistrering,
    ObjektRegistreringId=_maybe(unik_id()),
    RegistreringsAktoer=_maybe(unik_id()),
    Registreringstidspunkt=_maybe(tidspunkt()),
    ObjektAnsvarligMyndighed=_maybe(unik_id()),
    ObjektId=_maybe(unik_id()),
    ObjektType=_maybe(unik_id()),
    ObjektHandling=_maybe(unik_id()),
    OpgaveEmne=_maybe(unik_id()),
    ObjektRegistreringLokalUdvidelse=_maybe(lokal_udvidelse()),
)
_FILTRERINGSDATA = st.builds(
    Filtreringsdata,
    Beskedtype=unik_id(),
    BeskedAnsvarligAktoer=_maybe(unik_id()),
    TilladtModtager=_small_list(unik_id()),
    RelateretObjekt=_small_list(
        st.builds(
            RelateretObjekt,
            ObjektId=unik_id(),
            ObjektType=unik_id(),
            ObjektRolle=_maybe(unik_id()),
        )
    ),
    ObjektRegistrering=_small_list(_OBJEKT_REGISTRERING),
    TvaergaaendeProces=_small_list(unik_id()),
)
_LEVERANCERUTE = st.builds(
    Leverancerute,
    Fordelingssystem=_maybe(unik_id()),
    ModtagelsesTidspunkt=_maybe(tidspunkt()),
    LeveranceTidspunkt=_maybe(tidspunkt()),
    ModtagetFraSystem=_maybe(unik_id()),
    ErLeveretIHenholdTil=_maybe(unik_id()),
    LeveranceruteLokalUdvidelse=_maybe(
        st.builds(
            LeveranceruteLokalUdvidelse,
            AntalLeveranceforsoeg=_maybe(st.integers(0, 10**12)),
            xml=st.lists(xml_content(), max_size=1),
        )
    ),
)
_LEVERANCEINFORMATION = st.builds(
    Leveranceinformation,
    Dannelsestidspunkt=_maybe(tidspunkt()),
    TransaktionsId=_maybe(unik_id()),
    Kildesystem=_maybe(unik_id()),
    KildesystemIPAdresse=_maybe(safe_text(max_size=40)),
    KildesystemAkkreditiver=_maybe(safe_text(max_size=200)),
    Sikkerhedsklassificering=_maybe(unik_id()),
    Leveranceruter=_maybe(st.builds(Leveranceruter, Leverancerute=_small_list(_LEVERANCERUTE))),
    LeveranceinformationLokalUdvidelse=_maybe(lokal_udvidelse()),
)


def haendelsesbesked(
    *, beskeddata: st.SearchStrategy[list[BeskeddataItem]] | None = None
) -> st.SearchStrategy[Haendelsesbesked]:
    """A canonical envelope with random optional elements and content items.

    Arguments:
        beskeddata: the strategy for the content items (default :func:`beskeddata_items`).
    """
    return st.builds(
        Haendelsesbesked,
        BeskedId=unik_id(),
        BeskedVersion=st.one_of(st.just("1.0"), safe_text(min_size=0, max_size=64)),
        Beskedkuvert=st.builds(
            Beskedkuvert,
            Filtreringsdata=_FILTRERINGSDATA,
            Leveranceinformation=_LEVERANCEINFORMATION,
            Modtagerhandling=_maybe(
                st.builds(
                    Modtagerhandling,
                    Handling=_maybe(unik_id()),
                    Responsmodtager=_maybe(unik_id()),
                )
            ),
            GyldighedFra=_maybe(tidspunkt()),
            GyldighedTil=_maybe(tidspunkt()),
        ),
        Beskeddata=beskeddata if beskeddata is not None else beskeddata_items(),
    )
