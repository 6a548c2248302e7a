"""Sikkerhedsklassificering: the four hierarchical sensitivity levels.

An envelope carries its level in ``Leveranceinformation.Sikkerhedsklassificering`` (a UUID); a
service agreement may name a *maximum* level (KOMBIT's restriction *Foelsomhed*), which admits
that level and every level below it: a maximum of 3 admits 1, 2 and 3.

Two cases the reference leaves open are decided here, on the safe side:

* an envelope **without** a classification counts as the highest level (4, særligt beskyttede
  oplysninger): it may hold anything, so only an agreement without a maximum or with maximum 4
  admits it;
* an envelope with a classification that is **not one of the four** UUIDs is admitted only by an
  agreement without a maximum (a send carrying one is refused up front, see
  :func:`catalog.access.check_send`).

UUIDs compare case-insensitively.
"""

from __future__ import annotations

from typing import Final

from catalog.ids import Record

__all__ = [
    "LEVELS",
    "MISSING_RANK",
    "UNKNOWN_RANK",
    "Sensitivity",
    "admits",
    "by_rank",
    "effective_rank",
    "rank",
]


class Sensitivity(Record, frozen=True, kw_only=True):
    """One level of the Sikkerhedsklassificering classification."""

    id: str  # UUID, lower-case
    rank: int  # 1 (least sensitive) .. 4 (most sensitive)
    name: str  # the Danish level name


#: The four levels, least sensitive first (UUIDs and names from KOMBIT, reference §2).
LEVELS: Final[tuple[Sensitivity, ...]] = (
    Sensitivity(id="1d81c472-0808-44cc-963d-f5ef0170ae1d", rank=1, name="Ikke fortrolige data"),
    Sensitivity(
        id="292e85a9-8ad4-46df-9e50-f97d6837ad74", rank=2, name="Fortrolige personoplysninger"
    ),
    Sensitivity(
        id="31c09910-e011-46a5-86fb-254374421fe8", rank=3, name="Følsomme personoplysninger"
    ),
    Sensitivity(
        id="44f4108b-26d4-46de-a90f-35e35b55b8d8", rank=4, name="Særligt beskyttede oplysninger"
    ),
)

#: The rank an envelope without a classification is treated as (the highest level).
MISSING_RANK: Final = 4
#: The rank of a classification that is not one of the four: above every maximum.
UNKNOWN_RANK: Final = 5

_RANKS: Final[dict[str, int]] = {level.id: level.rank for level in LEVELS}


def rank(uuid: str | None) -> int | None:
    """The level (1..4) of a classification UUID in any case; ``None`` if it is not one."""
    if uuid is None:
        return None
    return _RANKS.get(uuid.lower())


def by_rank(level: int) -> Sensitivity:
    """The level with rank ``level`` (1..4).

    Error handling:
        :class:`ValueError` for a rank outside 1..4.
    """
    if not 1 <= level <= len(LEVELS):
        raise ValueError(f"a sensitivity rank must be 1..4, got {level}")
    return LEVELS[level - 1]


def effective_rank(actual: str | None) -> int:
    """The rank an envelope's classification is compared with: its level, :data:`MISSING_RANK`
    when it has none, :data:`UNKNOWN_RANK` when it is not one of the four."""
    if actual is None:
        return MISSING_RANK
    found = _RANKS.get(actual.lower())
    return UNKNOWN_RANK if found is None else found


def admits(max_uuid: str | None, actual_uuid: str | None) -> bool:
    """Does a maximum of ``max_uuid`` admit an envelope classified ``actual_uuid``?

    ``max_uuid=None`` is no restriction (admits everything, even unknown classifications). An
    unknown ``max_uuid`` admits nothing (agreements are validated when written, so this only
    guards against corrupt records).
    """
    if max_uuid is None:
        return True
    limit = _RANKS.get(max_uuid.lower())
    if limit is None:
        return False
    return effective_rank(actual_uuid) <= limit
