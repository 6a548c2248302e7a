"""XML codec: KOMBIT ``Haendelsesbesked`` documents <-> :class:`~broker.envelope.Haendelsesbesked`.

Theory of operation
-------------------
Decoding runs in two stages over one tree:

1. :func:`_parse` feeds the bytes to a hardened lxml pull parser and watches its start/end events
   while the tree is built: no DOCTYPE at all (so no entities, internal or external, and no DTD
   is ever fetched), at most ``max_elements`` elements, envelope nesting at most ``max_depth``
   and content nesting at most ``max_content_depth``. A hostile document is dropped while it is
   being read, not after it has been built.
2. :func:`_decode` walks the tree once along :data:`_SPECS` (one table per XSD complex type, in
   XSD sequence order) into plain dicts, and one ``msgspec.convert`` turns those into the model:
   the constraints of ``broker.envelope`` (id length, dateTime pattern, ``ge=0``) are checked
   there, so this module does not restate them.

Mapping
-------
* Every envelope element maps to the Struct field of the same name. Envelope elements may be in
  ``urn:oio:besked:kuvert:1.0``, ``urn:besked:kuvert:1.0`` or no namespace (real traffic uses
  all three); the leaves ``UUIDIdentifikator``, ``URNIdentifikator``, ``TidsstempelDatoTid`` and
  ``GraenseIndikator`` match by local name in any namespace. Cardinality is checked (a single
  element twice is an error); order is not (encoding writes XSD order).
* Leaf text is trimmed of XML whitespace (also ``BeskedVersion`` and the other strings); ids
  keep their case; ``GraenseIndikator`` is an ``xs:boolean`` (``true``/``false``/``1``/``0``);
  ``AntalLeveranceforsoeg`` an ``xs:integer``.
* Comments between envelope elements are dropped, and so are attributes of envelope elements
  (``xsi:schemaLocation`` and the like). Text or processing instructions between envelope
  elements are errors (the XSD has no mixed content).
* ``…LokalUdvidelse``: each child element becomes one string in ``xml``, serialized as content
  (below); ``LeveranceruteLokalUdvidelse/AntalLeveranceforsoeg`` becomes the int.
* ``Beskeddata``: each child element of each ``<Beskeddata>`` becomes one
  ``BeskeddataItem(xml=…)``, in document order; several ``<Beskeddata>`` flatten into one list
  and an empty one adds nothing. Content is opaque and is never interpreted.
* Serialized content is the element as a standalone XML string (no declaration; UTF-8 once the
  envelope is JSON) with the namespace declarations it needs: all of its own (used or not), the
  inherited ones its element and attribute names use, and the inherited prefixed ones that occur
  as ``prefix:`` in an attribute value or text (QName content such as ``xsi:type="tns:T"``).
  Other inherited declarations (the envelope's own) are left behind, so a decoded envelope is a
  fixpoint of encode -> decode. Comments and processing instructions inside are kept; CDATA
  becomes escaped text; entity and character references are resolved.

Encoding writes the envelope in ``urn:oio:besked:kuvert:1.0`` (prefix ``besked``) with
``urn:oio:sagdok:3.0.0`` ids (prefix ``sd``) and never a default namespace, so unqualified
content stays unqualified. Each content item becomes its own ``<Beskeddata>``: ``xml`` is parsed
(hardened), re-serialized on its own and spliced in as text, so its prefixes and declarations
stay exactly as they were; ``base64`` becomes ``<besked:Base64 encoding="Binary"
content-type="…">…</besked:Base64>`` (KOMBIT's BeskeddataBase64 convention); ``json`` becomes
``<Json xmlns="urn:dueslag:beskeddata:json:1.0">`` holding the raw JSON text.

The codec is asymmetric on purpose: decoding never turns ``Base64`` or ``Json`` back into
``base64``/``json`` items. They come back as ``xml`` items whose element text is the base64
text or the original JSON text.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import msgspec
from lxml import etree
from msgspec import UNSET, Struct

from broker.envelope import (
    BeskeddataItem,
    Beskedkuvert,
    Filtreringsdata,
    Haendelsesbesked,
    Leveranceinformation,
    Leverancerute,
    Leveranceruter,
    Modtagerhandling,
    ObjektRegistrering,
    RelateretObjekt,
    StoredBesked,
    Tidspunkt,
    UnikId,
    UnikIdIn,
    normalize,
)
from broker.errors import InvalidEnvelope, MalformedBody, PayloadTooLarge

__all__ = [
    "JSON_NS",
    "KUVERT_NS",
    "MAX_CONTENT_DEPTH",
    "MAX_DEPTH",
    "MAX_ELEMENTS",
    "MAX_XML_BYTES",
    "SAGDOK_NS",
    "STS_NS",
    "check_xml_item",
    "decode_xml",
    "encode_modtag_besked_input",
    "encode_stored",
    "encode_xml",
    "encode_xml_stored",
]

KUVERT_NS = "urn:oio:besked:kuvert:1.0"
SAGDOK_NS = "urn:oio:sagdok:3.0.0"
STS_NS = "urn:oio:sts:1.0.0"
JSON_NS = "urn:dueslag:beskeddata:json:1.0"
#: Namespaces accepted for envelope elements (``None``: no namespace).
KUVERT_NAMESPACES = frozenset({KUVERT_NS, "urn:besked:kuvert:1.0", None})

#: Largest document :func:`decode_xml` reads. libxml2 also caps one text node at 10 MB.
MAX_XML_BYTES = 10 * 1024 * 1024
#: Deepest element outside content, counted from ``Haendelsesbesked`` (1).
MAX_DEPTH = 64
#: Deepest element inside a content item, counted from the item (1). libxml2 caps the whole
#: document at 256 levels, so larger values have no effect.
MAX_CONTENT_DEPTH = 200
#: Most elements in one document (bounds the memory of the tree).
MAX_ELEMENTS = 200_000

_CHUNK = 64 * 1024
_Own = dict[Any, dict[str | None, str]]
_WS = " \t\r\n"
_PARSER_OPTIONS: dict[str, Any] = {
    "resolve_entities": False,
    "no_network": True,
    "dtd_validation": False,
    "load_dtd": False,
    "huge_tree": False,
    "remove_comments": False,
    "remove_pis": False,
}
# A DOCTYPE in the prolog of an ASCII-compatible document, found before libxml2 reads it.
# The repetition is possessive so a long prolog cannot make the regex backtrack.
_DOCTYPE = re.compile(rb"\A(?:\xef\xbb\xbf)?(?:\s|<\?.*?\?>|<!--.*?-->)*+<!DOCTYPE", re.DOTALL)
# The start tag of a serialized element as libxml2 writes it: double-quoted attributes only.
_START_TAG = re.compile(r'<[^\s/>]+((?:\s+[^\s=]+="[^"]*")*)\s*/?>')
_NAME_CHAR = re.compile(r"[\w.:-]")
# Whether an element of the subtree is in the default namespace ``$uri`` (written unprefixed).
_USES_DEFAULT = etree.XPath(
    "boolean(descendant-or-self::*[namespace-uri() = $uri][not(contains(name(), ':'))])"
)
_UNPREFIXED_TAG = re.compile(r"<[^\s/>!?:]+[\s/>]")
_ATTRIBUTE = re.compile(r'\s([^\s=]+)="[^"]*"')
_MSGSPEC_ERROR = re.compile(r"^(.*) - at `\$(.*)`$", re.DOTALL)
_MSGSPEC_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_PLACEHOLDER = "dueslag-content"
_PLACEHOLDER_RE = re.compile(rb"<\?dueslag-content (\d+)\?>")
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")
_BOOLEAN = {"true": True, "1": True, "false": False, "0": False}


class _Deny(etree.Resolver):  # type: ignore[misc]
    """Defence in depth: nothing outside the document is ever read."""

    def resolve(self, url: str, pubid: str, context: Any) -> Any:
        return self.resolve_string("", context)


# --------------------------------------------------------------------------------------------
# schema tables


class _F(NamedTuple):
    """One child element of a complex type: name (= Struct field), kind, cardinality."""

    name: str
    kind: str | type[Struct]  # "id" "time" "text" "ext" "rute_ext" "data" or a nested Struct
    required: bool = False
    many: bool = False


_SPECS: dict[type[Struct], tuple[_F, ...]] = {
    RelateretObjekt: (
        _F("ObjektId", "id", required=True),
        _F("ObjektType", "id", required=True),
        _F("ObjektRolle", "id"),
    ),
    ObjektRegistrering: (
        _F("ObjektRegistreringId", "id"),
        _F("RegistreringsAktoer", "id"),
        _F("Registreringstidspunkt", "time"),
        _F("ObjektAnsvarligMyndighed", "id"),
        _F("ObjektId", "id"),
        _F("ObjektType", "id"),
        _F("ObjektHandling", "id"),
        _F("OpgaveEmne", "id"),
        _F("ObjektRegistreringLokalUdvidelse", "ext"),
    ),
    Filtreringsdata: (
        _F("Beskedtype", "id", required=True),
        _F("BeskedAnsvarligAktoer", "id"),
        _F("TilladtModtager", "id", many=True),
        _F("RelateretObjekt", RelateretObjekt, many=True),
        _F("ObjektRegistrering", ObjektRegistrering, many=True),
        _F("TvaergaaendeProces", "id", many=True),
    ),
    Leverancerute: (
        _F("Fordelingssystem", "id"),
        _F("ModtagelsesTidspunkt", "time"),
        _F("LeveranceTidspunkt", "time"),
        _F("ModtagetFraSystem", "id"),
        _F("ErLeveretIHenholdTil", "id"),
        _F("LeveranceruteLokalUdvidelse", "rute_ext"),
    ),
    Leveranceruter: (_F("Leverancerute", Leverancerute, many=True),),
    Leveranceinformation: (
        _F("Dannelsestidspunkt", "time"),
        _F("TransaktionsId", "id"),
        _F("Kildesystem", "id"),
        _F("KildesystemIPAdresse", "text"),
        _F("KildesystemAkkreditiver", "text"),
        _F("Sikkerhedsklassificering", "id"),
        _F("Leveranceruter", Leveranceruter),
        _F("LeveranceinformationLokalUdvidelse", "ext"),
    ),
    Modtagerhandling: (_F("Handling", "id"), _F("Responsmodtager", "id")),
    Beskedkuvert: (
        _F("Filtreringsdata", Filtreringsdata, required=True),
        _F("Leveranceinformation", Leveranceinformation, required=True),
        _F("Modtagerhandling", Modtagerhandling),
        _F("GyldighedFra", "time"),
        _F("GyldighedTil", "time"),
    ),
    Haendelsesbesked: (
        _F("BeskedId", "id", required=True),
        _F("BeskedVersion", "text", required=True),
        _F("Beskedkuvert", Beskedkuvert, required=True),
        _F("Beskeddata", "data", many=True),
    ),
}
_BY_NAME = {cls: {f.name: f for f in spec} for cls, spec in _SPECS.items()}
_CHOICES = {
    "id": ("UUIDIdentifikator", "URNIdentifikator"),
    "time": ("TidsstempelDatoTid", "GraenseIndikator"),
}


# --------------------------------------------------------------------------------------------
# hardened parsing


def _split(tag: str) -> tuple[str | None, str]:
    if tag[:1] == "{":
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return None, tag


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _path_of(el: Any, keep: int = 10) -> str:
    """The XPath-like path of an element from local names (cut after ``keep`` steps)."""
    names = [_local(a.tag) for a in el.iterancestors()][::-1]
    names.append(_local(el.tag))
    return "/" + "/".join(names[:keep]) + ("/…" if len(names) > keep else "")


def _forbid_doctype(root: Any) -> None:
    info = root.getroottree().docinfo
    if info.doctype or info.internalDTD is not None or info.externalDTD is not None:
        raise MalformedBody("a DOCTYPE is not allowed (no DTDs, no entities)", path="/")


class _Guard:
    """Watches the pull parser's events and enforces the limits while the tree is built.

    This loop runs for every element, so it keeps no stack: a depth counter and the last event
    are enough, and paths are rebuilt from the tree only when an error is raised.
    """

    def __init__(self, max_depth: int, max_content_depth: int, max_elements: int) -> None:
        self.max_depth = max_depth
        self.max_content_depth = max_content_depth
        self.max_elements = max_elements
        self.depth = 0
        self.count = 0
        self.top = 1  # depth of Haendelsesbesked: 2 inside a ModtagBeskedInput
        self.data_depth = 0  # depth of the Beskeddata we are inside; 0: not in content
        self.last: tuple[str, Any] | None = None
        self.pending: list[tuple[str, str]] = []  # declarations of the next element
        #: The namespaces each content root declares itself (what it inherits is left behind).
        self.own: _Own = {}

    def open_path(self) -> str:
        """The path of the innermost open element (for syntax errors)."""
        if self.last is None:
            return "/"
        event, el = self.last
        if event == "end":
            el = el.getparent()
        return "/" if el is None else _path_of(el)

    def drain(self, events: Iterator[tuple[str, Any]]) -> None:
        depth = self.depth
        item = None
        for item in events:
            event, el = item
            if event == "end":
                depth -= 1
                if depth < self.data_depth:
                    self.data_depth = 0
                continue
            if event == "start-ns":
                self.pending.append(el)
                continue
            depth += 1
            self.count += 1
            if self.count == 1:
                _forbid_doctype(el)
                if _local(el.tag) == "ModtagBeskedInput":
                    self.top = 2
            if self.pending:
                if self._content_root(el, depth):
                    self.own[el] = {prefix or None: uri for prefix, uri in self.pending}
                self.pending = []
            if self.count > self.max_elements:
                raise PayloadTooLarge(
                    f"the document has more than {self.max_elements} elements",
                    path=_path_of(el),
                )
            if self.data_depth:
                if depth - self.data_depth > self.max_content_depth:
                    raise MalformedBody(
                        f"Beskeddata content is nested deeper than {self.max_content_depth} levels",
                        path=_path_of(el),
                    )
            elif depth - self.top + 1 > self.max_depth:
                raise MalformedBody(
                    f"the envelope is nested deeper than {self.max_depth} levels",
                    path=_path_of(el),
                )
            elif depth == self.top + 1 and _local(el.tag) == "Beskeddata":
                self.data_depth = depth
        self.depth = depth
        if item is not None:
            self.last = item

    def _content_root(self, el: Any, depth: int) -> bool:
        if self.data_depth:
            return depth == self.data_depth + 1
        parent = el.getparent()
        return parent is not None and _local(parent.tag).endswith("LokalUdvidelse")


def _parse(
    data: bytes, max_depth: int, max_content_depth: int, max_elements: int
) -> tuple[Any, _Own]:
    """Parse ``data`` into a tree, enforcing every limit. Raises only broker errors."""
    if _DOCTYPE.match(data[:_CHUNK]):  # else: _forbid_doctype at the first element
        raise MalformedBody("a DOCTYPE is not allowed (no DTDs, no entities)", path="/")
    parser = etree.XMLPullParser(events=("start-ns", "start", "end"), **_PARSER_OPTIONS)
    parser.resolvers.add(_Deny())
    guard = _Guard(max_depth, max_content_depth, max_elements)
    try:
        for start in range(0, len(data), _CHUNK):
            parser.feed(data[start : start + _CHUNK])
            guard.drain(parser.read_events())
        root = parser.close()
    except etree.LxmlError as exc:
        guard.drain(parser.read_events())  # a limit hit before the syntax error wins
        msg = getattr(exc, "msg", None) or str(exc)
        if "Excessive depth" in msg:
            msg = f"nesting deeper than libxml2's limit of 256 levels ({msg})"
        raise MalformedBody(f"not well-formed XML: {msg}", path=guard.open_path()) from None
    _forbid_doctype(root)
    for sibling in (*root.itersiblings(preceding=True), *root.itersiblings()):
        if sibling.tag is etree.PI:
            raise InvalidEnvelope(
                f"processing instruction <?{sibling.target}?> is not allowed outside content",
                path="/",
            )
    return root, guard.own


# --------------------------------------------------------------------------------------------
# decoding: tree -> builtins


def _blank(text: str | None) -> bool:
    return not text or not text.strip(_WS)


def _elements(el: Any, path: str) -> Iterator[Any]:
    """The element children of a structural element; comments are skipped, text refused."""
    if not _blank(el.text):
        raise InvalidEnvelope(f"{_local(el.tag)} must not hold text", path=path)
    for child in el:
        tag = child.tag
        if isinstance(tag, str):
            yield child
        elif tag is not etree.Comment:
            raise InvalidEnvelope(
                f"{_local(el.tag)} must not hold processing instructions or entities", path=path
            )
        if not _blank(child.tail):
            raise InvalidEnvelope(f"{_local(el.tag)} must not hold text", path=path)


def _leaf_text(el: Any, path: str) -> str:
    """The text of a simple element (comments inside are skipped), trimmed."""
    parts = [el.text or ""]
    for child in el:
        if child.tag is not etree.Comment:
            raise InvalidEnvelope(f"{_local(el.tag)} must hold only text", path=path)
        parts.append(child.tail or "")
    return "".join(parts).strip(_WS)


def _envelope_name(child: Any, path: str) -> str:
    ns, local = _split(child.tag)
    if ns not in KUVERT_NAMESPACES:
        raise InvalidEnvelope(
            f"unknown element {{{ns}}}{local}: envelope elements are in {KUVERT_NS}",
            path=f"{path}/{local}",
        )
    return local


def _choice(el: Any, path: str, kind: str) -> dict[str, Any]:
    """A ``UnikIdType``/``TidspunktType``: exactly one of two leaves, any namespace."""
    names = _CHOICES[kind]
    out: dict[str, Any] = {}
    for child in _elements(el, path):
        local = _local(child.tag)
        cpath = f"{path}/{local}"
        if local not in names:
            raise InvalidEnvelope(
                f"unknown element {local} in {_local(el.tag)}: expected {names[0]} or {names[1]}",
                path=cpath,
            )
        if out:
            raise InvalidEnvelope(
                f"{_local(el.tag)} must hold exactly one of {names[0]} or {names[1]}", path=cpath
            )
        text = _leaf_text(child, cpath)
        if local == "GraenseIndikator":
            if text not in _BOOLEAN:
                raise InvalidEnvelope(f"GraenseIndikator is not a boolean: {text!r}", path=cpath)
            out[local] = _BOOLEAN[text]
        else:
            out[local] = text
    if not out:
        raise InvalidEnvelope(
            f"{_local(el.tag)} must hold exactly one of {names[0]} or {names[1]}", path=path
        )
    return out


def _ext(el: Any, path: str, rute: bool, own: _Own) -> dict[str, Any]:
    out: dict[str, Any] = {"xml": []}
    for child in _elements(el, path):
        ns, local = _split(child.tag)
        if rute and local == "AntalLeveranceforsoeg" and ns in KUVERT_NAMESPACES:
            cpath = f"{path}/{local}"
            if "AntalLeveranceforsoeg" in out:
                raise InvalidEnvelope("AntalLeveranceforsoeg may occur only once", path=cpath)
            text = _leaf_text(child, cpath)
            if not _INTEGER.fullmatch(text):
                raise InvalidEnvelope(
                    f"AntalLeveranceforsoeg is not an integer: {text!r}", path=cpath
                )
            out[local] = int(text)
        else:
            out["xml"].append(_content(child, own))
    return out


def _struct(el: Any, path: str, cls: type[Struct], own: _Own) -> dict[str, Any]:
    """One complex type: a single pass over the children, then the required check."""
    fields = _BY_NAME[cls]
    out: dict[str, Any] = {}
    seen: dict[str, int] = {}
    for child in _elements(el, path):
        name = _envelope_name(child, path)
        f = fields.get(name)
        if f is None:
            raise InvalidEnvelope(
                f"unknown element {name} in {_local(el.tag)}", path=f"{path}/{name}"
            )
        if f.many:
            items = out.setdefault(name, [])
            seen[name] = seen.get(name, 0) + 1
            cpath = f"{path}/{name}[{seen[name]}]"
            if f.kind == "data":
                items.extend({"xml": _content(c, own)} for c in _elements(child, cpath))
            else:
                items.append(_value(child, cpath, f.kind, own))
        elif name in out:
            raise InvalidEnvelope(
                f"{name} may occur only once in {_local(el.tag)}", path=f"{path}/{name}[2]"
            )
        else:
            out[name] = _value(child, f"{path}/{name}", f.kind, own)
    for f in _SPECS[cls]:
        if f.required and f.name not in out:
            raise InvalidEnvelope(
                f"{_local(el.tag)} is missing the required element {f.name}",
                path=f"{path}/{f.name}",
            )
    return out


def _value(el: Any, path: str, kind: str | type[Struct], own: _Own) -> Any:
    if isinstance(kind, type):
        return _struct(el, path, kind, own)
    if kind in _CHOICES:
        return _choice(el, path, kind)
    if kind == "text":
        return _leaf_text(el, path)
    return _ext(el, path, kind == "rute_ext", own)


def _content(el: Any, own: _Own) -> str:
    """One content element as a standalone XML string (see the module docstring).

    lxml writes every namespace declaration in scope on the element's start tag; the inherited
    ones the content does not need are then taken off that start tag again (``own`` says which
    the element declared itself: those always stay). The tree is never re-parented, because
    lxml would rebind prefixes when it reconciles namespaces.
    """
    text = str(etree.tostring(el, encoding="unicode", with_tail=False))
    mine = own.get(el, {})
    drop = set()
    for prefix, uri in el.nsmap.items():
        if mine.get(prefix) == uri:
            continue
        if prefix is None:
            if not _uses_default(el, uri, text):
                drop.add("xmlns")
        elif not _mentions(text, prefix):
            drop.add(f"xmlns:{prefix}")  # no name or QName in the content uses it
    if not drop and ' xmlns=""' not in text:
        return text
    start = _START_TAG.match(text)
    if start is None:  # pragma: no cover - libxml2 always writes this shape
        return text
    attrs = start.group(1)
    kept = "".join(
        m.group(0)
        for m in _ATTRIBUTE.finditer(attrs)
        # an undeclaration (xmlns="") means nothing in a standalone element
        if m.group(1) not in drop and m.group(0) != ' xmlns=""'
    )
    if len(kept) == len(attrs):
        return text
    return text[: start.start(1)] + kept + text[start.end(1) :]


def _uses_default(el: Any, uri: str, text: str) -> bool:
    """Whether an element of the subtree is in the default namespace ``uri``."""
    if el.prefix is None and el.tag.startswith(f"{{{uri}}}"):
        return True
    if not _UNPREFIXED_TAG.search(text):
        return False  # every element is written with a prefix
    return bool(_USES_DEFAULT(el, uri=uri))


def _mentions(text: str, prefix: str) -> bool:
    """Whether ``prefix:`` occurs in ``text`` as the prefix of a name (a fast scan)."""
    needle = prefix + ":"
    at = text.find(needle)
    while at >= 0:
        if at == 0 or not _NAME_CHAR.match(text, at - 1):
            return True
        at = text.find(needle, at + 1)
    return False


def _translate(exc: msgspec.ValidationError, top: str) -> InvalidEnvelope:
    """A msgspec error at ``$.a.b[0]`` as an InvalidEnvelope at ``/…/a/b[1]``."""
    m = _MSGSPEC_ERROR.match(str(exc))
    if m is None:
        return InvalidEnvelope(str(exc), path=top)
    steps = [s or f"[{int(i) + 1}]" for s, i in _MSGSPEC_STEP.findall(m.group(2))]
    path = top + "".join(s if s.startswith("[") else "/" + s for s in steps)
    element = next((s for s in reversed(steps) if not s.startswith("[")), _local(top))
    message = m.group(1)
    if element == "TidsstempelDatoTid" and "regex" in message:
        message = "Expected an xs:dateTime like 2016-03-15T08:00:00[.000][Z|+01:00]"
    return InvalidEnvelope(f"{element} is invalid: {message}", path=path)


def _decode(root: Any, own: _Own) -> Haendelsesbesked:
    ns, local = _split(root.tag)
    if local == "ModtagBeskedInput" and ns in (STS_NS, None):
        wrapper = "/ModtagBeskedInput"
        found: list[Any] = []
        for child in _elements(root, wrapper):
            if _envelope_name(child, wrapper) != "Haendelsesbesked" or found:
                raise InvalidEnvelope(
                    "ModtagBeskedInput must hold exactly one Haendelsesbesked",
                    path=f"{wrapper}/{_local(child.tag)}",
                )
            found.append(child)
        if not found:
            raise InvalidEnvelope(
                "ModtagBeskedInput must hold exactly one Haendelsesbesked",
                path=f"{wrapper}/Haendelsesbesked",
            )
        root, top = found[0], f"{wrapper}/Haendelsesbesked"
    elif local == "Haendelsesbesked" and ns in KUVERT_NAMESPACES:
        top = "/Haendelsesbesked"
    else:
        raise InvalidEnvelope(
            f"the root element must be Haendelsesbesked ({KUVERT_NS}) or ModtagBeskedInput "
            f"({STS_NS}), not {{{ns}}}{local}",
            path=f"/{local}",
        )
    tree = _struct(root, top, Haendelsesbesked, own)
    try:
        besked = msgspec.convert(tree, Haendelsesbesked)
    except msgspec.ValidationError as exc:
        raise _translate(exc, top) from None
    return normalize(besked)


def decode_xml(
    data: bytes,
    *,
    max_bytes: int = MAX_XML_BYTES,
    max_depth: int = MAX_DEPTH,
    max_content_depth: int = MAX_CONTENT_DEPTH,
    max_elements: int = MAX_ELEMENTS,
) -> Haendelsesbesked:
    """Decode a ``Haendelsesbesked`` (or one wrapped in ``ModtagBeskedInput``) into canonical form.

    Error handling:
        Raises :class:`PayloadTooLarge` past ``max_bytes`` or ``max_elements``;
        :class:`MalformedBody` for XML that is not well-formed, has a DOCTYPE or nests too
        deep; :class:`InvalidEnvelope` for a wrong root, a missing, repeated or unknown
        envelope element, a choice with both or neither branch, or a bad value. Each names the
        element and carries an XPath-like ``path``. No lxml exception escapes.
    """
    if not isinstance(data, bytes):
        data = bytes(data)
    if len(data) > max_bytes:
        raise PayloadTooLarge(
            f"the XML document has {len(data)} bytes, more than the limit of {max_bytes}",
            path="/",
        )
    return _decode(*_parse(data, max_depth, max_content_depth, max_elements))


# --------------------------------------------------------------------------------------------
# encoding


def _item_parser() -> Any:
    parser = etree.XMLParser(encoding="utf-8", **_PARSER_OPTIONS)
    parser.resolvers.add(_Deny())
    return parser


def check_xml_item(text: str, *, path: str = "$.Beskeddata", parser: Any = None) -> Any:
    """Parse one ``xml`` content item (one element, hardened) and return its element.

    The JSON side can call this to refuse bad content at the door rather than at delivery.

    Error handling:
        Raises :class:`InvalidEnvelope` at ``path`` if ``text`` is not one well-formed element
        or has a DOCTYPE.
    """
    if parser is None:
        parser = _item_parser()
    try:
        el = etree.fromstring(text.encode("utf-8", errors="strict"), parser)
    except (etree.LxmlError, ValueError) as exc:
        msg = getattr(exc, "msg", None) or str(exc)
        raise InvalidEnvelope(f"the XML content is not well-formed: {msg}", path=path) from None
    info = el.getroottree().docinfo
    if info.doctype or info.internalDTD is not None:
        raise InvalidEnvelope("the XML content must not have a DOCTYPE", path=path)
    return el


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
        self.parser = _item_parser()

    def text(self, parent: Any, tag: str, text: str, path: str) -> Any:
        el = etree.SubElement(parent, tag)
        try:
            el.text = text
        except ValueError:
            raise InvalidEnvelope(
                f"{_local(tag)} holds characters that XML 1.0 cannot carry", path=path
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
        for f in _SPECS[type(obj)]:
            value = getattr(obj, f.name)
            if f.many:
                for i, v in enumerate(value):
                    self.put(el, f, v, f"{path}/{f.name}[{i + 1}]")
            elif value is not None:
                self.put(el, f, value, f"{path}/{f.name}")

    def put(self, parent: Any, f: _F, value: Any, path: str) -> None:
        if isinstance(f.kind, type):
            self.struct(parent, f.name, value, path)
        elif f.kind in _CHOICES:
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


_ITEMS = msgspec.json.Decoder(list[BeskeddataItem])


class _StoredView(Struct, kw_only=True):
    """A stored envelope as :func:`encode_xml_stored` reads it: unknown top fields tolerated."""

    BeskedId: UnikIdIn
    BeskedVersion: str
    Beskedkuvert: Beskedkuvert
    Beskeddata: list[BeskeddataItem] = []


_STORED = msgspec.json.Decoder(_StoredView)
Envelope = Haendelsesbesked | StoredBesked | _StoredView


def _with_routes(kuvert: Beskedkuvert, routes: Sequence[Leverancerute]) -> Beskedkuvert:
    """A copy of ``kuvert`` with ``routes`` appended to its Leveranceruter; the input is kept."""
    li = kuvert.Leveranceinformation
    old = li.Leveranceruter.Leverancerute if li.Leveranceruter is not None else []
    ruter = Leveranceruter(Leverancerute=[*old, *routes])
    li = msgspec.structs.replace(li, Leveranceruter=ruter)
    return msgspec.structs.replace(kuvert, Leveranceinformation=li)


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
