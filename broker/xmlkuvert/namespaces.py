"""Namespace URIs of the envelope and the helpers that read lxml's Clark-notation tags.

Theory of operation
-------------------
Envelope elements may be in ``urn:oio:besked:kuvert:1.0``, ``urn:besked:kuvert:1.0`` or no
namespace (real traffic uses all three), so decoding matches them by local name within
:data:`KUVERT_NAMESPACES`. Encoding writes only :data:`KUVERT_NS` (prefix ``besked``) and
:data:`SAGDOK_NS` (prefix ``sd``). lxml names an element ``{uri}local``; :func:`split` and
:func:`local` take that apart, and :func:`path_of` builds the XPath-like path that every error
carries.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "JSON_NS",
    "KUVERT_NAMESPACES",
    "KUVERT_NS",
    "SAGDOK_NS",
    "STS_NS",
    "Own",
    "local",
    "path_of",
    "split",
]

KUVERT_NS = "urn:oio:besked:kuvert:1.0"
SAGDOK_NS = "urn:oio:sagdok:3.0.0"
STS_NS = "urn:oio:sts:1.0.0"
JSON_NS = "urn:dueslag:beskeddata:json:1.0"
#: Namespaces accepted for envelope elements (``None``: no namespace).
KUVERT_NAMESPACES = frozenset({KUVERT_NS, "urn:besked:kuvert:1.0", None})

#: The namespace declarations each content root makes itself: element -> {prefix: uri}.
Own = dict[Any, dict[str | None, str]]


def split(tag: str) -> tuple[str | None, str]:
    """``{uri}local`` as ``(uri, local)``; ``(None, tag)`` for a tag in no namespace."""
    if tag[:1] == "{":
        ns, _, name = tag[1:].partition("}")
        return ns, name
    return None, tag


def local(tag: str) -> str:
    """The local name of a Clark-notation tag."""
    return tag.rpartition("}")[2]


def path_of(el: Any, keep: int = 10) -> str:
    """The XPath-like path of an element from local names (cut after ``keep`` steps)."""
    names = [local(a.tag) for a in el.iterancestors()][::-1]
    names.append(local(el.tag))
    return "/" + "/".join(names[:keep]) + ("/…" if len(names) > keep else "")
