"""Content items: ``Beskeddata`` children and ``…LokalUdvidelse`` children, as standalone XML.

Theory of operation
-------------------
Content is opaque: it is never interpreted, only checked and carried. Two directions:

* In (:func:`check_xml_item`): an ``xml`` item given as text must be one well-formed element
  without a DOCTYPE, parsed with the hardened item parser. The JSON side calls this at the
  door; the encoder calls it again for every item it writes.
* Out (:func:`serialize`): a content element of a decoded tree becomes a standalone XML string
  (no declaration; UTF-8 once the envelope is JSON) with the namespace declarations it needs:
  all of its own (used or not), the inherited ones its element and attribute names use, and
  the inherited prefixed ones that occur as ``prefix:`` in an attribute value or text (QName
  content such as ``xsi:type="tns:T"``). Other inherited declarations (the envelope's own) are
  left behind, so a decoded envelope is a fixpoint of encode -> decode. Comments and
  processing instructions inside are kept; CDATA becomes escaped text; entity and character
  references are resolved.

lxml writes every namespace declaration in scope on the element's start tag; the inherited
ones the content does not need are then taken off that start tag again. The tree is never
re-parented, because lxml would rebind prefixes when it reconciles namespaces.
"""

from __future__ import annotations

import re
from typing import Any

from lxml import etree

from broker.errors import InvalidEnvelope
from broker.xmlkuvert.namespaces import Own
from broker.xmlkuvert.parser import item_parser

__all__ = ["check_xml_item", "serialize"]

# The start tag of a serialized element as libxml2 writes it: double-quoted attributes only.
_START_TAG = re.compile(r'<[^\s/>]+((?:\s+[^\s=]+="[^"]*")*)\s*/?>')
_NAME_CHAR = re.compile(r"[\w.:-]")
# Whether an element of the subtree is in the default namespace ``$uri`` (written unprefixed).
_USES_DEFAULT = etree.XPath(
    "boolean(descendant-or-self::*[namespace-uri() = $uri][not(contains(name(), ':'))])"
)
_UNPREFIXED_TAG = re.compile(r"<[^\s/>!?:]+[\s/>]")
_ATTRIBUTE = re.compile(r'\s([^\s=]+)="[^"]*"')


def check_xml_item(text: str, *, path: str = "$.Beskeddata", parser: Any = None) -> Any:
    """Parse one ``xml`` content item (one element, hardened) and return its element.

    The JSON side can call this to refuse bad content at the door rather than at delivery.

    Error handling:
        Raises :class:`InvalidEnvelope` at ``path`` if ``text`` is not one well-formed element
        or has a DOCTYPE.
    """
    if parser is None:
        parser = item_parser()
    try:
        el = etree.fromstring(text.encode("utf-8", errors="strict"), parser)
    except (etree.LxmlError, ValueError) as exc:
        msg = getattr(exc, "msg", None) or str(exc)
        raise InvalidEnvelope(f"the XML content is not well-formed: {msg}", path=path) from None
    info = el.getroottree().docinfo
    if info.doctype or info.internalDTD is not None:
        raise InvalidEnvelope("the XML content must not have a DOCTYPE", path=path)
    return el


def serialize(el: Any, own: Own) -> str:
    """One content element as a standalone XML string (see the module docstring).

    ``own`` says which declarations the element made itself: those always stay.
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
