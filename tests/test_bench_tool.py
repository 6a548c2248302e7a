"""The load tester (``broker/loadtest``, ``dueslag bench``): its accounting, its scenarios, and
short runs against a live broker with access control ON (the bench sets up its own systems,
authority tokens, approved agreements, mailboxes and subscriptions).

Must hold (the performance issue): a short run reports 0 lost and 0 duplicated, sent ==
confirmed, and its counts match the broker's own ``/metrics`` deltas.

Rules: 127.0.0.1 only, small rates, every run bounded by its scenario's duration and drain and an
absolute ``trio.fail_after``. The pure parts (ledger, scenarios, topology, envelopes, metrics
parsing, poll booking) are tested synchronously on synthetic data.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.codec import JSON, decode_envelope
from broker.config import BrokerConfig
from broker.delivery import deliveries_out
from broker.loadtest import BUILTIN, add_bench_arguments, load_scenario, run_bench
from broker.loadtest.envelopes import EnvelopeFactory, IdScheme
from broker.loadtest.latency import LatencyRecorder
from broker.loadtest.ledger import Ledger, LedgerFull, Receipt
from broker.loadtest.publishers import (
    Result,
    ResultError,
    confirm_results,
    run_baseline,
    take_envelopes,
)
from broker.loadtest.receivers import BROKER_SAMPLE, book_poll, broker_ms
from broker.loadtest.receivers import _Poll as _PollView  # the bench's own view of a poll
from broker.loadtest.runner import BenchError, run_scenario
from broker.loadtest.scenario import ScenarioError, with_overrides
from broker.loadtest.servermetrics import delta, parse_metrics
from broker.loadtest.state import RunState
from broker.loadtest.stream import StreamUnavailable, check_stream
from broker.loadtest.topology import CatalogType, catalog_types, plan_topology
from broker.server import ServerInfo, serve
from store.base import Delivery
from tests.conftest import ADMIN_TOKEN
from tests.serverproc import ServerProcess
from tests.strategies import haendelsesbesked

CATALOG_FILE = Path(__file__).resolve().parent.parent / "catalog" / "data" / "demo_catalog.json"
CONTRACT_KEYS = {
    "scenario", "sent", "confirmed", "delivered", "lost", "duplicates", "throughput", "latency_ms",
}  # fmt: skip


def _catalog() -> list[CatalogType]:
    data = json.loads(CATALOG_FILE.read_text())
    types = data["message_types"] if isinstance(data, dict) else data
    return catalog_types(json.dumps({"message_types": types}).encode())


# ---------------------------------------------------------------------------- the ledger


def _ledger(routes: list[list[int]] | None = None, mailboxes: int = 3, cap: int = 1000) -> Ledger:
    # type 0 -> mailbox 0; type 1 -> mailboxes 1 and 2; type 2 -> nowhere
    return Ledger(routes or [[0], [1, 2], []], mailboxes, max_envelopes=cap)


def test_first_delivery_then_same_attempt_again_is_a_duplicate() -> None:
    led = _ledger()
    n = led.add_sent(0, 0.0)
    assert led.confirm(n)
    assert led.outstanding == 1
    assert led.deliver(0, n, 1) is Receipt.FIRST
    assert led.outstanding == 0
    assert led.deliver(0, n, 1) is Receipt.DUPLICATE
    acc = led.close()
    assert (acc.delivered, acc.duplicates, acc.lost, acc.redelivered) == (1, 1, 0, 0)


def test_redelivery_with_a_higher_attempt_is_not_a_duplicate() -> None:
    led = _ledger()
    n = led.add_sent(1, 0.0)
    led.confirm(n)
    assert led.deliver(1, n, 1) is Receipt.FIRST
    assert led.deliver(1, n, 2) is Receipt.REDELIVERY  # lease expired, delivered again
    assert led.deliver(1, n, 3) is Receipt.REDELIVERY
    assert led.deliver(1, n, 3) is Receipt.DUPLICATE  # the same attempt twice
    assert led.deliver(1, n, 2) is Receipt.DUPLICATE  # an older attempt after a newer one
    assert led.deliver(2, n, 1) is Receipt.FIRST  # the other expected mailbox
    acc = led.close()
    assert (acc.delivered, acc.redelivered, acc.duplicates, acc.lost) == (2, 2, 2, 0)


def test_first_seen_attempt_may_be_higher_than_one() -> None:
    led = _ledger()
    n = led.add_sent(0, 0.0)
    led.confirm(n)
    assert led.deliver(0, n, 3) is Receipt.FIRST  # earlier attempts were never seen by us
    assert led.deliver(0, n, 3) is Receipt.DUPLICATE
    assert led.close().delivered == 1


def test_lost_counts_confirmed_envelopes_missing_any_expected_mailbox() -> None:
    led = _ledger()
    a, b, c, _d = (led.add_sent(t, 0.0) for t in (1, 1, 0, 1))
    for n in (a, b, c):
        led.confirm(n)
    led.deliver(1, a, 1)
    led.deliver(2, a, 1)  # a: complete
    led.deliver(1, b, 1)  # b: mailbox 2 missing
    # c: never delivered; d: not confirmed, never delivered -> unconfirmed, not lost
    assert led.outstanding == 2
    acc = led.close()
    assert (acc.lost, acc.lost_deliveries, acc.unconfirmed) == (2, 2, 1)
    assert acc.expected_deliveries == 5


def test_delivery_before_confirm_is_accounted() -> None:
    led = _ledger()
    n = led.add_sent(1, 0.0)
    assert led.deliver(1, n, 1) is Receipt.FIRST  # the receiver was faster than the answer
    assert led.outstanding == 0
    led.confirm(n)
    assert led.outstanding == 1  # mailbox 2 still to come
    assert not led.confirm(n)  # a retry's confirm counts once
    led.deliver(2, n, 1)
    assert led.outstanding == 0
    acc = led.close()
    assert (acc.confirmed, acc.delivered, acc.lost) == (1, 2, 0)


def test_misrouted_foreign_and_refused() -> None:
    led = _ledger()
    n = led.add_sent(0, 0.0)
    led.confirm(n)
    assert led.deliver(2, n, 1) is Receipt.MISROUTED  # type 0 is not subscribed in mailbox 2
    assert led.deliver(0, None, 1) is Receipt.FOREIGN  # not this run's BeskedId
    assert led.deliver(0, 999, 1) is Receipt.FOREIGN  # never sent
    m = led.add_sent(2, 0.0)
    led.refuse(m, "no_send_agreement")
    acc = led.close()
    assert (acc.misrouted, acc.foreign, acc.refused) == (1, 2, 1)
    assert acc.refused_by_code == {"no_send_agreement": 1}
    assert acc.lost == 1  # n never reached mailbox 0


def test_ledger_capacity_is_bounded() -> None:
    led = _ledger(cap=2)
    led.add_sent(0, 0.0)
    led.add_sent(0, 0.0)
    with pytest.raises(LedgerFull):
        led.add_sent(0, 0.0)


@settings(max_examples=40, deadline=None)  # ~0.15 s each: four 1 µs..1 h histograms
@given(st.lists(st.integers(min_value=-10, max_value=5_000_000_000), max_size=300))
def test_record_many_by_bucket_equals_recording_each_value(values: list[int]) -> None:
    """record_many counts by bucket before recording: the histogram (counts, min, max, mean,
    percentiles) is exactly what recording every value one by one gives."""
    many, each = LatencyRecorder("many"), LatencyRecorder("each")
    many.record_many(values)
    for v in values:
        each.record(v)
    for a, b in ((many.total, each.total), (many.window, each.window)):
        assert a.get_total_count() == b.get_total_count() == len(values)
        assert list(a.counts) == list(b.counts)
        assert (a.get_min_value(), a.get_max_value()) == (b.get_min_value(), b.get_max_value())
    assert many.summary() == each.summary()
    assert many.distribution() == each.distribution()


def test_synthetic_stream_with_redeliveries_and_injected_duplicates() -> None:
    """Random streams: every copy is either a first delivery, a redelivery with a higher
    attempt, or an injected duplicate; the ledger must count exactly the injected ones."""
    rnd = random.Random(20261127)
    routes = [[0], [1, 2], [0, 1, 2], [3]]
    for _ in range(20):
        led = Ledger(routes, 4, max_envelopes=10_000)
        injected = redeliveries = 0
        copies: list[tuple[int, int, int]] = []
        for _ in range(rnd.randint(50, 300)):
            t = rnd.randrange(len(routes))
            n = led.add_sent(t, 0.0)
            led.confirm(n)
            for mb in routes[t]:
                attempts = sorted(rnd.sample(range(1, 6), rnd.randint(1, 3)))
                redeliveries += len(attempts) - 1
                for a in attempts:
                    copies.append((mb, n, a))
                    if rnd.random() < 0.1:  # the same copy seen again
                        copies.append((mb, n, a))
                        injected += 1
        # per (mailbox, envelope) copies stay in attempt order; across them any interleaving
        for mb, n, a in copies:
            led.deliver(mb, n, a)
        acc = led.close()
        assert (acc.duplicates, acc.redelivered, acc.lost) == (injected, redeliveries, 0)
        assert acc.delivered == acc.expected_deliveries


# ---------------------------------------------------------------------------- scenarios


def test_builtin_scenarios() -> None:
    assert {"fanout", "stream", "single", "latency"} <= set(BUILTIN)
    f = BUILTIN["fanout"]
    assert (f.mode, f.mailboxes, f.fanout_min, f.fanout_max, f.envelope_bytes, f.durable) == (
        "batch", 10, 1, 3, 1024, True,
    )  # fmt: skip
    assert f.batch > 1 and f.rate is None
    assert (BUILTIN["single"].mode, BUILTIN["single"].batch) == ("single", 1)
    assert (BUILTIN["stream"].mode, BUILTIN["stream"].batch) == ("stream", 1)
    assert BUILTIN["latency"].rate == 1000.0
    for name in BUILTIN:
        assert load_scenario(name) is BUILTIN[name]


def test_scenario_from_a_json_file(tmp_path: Path) -> None:
    p = tmp_path / "mine.json"
    p.write_text(
        json.dumps(
            {
                "name": "mine",
                "mode": "single",
                "batch": 1,
                "rate": 50,
                "mailboxes": 4,
                "fanout_max": 2,
            }
        )
    )
    s = load_scenario(str(p))
    assert (s.name, s.mode, s.rate, s.mailboxes, s.fanout_max) == ("mine", "single", 50, 4, 2)
    p.write_text(json.dumps({"name": "bad", "senders": 0}))
    with pytest.raises(ScenarioError) as err:
        load_scenario(str(p))
    assert err.value.path == "$.senders"
    p.write_text(json.dumps({"name": "bad", "sendrs": 2}))
    with pytest.raises(ScenarioError, match="sendrs"):
        load_scenario(str(p))


def test_unknown_scenario_lists_the_builtins() -> None:
    with pytest.raises(ScenarioError, match=r"built-in: drain, fanout, latency, single, stream"):
        load_scenario("nope")


def test_overrides_are_validated_again() -> None:
    s = with_overrides(BUILTIN["fanout"], duration_s=3, rate=200.0, batch=None, senders=2)
    assert (s.duration_s, s.rate, s.batch, s.senders) == (3, 200.0, 100, 2)
    assert with_overrides(s, rate="max").rate is None
    with pytest.raises(ScenarioError, match="batch must be 1"):
        with_overrides(BUILTIN["single"], batch=10)
    with pytest.raises(ScenarioError) as err:
        with_overrides(BUILTIN["fanout"], batch=5001)
    assert err.value.path == "$.batch"
    with pytest.raises(ScenarioError, match="fanout_max"):
        with_overrides(BUILTIN["fanout"], mailboxes=2)


def test_cli_arguments_are_the_contracts() -> None:
    p = argparse.ArgumentParser()
    add_bench_arguments(p)
    argv = (
        "--broker http://127.0.0.1:9 --admin-token T --scenario single --duration 7 "
        "--json out.json --chart c.png --rate max --senders 3 --count 100 --quiet"
    )
    a = p.parse_args(argv.split(" "))
    assert (a.broker, a.admin_token, a.scenario, a.duration, a.json, a.chart) == (
        "http://127.0.0.1:9", "T", "single", 7.0, "out.json", "c.png",
    )  # fmt: skip
    assert (a.rate, a.senders, a.count, a.quiet, a.batch) == ("max", 3, 100, True, None)
    with pytest.raises(SystemExit):
        p.parse_args(["--json", "x", "--rate", "-1"])


# ---------------------------------------------------------------------------- topology, envelopes


def test_topology_fanout_and_selectivity() -> None:
    catalog = _catalog()
    topo = plan_topology(catalog, BUILTIN["fanout"])
    assert not any(t.name.startswith("Test/") for t in topo.types)  # the demo set-up's types
    assert all(1 <= len(r) <= 3 for r in topo.routes)
    assert {len(r) for r in topo.routes} == {1, 2, 3}
    assert all(topo.subscriptions(m) for m in range(10))
    assert 1.5 < topo.expected_fanout() < 2.5
    half = plan_topology(catalog, with_overrides(BUILTIN["fanout"], match_ratio=0.5))
    unmatched = sum(1 for t in half.sequence if not half.routes[t])
    assert unmatched == len(half.sequence) // 2
    named = plan_topology(
        catalog,
        with_overrides(
            BUILTIN["fanout"],
            message_types=["ORG_Bruger", "d2bed63c-4853-4008-b6e0-a74c15b15fbf"],
            fanout_max=1,
        ),
    )
    assert [t.name for t in named.types] == ["ORG_Bruger", "PKO_PostStatus"]
    with pytest.raises(ScenarioError) as err:
        plan_topology(catalog, with_overrides(BUILTIN["fanout"], message_types=["nope"]))
    assert err.value.path == "$.message_types[0]"


def test_envelopes_are_valid_realistic_and_numbered() -> None:
    topo = plan_topology(_catalog(), BUILTIN["fanout"])
    ids = IdScheme("t1")
    cvrs = ["55133018", "29189889"]
    factory = EnvelopeFactory(topo, cvrs, ids, 1024, run_id="t1")
    seen_actions: set[str] = set()
    for n in (0, 1, 2, 17, 999, 123_456, 2**40):
        t = factory.type_of(n)
        raw = factory.build(n, t, 1_800_000_000_000_000_000)
        assert abs(len(raw) - 1024) <= 16
        besked = decode_envelope(raw, JSON)  # what the broker's strict decoder accepts
        assert ids.parse(besked.BeskedId.value) == n
        data = besked.Beskedkuvert.Filtreringsdata
        assert data.Beskedtype.value == topo.types[t].id
        reg = data.ObjektRegistrering[0]
        assert reg.ObjektAnsvarligMyndighed is not None and reg.ObjektId is not None
        assert reg.ObjektAnsvarligMyndighed.value[-8:] in cvrs
        assert reg.ObjektId.value.startswith("urn:oio:cpr:") and len(reg.ObjektId.value) == 22
        assert reg.ObjektHandling is not None
        assert reg.ObjektHandling.value in {a.id for a in topo.types[t].object_actions}
        seen_actions.add(reg.ObjektHandling.value)
        content = json.loads(raw)["Beskeddata"][0]["json"]["dueslag_bench"]
        assert content == {"run": "t1", "n": n, "sent_ns": 1_800_000_000_000_000_000}
    assert len(seen_actions) > 1
    assert ids.parse(ids.besked_id(5).upper()) == 5
    assert IdScheme("other").parse(ids.besked_id(5)) is None
    batch = factory.batch_body([factory.build(n, factory.type_of(n), 1) for n in range(3)])
    assert len(json.loads(batch)) == 3


def test_metrics_parsing_and_deltas() -> None:
    before = parse_metrics(
        "# HELP x\ndueslag_envelopes_accepted_total 10.0\n"
        'dueslag_envelopes_rejected_total{code="invalid_envelope"} 1.0\n'
        "dueslag_commit_seconds_count 4\ndueslag_commit_seconds_sum 0.2\ndueslag_commit_ops_sum 40\n"
    )
    after = parse_metrics(
        "dueslag_envelopes_accepted_total 110.0 1700000000000\n"
        'dueslag_envelopes_rejected_total{code="invalid_envelope"} 3.0\n'
        "dueslag_deliveries_acked_total 190\n"
        "dueslag_commit_seconds_count 14\ndueslag_commit_seconds_sum 0.7\ndueslag_commit_ops_sum 240\n"
    )
    d = delta(before, after)
    assert (d["envelopes_accepted"], d["deliveries_acked"], d["commits"]) == (100, 190, 10)
    assert d["envelopes_rejected"] == {"invalid_envelope": 2}
    assert (d["ops_per_commit"], d["ms_per_commit"]) == (20.0, 50.0)


def test_book_poll_classifies_and_measures() -> None:
    topo = plan_topology(_catalog(), BUILTIN["fanout"])
    ids = IdScheme("p")
    factory = EnvelopeFactory(topo, ["55133018"], ids, 1024)
    ledger = Ledger(topo.routes, topo.mailboxes, max_envelopes=100)
    state = RunState(BUILTIN["fanout"], ledger, factory, ids)
    n = ledger.add_sent(factory.type_of(0), 10.0)
    ledger.confirm(n)
    mb = topo.routes[factory.type_of(0)][0]

    def poll(*copies: tuple[str, int]) -> bytes:
        deliveries = [
            {
                "delivery_id": f"{i}-{a}",
                "attempt": a,
                "subscription_id": "s",
                "lease_expires_ms": 0,
                "envelope": {"BeskedId": {"UUIDIdentifikator": bid}, "Beskedkuvert": {}},
            }
            for i, (bid, a) in enumerate(copies)
        ]
        return msgspec.json.encode({"deliveries": deliveries})

    got = book_poll(
        state, mb, poll((ids.besked_id(n), 1), (ids.besked_id(n), 1), ("elsewhere", 1)), 10.25
    )
    assert got == ["0-1", "1-1", "2-1"]  # everything is acked, whatever it was
    assert (ledger.delivered, ledger.duplicates, ledger.foreign, state.received) == (1, 1, 1, 3)
    assert state.deliver_latency.count() == 1
    assert 249 <= (state.deliver_latency.percentile_ms(50) or 0) <= 251
    book_poll(state, mb, poll((ids.besked_id(n), 2)), 11.0)
    assert (ledger.redelivered, ledger.duplicates, state.deliver_latency.count()) == (1, 1, 1)


def test_paced_batches_count_the_wait_to_fill_them() -> None:
    """At a fixed rate a batch goes out when its last envelope is due; the earlier ones were
    due 1/rate apart before it, and their confirm latency includes that wait."""
    topo = plan_topology(_catalog(), BUILTIN["fanout"])
    ids = IdScheme("b")
    factory = EnvelopeFactory(topo, ["55133018"], ids, 1024)
    ledger = Ledger(topo.routes, topo.mailboxes, max_envelopes=100)
    state = RunState(with_overrides(BUILTIN["fanout"], count=7), ledger, factory, ids)
    ns = take_envelopes(state, 5, 10.0, 0.1)
    assert [round(ledger.sent_at[n], 6) for n in ns] == [9.6, 9.7, 9.8, 9.9, 10.0]
    state.clock = lambda: 10.5
    ok = Result(transaction_id="t", mailboxes=None, duplicate=False)
    refused = Result(error=ResultError("no_send_agreement"))
    confirm_results(state, ns, [ok, ok, ok, ok, refused], retried=False)
    assert (ledger.confirmed, ledger.refused_by_code["no_send_agreement"]) == (4, 1)
    assert state.confirm_latency.count() == 4
    assert 599 <= (state.confirm_latency.percentile_ms(0) or 0) <= 601  # 10.5 - 9.9
    assert 899 <= (state.confirm_latency.percentile_ms(100) or 0) <= 901  # 10.5 - 9.6
    assert len(take_envelopes(state, 5, 11.0)) == 2  # the count (7) ends it
    assert state.stop_sending.is_set()


# ---------------------------------------------------------------------------- live runs


@pytest.fixture
async def governed_server(nursery: trio.Nursery, tmp_path: Path) -> ServerInfo:
    """A real broker on 127.0.0.1:0 with access control ON and the wall clock."""
    config = BrokerConfig(
        data_dir=str(tmp_path / "data"),
        bind="127.0.0.1:0",
        admin_token=ADMIN_TOKEN,
        graceful_timeout_s=0.5,
    )
    info: ServerInfo = await nursery.start(partial(serve, config))
    return info


def _assert_accounted(report: dict[str, Any]) -> None:
    assert set(report) >= CONTRACT_KEYS
    assert report["sent"] > 0
    assert report["lost"] == 0 and report["duplicates"] == 0, report["accounting"]
    assert report["sent"] == report["confirmed"], (report["accounting"], report["errors"])
    acc, server = report["accounting"], report["server"]
    assert acc["misrouted"] == 0 and acc["foreign"] == 0 and acc["refused"] == 0
    assert report["delivered"] == acc["expected_deliveries"] > 0
    # the broker's own counters agree (nothing else talks to this broker)
    assert server["envelopes_accepted"] == report["confirmed"]
    assert server["envelopes_duplicate"] == 0
    assert server["deliveries_created"] == report["delivered"]
    assert server["deliveries_acked"] == acc["acked"] == report["delivered"] + acc["redelivered"], (
        acc,
        report["errors"],
        report["events"],
        server,
    )
    assert server["deliveries_leased"] == acc["received"]
    assert all(report["checks"].values()), report["checks"]
    assert set(report["throughput"]) >= {"publish_per_s", "deliver_per_s"}
    assert report["throughput"]["publish_per_s"] > 0 and report["throughput"]["deliver_per_s"] > 0
    assert (
        report["latency_ms"]["p50"] is not None
        and report["latency_ms"]["p99"] >= report["latency_ms"]["p50"]
    )
    # the broker's share, read from every BROKER_SAMPLE-th first copy: each is part of that
    # copy's send->delivered (to the millisecond of its Leverancerute)
    broker, delivered = report["latency_ms"]["broker"], report["latency_ms"]["delivered"]
    assert broker["sampled_every"] == BROKER_SAMPLE
    assert broker["count"] == delivered["count"] // BROKER_SAMPLE > 0
    assert broker["max"] <= delivered["max"] * 1.001 + 1.0, (broker, delivered)


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("fanout", {"rate": 300.0, "senders": 2, "batch": 20}),
        ("fanout", {"rate": 300.0, "senders": 2, "batch": 20, "consume": "poll"}),
        ("single", {"rate": 60.0, "senders": 3, "baseline_s": 0.5}),
        ("drain", {"rate": 200.0, "senders": 2, "batch": 25}),
        # the count ends this one; the duration only bounds it (a loaded machine is slow)
        ("fanout", {"rate": "max", "count": 300, "senders": 3, "batch": 7, "duration_s": 30.0}),
    ],
)
async def test_short_run_accounts_for_every_envelope(
    governed_server: ServerInfo, name: str, overrides: dict[str, Any]
) -> None:
    scenario = with_overrides(BUILTIN[name], **{"duration_s": 2.0, "drain_s": 20.0, **overrides})
    with trio.fail_after(90):
        report = await run_scenario(scenario, governed_server.url, ADMIN_TOKEN)
    _assert_accounted(report)
    assert report["scenario"] == name
    assert report["setup"]["authorities"] and report["setup"]["mean_fanout"] > 1
    if name == "single":
        assert report["baseline"]["per_s"] > 0 and report["baseline"]["ratio"] > 0
        post = report["baseline_post"]
        assert post["endpoint"] == "POST /healthz" and post["failed"] == 0
        assert post["body_bytes"] == report["setup"]["envelope_bytes"]
        assert post["per_s"] > 0 and post["ratio"] > 0
        for b in (report["baseline"], post):  # before the load and after it, merged
            before, after = b["runs"]
            assert b["endpoint"] == before["endpoint"] == after["endpoint"]
            assert b["requests"] == before["requests"] + after["requests"] > 0
            assert b["per_s"] == round(b["requests"] / b["seconds"], 1)
            assert before["seconds"] >= 0.5 and after["seconds"] >= 0.5
            assert before["ratio"] > 0 and after["ratio"] > 0
    if "count" in overrides:
        assert report["sent"] == overrides["count"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"rate": 150.0},
        # unpaced: the frames the window has room for go out in one write (COALESCE_FRAMES)
        {"rate": "max", "count": 400, "window": 40, "duration_s": 30.0},
    ],
)
async def test_stream_run_accounts_for_every_envelope(
    governed_server: ServerInfo, overrides: dict[str, Any]
) -> None:
    scenario = with_overrides(
        BUILTIN["stream"], **{"duration_s": 2.0, "drain_s": 20.0, **overrides}
    )
    with trio.fail_after(90):
        try:
            report = await run_scenario(scenario, governed_server.url, ADMIN_TOKEN)
        except BenchError as exc:  # a broker built without the publish stream
            if "not available on this server" not in str(exc):
                raise
            pytest.skip(str(exc))
    _assert_accounted(report)
    if "count" in overrides:
        assert report["sent"] == report["confirmed"] == overrides["count"]


async def test_stream_unavailable_says_so(nursery: trio.Nursery) -> None:
    """A broker without the publish stream: its upgrade answer is a plain 404."""

    async def no_stream(conn: trio.SocketStream) -> None:
        async with conn:
            with trio.move_on_after(5):
                await conn.receive_some(65536)  # the upgrade request
            body = b'{"error":{"code":"not_found","message":"no such endpoint"}}'
            head = b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
            await conn.send_all(head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    listeners = await nursery.start(partial(trio.serve_tcp, no_stream, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    with (
        trio.fail_after(10),
        pytest.raises(StreamUnavailable, match=r"not available on this server \(.* 404\)"),
    ):
        await check_stream(f"http://127.0.0.1:{port}", "token")


async def test_a_baseline_the_broker_does_not_serve_ends_at_once(nursery: trio.Nursery) -> None:
    """An older broker answers ``POST /healthz`` 405: the baseline says so instead of
    hammering it for its whole length."""
    seen: list[bytes] = []

    async def refuse(conn: trio.SocketStream) -> None:
        async with conn:
            while data := await conn.receive_some(65536):
                seen.append(data)
                body = b'{"error":{"code":"method_not_allowed","message":"no"}}'
                head = b"HTTP/1.1 405 Method Not Allowed\r\nContent-Type: application/json\r\n"
                await conn.send_all(head + b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

    listeners = await nursery.start(partial(trio.serve_tcp, refuse, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(10):
        out = await run_baseline(f"http://127.0.0.1:{port}", 3, 30.0, b'{"x":1}')
    assert out["endpoint"] == "POST /healthz" and out["body_bytes"] == 7
    assert out["requests"] == 0 and out["per_s"] is None
    assert out["failed"] >= 3 and out["failed_statuses"] == {"405": out["failed"]}
    assert out["seconds"] < 5  # ended when every sender had failed, not after 30 s
    assert seen and all(d.startswith(b"POST /healthz HTTP/1.1\r\n") for d in seen)


async def test_wrong_admin_token_fails_the_setup(governed_server: ServerInfo) -> None:
    with trio.fail_after(30), pytest.raises(BenchError, match="401"):
        await run_scenario(BUILTIN["fanout"], governed_server.url, "not-the-admin-token")


class _GovernedProcess(ServerProcess):
    """``dueslag serve`` as a subprocess, with access control on (the default)."""

    def command(self, port: int) -> list[str]:
        return [a for a in super().command(port) if a != "--no-access-control"]


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[_GovernedProcess]:
    with _GovernedProcess(tmp_path / "data") as srv:
        yield srv


@pytest.mark.slow
def test_dueslag_bench_writes_the_contract_json_and_chart(
    server_process: _GovernedProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command as ``cli.py`` runs it: flags in, JSON (and PNG) out, exit 0."""
    p = argparse.ArgumentParser()
    add_bench_arguments(p)
    out, chart = tmp_path / "result.json", tmp_path / "chart.png"
    args = p.parse_args(
        ["--broker", server_process.url, "--admin-token", server_process.admin_token,
         "--scenario", "fanout", "--duration", "2", "--json", str(out), "--chart", str(chart),
         "--rate", "400", "--batch", "20", "--senders", "2", "--drain", "20"]
    )  # fmt: skip
    assert run_bench(args) == 0
    report = json.loads(out.read_text())
    _assert_accounted(report)
    assert set(report["throughput"]) >= {"publish_per_s", "deliver_per_s"}
    assert set(report["latency_ms"]) >= {"p50", "p99"}
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "lost 0, duplicates 0" in capsys.readouterr().out


