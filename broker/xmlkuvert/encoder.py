""":class:`~broker.envelope.Haendelsesbesked` -> XML, bare or wrapped in ``ModtagBeskedInput``.

Theory of operation
-------------------
Encoding writes the envelope in ``urn:oio:besked:kuvert:1.0`` (prefix ``besked``) with
``urn:oio:sagdok:3.0.0`` ids (prefix ``sd``) and never a default namespace, so unqualified
content stays unqualified. :class:`_Writer` walks the Structs along
:data:`~broker.xmlkuvert.schema.SPECS`, so elements come out in XSD order. Each content item becomes
its own ``<Beskeddata>``: ``xml`` is parsed (hardened), re-serialized on its own and spliced in
as text, so its prefixes and declarations stay exactly as they were; ``base64`` becomes
``<besked:Base64 encoding="Binary" content-type="…">…</besked:Base64>`` (KOMBIT's
BeskeddataBase64 convention); ``json`` becomes ``<Json xmlns="urn:dueslag:beskeddata:json:1.0">``
holding the raw JSON text.

The codec is asymmetric on purpose: decoding never turns ``Base64`` or ``Json`` back into
``base64``/``json`` items. They come back as ``xml`` items whose element text is the base64
text or the original JSON text.

A stored envelope is encoded without building the full model: its ``Beskeddata`` may still be
the raw JSON array (:class:`~broker.envelope.StoredBesked`), decoded only here, and
:func:`encode_xml_stored` reads canonical JSON through a lenient view. Delivery routes are
appended to a copy of the envelope's ``Leveranceruter``, never to the stored one.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from typing import Any

import msgspec
from lxml import etree
from msgspec import UNSET, Struct

from broker.envelope import (
    BeskeddataItem,
    Beskedkuvert,
    Haendelsesbesked,
    Leverancerute,
    Leveranceruter,
    StoredBesked,
    Tidspunkt,
    UnikId,
    UnikIdIn,
)
from broker.errors import InvalidEnvelope, MalformedBody
from broker.xmlkuvert.content import check_xml_item
from broker.xmlkuvert.namespaces import JSON_NS, KUVERT_NS, SAGDOK_NS, STS_NS, local
from broker.xmlkuvert.parser import item_parser
from broker.xmlkuvert.schema import CHOICES, SPECS, Field

__all__ = [
    "Envelope",
    "encode_modtag_besked_input",
    "encode_stored",
    "encode_xml",
    "encode_xml_stored",
]

_PLACEHOLDER = "dueslag-content"
_PLACEHOLDER_RE = re.compile(rb"<\?dueslag-content (\d+)\?>")
_ITEMS = msgspec.json.Decoder(list[BeskeddataItem])


class _StoredView(Struct, kw_only=True):
    """A stored envelope as :func:`encode_xml_stored` reads it: unknown top fields tolerated."""

    BeskedId: UnikIdIn
    BeskedVersion: str
    Beskedkuvert: Beskedkuvert
    Beskeddata: list[BeskeddataItem] = []


_STORED = msgspec.json.Decoder(_StoredView)
Envelope = Haendelsesbesked | StoredBesked | _StoredView


def encode_xml(besked: Envelope, *, routes: Sequence[Leverancerute] = ()) -> bytes:
    """Encode an envelope as a ``Haendelsesbesked`` document (UTF-8, with XML declaration).

    Arguments:
        besked: a :class:`Haendelsesbesked`, or a :class:`StoredBesked` whose ``Beskeddata`` is
            the raw JSON array of items.
        routes: ``Leverancerute`` entries appended after the stored ones (a delivery adds its
            own route without copying the envelope).

    Error handling:
        Raises :class:`InvalidEnvelope` with the path of a value XML cannot carry (control
        characters), of an ``xml`` item that is not one well-formed element, or of a choice
        with both or neither branch.
    """
    writer = _Writer()
    return writer.document(writer.besked(None, besked, routes))


def encode_stored(besked: StoredBesked, *, routes: Sequence[Leverancerute] = ()) -> bytes:
    """:func:`encode_xml` for a stored envelope whose ``Beskeddata`` is still raw JSON."""
    return encode_xml(besked, routes=routes)


def encode_modtag_besked_input(besked: Envelope, *, routes: Sequence[Leverancerute] = ()) -> bytes:
    """Like :func:`encode_xml`, wrapped in ``ModtagBeskedInput`` (``urn:oio:sts:1.0.0``).

    This is the body of a push delivery (``ModtagBesked``).
    """
    nsmap = {"sts": STS_NS, "besked": KUVERT_NS, "sd": SAGDOK_NS}
    wrapper = etree.Element(f"{{{STS_NS}}}ModtagBeskedInput", nsmap=nsmap)
    writer = _Writer()
    writer.besked(wrapper, besked, routes)
    return writer.document(wrapper)


def encode_xml_stored(envelope_json: bytes, *, routes: Sequence[Leverancerute] = ()) -> bytes:
    """Encode a stored canonical JSON envelope as XML (see :func:`encode_xml`).

    Error handling:
        Raises :class:`MalformedBody` if ``envelope_json`` is not JSON and
        :class:`InvalidEnvelope` if it does not fit the model.
    """
    try:
        besked = _STORED.decode(envelope_json)
    except msgspec.ValidationError as exc:
        raise InvalidEnvelope(f"stored envelope is invalid: {exc}") from None
    except msgspec.DecodeError as exc:
        raise MalformedBody(f"stored envelope is not JSON: {exc}") from None
    return encode_xml(besked, routes=routes)


def _with_routes(kuvert: Beskedkuvert, routes: Sequence[Leverancerute]) -> Beskedkuvert:
    """A copy of ``kuvert`` with ``routes`` appended to its Leveranceruter; the input is kept."""
    li = kuvert.Leveranceinformation
    old = li.Leveranceruter.Leverancerute if li.Leveranceruter is not None else []
    ruter = Leveranceruter(Leverancerute=[*old, *routes])
    li = msgspec.structs.replace(li, Leveranceruter=ruter)
    return msgspec.structs.replace(kuvert, Leveranceinformation=li)


class _Writer:
    """Builds one envelope tree. XML content is spliced in as text after serialization.

    Each ``xml`` item is parsed (hardened) and re-serialized on its own, and a placeholder
    processing instruction marks its place in the tree. Splicing text instead of moving elements
    keeps every namespace declaration and prefix of the content exactly as it was (lxml's
    namespace reconciliation would drop or rebind them), and no envelope text can look like a
    placeholder because text is escaped.
    """

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.parser = item_parser()

    def text(self, parent: Any, tag: str, text: str, path: str) -> Any:
        el = etree.SubElement(parent, tag)
        try:
            el.text = text
        except ValueError:
            raise InvalidEnvelope(
                f"{local(tag)} holds characters that XML 1.0 cannot carry", path=path
            ) from None
        return el

    def content(self, parent: Any, xml: str, path: str) -> None:
        el = check_xml_item(xml, path=path, parser=self.parser)
        parent.append(etree.PI(_PLACEHOLDER, str(len(self.parts))))
        self.parts.append(bytes(etree.tostring(el, encoding="UTF-8")))

    def document(self, root: Any) -> bytes:
        out = bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))
        if not self.parts:
            return out
        return _PLACEHOLDER_RE.sub(lambda m: self.parts[int(m.group(1))], out)

    def choice(self, parent: Any, name: str, value: Any, path: str, kind: str) -> None:
        el = etree.SubElement(parent, f"{{{KUVERT_NS}}}{name}")
        if isinstance(value, bool):
            value = Tidspunkt(GraenseIndikator=value)
        elif isinstance(value, str) and kind == "time":
            value = Tidspunkt(TidsstempelDatoTid=value)
        elif isinstance(value, str):  # the shorthand rule of broker.envelope.normalize
            urn = value[:4].lower() == "urn:"
            value = UnikId(URNIdentifikator=value) if urn else UnikId(UUIDIdentifikator=value)
        branches = [(k, getattr(value, k)) for k in value.__struct_fields__]
        present = [(k, v) for k, v in branches if v is not None]
        if len(present) != 1:
            raise InvalidEnvelope(
                f"{name} needs exactly one of {branches[0][0]} or {branches[1][0]}", path=path
            )
        leaf, v = present[0]
        text = ("true" if v else "false") if isinstance(v, bool) else v
        self.text(el, f"{{{SAGDOK_NS}}}{leaf}", text, f"{path}/{leaf}")

    def ext(self, parent: Any, name: str, value: Any, path: str) -> None:
        el = etree.SubElement(parent, f"{{{KUVERT_NS}}}{name}")
        count = getattr(value, "AntalLeveranceforsoeg", None)
        if count is not None:
            self.text(el, f"{{{KUVERT_NS}}}AntalLeveranceforsoeg", str(count), path)
        for i, xml in enumerate(value.xml):
            self.content(el, xml, f"{path}/xml[{i + 1}]")

    def struct(self, parent: Any, name: str, obj: Struct, path: str) -> None:
        el = etree.SubElement(parent, f"{{{KUVERT_NS}}}{name}")
        for f in SPECS[type(obj)]:
            value = getattr(obj, f.name)
            if f.many:
                for i, v in enumerate(value):
                    self.put(el, f, v, f"{path}/{f.name}[{i + 1}]")
            elif value is not None:
                self.put(el, f, value, f"{path}/{f.name}")

    def put(self, parent: Any, f: Field, value: Any, path: str) -> None:
        if isinstance(f.kind, type):
            self.struct(parent, f.name, value, path)
        elif f.kind in CHOICES:
            self.choice(parent, f.name, value, path, f.kind)
        elif f.kind == "text":
            self.text(parent, f"{{{KUVERT_NS}}}{f.name}", value, path)
        else:
            self.ext(parent, f.name, value, path)

    def item(self, parent: Any, item: BeskeddataItem, path: str) -> None:
        data = etree.SubElement(parent, f"{{{KUVERT_NS}}}Beskeddata")
        if item.xml is not UNSET:
            self.content(data, item.xml, path)
        elif item.base64 is not UNSET:
            text = base64.b64encode(item.base64).decode("ascii")
            el = self.text(data, f"{{{KUVERT_NS}}}Base64", text, path)
            el.set("encoding", "Binary")
            if item.content_type is not UNSET:
                try:
                    el.set("content-type", item.content_type)
                except ValueError:
                    raise InvalidEnvelope(
                        "content_type holds characters that XML 1.0 cannot carry", path=path
                    ) from None
        elif item.json is not UNSET:
            el = etree.SubElement(data, f"{{{JSON_NS}}}Json", nsmap={None: JSON_NS})
            try:
                el.text = bytes(item.json).decode("utf-8")
            except ValueError:
                raise InvalidEnvelope(
                    "the JSON content holds characters that XML 1.0 cannot carry", path=path
                ) from None
        else:
            raise InvalidEnvelope("a Beskeddata item needs one of xml, base64 or json", path=path)

    def besked(self, parent: Any | None, besked: Envelope, routes: Sequence[Leverancerute]) -> Any:
        tag = f"{{{KUVERT_NS}}}Haendelsesbesked"
        if parent is None:
            root = etree.Element(tag, nsmap={"besked": KUVERT_NS, "sd": SAGDOK_NS})
            top = "/Haendelsesbesked"
        else:
            root = etree.SubElement(parent, tag)
            top = "/ModtagBeskedInput/Haendelsesbesked"
        self.choice(root, "BeskedId", besked.BeskedId, f"{top}/BeskedId", "id")
        version = f"{{{KUVERT_NS}}}BeskedVersion"
        self.text(root, version, besked.BeskedVersion, f"{top}/BeskedVersion")
        kuvert = _with_routes(besked.Beskedkuvert, routes) if routes else besked.Beskedkuvert
        self.struct(root, "Beskedkuvert", kuvert, f"{top}/Beskedkuvert")
        items = besked.Beskeddata
        if isinstance(items, msgspec.Raw):
            try:
                items = _ITEMS.decode(items)
            except msgspec.MsgspecError as exc:
                raise InvalidEnvelope(f"stored Beskeddata is invalid: {exc}", path=top) from None
        elif items is UNSET:
            items = []
        for i, item in enumerate(items):
            self.item(root, item, f"{top}/Beskeddata[{i + 1}]")
        return root
