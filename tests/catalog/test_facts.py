"""The access-control facts: the cached extraction agrees with a fresh one, envelope by envelope."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.envelope import (
    Beskedkuvert,
    Filtreringsdata,
    Haendelsesbesked,
    Leveranceinformation,
    ObjektRegistrering,
    UnikId,
)
from catalog.facts import _extract, extract_facts
from tests.catalog.catalogkit import TYPE1, uid
from tests.strategies import haendelsesbesked

# a small vocabulary, so that envelopes share (and nearly share) their facts
_owner = st.none() | st.sampled_from(
    ["urn:oio:cvr-nr:29189889", "29189889", "urn:oio:cvr:55133018", "*", "urn:oio:cpr:1", "x"]
).map(uid)
_emne = st.none() | st.sampled_from(["urn:oio:kle:27.24.00", "27.24", "urn:oio:kle:x"]).map(uid)
_handling = st.none() | st.sampled_from(
    ["1c3a2f0e-5b6d-4e7f-8a9b-0c1d2e3f4a5b", "1C3A2F0E-5B6D-4E7F-8A9B-0C1D2E3F4A5B", "opret"]
).map(uid)
_registrering = st.builds(
    ObjektRegistrering,
    ObjektAnsvarligMyndighed=_owner,
    OpgaveEmne=_emne,
    ObjektHandling=_handling,
    ObjektId=st.sampled_from(["urn:oio:cpr:0101011234", "urn:oio:cpr:0202021234"]).map(uid),
)
_tilladt = st.lists(
    st.sampled_from(["urn:oio:cvr-nr:29189889", "*", "55133018", "nope"]).map(uid), max_size=3
)
_level = st.none() | st.sampled_from(
    ["e6d1e2b0-6a3f-4d4e-9d64-7b7a4c9b7b51", "E6D1E2B0-6A3F-4D4E-9D64-7B7A4C9B7B51", "z"]
).map(uid)


@st.composite
def _envelope(draw: st.DrawFn) -> Haendelsesbesked:
    return Haendelsesbesked(
        BeskedId=UnikId(UUIDIdentifikator="b"),
        BeskedVersion="1",
        Beskedkuvert=Beskedkuvert(
            Filtreringsdata=Filtreringsdata(
                Beskedtype=draw(st.sampled_from([TYPE1, TYPE1.upper(), "urn:x"]).map(uid)),
                TilladtModtager=draw(_tilladt),
                ObjektRegistrering=draw(st.lists(_registrering, max_size=3)),
            ),
            Leveranceinformation=Leveranceinformation(Sikkerhedsklassificering=draw(_level)),
        ),
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(_envelope(), min_size=1, max_size=8))
def test_cached_facts_are_the_envelopes_own(beskeder: list[Haendelsesbesked]) -> None:
    for besked in beskeder:
        assert extract_facts(besked) == _extract(besked)


@settings(max_examples=50, deadline=None)
@given(haendelsesbesked())
def test_cached_facts_of_any_envelope(besked: Haendelsesbesked) -> None:
    assert extract_facts(besked) == _extract(besked)
    assert extract_facts(besked) == _extract(besked)  # the second time from the cache
