"""The HTTP API end to end: real hypercorn on 127.0.0.1:0, real LMDB in a temp dir."""

from __future__ import annotations

import json

import msgspec
import trio

from broker.server import ServerInfo
from tests.conftest import TYPE1, TYPE2, Api, FakeClock, envelope


async def test_send_poll_ack_roundtrip(admin: Api) -> None:
    sys = await admin.system()
    mb = await sys.mailbox(TYPE1)
    env = envelope(TYPE1)
    res = await sys.send(env)
    assert res["mailboxes"] == 1 and res["duplicate"] is False
    assert len(res["transaction_id"]) == 36

    st = await sys.stats(mb)
    assert (st["ready"], st["in_flight"], st["copy"], st["dead"]) == (1, 0, 0, 0)

    (d,) = await sys.poll(mb, max=10)
    assert d["attempt"] == 1
    got = d["envelope"]
    assert got["BeskedId"] == env["BeskedId"]
    assert got["Beskeddata"] == env["Beskeddata"]
    li = got["Beskedkuvert"]["Leveranceinformation"]
    assert li["TransaktionsId"] == {"UUIDIdentifikator": res["transaction_id"]}
    (route,) = li["Leveranceruter"]["Leverancerute"]
    assert route["ErLeveretIHenholdTil"]["UUIDIdentifikator"] == d["subscription_id"]
    assert route["LeveranceruteLokalUdvidelse"] == {"AntalLeveranceforsoeg": 1}
    assert route["ModtagetFraSystem"] == li["Kildesystem"]

    st = await sys.stats(mb)
    assert (st["ready"], st["in_flight"]) == (0, 1)
    r = await sys.call(
        "POST", f"/v1/mailboxes/{mb}/ack", json={"delivery_ids": [d["delivery_id"]]}, expect=200
    )
    assert r.json()["acked"] == 1
    st = await sys.stats(mb)
    assert (st["ready"], st["in_flight"], st["copy"]) == (0, 0, 1)


async def test_content_is_returned_byte_for_byte(admin: Api) -> None:
    sys = await admin.system()
    mb = await sys.mailbox(TYPE1)
    raw_json = b'{"b": [1,   2.50, "\\u00e6"], "a": {"nested": null}}'
    env = envelope(TYPE1)
    body = json.dumps({**env, "Beskeddata": ["PLACEHOLDER"]}).replace(
        '"PLACEHOLDER"', '{"json": ' + raw_json.decode() + "}"
    )
    await sys.call(
        "POST",
        "/v1/messages",
        content=body,
        headers={"Content-Type": "application/json"},
        expect=202,
    )
    r = await sys.call("GET", f"/v1/mailboxes/{mb}/messages", expect=200)
    assert raw_json in r.content  # the exact bytes, whitespace and escapes included


async def test_fan_out_and_isolation_between_systems(admin: Api) -> None:
    a, b = await admin.system("a"), await admin.system("b")
    mb_a1, mb_a2 = await a.mailbox(TYPE1), await a.mailbox(TYPE1, TYPE2)
    mb_b = await b.mailbox(TYPE2)
    assert (await a.send(envelope(TYPE1)))["mailboxes"] == 2
    assert (await a.send(envelope(TYPE2)))["mailboxes"] == 2
    assert [
        d["envelope"]["Beskedkuvert"]["Filtreringsdata"]["Beskedtype"]["UUIDIdentifikator"]
        for d in await a.poll(mb_a2, max=10)
    ] == [TYPE1, TYPE2]
    assert len(await a.poll(mb_a1, max=10)) == 1
    assert len(await b.poll(mb_b, max=10)) == 1
    # another system's mailbox is indistinguishable from a missing one
    for method, path in [
        ("GET", f"/v1/mailboxes/{mb_a1}"),
        ("GET", f"/v1/mailboxes/{mb_a1}/messages"),
        ("DELETE", f"/v1/mailboxes/{mb_a1}"),
        ("GET", f"/v1/mailboxes/{mb_a1}/subscriptions"),
    ]:
        r = await b.call(method, path, expect=404)
        assert r.json()["error"]["code"] == "not_found"
    listed = (await a.call("GET", "/v1/mailboxes", expect=200)).json()["mailboxes"]
    assert {m["id"] for m in listed} == {mb_a1, mb_a2}


