"""JSON/msgpack envelope codecs and batch splitting (pure, no server)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.codec import JSON, MSGPACK, NDJSON, decode_envelope, media_type, split_batch
from broker.envelope import Tidspunkt, UnikId
from broker.errors import (
    InvalidEnvelope,
    InvalidInput,
    MalformedBody,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from tests.conftest import TYPE1, envelope

ids = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=40).filter(
        lambda s: (
            s == s.strip()
            and "\ufffe" not in s
            and "\uffff" not in s
            and not s.lower().startswith("urn:")
        )
    ),
    st.from_regex(r"urn:oio:(cpr|cvr-nr|kle):[0-9.]{1,12}", fullmatch=True),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(
    besked_id=ids,
    ansvarlig=ids,
    modtagere=st.lists(ids, max_size=3),
    content=st.lists(json_values, max_size=3),
)
def test_shorthand_ids_normalise_and_canonical_json_is_stable(
    besked_id: str, ansvarlig: str, modtagere: list[str], content: list[Any]
) -> None:
    env = envelope(TYPE1)
    env["BeskedId"] = besked_id  # bare-string shorthand
    env["Beskedkuvert"]["Filtreringsdata"]["BeskedAnsvarligAktoer"] = ansvarlig
    env["Beskedkuvert"]["Filtreringsdata"]["TilladtModtager"] = modtagere
    env["Beskeddata"] = [{"json": c} for c in content]
    besked = decode_envelope(json.dumps(env).encode(), JSON)
    assert isinstance(besked.BeskedId, UnikId) and besked.BeskedId.value == besked_id
    expect_urn = besked_id.lower().startswith("urn:")
    assert (besked.BeskedId.URNIdentifikator is not None) == expect_urn
    assert all(isinstance(m, UnikId) for m in besked.Beskedkuvert.Filtreringsdata.TilladtModtager)
    canonical = msgspec.json.encode(besked)
    again = decode_envelope(canonical, JSON)
    assert msgspec.json.encode(again) == canonical  # canonical form is a fixed point
    assert [json.loads(bytes(i.json)) for i in again.Beskeddata] == content  # type: ignore[arg-type]


@given(content=st.lists(json_values, max_size=3), data=st.binary(max_size=64))
def test_msgpack_decodes_to_the_same_envelope_as_json(content: list[Any], data: bytes) -> None:
    env = envelope(TYPE1)
    env["Beskeddata"] = [{"json": c} for c in content]
    from_json = decode_envelope(json.dumps(env).encode(), JSON)
    from_msgpack = decode_envelope(msgspec.msgpack.encode(env), MSGPACK)
    assert json.loads(msgspec.json.encode(from_json)) == json.loads(
        msgspec.json.encode(from_msgpack)
    )
    env["Beskeddata"] = [{"base64": data, "content_type": "application/pdf"}]
    (item,) = decode_envelope(msgspec.msgpack.encode(env), MSGPACK).Beskeddata
    assert item.base64 == data


def test_timestamp_branches_and_shorthand() -> None:
    env = envelope(TYPE1)
    env["Beskedkuvert"]["GyldighedFra"] = "2016-03-15T08:00:10"  # no zone, shorthand
    env["Beskedkuvert"]["GyldighedTil"] = {"GraenseIndikator": True}
    env["Beskedkuvert"]["Leveranceinformation"]["Dannelsestidspunkt"] = (
        "2016-03-15T08:00:00.123+01:00"
    )
    b = decode_envelope(json.dumps(env).encode(), JSON)
    assert b.Beskedkuvert.GyldighedFra == Tidspunkt(TidsstempelDatoTid="2016-03-15T08:00:10")
    assert b.Beskedkuvert.GyldighedTil == Tidspunkt(GraenseIndikator=True)
    env["Beskedkuvert"]["GyldighedTil"] = {
        "GraenseIndikator": True,
        "TidsstempelDatoTid": "2016-03-15T08:00:10",
    }
    with pytest.raises(InvalidEnvelope) as exc:
        decode_envelope(json.dumps(env).encode(), JSON)
    assert exc.value.path == "$.Beskedkuvert.GyldighedTil"


def test_errors_carry_codes_and_paths() -> None:
    with pytest.raises(MalformedBody):
        decode_envelope(b"{", JSON)
    env = envelope(TYPE1)
    env["Beskedkuvert"]["Filtreringsdata"]["Bogus"] = 1
    with pytest.raises(InvalidEnvelope) as exc:
        decode_envelope(json.dumps(env).encode(), JSON, prefix="$[3]")
    assert exc.value.code == "unknown_field"
    assert exc.value.path == "$[3].Beskedkuvert.Filtreringsdata"
    with pytest.raises(UnsupportedMediaType):
        decode_envelope(b"x", "text/plain")
    with pytest.raises(PayloadTooLarge):
        decode_envelope(b" " * (10 * 1024 * 1024 + 1), JSON)


def test_media_type_aliases() -> None:
    assert media_type("application/json; charset=utf-8") == JSON
    assert media_type("TEXT/XML") == "application/xml"
    assert media_type("application/x-msgpack") == MSGPACK
    assert media_type(None) == JSON


def test_split_batch_forms() -> None:
    items = [envelope(TYPE1) for _ in range(3)]
    assert [json.loads(i) for i in split_batch(json.dumps(items).encode(), JSON)] == items
    nd = b"\n\n".join(json.dumps(i).encode() for i in items) + b"\n"
    assert [json.loads(i) for i in split_batch(nd, NDJSON)] == items
    assert [
        msgspec.msgpack.decode(i) for i in split_batch(msgspec.msgpack.encode(items), MSGPACK)
    ] == items
    with pytest.raises(InvalidInput):
        split_batch(json.dumps(items[0]).encode(), JSON)  # an object, not an array
    with pytest.raises(MalformedBody):
        split_batch(b"[{", JSON)
    with pytest.raises(UnsupportedMediaType):
        split_batch(b"<a/>", "application/xml")


def test_new_uuid_is_a_random_version_4_uuid() -> None:
    import uuid

    from broker.service import new_uuid

    seen = set()
    for _ in range(2000):
        text = new_uuid()
        u = uuid.UUID(text)
        assert (u.version, u.variant, str(u)) == (4, uuid.RFC_4122, text)
        seen.add(text)
    assert len(seen) == 2000


@pytest.mark.parametrize("bad", [" padded", "padded ", "ctl\x01", "", "x" * 1025])
def test_ids_xml_cannot_carry_are_refused_with_a_readable_rule(bad: str) -> None:
    env = envelope(TYPE1)
    env["BeskedId"] = {"UUIDIdentifikator": bad}
    with pytest.raises(InvalidEnvelope) as exc:
        decode_envelope(json.dumps(env).encode(), JSON)
    assert exc.value.path == "$.BeskedId.UUIDIdentifikator"
    assert "regex" not in exc.value.message


def test_xml_content_items_must_be_one_well_formed_element() -> None:
    env = envelope(TYPE1)
    env["Beskeddata"] = [{"json": 1}, {"xml": "<a><b></a>"}]
    with pytest.raises(InvalidEnvelope) as exc:
        decode_envelope(json.dumps(env).encode(), JSON)
    assert exc.value.path == "$.Beskeddata[1].xml"
    env["Beskeddata"] = [{"xml": '<x:a xmlns:x="urn:x">t</x:a>'}]
    assert (
        decode_envelope(json.dumps(env).encode(), JSON).Beskeddata[0].xml
        == '<x:a xmlns:x="urn:x">t</x:a>'
    )


@given(st.text(max_size=40) | st.text(alphabet=" \t\n\r\x01abc\ufffe\u00a0", max_size=8))
def test_identifier_fast_path_agrees_with_the_rule(text: str) -> None:
    # the printable-ASCII fast path in UnikId must accept exactly what the full rule accepts
    from broker.envelope import _ID_RE, _id_ok

    if text:
        assert _id_ok(text) == (_ID_RE.match(text) is not None)


def _uid_key_reference(text: str) -> str:
    """uid_key's rule, stated plainly: a UUID in any case is lowered, anything else kept."""
    import re

    uuid = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    return text.lower() if re.fullmatch(uuid, text) else text


_UUIDISH = st.from_regex(
    r"[0-9a-fA-FgGİK]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-FßΣ]{12}",
    fullmatch=True,
)


@given(st.text(max_size=40) | _UUIDISH)
def test_uid_key_lowers_exactly_the_uuids(text: str) -> None:
    from broker.envelope import UnikId, uid_key

    assert uid_key(text) == _uid_key_reference(text)
    if text and text == text.strip() and text.isprintable():
        assert uid_key(UnikId(UUIDIdentifikator=text)) == _uid_key_reference(text)
