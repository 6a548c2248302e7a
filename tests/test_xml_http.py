"""KOMBIT's sample messages through the real server: accepted as XML, delivered as JSON and XML,
content unchanged (XML canonical equality)."""

from __future__ import annotations

import pytest
from lxml import etree

from tests.conftest import SAMPLES, TYPE1, TYPE2, TYPE3, Api

KUVERT = "urn:oio:besked:kuvert:1.0"
SAMPLE_TYPES = {
    "testbesked01.xml": TYPE1,
    "testbesked02.xml": TYPE2,
    "testbesked03.xml": TYPE3,
    "externTestBesked.xml": TYPE1,
}


def _content_c14n(document: bytes) -> list[str]:
    """The canonical form of every child element of every Beskeddata, in order."""
    root = etree.fromstring(document, etree.XMLParser(resolve_entities=False, no_network=True))
    out = []
    for bd in root.iter("{*}Beskeddata"):
        if etree.QName(bd.getparent()).localname != "Haendelsesbesked":
            continue
        for child in bd:
            if isinstance(child.tag, str):
                out.append(etree.canonicalize(etree.tostring(child).decode(), with_comments=True))
    return out


def _content_of_items(items: list[dict[str, str]]) -> list[str]:
    return [etree.canonicalize(i["xml"], with_comments=True) for i in items]


@pytest.mark.parametrize("name", sorted(SAMPLE_TYPES))
async def test_kombit_sample_roundtrip(admin: Api, name: str) -> None:
    raw = (SAMPLES / name).read_bytes()
    sys = await admin.system()
    mb = await sys.mailbox(SAMPLE_TYPES[name])
    r = await sys.call(
        "POST", "/v1/messages", content=raw, headers={"Content-Type": "application/xml"}, expect=202
    )
    assert r.json()["mailboxes"] == 1

    (d,) = await sys.poll(mb)
    env = d["envelope"]
    assert (
        env["Beskedkuvert"]["Filtreringsdata"]["Beskedtype"]["UUIDIdentifikator"]
        == SAMPLE_TYPES[name]
    )
    items = env.get("Beskeddata", [])  # testbesked03's Beskeddata is empty: omitted
    assert all(set(item) == {"xml"} for item in items)  # XML content comes out as xml items
    assert _content_of_items(items) == _content_c14n(raw)

    x = await sys.call(
        "GET",
        f"/v1/mailboxes/{mb}/deliveries/{d['delivery_id']}",
        headers={"Accept": "application/xml"},
        expect=200,
    )
    assert x.headers["content-type"].startswith("application/xml")
    assert _content_c14n(x.content) == _content_c14n(raw)
    root = etree.fromstring(x.content)
    assert root.tag == f"{{{KUVERT}}}Haendelsesbesked"
    antal = root.find(f".//{{{KUVERT}}}AntalLeveranceforsoeg")
    assert antal is not None and antal.text == "1"
    # the delivered XML is itself accepted again (round trip through the broker)
    again = await sys.call(
        "POST",
        "/v1/messages",
        content=x.content,
        headers={"Content-Type": "application/xml"},
        expect=202,
    )
    assert again.json()["duplicate"] is True  # same sender, same BeskedId


async def test_shared_besked_id_dedup_is_per_sending_system(admin: Api) -> None:
    a, b = await admin.system("a"), await admin.system("b")
    mb = await a.mailbox(TYPE1, TYPE3)
    xml = {"Content-Type": "application/xml"}
    first = await a.call(
        "POST",
        "/v1/messages",
        content=(SAMPLES / "testbesked01.xml").read_bytes(),
        headers=xml,
        expect=202,
    )
    same_id = await a.call(
        "POST",
        "/v1/messages",
        content=(SAMPLES / "testbesked03.xml").read_bytes(),
        headers=xml,
        expect=202,
    )
    assert same_id.json() == {**first.json(), "duplicate": True}
    other = await b.call(
        "POST",
        "/v1/messages",
        content=(SAMPLES / "testbesked03.xml").read_bytes(),
        headers=xml,
        expect=202,
    )
    assert other.json()["duplicate"] is False and other.json()["mailboxes"] == 1
    assert (await a.stats(mb))["ready"] == 2


async def test_modtag_besked_input_wrapper_is_accepted(admin: Api) -> None:
    sys = await admin.system()
    mb = await sys.mailbox("c8673551-981e-4be1-b1a6-180cf6fa61f0")
    raw = (SAMPLES / "ModtagBeskedInput-example.xml").read_bytes()
    await sys.call(
        "POST", "/v1/messages", content=raw, headers={"Content-Type": "application/xml"}, expect=202
    )
    (d,) = await sys.poll(mb)
    assert _content_of_items(d["envelope"]["Beskeddata"]) == _content_c14n(raw)
    # the sender's TransaktionsId is replaced by the broker's
    tid = d["envelope"]["Beskedkuvert"]["Leveranceinformation"]["TransaktionsId"][
        "UUIDIdentifikator"
    ]
    assert tid != "c8673551-981e-4be1-b1a6-180cf6fa61f0"


async def test_json_envelope_delivered_as_xml(admin: Api) -> None:
    from tests.conftest import envelope

    sys = await admin.system()
    mb = await sys.mailbox(TYPE1)
    env = envelope(TYPE1)
    env["Beskeddata"] = [
        {"xml": '<p:doc xmlns:p="urn:p">hej &amp; farvel</p:doc>'},
        {"base64": "aGVq", "content_type": "text/plain"},
    ]
    await sys.send(env)
    (d,) = await sys.poll(mb)
    x = await sys.call(
        "GET",
        f"/v1/mailboxes/{mb}/deliveries/{d['delivery_id']}",
        headers={"Accept": "application/xml"},
        expect=200,
    )
    root = etree.fromstring(x.content)
    datas = root.findall(f"{{{KUVERT}}}Beskeddata")
    assert etree.QName(datas[0][0]).localname == "doc" and datas[0][0].text == "hej & farvel"
    b64 = datas[1][0]
    assert (
        etree.QName(b64).localname == "Base64"
        and b64.text == "aGVq"
        and b64.get("content-type") == "text/plain"
    )
    r = await sys.call(
        "GET",
        f"/v1/mailboxes/{mb}/deliveries/{d['delivery_id']}",
        headers={"Accept": "image/png"},
        expect=406,
    )
    assert r.json()["error"]["code"] == "not_acceptable"
