"""XML -> :class:`~broker.envelope.Haendelsesbesked`.

Theory of operation
-------------------
Decoding runs in two stages over one tree:

1. :func:`broker.xmlkuvert.parser.parse` builds the tree with every limit enforced while it reads.
2. :func:`_struct` walks the tree once along :data:`~broker.xmlkuvert.schema.SPECS` into plain dicts,
   and one ``msgspec.convert`` turns those into the model: the constraints of
   ``broker.envelope`` (id length, dateTime pattern, ``ge=0``) are checked there, so this
   module does not restate them. A msgspec error path (``$.a.b[0]``) is translated into the
   envelope's XPath-like path (``/…/a/b[1]``).

Mapping
-------
* The root is ``Haendelsesbesked`` or ``ModtagBeskedInput`` (``urn:oio:sts:1.0.0`` or no
  namespace) holding exactly one ``Haendelsesbesked``.
* Every envelope element maps to the Struct field of the same name, in any of
  :data:`~broker.xmlkuvert.namespaces.KUVERT_NAMESPACES`; the choice leaves ``UUIDIdentifikator``,
  ``URNIdentifikator``, ``TidsstempelDatoTid`` and ``GraenseIndikator`` match by local name in
  any namespace. Cardinality is checked (a single element twice is an error); order is not
  (encoding writes XSD order).
* Leaf text is trimmed of XML whitespace (also ``BeskedVersion`` and the other strings); ids
  keep their case; ``GraenseIndikator`` is an ``xs:boolean`` (``true``/``false``/``1``/``0``);
  ``AntalLeveranceforsoeg`` an ``xs:integer``.
* Comments between envelope elements are dropped, and so are attributes of envelope elements
  (``xsi:schemaLocation`` and the like). Text or processing instructions between envelope
  elements are errors (the XSD has no mixed content).
* ``…LokalUdvidelse``: each child element becomes one string in ``xml``, serialized as content
  (:func:`broker.xmlkuvert.content.serialize`); ``LeveranceruteLokalUdvidelse/AntalLeveranceforsoeg``
  becomes the int.
* ``Beskeddata``: each child element of each ``<Beskeddata>`` becomes one
  ``BeskeddataItem(xml=…)``, in document order; several ``<Beskeddata>`` flatten into one list
  and an empty one adds nothing. Content is opaque and is never interpreted; ``Base64`` and
  ``Json`` elements written by the encoder come back as ``xml`` items too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import msgspec
from lxml import etree
from msgspec import Struct

from broker.envelope import Haendelsesbesked, normalize
from broker.errors import InvalidEnvelope, PayloadTooLarge
from broker.xmlkuvert.content import serialize
from broker.xmlkuvert.limits import MAX_CONTENT_DEPTH, MAX_DEPTH, MAX_ELEMENTS, MAX_XML_BYTES
from broker.xmlkuvert.namespaces import KUVERT_NAMESPACES, KUVERT_NS, STS_NS, Own, local, split
from broker.xmlkuvert.parser import parse
from broker.xmlkuvert.schema import BY_NAME, CHOICES, SPECS

__all__ = ["decode_xml"]

_WS = " \t\r\n"
_MSGSPEC_ERROR = re.compile(r"^(.*) - at `\$(.*)`$", re.DOTALL)
_MSGSPEC_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")
_BOOLEAN = {"true": True, "1": True, "false": False, "0": False}


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
    return _decode(*parse(data, max_depth, max_content_depth, max_elements))


def _decode(root: Any, own: Own) -> Haendelsesbesked:
    ns, name = split(root.tag)
    if name == "ModtagBeskedInput" and ns in (STS_NS, None):
        wrapper = "/ModtagBeskedInput"
        found: list[Any] = []
        for child in _elements(root, wrapper):
            if _envelope_name(child, wrapper) != "Haendelsesbesked" or found:
                raise InvalidEnvelope(
                    "ModtagBeskedInput must hold exactly one Haendelsesbesked",
                    path=f"{wrapper}/{local(child.tag)}",
                )
            found.append(child)
        if not found:
            raise InvalidEnvelope(
                "ModtagBeskedInput must hold exactly one Haendelsesbesked",
                path=f"{wrapper}/Haendelsesbesked",
            )
        root, top = found[0], f"{wrapper}/Haendelsesbesked"
    elif name == "Haendelsesbesked" and ns in KUVERT_NAMESPACES:
        top = "/Haendelsesbesked"
    else:
        raise InvalidEnvelope(
            f"the root element must be Haendelsesbesked ({KUVERT_NS}) or ModtagBeskedInput "
            f"({STS_NS}), not {{{ns}}}{name}",
            path=f"/{name}",
        )
    tree = _struct(root, top, Haendelsesbesked, own)
    try:
        besked = msgspec.convert(tree, Haendelsesbesked)
    except msgspec.ValidationError as exc:
        raise _translate(exc, top) from None
    return normalize(besked)


def _translate(exc: msgspec.ValidationError, top: str) -> InvalidEnvelope:
    """A msgspec error at ``$.a.b[0]`` as an InvalidEnvelope at ``/…/a/b[1]``."""
    m = _MSGSPEC_ERROR.match(str(exc))
    if m is None:
        return InvalidEnvelope(str(exc), path=top)
    steps = [s or f"[{int(i) + 1}]" for s, i in _MSGSPEC_STEP.findall(m.group(2))]
    path = top + "".join(s if s.startswith("[") else "/" + s for s in steps)
    element = next((s for s in reversed(steps) if not s.startswith("[")), local(top))
    message = m.group(1)
    if element == "TidsstempelDatoTid" and "regex" in message:
        message = "Expected an xs:dateTime like 2016-03-15T08:00:00[.000][Z|+01:00]"
    return InvalidEnvelope(f"{element} is invalid: {message}", path=path)


def _blank(text: str | None) -> bool:
    return not text or not text.strip(_WS)


def _elements(el: Any, path: str) -> Iterator[Any]:
    """The element children of a structural element; comments are skipped, text refused."""
    if not _blank(el.text):
        raise InvalidEnvelope(f"{local(el.tag)} must not hold text", path=path)
    for child in el:
        tag = child.tag
        if isinstance(tag, str):
            yield child
        elif tag is not etree.Comment:
            raise InvalidEnvelope(
                f"{local(el.tag)} must not hold processing instructions or entities", path=path
            )
        if not _blank(child.tail):
            raise InvalidEnvelope(f"{local(el.tag)} must not hold text", path=path)


def _leaf_text(el: Any, path: str) -> str:
    """The text of a simple element (comments inside are skipped), trimmed."""
    parts = [el.text or ""]
    for child in el:
        if child.tag is not etree.Comment:
            raise InvalidEnvelope(f"{local(el.tag)} must hold only text", path=path)
        parts.append(child.tail or "")
    return "".join(parts).strip(_WS)


def _envelope_name(child: Any, path: str) -> str:
    ns, name = split(child.tag)
    if ns not in KUVERT_NAMESPACES:
        raise InvalidEnvelope(
            f"unknown element {{{ns}}}{name}: envelope elements are in {KUVERT_NS}",
            path=f"{path}/{name}",
        )
    return name


def _struct(el: Any, path: str, cls: type[Struct], own: Own) -> dict[str, Any]:
    """One complex type: a single pass over the children, then the required check."""
    fields = BY_NAME[cls]
    out: dict[str, Any] = {}
    seen: dict[str, int] = {}
    for child in _elements(el, path):
        name = _envelope_name(child, path)
        f = fields.get(name)
        if f is None:
            raise InvalidEnvelope(
                f"unknown element {name} in {local(el.tag)}", path=f"{path}/{name}"
            )
        if f.many:
            items = out.setdefault(name, [])
            seen[name] = seen.get(name, 0) + 1
            cpath = f"{path}/{name}[{seen[name]}]"
            if f.kind == "data":
                items.extend({"xml": serialize(c, own)} for c in _elements(child, cpath))
            else:
                items.append(_value(child, cpath, f.kind, own))
        elif name in out:
            raise InvalidEnvelope(
                f"{name} may occur only once in {local(el.tag)}", path=f"{path}/{name}[2]"
            )
        else:
            out[name] = _value(child, f"{path}/{name}", f.kind, own)
    for f in SPECS[cls]:
        if f.required and f.name not in out:
            raise InvalidEnvelope(
                f"{local(el.tag)} is missing the required element {f.name}",
                path=f"{path}/{f.name}",
            )
    return out


def _value(el: Any, path: str, kind: str | type[Struct], own: Own) -> Any:
    if isinstance(kind, type):
        return _struct(el, path, kind, own)
    if kind in CHOICES:
        return _choice(el, path, kind)
    if kind == "text":
        return _leaf_text(el, path)
    return _ext(el, path, kind == "rute_ext", own)


def _choice(el: Any, path: str, kind: str) -> dict[str, Any]:
    """A ``UnikIdType``/``TidspunktType``: exactly one of two leaves, any namespace."""
    names = CHOICES[kind]
    out: dict[str, Any] = {}
    for child in _elements(el, path):
        name = local(child.tag)
        cpath = f"{path}/{name}"
        if name not in names:
            raise InvalidEnvelope(
                f"unknown element {name} in {local(el.tag)}: expected {names[0]} or {names[1]}",
                path=cpath,
            )
        if out:
            raise InvalidEnvelope(
                f"{local(el.tag)} must hold exactly one of {names[0]} or {names[1]}", path=cpath
            )
        text = _leaf_text(child, cpath)
        if name == "GraenseIndikator":
            if text not in _BOOLEAN:
                raise InvalidEnvelope(f"GraenseIndikator is not a boolean: {text!r}", path=cpath)
            out[name] = _BOOLEAN[text]
        else:
            out[name] = text
    if not out:
        raise InvalidEnvelope(
            f"{local(el.tag)} must hold exactly one of {names[0]} or {names[1]}", path=path
        )
    return out


def _ext(el: Any, path: str, rute: bool, own: Own) -> dict[str, Any]:
    out: dict[str, Any] = {"xml": []}
    for child in _elements(el, path):
        ns, name = split(child.tag)
        if rute and name == "AntalLeveranceforsoeg" and ns in KUVERT_NAMESPACES:
            cpath = f"{path}/{name}"
            if "AntalLeveranceforsoeg" in out:
                raise InvalidEnvelope("AntalLeveranceforsoeg may occur only once", path=cpath)
            text = _leaf_text(child, cpath)
            if not _INTEGER.fullmatch(text):
                raise InvalidEnvelope(
                    f"AntalLeveranceforsoeg is not an integer: {text!r}", path=cpath
                )
            out[name] = int(text)
        else:
            out["xml"].append(serialize(child, own))
    return out
