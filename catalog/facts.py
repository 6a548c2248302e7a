"""The access-control facts of one envelope, read once (the hot path).

:func:`extract_facts` makes one pass over ``ObjektRegistrering`` and ``TilladtModtager`` of a
canonical envelope, normalising CVRs (:func:`catalog.authorities.normalize_cvr`), KLE values
(:func:`catalog.kle.parse_kle`) and UUIDs, so that the send and receive decisions of
:mod:`catalog.access` are a handful of set operations each.

The facts are a pure function of a few ids of the envelope (type, classification, the
TilladtModtager list and each registration's owner, OpgaveEmne and ObjektHandling), and a feed
repeats the same few combinations in envelope after envelope (only ObjektId, which access
control does not read, changes). So they are cached by those ids, as given: looking up the
ids costs a tenth of normalising them again.
"""

from __future__ import annotations

import msgspec

from broker.envelope import Haendelsesbesked, uid_key
from catalog import sensitivity
from catalog.authorities import is_wildcard, normalize_cvr
from catalog.kle import Kle, parse_kle

__all__ = ["EnvelopeFacts", "extract_facts"]

#: Facts by :func:`_key`. Bounded: cleared when full (a feed's vocabulary refills it at once).
_CACHE: dict[tuple[object, ...], EnvelopeFacts] = {}
_CACHE_MAX = 4096


class EnvelopeFacts(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What access control reads from one envelope, normalised."""

    message_type: str  # comparison key (UUID lower-cased)
    sensitivity: str | None  # the classification as given (UUIDs lower-cased)
    sensitivity_rank: int  # :func:`catalog.sensitivity.effective_rank`
    owners: frozenset[str]  # ObjektAnsvarligMyndighed CVRs, 8 digits
    owner_missing: bool  # no registration, or one without ObjektAnsvarligMyndighed
    owner_wildcard: bool  # some ObjektAnsvarligMyndighed is "*"
    owner_invalid: tuple[str, ...]  # values that are not a CVR in any written form
    kle: tuple[Kle | None, ...]  # per registration: parsed OpgaveEmne, None if absent/unparsed
    actions: frozenset[str]  # ObjektHandling comparison keys
    tilladt: frozenset[str] | None  # TilladtModtager CVRs; None when the element is absent
    tilladt_wildcard: bool  # TilladtModtager holds "*"


def _key(besked: Haendelsesbesked) -> tuple[object, ...]:
    """Everything :func:`_extract` reads, as given (UnikIds are frozen, so hashable)."""
    data = besked.Beskedkuvert.Filtreringsdata
    return (
        data.Beskedtype,
        besked.Beskedkuvert.Leveranceinformation.Sikkerhedsklassificering,
        tuple(data.TilladtModtager),
        tuple(
            [
                (r.ObjektAnsvarligMyndighed, r.OpgaveEmne, r.ObjektHandling)
                for r in data.ObjektRegistrering
            ]
        ),
    )


def extract_facts(besked: Haendelsesbesked) -> EnvelopeFacts:
    """The access-control facts of a canonical envelope (cached; the hot path)."""
    key = _key(besked)
    facts = _CACHE.get(key)
    if facts is None:
        if len(_CACHE) >= _CACHE_MAX:
            _CACHE.clear()
        facts = _CACHE[key] = _extract(besked)
    return facts


def _extract(besked: Haendelsesbesked) -> EnvelopeFacts:
    """The facts, computed in one pass over the registrations."""
    data = besked.Beskedkuvert.Filtreringsdata
    owners: set[str] = set()
    invalid: list[str] = []
    missing = not data.ObjektRegistrering
    wildcard = False
    kle: list[Kle | None] = []
    actions: set[str] = set()
    for reg in data.ObjektRegistrering:
        # canonical envelopes hold UnikId objects, so .value is safe where the field is present
        owner = reg.ObjektAnsvarligMyndighed
        if owner is None:
            missing = True
        elif (cvr := normalize_cvr(text := owner.value)) is not None:
            owners.add(cvr)
        elif is_wildcard(text):
            wildcard = True
        else:
            invalid.append(text)
        emne = reg.OpgaveEmne
        kle.append(None if emne is None else parse_kle(emne.value))
        if reg.ObjektHandling is not None:
            actions.add(uid_key(reg.ObjektHandling) or "")
    tilladt: frozenset[str] | None = None
    tilladt_wildcard = False
    if data.TilladtModtager:
        cvrs: set[str] = set()
        for uid in data.TilladtModtager:
            text = uid.value
            if (cvr := normalize_cvr(text)) is not None:
                cvrs.add(cvr)
            elif is_wildcard(text):
                tilladt_wildcard = True
        tilladt = frozenset(cvrs)
    level = uid_key(besked.Beskedkuvert.Leveranceinformation.Sikkerhedsklassificering)
    return EnvelopeFacts(
        message_type=uid_key(data.Beskedtype) or "",
        sensitivity=level,
        sensitivity_rank=sensitivity.effective_rank(level),
        owners=frozenset(owners),
        owner_missing=missing,
        owner_wildcard=wildcard,
        owner_invalid=tuple(invalid),
        kle=tuple(kle),
        actions=frozenset(actions),
        tilladt=tilladt,
        tilladt_wildcard=tilladt_wildcard,
    )
