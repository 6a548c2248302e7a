"""The four Sikkerhedsklassificering levels and hierarchical admission."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from catalog import sensitivity
from catalog.sensitivity import LEVELS, MISSING_RANK, admits, by_rank, effective_rank, rank

KNOWN = {
    "1d81c472-0808-44cc-963d-f5ef0170ae1d": (1, "Ikke fortrolige data"),
    "292e85a9-8ad4-46df-9e50-f97d6837ad74": (2, "Fortrolige personoplysninger"),
    "31c09910-e011-46a5-86fb-254374421fe8": (3, "Følsomme personoplysninger"),
    "44f4108b-26d4-46de-a90f-35e35b55b8d8": (4, "Særligt beskyttede oplysninger"),
}


def test_levels_are_kombits_four_in_order() -> None:
    assert {lv.id: (lv.rank, lv.name) for lv in LEVELS} == KNOWN
    assert [lv.rank for lv in LEVELS] == [1, 2, 3, 4]
    assert all(by_rank(lv.rank) is lv for lv in LEVELS)


@pytest.mark.parametrize("bad", [0, 5, -1])
def test_by_rank_refuses_other_ranks(bad: int) -> None:
    with pytest.raises(ValueError, match=r"1\.\.4"):
        by_rank(bad)


def test_rank_is_case_insensitive() -> None:
    for text, (level, _) in KNOWN.items():
        assert rank(text) == rank(text.upper()) == level
    assert rank(None) is None
    assert rank("not-a-level") is None


def test_missing_classification_counts_as_the_highest_level() -> None:
    assert effective_rank(None) == MISSING_RANK == 4
    assert admits(by_rank(4).id, None)
    assert not admits(by_rank(3).id, None)
    assert admits(None, None)


def test_unknown_classification_needs_an_unrestricted_agreement() -> None:
    unknown = str(uuid.uuid4())
    assert admits(None, unknown)
    assert not any(admits(lv.id, unknown) for lv in LEVELS)


def test_unknown_maximum_admits_nothing() -> None:
    assert not admits(str(uuid.uuid4()), LEVELS[0].id)


levels = st.sampled_from(LEVELS)
actual = st.one_of(
    st.none(),
    levels.map(lambda lv: lv.id),
    levels.map(lambda lv: lv.id.upper()),
    st.uuids().map(str),
)


@given(levels, actual)
def test_admits_is_hierarchical(limit: sensitivity.Sensitivity, level: str | None) -> None:
    expected_rank = 4 if level is None else (rank(level) or 5)
    assert admits(limit.id, level) == (expected_rank <= limit.rank)
    assert admits(limit.id.upper(), level) == admits(limit.id, level)
    # monotone: a higher maximum admits at least what a lower one admits
    for higher in LEVELS[limit.rank - 1 :]:
        assert admits(higher.id, level) >= admits(limit.id, level)