@settings(max_examples=40, deadline=None)
@given(
    besked=haendelsesbesked(),
    received_ms=st.integers(0, 4_102_444_800_000),  # 1970 ... 2100
    waited_ms=st.integers(0, 3_600_000),
)
def test_the_brokers_share_is_read_from_the_route_it_appended(
    besked: Any, received_ms: int, waited_ms: int
) -> None:
    """What the broker rendered (after any routes the envelope came with) is read back."""
    d = Delivery(
        delivery_id="1-1", seq=1, attempt=1, subscription_id="s", received_ms=received_ms,
        body=msgspec.json.encode(besked), leased_until_ms=received_ms + waited_ms + 30_000,
    )  # fmt: skip
    out = deliveries_out([d], instance_id="i", now_ms=received_ms + waited_ms)
    (copy,) = msgspec.json.decode(
        msgspec.json.encode({"deliveries": out}), type=_PollView
    ).deliveries
    assert broker_ms(copy.envelope.Beskedkuvert) == waited_ms


def test_a_copy_without_a_route_has_no_brokers_share() -> None:
    view = msgspec.json.decode(
        b'{"deliveries":[{"delivery_id":"1","attempt":1,"envelope":{"BeskedId":{},'
        b'"Beskedkuvert":{"Leveranceinformation":{}}}},'
        b'{"delivery_id":"2","attempt":1,"envelope":{"BeskedId":{}}},'
        b'{"delivery_id":"3","attempt":1,"envelope":{"BeskedId":{},"Beskedkuvert":"x"}}]}',
        type=_PollView,
    )
    assert [broker_ms(d.envelope.Beskedkuvert) for d in view.deliveries] == [None, None, None]


