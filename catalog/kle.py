"""KLE (Kommunernes Landsforenings Emnesystematik): agreement patterns and OpgaveEmne values.

An agreement's *Kommunalt forvaltningsområde* restriction is a list of patterns in the four
forms of the reference (§6)::

    32.01.01    exactly this emne
    32.01.*     every emne in gruppe 32.01
    32.*        every emne in hovedgruppe 32
    *           everything (the same as no restriction)

Envelopes carry the subject in ``ObjektRegistrering.OpgaveEmne`` as ``urn:oio:kle:32.01.01`` or
bare ``32.01.01``. Decided here: the URN prefix compares case-insensitively, whitespace around
the value is ignored, and a value may also name a whole gruppe (``32.01``) or hovedgruppe
(``32``); such a value is inside ``32.01.*``/``32.*`` but never equals an exact ``NN.NN.NN``
pattern (it is broader than what was admitted). Anything else (handlingsfacetter such as
``32.01.01G01``, other URNs, three-digit groups) does not parse, and an unparsed value is
matched only by ``*``.

Parsed values and pattern prefixes are tuples of two-digit strings: ``("32", "01", "01")``.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Final

from broker.errors import InvalidInput

__all__ = [
    "KLE_URN_PREFIX",
    "MAX_PATTERNS",
    "KleFilter",
    "KlePattern",
    "kle_matches",
    "parse_kle",
    "parse_pattern",
    "require_patterns",
]

KLE_URN_PREFIX: Final = "urn:oio:kle:"
#: Patterns an agreement may name.
MAX_PATTERNS: Final = 1000

Kle = tuple[str, ...]


def _groups(text: str) -> Kle | None:
    parts = tuple(text.split("."))
    if not 1 <= len(parts) <= 3:
        return None
    for part in parts:
        if len(part) != 2 or not (part.isascii() and part.isdigit()):
            return None
    return parts


def parse_kle(text: str | None) -> Kle | None:
    """The groups of an OpgaveEmne value (``urn:oio:kle:NN.NN.NN`` or bare, 1–3 levels);
    ``None`` when it is absent or not a KLE number."""
    if text is None:
        return None
    return _parse_kle(text)


@lru_cache(maxsize=8192)
def _parse_kle(text: str) -> Kle | None:
    # cached: KLE has a few thousand emner, and this runs once per registration routed
    text = text.strip()
    if text[:12].lower() == KLE_URN_PREFIX:
        text = text[12:]
    return _groups(text)


class KlePattern:
    """A parsed pattern: ``prefix`` groups, and whether it is exact (``NN.NN.NN``)."""

    __slots__ = ("exact", "prefix", "text")

    def __init__(self, text: str, prefix: Kle, exact: bool) -> None:
        self.text = text
        self.prefix = prefix
        self.exact = exact

    def matches(self, value: Kle | None) -> bool:
        """Does this pattern admit the parsed value (``None``: missing or unparsed)?"""
        if not self.prefix:
            return True
        if value is None:
            return False
        if self.exact:
            return value == self.prefix
        return value[: len(self.prefix)] == self.prefix

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KlePattern) and (self.prefix, self.exact) == (
            other.prefix,
            other.exact,
        )

    def __hash__(self) -> int:
        return hash((self.prefix, self.exact))

    def __repr__(self) -> str:
        return f"KlePattern({self.text!r})"


@lru_cache(maxsize=4096)
def parse_pattern(text: str) -> KlePattern | None:
    """A KLE pattern in one of the four forms, or ``None`` if ``text`` is none of them."""
    if text == "*":
        return KlePattern("*", (), exact=False)
    if text.endswith(".*"):
        prefix = _groups(text[:-2])
        if prefix is None or len(prefix) > 2:
            return None
        return KlePattern(text, prefix, exact=False)
    groups = _groups(text)
    if groups is None or len(groups) != 3:
        return None
    return KlePattern(text, groups, exact=True)


def kle_matches(pattern: str, opgaveemne: str | None) -> bool:
    """Does ``pattern`` admit an envelope whose OpgaveEmne is ``opgaveemne``?

    Error handling:
        :class:`ValueError` when ``pattern`` is not a KLE pattern.
    """
    parsed = parse_pattern(pattern)
    if parsed is None:
        raise ValueError(f"not a KLE pattern (NN.NN.NN, NN.NN.*, NN.* or *): {pattern!r}")
    return parsed.matches(parse_kle(opgaveemne))


def require_patterns(items: Iterable[object], *, path: str) -> tuple[str, ...]:
    """KLE patterns from API input: checked, duplicates dropped, sorted.

    Error handling:
        :class:`InvalidInput` at ``path[i]`` for the first item that is not a pattern, or at
        ``path`` for an empty list or one longer than :data:`MAX_PATTERNS`.
    """
    out: set[str] = set()
    for i, item in enumerate(items):
        if not isinstance(item, str) or parse_pattern(item) is None:
            raise InvalidInput(
                f"expected a KLE pattern (NN.NN.NN, NN.NN.*, NN.* or *), got {item!r}",
                path=f"{path}[{i}]",
            )
        out.add(item)
    if not out:
        raise InvalidInput(
            "a KLE restriction needs at least one pattern (or leave it out)", path=path
        )
    if len(out) > MAX_PATTERNS:
        raise InvalidInput(f"at most {MAX_PATTERNS} KLE patterns, got {len(out)}", path=path)
    return tuple(sorted(out))


class KleFilter:
    """A compiled set of patterns, for the hot path: ``admits_all`` costs a few set lookups per
    value, however many patterns there are."""

    __slots__ = ("_exact", "_prefixes", "everything")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.everything = False
        self._exact: set[Kle] = set()
        self._prefixes: set[Kle] = set()
        for text in patterns:
            parsed = parse_pattern(text)
            if parsed is None:
                raise ValueError(f"not a KLE pattern: {text!r}")
            if not parsed.prefix:
                self.everything = True
            elif parsed.exact:
                self._exact.add(parsed.prefix)
            else:
                self._prefixes.add(parsed.prefix)

    def admits(self, value: Kle | None) -> bool:
        """Does some pattern admit this one parsed value (``None``: missing/unparsed)?"""
        if self.everything:
            return True
        if value is None:
            return False
        if value in self._exact:
            return True
        prefixes = self._prefixes
        return value[:1] in prefixes or (len(value) > 1 and value[:2] in prefixes)

    def admits_all(self, values: Iterable[Kle | None]) -> bool:
        """Does every value have an admitting pattern? ``*`` admits even an envelope with no
        registration at all; without it, at least one value is needed."""
        if self.everything:
            return True
        seen = False
        for value in values:
            if not self.admits(value):
                return False
            seen = True
        return seen
