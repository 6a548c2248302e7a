"""The limits every XML document is read under.

Theory of operation
-------------------
These are the defaults of :func:`broker.xmlkuvert.decoder.decode_xml`'s keyword arguments; the guard
in :mod:`broker.xmlkuvert.parser` enforces them while the tree is being built, so a hostile document
is dropped while it is read, not after. They are plain ints so that callers can read them
without importing lxml.
"""

from __future__ import annotations

__all__ = ["MAX_CONTENT_DEPTH", "MAX_DEPTH", "MAX_ELEMENTS", "MAX_XML_BYTES"]

#: Largest document :func:`decode_xml` reads. libxml2 also caps one text node at 10 MB.
MAX_XML_BYTES = 10 * 1024 * 1024
#: Deepest element outside content, counted from ``Haendelsesbesked`` (1).
MAX_DEPTH = 64
#: Deepest element inside a content item, counted from the item (1). libxml2 caps the whole
#: document at 256 levels, so larger values have no effect.
MAX_CONTENT_DEPTH = 200
#: Most elements in one document (bounds the memory of the tree).
MAX_ELEMENTS = 200_000