def test_a_bracketed_baseline_is_its_requests_over_its_seconds() -> None:
    """Before and after the load: a machine that slowed down during the run moves the
    baseline's side of the ratio as much as the scenario's (a mean of the two rates would
    weigh a short run as much as a long one)."""
    from broker.loadtest.publishers import bracket
    from broker.loadtest.report import _with_ratio

    def run(requests: int, seconds: float, **statuses: int) -> dict[str, Any]:
        return {
            "endpoint": "POST /healthz", "body_bytes": 900, "senders": 4, "seconds": seconds,
            "requests": requests, "failed": sum(statuses.values()),
            "failed_statuses": statuses, "per_s": round(requests / seconds, 1),
        }  # fmt: skip

    merged = bracket(run(3000, 3.0, **{"503": 1}), run(1000, 2.0, **{"503": 2, "500": 1}))
    assert merged["requests"] == 4000 and merged["seconds"] == 5.0 and merged["per_s"] == 800.0
    assert merged["failed"] == 4 and merged["failed_statuses"] == {"500": 1, "503": 3}
    assert [r["per_s"] for r in merged["runs"]] == [1000.0, 500.0]
    rated = _with_ratio(merged, 600.0, 1)
    assert rated is not None
    assert rated["ratio"] == 0.75 and [r["ratio"] for r in rated["runs"]] == [0.6, 1.2]
    nothing = bracket(run(0, 1.0), run(0, 1.0))
    assert nothing["per_s"] is None and "ratio" not in (_with_ratio(nothing, 600.0, 1) or {})


