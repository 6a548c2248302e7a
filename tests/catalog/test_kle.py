"""KLE patterns against OpgaveEmne values, with a regex reference."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.errors import InvalidInput
from catalog.kle import KleFilter, kle_matches, parse_kle, parse_pattern, require_patterns

_VALUE = re.compile(r"[0-9]{2}(\.[0-9]{2}){0,2}")


def reference(pattern: str, value: str | None) -> bool:
    """The rules of docs/catalog.md, written independently of catalog.kle."""
    if pattern == "*":
        return True
    if value is None:
        return False
    text = value.strip()
    if text.lower().startswith("urn:oio:kle:"):
        text = text[len("urn:oio:kle:") :]
    if not _VALUE.fullmatch(text):
        return False
    if pattern.endswith(".*"):
        stem = pattern[:-2]
        return text == stem or text.startswith(stem + ".")
    return text == pattern


@pytest.mark.parametrize("good", ["*", "32.*", "32.01.*", "32.01.01", "00.00.00"])
def test_the_four_pattern_forms_parse(good: str) -> None:
    parsed = parse_pattern(good)
    assert parsed is not None and parsed.text == good


@pytest.mark.parametrize(
    "bad",
    ["", "32", "32.01", "32.*.*", "*.01", "32.01.01.*", "3.01.01", "32.01.1", "32.01.01 ",
     "urn:oio:kle:32.*", "32.01.*x", "٣٢.*", "**", "32.01.01.01"],
)  # fmt: skip
def test_other_pattern_texts_do_not(bad: str) -> None:
    assert parse_pattern(bad) is None
    with pytest.raises(ValueError, match="KLE pattern"):
        kle_matches(bad, "32.01.01")


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("32.01.01", "urn:oio:kle:32.01.01", True),
        ("32.01.01", "32.01.01", True),
        ("32.01.01", "URN:OIO:KLE:32.01.01", True),
        ("32.01.01", "32.01.02", False),
        ("32.01.01", "32.01", False),  # a gruppe is broader than one emne
        ("32.01.*", "32.01", True),
        ("32.01.*", "32.01.99", True),
        ("32.01.*", "32.02.01", False),
        ("32.*", "32", True),
        ("32.*", "urn:oio:kle:32.99.01", True),
        ("32.*", "33.01.01", False),
        ("*", None, True),
        ("*", "not kle at all", True),
        ("32.*", None, False),
        ("32.*", "32.01.01G01", False),  # handlingsfacetter are not parsed
        ("32.*", "urn:oio:kle:", False),
    ],
)
def test_kle_matches(pattern: str, value: str | None, expected: bool) -> None:
    assert kle_matches(pattern, value) is expected
    assert reference(pattern, value) is expected


two = st.text(alphabet="0123", min_size=2, max_size=2)
patterns = st.one_of(
    st.just("*"),
    two.map(lambda a: f"{a}.*"),
    st.tuples(two, two).map(lambda t: f"{t[0]}.{t[1]}.*"),
    st.tuples(two, two, two).map(".".join),
)
values = st.one_of(
    st.none(),
    st.lists(two, min_size=1, max_size=4).map(".".join),
    st.tuples(
        st.sampled_from(["urn:oio:kle:", "URN:oio:KLE:", " ", ""]),
        st.lists(two, min_size=1, max_size=3),
    ).map(lambda t: t[0] + ".".join(t[1])),
    st.text(max_size=12),
)


@given(patterns, values)
def test_pattern_agrees_with_reference(pattern: str, value: str | None) -> None:
    assert kle_matches(pattern, value) == reference(pattern, value)


@given(st.lists(patterns, min_size=1, max_size=6), st.lists(values, max_size=4))
def test_filter_agrees_with_its_patterns(pats: list[str], vals: list[str | None]) -> None:
    f = KleFilter(pats)
    for v in vals:
        assert f.admits(parse_kle(v)) == any(reference(p, v) for p in pats)
    expected = "*" in pats or (bool(vals) and all(any(reference(p, v) for p in pats) for v in vals))
    assert f.admits_all(parse_kle(v) for v in vals) == expected


def test_require_patterns() -> None:
    assert require_patterns(["32.*", "01.01.01", "32.*"], path="$.kle") == ("01.01.01", "32.*")
    with pytest.raises(InvalidInput) as info:
        require_patterns(["32.*", "32"], path="$.kle")
    assert info.value.path == "$.kle[1]"
    with pytest.raises(InvalidInput, match="at least one"):
        require_patterns([], path="$.kle")
