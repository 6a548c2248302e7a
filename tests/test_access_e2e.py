"""The whole access-control path through the real server (LMDB, HTTP on 127.0.0.1:0):

systems register -> request agreements -> two municipalities approve, one rejects -> a receiver
subscribes with an expression on ObjektHandling and a value list of CPR numbers -> the sender
sends for all three municipalities -> each receiver gets exactly what its agreements and
expressions allow, with TilladtModtager rewritten."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from broker.config import BrokerConfig
from broker.server import ServerInfo, serve
from tests.conftest import ADMIN_TOKEN, TYPE1, Api, FakeClock

AARHUS, HORSENS, KBH = "55133018", "29189889", "64942212"
FOEDSEL = "1e5bb089-5445-44f8-9b65-bc854053f423"
DOEDSFALD = "298aa424-0a16-4a5a-956c-2bdab17fd11f"
FORTROLIG = "292e85a9-8ad4-46df-9e50-f97d6837ad74"  # level 2


@pytest.fixture
async def governed(nursery: trio.Nursery, tmp_path: Path, clock: FakeClock) -> AsyncIterator[Api]:
    config = BrokerConfig(
        data_dir=str(tmp_path), bind="127.0.0.1:0", admin_token=ADMIN_TOKEN, sweep_interval_s=3600
    )
    info: ServerInfo = await nursery.start(partial(serve, config, clock=clock))
    async with httpx.AsyncClient(base_url=info.url, timeout=30) as http:
        yield Api(http, ADMIN_TOKEN)


def cpr_envelope(
    cvr: str, handling: str, cpr: str, *, besked_type: str = TYPE1, tilladt: str = "*"
) -> dict[str, Any]:
    return {
        "BeskedId": str(uuid.uuid4()),
        "BeskedVersion": "1.0",
        "Beskedkuvert": {
            "Filtreringsdata": {
                "Beskedtype": besked_type,
                "TilladtModtager": [tilladt],
                "ObjektRegistrering": [
                    {
                        "ObjektAnsvarligMyndighed": f"urn:oio:cvr-nr:{cvr}",
                        "ObjektId": f"urn:oio:cpr:{cpr}",
                        "ObjektHandling": handling,
                        "OpgaveEmne": "urn:oio:kle:32.01.01",
                    }
                ],
            },
            "Leveranceinformation": {"Sikkerhedsklassificering": FORTROLIG},
        },
        "Beskeddata": [{"json": {"cpr": cpr}}],
    }


async def _authority(admin: Api, cvr: str) -> Api:
    r = await admin.call("POST", f"/v1/authorities/{cvr}/token", expect=200)
    return Api(admin.http, r.json()["token"])


async def _agreement(sys: Api, kind: str, authorities: list[str], **extra: Any) -> str:
    body = {"kind": kind, "authorities": authorities, "message_types": [TYPE1], **extra}
    r = await sys.call("POST", "/v1/agreements", json=body, expect=201)
    assert r.json()["status"] == "requested"
    return str(r.json()["id"])


async def _decide(authority: Api, agreement_id: str, approve: bool) -> dict[str, Any]:
    body = {"approve": approve, "reason": "ok" if approve else "no legal basis"}
    return (
        await authority.call(
            "POST", f"/v1/agreements/{agreement_id}/decision", json=body, expect=200
        )
    ).json()  # type: ignore[no-any-return]


def _tilladt(delivery: dict[str, Any]) -> list[str]:
    return [
        t["URNIdentifikator"]
        for t in delivery["envelope"]["Beskedkuvert"]["Filtreringsdata"]["TilladtModtager"]
    ]


async def test_agreements_expressions_value_lists_end_to_end(governed: Api) -> None:
    admin = governed
    sender, r1, r2 = (
        await admin.system("cpr"),
        await admin.system("sagssystem"),
        await admin.system("horsens-only"),
    )
    aarhus, horsens, kbh = [await _authority(admin, c) for c in (AARHUS, HORSENS, KBH)]

    # before any agreement: refused, nothing stored
    r = await sender.call(
        "POST", "/v1/messages", json=cpr_envelope(AARHUS, FOEDSEL, "0101010001"), expect=403
    )
    assert r.json()["error"]["code"] == "no_send_agreement"

    send = await _agreement(sender, "send", [AARHUS, HORSENS, KBH])
    recv1 = await _agreement(r1, "receive", [AARHUS, HORSENS, KBH], max_sensitivity=FORTROLIG)
    recv2 = await _agreement(r2, "receive", [HORSENS])
    r = await sender.call(
        "POST", "/v1/messages", json=cpr_envelope(AARHUS, FOEDSEL, "0101010001"), expect=403
    )
    assert r.json()["error"]["code"] == "agreement_not_approved"
    for agreement_id in (send, recv1):
        await _decide(aarhus, agreement_id, True)
        await _decide(horsens, agreement_id, True)
        view = await _decide(kbh, agreement_id, False)
    assert view["status"] == "approved" and sorted(view["effective_authorities"]) == sorted(
        [AARHUS, HORSENS]
    )
    await _decide(horsens, recv2, True)
    r = await aarhus.call(
        "POST", f"/v1/agreements/{recv2}/decision", json={"approve": True}, expect=404
    )

    # receivers subscribe: r1 with an expression and a value list, r2 by message type only
    r = await r1.call(
        "POST",
        "/v1/value-lists",
        json={"name": "borgere", "values": ["urn:oio:cpr:0101010001"]},
        expect=201,
    )
    list_id = r.json()["id"]
    mb1, mb2 = await r1.mailbox(), await r2.mailbox()
    expression = (
        f"get(Beskedkuvert.Filtreringsdata.ObjektRegistrering, 0).ObjektHandling = '{FOEDSEL}'"
        " and Beskedkuvert.Filtreringsdata.ObjektRegistrering.ObjektId in valueliste('borgere')"
    )
    await r1.call(
        "POST",
        f"/v1/mailboxes/{mb1}/subscriptions",
        json={"message_types": [TYPE1], "expression": expression},
        expect=201,
    )
    await r2.call(
        "POST", f"/v1/mailboxes/{mb2}/subscriptions", json={"message_types": [TYPE1]}, expect=201
    )
    bad = await r1.call(
        "POST",
        f"/v1/mailboxes/{mb1}/subscriptions",
        json={"message_types": [TYPE1], "expression": "Beskedkuvert.Nope = 'x'"},
        expect=400,
    )
    assert bad.json()["error"]["code"] == "invalid_expression"
    other_type = "832d0676-d0a0-4522-8f57-ac126dc8270e"
    r = await r2.call(
        "POST",
        f"/v1/mailboxes/{mb2}/subscriptions",
        json={"message_types": [other_type]},
        expect=403,
    )
    assert r.json()["error"]["code"] == "no_receive_agreement"

    # the sender sends for all three municipalities
    async def send_env(env: dict[str, Any], expect: int = 202) -> dict[str, Any]:
        return (await sender.call("POST", "/v1/messages", json=env, expect=expect)).json()  # type: ignore[no-any-return]

    refused = await send_env(cpr_envelope(KBH, FOEDSEL, "0101010001"), 403)
    assert refused["error"]["code"] == "authority_not_covered"
    assert (await send_env(cpr_envelope(AARHUS, FOEDSEL, "0101010001")))[
        "mailboxes"
    ] == 1  # r1 only
    assert (await send_env(cpr_envelope(HORSENS, FOEDSEL, "0101010001")))[
        "mailboxes"
    ] == 2  # r1 + r2
    assert (await send_env(cpr_envelope(HORSENS, DOEDSFALD, "0101010001")))[
        "mailboxes"
    ] == 1  # r2: not a birth
    assert (await send_env(cpr_envelope(AARHUS, FOEDSEL, "0202020002")))[
        "mailboxes"
    ] == 0  # not in the list
    # a value added now counts for the next envelope
    await r1.call(
        "POST",
        f"/v1/value-lists/{list_id}/values",
        json={"add": ["urn:oio:cpr:0202020002"]},
        expect=200,
    )
    assert (await send_env(cpr_envelope(AARHUS, FOEDSEL, "0202020002")))["mailboxes"] == 1
    # too sensitive for r1's agreement (max level 2); r2 has no maximum but no Aarhus agreement
    secret = cpr_envelope(AARHUS, FOEDSEL, "0101010001")
    secret["Beskedkuvert"]["Leveranceinformation"]["Sikkerhedsklassificering"] = (
        "44f4108b-26d4-46de-a90f-35e35b55b8d8"
    )
    assert (await send_env(secret))["mailboxes"] == 0

    got1 = await r1.poll(mb1, max=100)
    got2 = await r2.poll(mb2, max=100)
    cvrs1 = [
        d["envelope"]["Beskedkuvert"]["Filtreringsdata"]["ObjektRegistrering"][0][
            "ObjektAnsvarligMyndighed"
        ]["URNIdentifikator"]
        for d in got1
    ]
    assert cvrs1 == [f"urn:oio:cvr-nr:{c}" for c in (AARHUS, HORSENS, AARHUS)]
    assert len(got2) == 2
    # TilladtModtager '*' is expanded to whom each receiver may act for
    assert all(
        sorted(_tilladt(d)) == sorted(f"urn:oio:cvr-nr:{c}" for c in (AARHUS, HORSENS))
        for d in got1
    )
    assert all(_tilladt(d) == [f"urn:oio:cvr-nr:{HORSENS}"] for d in got2)

    # withdrawing r2's agreement stops its deliveries
    await r2.call("POST", f"/v1/agreements/{recv2}/withdraw", expect=200)
    assert (await send_env(cpr_envelope(HORSENS, DOEDSFALD, "0101010001")))["mailboxes"] == 0

    # the audit log recorded the refusals with their codes and the decisions
    events = (
        await admin.call("GET", "/v1/audit", params={"action": "send.refused"}, expect=200)
    ).json()["events"]
    assert {e["code"] for e in events} == {
        "no_send_agreement",
        "agreement_not_approved",
        "authority_not_covered",
    }
    decided = (
        await admin.call(
            "GET", "/v1/audit", params={"action": "agreement.", "actor": KBH}, expect=200
        )
    ).json()["events"]
    assert len(decided) == 2 and all(e["action"] == "agreement.decided" for e in decided)
    await sender.call("GET", "/v1/audit", expect=403)


async def test_catalog_is_public_and_enforced(governed: Api) -> None:
    admin = governed
    r = await admin.http.get("/v1/catalog/message-types")
    assert r.status_code == 200
    types = {t["id"]: t for t in r.json()["message_types"]}
    for known in (
        TYPE1,
        "d2bed63c-4853-4008-b6e0-a74c15b15fbf",
        "94ef3c82-10e9-4d12-a9d9-7a7242d5ba83",
    ):
        assert known in types
    assert any(t["demo"] for t in types.values())
    assert (await admin.http.get(f"/v1/catalog/message-types/{TYPE1}")).json()["name"]
    sender = await admin.system("s")
    r = await sender.call(
        "POST",
        "/v1/messages",
        json=cpr_envelope(AARHUS, FOEDSEL, "1", besked_type=str(uuid.uuid4())),
        expect=422,
    )
    assert r.json()["error"]["code"] == "unknown_message_type"
    await admin.call(
        "POST", f"/v1/catalog/message-types/{TYPE1}/active", json={"active": False}, expect=200
    )
    r = await sender.call(
        "POST", "/v1/messages", json=cpr_envelope(AARHUS, FOEDSEL, "1"), expect=422
    )
    assert r.json()["error"]["code"] == "inactive_message_type"
    await sender.call("POST", "/v1/catalog/message-types", json={"name": "X"}, expect=403)
    r = await admin.call(
        "POST",
        "/v1/catalog/message-types",
        json={"name": "DEMO_Extra", "version": "1.0"},
        expect=201,
    )
    assert r.json()["id"] in {
        t["id"] for t in (await admin.http.get("/v1/catalog/message-types")).json()["message_types"]
    }


async def test_authorities_and_their_tokens(governed: Api) -> None:
    admin = governed
    r = await admin.call(
        "POST",
        "/v1/authorities",
        json={"cvr": "urn:oio:cvr-nr:12345678", "name": "Testmyndighed"},
        expect=201,
    )
    assert r.json()["cvr"] == "12345678" and r.json()["token"]
    await admin.call(
        "POST", "/v1/authorities", json={"cvr": "12345678", "name": "again"}, expect=409
    )
    r = await admin.call("POST", "/v1/authorities", json={"cvr": "1234", "name": "bad"}, expect=400)
    assert r.json()["error"]["path"] == "$.cvr"
    listed = (await admin.call("GET", "/v1/authorities", expect=200)).json()["authorities"]
    assert len(listed) == 99 and any(
        a["cvr"] == AARHUS and a["region"] == "Region Midtjylland" for a in listed
    )
    authority = await _authority(admin, "12345678")
    await authority.call(
        "POST", "/v1/messages", json=cpr_envelope(AARHUS, FOEDSEL, "1"), expect=403
    )


async def test_cli_governance_commands(governed: Api, capsys: pytest.CaptureFixture[str]) -> None:
    """Agreements, decisions, value lists, catalog and audit through `dueslag …` commands."""
    import json

    import cli

    admin = governed
    url = str(admin.http.base_url)
    sender = await admin.system("cli-sender")
    token = sender.headers["Authorization"].split()[1]

    def run(*argv: str, tok: str) -> Any:
        capsys.readouterr()
        assert cli.main([*argv, "--url", url, "--token", tok]) == 0
        return json.loads(capsys.readouterr().out)

    async def call(*argv: str, tok: str) -> Any:
        return await trio.to_thread.run_sync(lambda: run(*argv, tok=tok))

    auth = await call("authority", "token", HORSENS, tok=ADMIN_TOKEN)
    agreement = await call(
        "agreement", "request", "send", "--authority", HORSENS, "--type", TYPE1, tok=token
    )
    assert agreement["status"] == "requested"
    decided = await call(
        "agreement", "decide", agreement["id"], "approve", "--reason", "ok", tok=auth["token"]
    )
    assert decided["status"] == "approved" and decided["effective_authorities"] == [HORSENS]
    assert [a["id"] for a in (await call("agreement", "list", tok=token))["agreements"]] == [
        agreement["id"]
    ]
    vl = await call("valuelist", "create", "borgere", "urn:oio:cpr:0101010001", tok=token)
    await call("valuelist", "add", vl["id"], "urn:oio:cpr:0202020002", tok=token)
    shown = await call("valuelist", "show", vl["id"], tok=token)
    assert shown["values"] == ["urn:oio:cpr:0101010001", "urn:oio:cpr:0202020002"]
    assert (await call("valuelist", "passivate", vl["id"], tok=token))["status"] == "passiveret"
    catalog = await call("catalog", "list", tok=token)
    assert any(t["id"] == TYPE1 for t in catalog["message_types"])
    sent = await sender.send(cpr_envelope(HORSENS, FOEDSEL, "0101010001"))
    assert sent["mailboxes"] == 0 and sent["duplicate"] is False
    events = (await call("audit", "--action", "send.", tok=ADMIN_TOKEN))["events"]
    assert [e["action"] for e in events] == ["send.accepted"]


async def test_audit_query_pages_and_keeps_the_newest(
    governed: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    import broker.governance

    monkeypatch.setattr(broker.governance, "AUDIT_PAGE", 3)  # force many pages
    admin = governed
    sender = await admin.system("pager")
    for i in range(7):
        env = cpr_envelope(AARHUS, FOEDSEL, f"{i:010d}")
        await sender.call("POST", "/v1/messages", json=env, expect=403)
    events = (
        await admin.call(
            "GET", "/v1/audit", params={"action": "send.refused", "limit": "5"}, expect=200
        )
    ).json()["events"]
    assert len(events) == 5
    times = [e["ts_ms"] for e in events]
    assert times == sorted(times, reverse=True)
    everything = (
        await admin.call(
            "GET", "/v1/audit", params={"action": "send.refused", "limit": "100"}, expect=200
        )
    ).json()["events"]
    assert len(everything) == 7


async def test_deliveries_and_acks_are_audited(governed: Api) -> None:
    admin = governed
    sender, receiver = await admin.system("s"), await admin.system("r")
    horsens = await _authority(admin, HORSENS)
    for sys, kind in ((sender, "send"), (receiver, "receive")):
        await _decide(horsens, await _agreement(sys, kind, [HORSENS]), True)
    mb = await receiver.mailbox(TYPE1)
    await sender.send(cpr_envelope(HORSENS, FOEDSEL, "0101010001"))
    (d,) = await receiver.poll(mb)
    await receiver.call(
        "POST", f"/v1/mailboxes/{mb}/ack", json={"delivery_ids": [d["delivery_id"]]}, expect=200
    )
    with trio.fail_after(5):  # the audit line rides the next group commit
        while True:
            events = (
                await admin.call("GET", "/v1/audit", params={"action": "delivery."}, expect=200)
            ).json()["events"]
            if len(events) == 2:
                break
            await trio.sleep(0.01)
    assert [e["action"] for e in events] == ["delivery.acked", "delivery.leased"]
    assert all(
        e["mailbox"] == mb and e["detail"]["delivery_ids"] == d["delivery_id"] for e in events
    )


async def test_a_batch_decides_each_envelope_on_its_own_facts(governed: Api) -> None:
    # the send decision is memoised per set of access facts within one request: envelopes that
    # share facts share the verdict, and envelopes that differ are never given another's verdict
    admin = governed
    sender = await admin.system("batch-sender")
    agreement = await _agreement(sender, "send", [AARHUS, HORSENS])
    await _decide(await _authority(admin, AARHUS), agreement, True)
    await _decide(await _authority(admin, HORSENS), agreement, False)
    batch = [
        cpr_envelope(AARHUS, FOEDSEL, "1"),
        cpr_envelope(HORSENS, FOEDSEL, "2"),  # Horsens rejected the agreement
        cpr_envelope(AARHUS, DOEDSFALD, "3"),
        cpr_envelope(HORSENS, FOEDSEL, "4"),
        cpr_envelope(AARHUS, FOEDSEL, "5", besked_type=str(uuid.uuid4())),  # not in the catalog
        cpr_envelope(AARHUS, FOEDSEL, "6"),
    ]
    r = await sender.call("POST", "/v1/messages/batch", json=batch, expect=200)
    results = r.json()["results"]
    codes = [res.get("error", {}).get("code") for res in results]
    assert codes[0] is None and codes[2] is None and codes[5] is None
    assert codes[1] is not None and codes[1] == codes[3]  # same facts, same refusal
    assert codes[4] == "unknown_message_type"
    assert r.json()["accepted"] == 3
    assert len({res["transaction_id"] for res in results if "transaction_id" in res}) == 3