async def test_duplicate_besked_id_is_deduplicated_per_sender(admin: Api) -> None:
    a, b = await admin.system("a"), await admin.system("b")
    mb = await a.mailbox(TYPE1)
    env = envelope(TYPE1, besked_id="01157488-c45c-4fd2-b076-1de12effbf66")
    first = await a.send(env)
    again = await a.send(env)
    assert again == {**first, "duplicate": True}
    upper = envelope(TYPE1, besked_id="01157488-C45C-4FD2-B076-1DE12EFFBF66")
    assert (await a.send(upper))["duplicate"] is True  # UUIDs compare case-insensitively
    other = await b.send(env)  # same BeskedId from another system is a different message
    assert other["duplicate"] is False and other["transaction_id"] != first["transaction_id"]
    assert (await a.stats(mb))["ready"] == 2


async def test_batch_one_bad_item_fails_only_itself(admin: Api) -> None:
    sys = await admin.system()
    mb = await sys.mailbox(TYPE1)
    good1, good2 = envelope(TYPE1), envelope(TYPE1)
    bad = envelope(TYPE1)
    del bad["BeskedVersion"]
    body = json.dumps([good1, bad, good2])
    r = await sys.call(
        "POST",
        "/v1/messages/batch",
        content=body,
        headers={"Content-Type": "application/json"},
        expect=200,
    )
    results = r.json()["results"]
    assert results[0]["mailboxes"] == 1 and results[2]["mailboxes"] == 1
    assert results[1]["error"]["code"] == "invalid_envelope"
    assert results[1]["error"]["path"] == "$[1]"
    assert "BeskedVersion" in results[1]["error"]["message"]
    assert (await sys.stats(mb))["ready"] == 2


async def test_batch_ndjson_and_msgpack(admin: Api) -> None:
    sys = await admin.system()
    mb = await sys.mailbox(TYPE1)
    nd = b"\n".join(json.dumps(envelope(TYPE1)).encode() for _ in range(3)) + b"\n"
    r = await sys.call(
        "POST",
        "/v1/messages/batch",
        content=nd,
        headers={"Content-Type": "application/x-ndjson"},
        expect=200,
    )
    assert r.json()["accepted"] == 3
    mp = msgspec.msgpack.encode([envelope(TYPE1), envelope(TYPE1)])
    r = await sys.call(
        "POST",
        "/v1/messages/batch",
        content=mp,
        headers={"Content-Type": "application/msgpack"},
        expect=200,
    )
    assert r.json()["accepted"] == 2
    single = msgspec.msgpack.encode(envelope(TYPE1))
    await sys.call(
        "POST",
        "/v1/messages",
        content=single,
        headers={"Content-Type": "application/msgpack"},
        expect=202,
    )
    deliveries = await sys.poll(mb, max=100)
    assert len(deliveries) == 6
    assert all(
        d["envelope"]["Beskeddata"] == [{"json": {"hello": "world", "n": 1}}] for d in deliveries
    )


async def test_lease_expiry_redelivers_with_next_attempt(
    admin: Api, server: ServerInfo, clock: FakeClock
) -> None:
    sys = await admin.system()
    mb = await sys.mailbox(TYPE1)
    await sys.send(envelope(TYPE1))
    (d1,) = await sys.poll(mb, lease=5)
    assert await sys.poll(mb) == []  # leased: not offered again
    clock.advance(6)
    # an ack after expiry is refused with a clear code, even before the sweeper ran
    r = await sys.call(
        "POST", f"/v1/mailboxes/{mb}/ack", json={"delivery_ids": [d1["delivery_id"]]}, expect=409
    )
    assert r.json()["error"]["code"] == "lease_expired"
    await server.broker.sweeper.sweep_once()
    (d2,) = await sys.poll(mb, lease=5)
    assert d2["attempt"] == 2 and d2["delivery_id"] != d1["delivery_id"]
    route = d2["envelope"]["Beskedkuvert"]["Leveranceinformation"]["Leveranceruter"][
        "Leverancerute"
    ][-1]
    assert route["LeveranceruteLokalUdvidelse"]["AntalLeveranceforsoeg"] == 2
    # the first lease's id is stale now
    r = await sys.call(
        "POST", f"/v1/mailboxes/{mb}/ack", json={"delivery_ids": [d1["delivery_id"]]}, expect=409
    )
    assert r.json()["error"]["code"] == "unknown_delivery"
    await sys.call(
        "POST", f"/v1/mailboxes/{mb}/ack", json={"delivery_ids": [d2["delivery_id"]]}, expect=200
    )


