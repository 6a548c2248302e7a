"""Shared bits of the catalog: the record base class and UUID helpers.

Every catalog record derives from :class:`Record`: frozen, keyword-only, and every field added
later must get a default (stored records are decoded by newer versions; msgspec's schema
evolution rule). UUIDs are compared and stored lower-case.
"""

from __future__ import annotations

import re
from typing import Final

from msgspec import Struct

from broker.errors import InvalidInput

__all__ = ["UUID_RE", "Record", "is_uuid", "require_uuid", "uuid_key"]

UUID_RE: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z"
)


class Record(Struct, frozen=True, kw_only=True):
    """Stored and returned catalog records; new fields always get defaults."""


def is_uuid(text: str) -> bool:
    """Is ``text`` a UUID in 8-4-4-4-12 hex form (either case)?"""
    return len(text) == 36 and UUID_RE.match(text) is not None


def uuid_key(text: str | None) -> str | None:
    """``text`` lower-cased when it is a UUID; ``None`` for anything else."""
    if text is None or not is_uuid(text):
        return None
    return text.lower()


def require_uuid(text: object, *, path: str, what: str = "a UUID") -> str:
    """``text`` as a lower-case UUID.

    Error handling:
        :class:`InvalidInput` at ``path`` when ``text`` is not a string in UUID form.
    """
    if not isinstance(text, str) or not is_uuid(text):
        raise InvalidInput(f"expected {what} (8-4-4-4-12 hex digits), got {text!r}", path=path)
    return text.lower()
