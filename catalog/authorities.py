"""Authorities (myndigheder) and the CVR numbers that name them.

An authority is a public body identified by its 8-digit CVR number; the bundled list holds the
98 municipalities (``catalog/data/municipalities.csv``, provenance in ``municipalities.md``).
Authorities approve or reject service agreements with their own token.

CVR numbers arrive in four written forms, all legal in KOMBIT traffic (reference §1, §6)::

    urn:oio:cvr-nr:29189889    urn:oio:cvr:29189889    29189889    *

:func:`normalize_cvr` reduces the first three to the bare 8 digits (the URN prefix compares
case-insensitively and surrounding whitespace is ignored); ``*`` is not a CVR and is recognised
separately by :func:`is_wildcard`. A CVR is **never** checked against its modulus-11 checksum:
KOMBIT's own test data uses ``99999999`` and ``12345678``. On output dueslag writes the one
canonical form ``urn:oio:cvr-nr:NNNNNNNN`` (:func:`cvr_urn`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources
from typing import Final

from broker.errors import InvalidInput
from catalog.ids import Record

__all__ = [
    "CVR_URN_PREFIX",
    "MAX_NAME_LENGTH",
    "WILDCARD",
    "Authority",
    "cvr_urn",
    "is_wildcard",
    "load_municipalities",
    "normalize_cvr",
    "require_cvr",
    "require_cvrs",
    "require_name",
]

WILDCARD: Final = "*"
CVR_URN_PREFIX: Final = "urn:oio:cvr-nr:"
MAX_NAME_LENGTH: Final = 200
#: The accepted URN prefixes, lower-case; longest first is not needed (they differ at "-").
_PREFIXES: Final = ("urn:oio:cvr-nr:", "urn:oio:cvr:")


class Authority(Record, frozen=True, kw_only=True):
    """A myndighed: a municipality or other public body with a CVR number."""

    cvr: str  # 8 digits
    name: str
    kommunekode: str | None = None  # 4 digits with leading zero, municipalities only
    region: str | None = None
    token_hash: bytes | None = None  # sha256 of the authority's token; None until one is issued
    created_ms: int = 0  # 0 for the bundled municipalities


def _is_cvr_digits(text: str) -> bool:
    # isdigit() alone would accept other scripts' digits ("٢"); CVRs are ASCII
    return len(text) == 8 and text.isascii() and text.isdigit()


def normalize_cvr(text: str | None) -> str | None:
    """The 8 digits of a CVR written as ``urn:oio:cvr-nr:N``, ``urn:oio:cvr:N`` or bare ``N``.

    Returns ``None`` for anything else, including ``*`` (see :func:`is_wildcard`).
    """
    if text is None:
        return None
    return _normalize(text)


@lru_cache(maxsize=8192)
def _normalize(text: str) -> str | None:
    # cached: the same few hundred CVRs arrive in every envelope (the hot path)
    text = text.strip()
    if _is_cvr_digits(text):
        return text
    if text[:4].lower() == "urn:":
        low = text[:15].lower()
        for prefix in _PREFIXES:
            if low.startswith(prefix):
                rest = text[len(prefix) :]
                return rest if _is_cvr_digits(rest) else None
    return None


def is_wildcard(text: str | None) -> bool:
    """Is ``text`` the wildcard ``*`` (all authorities)?"""
    return text is not None and text.strip() == WILDCARD


def cvr_urn(cvr: str) -> str:
    """The canonical output form of a normalised CVR: ``urn:oio:cvr-nr:NNNNNNNN``."""
    return CVR_URN_PREFIX + cvr


def require_cvr(text: object, *, path: str) -> str:
    """A CVR from API input, normalised to 8 digits. The wildcard is not accepted.

    Error handling:
        :class:`InvalidInput` at ``path`` for anything that is not a CVR in one of the three
        written forms.
    """
    cvr = normalize_cvr(text) if isinstance(text, str) else None
    if cvr is None:
        raise InvalidInput(
            "expected a CVR number: 8 digits, bare or as urn:oio:cvr-nr:N / urn:oio:cvr:N"
            f" (no wildcard), got {text!r}",
            path=path,
        )
    return cvr


def require_cvrs(
    items: Iterable[object], *, path: str, allow_empty: bool = False
) -> tuple[str, ...]:
    """A list of CVRs from API input: normalised, duplicates dropped, sorted.

    Error handling:
        :class:`InvalidInput` at ``path[i]`` for the first bad item, or at ``path`` when the
        list is empty and ``allow_empty`` is false.
    """
    out = {require_cvr(item, path=f"{path}[{i}]") for i, item in enumerate(items)}
    if not out and not allow_empty:
        raise InvalidInput("expected at least one CVR number", path=path)
    return tuple(sorted(out))


def require_name(text: object, *, path: str) -> str:
    """A display name from API input: stripped, 1..:data:`MAX_NAME_LENGTH` characters.

    Error handling:
        :class:`InvalidInput` at ``path`` when it is not a string, is blank, too long, or holds
        control characters.
    """
    if not isinstance(text, str):
        raise InvalidInput(f"expected a string, got {type(text).__name__}", path=path)
    name = text.strip()
    if not name:
        raise InvalidInput("a name must not be blank", path=path)
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(
            f"a name may be at most {MAX_NAME_LENGTH} characters, got {len(name)}", path=path
        )
    if not name.isprintable():
        raise InvalidInput("a name must not contain control characters", path=path)
    return name


def load_municipalities() -> list[Authority]:
    """The 98 Danish municipalities from the bundled CSV, sorted by kommunekode.

    Error handling:
        :class:`ValueError` if the bundled file is corrupt (a row without an 8-digit CVR); this
        is a packaging error, not input.
    """
    text = (resources.files("catalog") / "data" / "municipalities.csv").read_text("utf-8")
    out: list[Authority] = []
    for row in csv.DictReader(io.StringIO(text)):
        cvr = normalize_cvr(row["cvr"])
        if cvr is None:
            raise ValueError(f"bundled municipalities.csv: bad CVR {row['cvr']!r}")
        out.append(
            Authority(
                cvr=cvr,
                name=row["navn"],
                kommunekode=row["kommunekode"] or None,
                region=row["region"] or None,
            )
        )
    return out