async def test_max_deliveries_dead_letters_and_requeue(
    admin: Api, server: ServerInfo, clock: FakeClock
) -> None:
    sys = await admin.system()
    mb = await sys.mailbox(TYPE1, max_deliveries=2)
    await sys.send(envelope(TYPE1))
    for attempt in (1, 2):
        (d,) = await sys.poll(mb, lease=1)
        assert d["attempt"] == attempt
        clock.advance(2)
        await server.broker.sweeper.sweep_once()
    st = await sys.stats(mb)
    assert (st["ready"], st["in_flight"], st["dead"]) == (0, 0, 1)
    dead = (await sys.call("GET", f"/v1/mailboxes/{mb}/dead-letters", expect=200)).json()[
        "dead_letters"
    ]
    assert len(dead) == 1 and dead[0]["reason"] == "max_deliveries"
    r = await sys.call("POST", f"/v1/mailboxes/{mb}/dead-letters/requeue", json={}, expect=200)
    assert r.json()["requeued"] == 1
    (d,) = await sys.poll(mb)
    assert d["attempt"] == 1


async def test_nack_requeue_and_dead_letter(admin: Api) -> None:
    sys = await admin.system()
    mb = await sys.mailbox(TYPE1)
    await sys.send(envelope(TYPE1))
    await sys.send(envelope(TYPE1))
    d1, d2 = await sys.poll(mb, max=2)
    r = await sys.call(
        "POST",
        f"/v1/mailboxes/{mb}/nack",
        json={"delivery_ids": [d1["delivery_id"]], "requeue": True},
        expect=200,
    )
    assert r.json()["nacked"] == 1
    await sys.call(
        "POST",
        f"/v1/mailboxes/{mb}/nack",
        json={"delivery_ids": [d2["delivery_id"]], "requeue": False},
        expect=200,
    )
    (again,) = await sys.poll(mb, max=10)
    assert again["envelope"]["BeskedId"] == d1["envelope"]["BeskedId"] and again["attempt"] == 2
    st = await sys.stats(mb)
    assert (st["in_flight"], st["dead"]) == (1, 1)


async def test_order_is_kept_and_redelivery_keeps_position(
    admin: Api, server: ServerInfo, clock: FakeClock
) -> None:
    sys = await admin.system()
    mb = await sys.mailbox(TYPE1)
    ids = [
        (await sys.send(envelope(TYPE1, besked_id=f"id-{i}")))["transaction_id"] for i in range(5)
    ]
    first = await sys.poll(mb, max=2, lease=1)
    clock.advance(2)
    await server.broker.sweeper.sweep_once()
    order = [
        d["envelope"]["Beskedkuvert"]["Leveranceinformation"]["TransaktionsId"]["UUIDIdentifikator"]
        for d in await sys.poll(mb, max=10)
    ]
    assert order == ids
    assert len(first) == 2


