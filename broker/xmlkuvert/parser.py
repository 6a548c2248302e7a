"""Hardened lxml parsing: no DTDs, no entities, nothing fetched, every limit enforced as it reads.

Theory of operation
-------------------
:func:`parse` feeds the bytes to an lxml pull parser in chunks and lets :class:`_Guard` watch
its start/end events while the tree is built: no DOCTYPE at all (so no entities, internal or
external, and no DTD is ever fetched), at most ``max_elements`` elements, envelope nesting at
most ``max_depth`` and content nesting at most ``max_content_depth``. A hostile document is
dropped while it is being read, not after it has been built.

A DOCTYPE is refused twice: a regex over the prolog catches it in ASCII-compatible documents
before libxml2 reads it, and the tree's docinfo is checked at the first element for the rest
(UTF-16). :class:`Deny` is defence in depth behind ``no_network``/``load_dtd=False``: every
resolver call gets an empty string. The same options and resolver build the parser for single
content items (:func:`item_parser`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from lxml import etree

from broker.errors import InvalidEnvelope, MalformedBody, PayloadTooLarge
from broker.xmlkuvert.namespaces import Own, local, path_of

__all__ = ["PARSER_OPTIONS", "Deny", "item_parser", "parse"]

_CHUNK = 64 * 1024
PARSER_OPTIONS: dict[str, Any] = {
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


class Deny(etree.Resolver):  # type: ignore[misc]
    """Defence in depth: nothing outside the document is ever read."""

    def resolve(self, url: str, pubid: str, context: Any) -> Any:
        return self.resolve_string("", context)


def item_parser() -> Any:
    """A hardened parser for one content item given as text (UTF-8)."""
    parser = etree.XMLParser(encoding="utf-8", **PARSER_OPTIONS)
    parser.resolvers.add(Deny())
    return parser


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
        self.own: Own = {}

    def open_path(self) -> str:
        """The path of the innermost open element (for syntax errors)."""
        if self.last is None:
            return "/"
        event, el = self.last
        if event == "end":
            el = el.getparent()
        return "/" if el is None else path_of(el)

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
                if local(el.tag) == "ModtagBeskedInput":
                    self.top = 2
            if self.pending:
                if self._content_root(el, depth):
                    self.own[el] = {prefix or None: uri for prefix, uri in self.pending}
                self.pending = []
            if self.count > self.max_elements:
                raise PayloadTooLarge(
                    f"the document has more than {self.max_elements} elements",
                    path=path_of(el),
                )
            if self.data_depth:
                if depth - self.data_depth > self.max_content_depth:
                    raise MalformedBody(
                        f"Beskeddata content is nested deeper than {self.max_content_depth} levels",
                        path=path_of(el),
                    )
            elif depth - self.top + 1 > self.max_depth:
                raise MalformedBody(
                    f"the envelope is nested deeper than {self.max_depth} levels",
                    path=path_of(el),
                )
            elif depth == self.top + 1 and local(el.tag) == "Beskeddata":
                self.data_depth = depth
        self.depth = depth
        if item is not None:
            self.last = item

    def _content_root(self, el: Any, depth: int) -> bool:
        if self.data_depth:
            return depth == self.data_depth + 1
        parent = el.getparent()
        return parent is not None and local(parent.tag).endswith("LokalUdvidelse")


def parse(
    data: bytes, max_depth: int, max_content_depth: int, max_elements: int
) -> tuple[Any, Own]:
    """Parse ``data`` into a tree, enforcing every limit. Raises only broker errors.

    Returns the root element and, for each content root, the declarations it makes itself.

    Error handling:
        Raises :class:`PayloadTooLarge` past ``max_elements``; :class:`MalformedBody` for a
        DOCTYPE, too deep nesting or a syntax error (at the path of the innermost open
        element); :class:`InvalidEnvelope` for a processing instruction outside the root.
    """
    if _DOCTYPE.match(data[:_CHUNK]):  # else: _forbid_doctype at the first element
        raise MalformedBody("a DOCTYPE is not allowed (no DTDs, no entities)", path="/")
    parser = etree.XMLPullParser(events=("start-ns", "start", "end"), **PARSER_OPTIONS)
    parser.resolvers.add(Deny())
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
