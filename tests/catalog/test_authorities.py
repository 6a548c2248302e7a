"""Authorities: the bundled municipalities and the four written forms of a CVR."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.errors import InvalidInput
from catalog.authorities import (
    cvr_urn,
    is_wildcard,
    load_municipalities,
    normalize_cvr,
    require_cvr,
    require_cvrs,
    require_name,
)

SHARED_CSV = Path("/work/shared/reference/data/municipalities.csv")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("urn:oio:cvr-nr:29189889", "29189889"),
        ("urn:oio:cvr:29189889", "29189889"),
        ("29189889", "29189889"),
        ("URN:OIO:CVR-NR:12345678", "12345678"),
        ("Urn:Oio:Cvr:99999999", "99999999"),  # checksum never checked
        ("  urn:oio:cvr-nr:00000001\n", "00000001"),
        ("*", None),
        ("", None),
        ("1234567", None),
        ("123456789", None),
        ("urn:oio:cvr-nr:1234567", None),
        ("urn:oio:cvr-nr:", None),
        ("urn:oio:cpr:0101011234", None),
        ("urn:oio:cvrnr:12345678", None),
        ("1234567a", None),
        ("١٢٣٤٥٦٧٨", None),  # non-ASCII digits
        (None, None),
    ],
)
def test_normalize_cvr(text: str | None, expected: str | None) -> None:
    assert normalize_cvr(text) == expected


eight_digits = st.text(alphabet="0123456789", min_size=8, max_size=8)


@given(eight_digits, st.sampled_from(["", "urn:oio:cvr-nr:", "urn:oio:cvr:", "URN:OIO:CVR-NR:"]))
def test_every_written_form_normalises_to_the_digits(digits: str, prefix: str) -> None:
    assert normalize_cvr(prefix + digits) == digits
    assert normalize_cvr(cvr_urn(digits)) == digits
    assert not is_wildcard(prefix + digits)


@given(st.text(max_size=30))
def test_normalize_cvr_returns_eight_ascii_digits_or_none(text: str) -> None:
    out = normalize_cvr(text)
    assert out is None or (len(out) == 8 and out.isascii() and out.isdigit() and out in text)


def test_wildcard() -> None:
    assert is_wildcard("*") and is_wildcard(" * ")
    assert not is_wildcard("**") and not is_wildcard(None) and not is_wildcard("12345678")


def test_require_cvr_names_the_path() -> None:
    assert require_cvr("urn:oio:cvr:12345678", path="$.cvr") == "12345678"
    for bad in ("*", "1234", 12345678, None):
        with pytest.raises(InvalidInput) as info:
            require_cvr(bad, path="$.authorities[3]")
        assert info.value.path == "$.authorities[3]"
        assert info.value.http_status == 400


def test_require_cvrs_dedups_and_sorts() -> None:
    assert require_cvrs(["55133018", "urn:oio:cvr-nr:29189889", "29189889"], path="$.a") == (
        "29189889",
        "55133018",
    )
    with pytest.raises(InvalidInput, match="at least one"):
        require_cvrs([], path="$.a")
    assert require_cvrs([], path="$.a", allow_empty=True) == ()


@pytest.mark.parametrize("bad", ["", "   ", "x" * 201, "a\x00b", 7])
def test_require_name(bad: object) -> None:
    with pytest.raises(InvalidInput) as info:
        require_name(bad, path="$.name")
    assert info.value.path == "$.name"
    assert require_name("  Aarhus Kommune ", path="$.name") == "Aarhus Kommune"


def test_bundled_municipalities() -> None:
    towns = load_municipalities()
    assert len(towns) == 98
    assert len({t.cvr for t in towns}) == 98
    assert len({t.kommunekode for t in towns}) == 98
    by_cvr = {t.cvr: t for t in towns}
    assert by_cvr["55133018"].name == "Aarhus Kommune"
    assert by_cvr["64942212"].kommunekode == "0101"
    assert by_cvr["29189889"].region == "Region Midtjylland"  # Horsens
    assert all(t.token_hash is None and t.created_ms == 0 for t in towns)
    assert [t.kommunekode for t in towns] == sorted(t.kommunekode or "" for t in towns)


@pytest.mark.skipif(not SHARED_CSV.exists(), reason="shared reference data not present")
def test_bundled_copy_matches_the_shared_reference() -> None:
    bundled = Path(__file__).parents[2] / "catalog" / "data" / "municipalities.csv"
    assert bundled.read_bytes() == SHARED_CSV.read_bytes()