async def test_strict_mailbox_is_head_of_line_fifo(
    admin: Api, server: ServerInfo, clock: FakeClock
) -> None:
    sys = await admin.system()
    mb = await sys.mailbox(TYPE1, strict=True)
    for i in range(3):
        await sys.send(envelope(TYPE1, besked_id=f"s-{i}"))
    (head,) = await sys.poll(mb, max=1, lease=5)
    assert head["envelope"]["BeskedId"]["UUIDIdentifikator"] == "s-0"
    assert await sys.poll(mb, max=10) == []  # nothing later while the head is in flight
    clock.advance(6)
    await server.broker.sweeper.sweep_once()
    (again,) = await sys.poll(mb, max=1)
    assert again["envelope"]["BeskedId"]["UUIDIdentifikator"] == "s-0" and again["attempt"] == 2
    await sys.call(
        "POST", f"/v1/mailboxes/{mb}/ack", json={"delivery_ids": [again["delivery_id"]]}, expect=200
    )
    rest = await sys.poll(mb, max=10)
    assert [d["envelope"]["BeskedId"]["UUIDIdentifikator"] for d in rest] == ["s-1", "s-2"]


async def test_strict_mailbox_wakes_its_long_poll_when_the_head_is_acked(admin: Api) -> None:
    sys = await admin.system()
    mb = await sys.mailbox(TYPE1, strict=True)
    for i in range(2):
        await sys.send(envelope(TYPE1, besked_id=f"h-{i}"))
    (head,) = await sys.poll(mb, max=1)
    got: list[list[dict[str, object]]] = []

    async def waiter() -> None:  # waits behind the head in flight
        got.append(await sys.poll(mb, wait=10))

    with trio.fail_after(5):  # well under the poll's wait: the ack must wake it
        async with trio.open_nursery() as n:
            n.start_soon(waiter)
            await trio.sleep(0.2)
            assert not got
            await sys.call(
                "POST", f"/v1/mailboxes/{mb}/ack", json={"delivery_ids": [head["delivery_id"]]}
            )
    assert [d["envelope"]["BeskedId"]["UUIDIdentifikator"] for d in got[0]] == ["h-1"]


async def test_long_poll_wakes_on_commit(admin: Api) -> None:
    sys = await admin.system()
    mb = await sys.mailbox(TYPE1)
    got: list[list[dict[str, object]]] = []

    async def waiter() -> None:
        got.append(await sys.poll(mb, wait=10))

    with trio.fail_after(5):
        async with trio.open_nursery() as n:
            n.start_soon(waiter)
            await trio.sleep(0.2)
            await sys.send(envelope(TYPE1))
    assert len(got[0]) == 1


async def test_long_poll_times_out_empty(admin: Api) -> None:
    sys = await admin.system()
    mb = await sys.mailbox(TYPE1)
    start = trio.current_time()
    assert await sys.poll(mb, wait=0.3) == []
    assert trio.current_time() - start >= 0.29


async def test_replay_moves_copies_back(admin: Api) -> None:
    sys = await admin.system()
    mb = await sys.mailbox(TYPE1)
    await sys.send(envelope(TYPE1))
    (d,) = await sys.poll(mb)
    await sys.call(
        "POST", f"/v1/mailboxes/{mb}/ack", json={"delivery_ids": [d["delivery_id"]]}, expect=200
    )
    r = await sys.call("POST", f"/v1/mailboxes/{mb}/replay", json={}, expect=200)
    assert r.json()["replayed"] == 1
    (again,) = await sys.poll(mb)
    assert again["envelope"]["BeskedId"] == d["envelope"]["BeskedId"]


async def test_copy_retention_purges(admin: Api, server: ServerInfo, clock: FakeClock) -> None:
    sys = await admin.system()
    mb = await sys.mailbox(TYPE1, retention_s=60)
    await sys.send(envelope(TYPE1))
    (d,) = await sys.poll(mb)
    await sys.call(
        "POST", f"/v1/mailboxes/{mb}/ack", json={"delivery_ids": [d["delivery_id"]]}, expect=200
    )
    assert (await sys.stats(mb))["copy"] == 1
    clock.advance(61)
    await server.broker.sweeper.sweep_once()
    assert (await sys.stats(mb))["copy"] == 0
    assert server.broker.store.statistics().messages == 0  # body collected once unreferenced