def test_summary_line_names_both_baseline_ratios() -> None:
    from broker.loadtest.command import _summary

    report: dict[str, Any] = {
        "scenario": "single", "sent": 1200, "confirmed": 1200, "delivered": 1200, "lost": 0,
        "duplicates": 0, "throughput": {"publish_per_s": 600.0, "deliver_per_s": 900.0},
        "latency_ms": {"p50": 4.2, "p99": 9.9},
        "baseline": {"endpoint": "GET /healthz", "per_s": 1200.0, "ratio": 0.5},
        "baseline_post": {"endpoint": "POST /healthz", "per_s": 800.0, "ratio": 0.75},
    }  # fmt: skip
    line = _summary(report)
    assert line.startswith("single: sent 1,200, confirmed 1,200, delivered 1,200, lost 0")
    assert line.endswith("; requests/s 0.5 of GET /healthz, 0.75 of POST /healthz")
    report["latency_ms"]["broker"] = {"count": 300, "p50": 2.0, "p99": 6.5, "sampled_every": 4}
    assert "p99 9.9 ms (the broker's share p50 2.0 ms, p99 6.5 ms); requests/s" in _summary(report)
    report["latency_ms"]["broker"] = {"count": 0, "sampled_every": 4}
    report["baseline_post"] = {"endpoint": "POST /healthz", "per_s": None}  # not served
    assert _summary(report).endswith("; requests/s 0.5 of GET /healthz")
    del report["baseline"], report["baseline_post"]
    assert _summary(report).endswith("p99 9.9 ms")


def test_bad_scenario_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = argparse.ArgumentParser()
    add_bench_arguments(p)
    args = p.parse_args(
        ["--admin-token", "T", "--scenario", "nope", "--json", str(tmp_path / "x.json")]
    )
    assert run_bench(args) == 2
    assert "unknown scenario 'nope'" in capsys.readouterr().err


def test_unreachable_broker_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.serverproc import free_port

    p = argparse.ArgumentParser()
    add_bench_arguments(p)
    url = f"http://127.0.0.1:{free_port()}"
    args = p.parse_args(
        ["--broker", url, "--admin-token", "T", "--json", str(tmp_path / "x.json"), "--quiet"]
    )
    assert run_bench(args) == 1
    assert "cannot reach the broker" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_consume_url_names_the_mailbox_stream() -> None:
    from broker.loadtest.consumers import consume_url

    assert consume_url("http://127.0.0.1:8080", "mb-1", 30.0) == (
        "ws://127.0.0.1:8080/v1/stream/mailboxes/mb-1/consume?lease=30"
    )
    assert consume_url("https://h/base/", "x", 1.5).startswith("wss://h/base/v1/stream/")