async def test_delete_mailbox_and_subscription(admin: Api) -> None:
    sys = await admin.system()
    mb = await sys.mailbox()
    sub = (
        await sys.call(
            "POST", f"/v1/mailboxes/{mb}/subscriptions", json={"message_types": [TYPE1]}, expect=201
        )
    ).json()
    assert sub["message_types"] == [TYPE1]
    subs = (await sys.call("GET", f"/v1/mailboxes/{mb}/subscriptions", expect=200)).json()[
        "subscriptions"
    ]
    assert [s["id"] for s in subs] == [sub["id"]]
    await sys.call("DELETE", f"/v1/mailboxes/{mb}/subscriptions/{sub['id']}", expect=204)
    assert (await sys.send(envelope(TYPE1)))["mailboxes"] == 0
    await sys.call("DELETE", f"/v1/mailboxes/{mb}", expect=204)
    await sys.call("GET", f"/v1/mailboxes/{mb}", expect=404)


async def test_health_metrics_openapi(admin: Api) -> None:
    r = await admin.http.get("/healthz")
    assert r.status_code == 200
    r = await admin.http.get("/readyz")
    assert r.status_code == 200
    sys = await admin.system()
    await sys.mailbox(TYPE1)
    await sys.send(envelope(TYPE1))
    r = await admin.call("GET", "/metrics", expect=200)
    assert "dueslag_envelopes_accepted_total 1.0" in r.text
    await sys.call("GET", "/metrics", expect=403)
    assert (await admin.http.get("/metrics")).status_code == 401
    doc = (await sys.call("GET", "/openapi.json", expect=200)).json()
    assert doc["openapi"].startswith("3.1")
    assert "/v1/messages/batch" in doc["paths"]


async def test_subscription_active_flag_and_expression_change(admin: Api) -> None:
    sys = await admin.system()
    mb = await sys.mailbox()
    sub = (
        await sys.call(
            "POST", f"/v1/mailboxes/{mb}/subscriptions", json={"message_types": [TYPE1]}, expect=201
        )
    ).json()
    path = f"/v1/mailboxes/{mb}/subscriptions/{sub['id']}"
    r = await sys.call("PATCH", path, json={"active": False}, expect=200)
    assert r.json()["active"] is False
    assert (await sys.send(envelope(TYPE1)))["mailboxes"] == 0
    await sys.call(
        "PATCH",
        path,
        json={
            "active": True,
            "expression": "Beskedkuvert.Filtreringsdata.BeskedAnsvarligAktoer = 'x'",
        },
        expect=200,
    )
    assert (await sys.send(envelope(TYPE1)))["mailboxes"] == 0
    assert (await sys.send(envelope(TYPE1, BeskedAnsvarligAktoer={"UUIDIdentifikator": "x"})))[
        "mailboxes"
    ] == 1
    r = await sys.call("PATCH", path, json={"expression": None}, expect=200)
    assert r.json()["expression"] is None
    assert (await sys.send(envelope(TYPE1)))["mailboxes"] == 1
    r = await sys.call("PATCH", path, json={"expression": "nonsense ="}, expect=400)
    assert r.json()["error"]["code"] == "invalid_expression"
    await sys.call(
        "PATCH",
        f"/v1/mailboxes/{mb}/subscriptions/00000000-0000-0000-0000-000000000000",
        json={"active": False},
        expect=404,
    )


async def test_expired_leases_are_audited(admin: Api, server: ServerInfo, clock: FakeClock) -> None:
    sys = await admin.system()
    mb = await sys.mailbox(TYPE1, max_deliveries=1)
    await sys.send(envelope(TYPE1, besked_id="x-1"))
    await sys.poll(mb, max=1, lease=5)
    clock.advance(6)
    result = await server.broker.sweeper.sweep_once()
    assert (result.expired_leases, result.dead_lettered) == (1, 1)
    with trio.fail_after(5):  # the audit line rides the next group commit
        while True:
            r = await admin.call("GET", "/v1/audit", params={"action": "delivery.expired"})
            events = r.json()["events"]
            if events:
                break
            await trio.sleep(0.01)
    (event,) = events
    assert event["actor"] == "broker"
    assert event["detail"] == {"expired_leases": "1", "dead_lettered": "1"}
