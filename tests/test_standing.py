"""Standing leases (broker/standing.py): a waiting receiver leases in the commit that publishes
to its mailbox. The registry alone, the writer over MemoryStore, then a real server (long-poll
and consume stream)."""

from __future__ import annotations

import json

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.errors import InvalidInput, StoreError
from broker.metrics import Metrics
from broker.notifier import Notifier
from broker.server import ServerInfo
from broker.standing import StandingLease, StandingLeases
from broker.writer import Writer
from store import MemoryStore
from store.base import CreateMailbox, Delivery, Lease, Publish, Route
from tests.conftest import TYPE1, Api, FakeClock, envelope
from tests.test_actors import CountingStore, _publish, _setup
from tests.test_streams import connect, deliveries


def _lease(mailbox: str = "mb", n: int = 10) -> Lease:
    return Lease(mailbox_id=mailbox, max=n, lease_ms=30_000)


def _to(mailbox: str, i: int) -> Publish:
    return Publish(
        sender="sys",
        dedup_key=b"",
        transaction_id=f"t{i}",
        body=b"{}",
        routes=(Route(mailbox, "sub"),),
        received_ms=1,
    )


async def test_registry_takes_only_the_leases_a_batch_publishes_to() -> None:
    reg = StandingLeases()
    a, b = reg.file(_lease("a")), reg.file(_lease("b"))
    assert len(reg) == 2 and reg
    assert reg.take([[_lease("a")], [_to("c", 1)]]) == []  # a lease op is no publish
    assert reg.take([[_to("b", 1), _to("b", 2)]]) == [b]
    assert b.state == "taken" and len(reg) == 1
    assert not reg.withdraw(b)  # a taken lease is the batch's: wait for its answer
    assert reg.withdraw(a) and not reg
    assert not reg.withdraw(a)  # once
    assert reg.take([[_to("a", 3)]]) == []  # withdrawn: never taken


async def test_registry_answers_and_fails() -> None:
    reg = StandingLeases()
    lease = reg.file(_lease())
    assert not lease.answer([])  # served empty: nobody to wake
    assert lease.done.is_set() and lease.results == []
    other = reg.file(_lease())
    reg.fail_all(StoreError("gone"))
    assert other.done.is_set() and isinstance(other.error, StoreError) and not reg
    delivered = Delivery(
        delivery_id="1-1",
        seq=1,
        attempt=1,
        subscription_id="sub",
        received_ms=1,
        body=b"{}",
        leased_until_ms=2,
    )
    assert reg.file(_lease()).answer([delivered])


async def test_the_publishing_commit_leases_for_the_waiting_receiver() -> None:
    store = CountingStore()
    _setup(store)
    notifier, metrics = Notifier(), Metrics()
    writer = Writer(store, notifier, clock=FakeClock(), metrics=metrics)
    async with trio.open_nursery() as n:
        await n.start(writer.run)
        lease = writer.stand(_lease())
        assert writer.statistics().standing_leases == 1
        generation = notifier.generation("mb")
        await writer.submit([_publish(1), _publish(2)])
        assert lease.done.is_set()
        n.cancel_scope.cancel()
    assert store.batches == [3]  # two publishes and the lease: ONE transaction
    assert [d.seq for d in lease.results] == [1, 2]
    assert all(d.attempt == 1 for d in lease.results)
    stats = store.mailbox_stats("mb")
    assert (stats.ready, stats.in_flight) == (0, 2)
    assert notifier.generation("mb") > generation  # the receiver's wait is woken
    assert metrics.leased_on_commit._value.get() == 1
    assert writer.statistics().standing_leases == 0


async def test_batches_that_do_not_publish_to_the_mailbox_leave_it_standing() -> None:
    store = CountingStore()
    _setup(store)
    MemoryStore.apply(store, [CreateMailbox(id="other", owner="sys", name="o")], 0)  # uncounted
    writer = Writer(store, Notifier(), clock=FakeClock())
    async with trio.open_nursery() as n:
        await n.start(writer.run)
        lease = writer.stand(_lease())
        await writer.submit([_to("other", 1)])
        await writer.submit([_lease("other")])
        assert not lease.done.is_set()
        assert writer.withdraw(lease)
        await writer.submit([_publish(1)])
        n.cancel_scope.cancel()
    assert store.batches == [1, 1, 1]  # never added to a batch
    assert store.mailbox_stats("mb").ready == 1


async def test_a_failed_commit_or_a_refused_lease_answers_with_the_error() -> None:
    store = CountingStore()
    _setup(store)
    writer = Writer(store, Notifier(), clock=FakeClock())
    async with trio.open_nursery() as n:
        await n.start(writer.run)
        lease = writer.stand(_lease())
        store.fail_next = True
        with pytest.raises(StoreError):
            await writer.submit([_publish(1)])
        assert isinstance(lease.error, StoreError) and lease.results == []
        bad = writer.stand(Lease(mailbox_id="mb", max=0, lease_ms=1))  # max must be >= 1
        await writer.submit([_publish(2)])
        assert isinstance(bad.error, InvalidInput)
        n.cancel_scope.cancel()
    assert store.mailbox_stats("mb").in_flight == 0


async def test_stopping_the_writer_fails_standing_leases() -> None:
    writer = Writer(CountingStore(), Notifier(), clock=FakeClock())
    async with trio.open_nursery() as n:
        await n.start(writer.run)
        lease = writer.stand(_lease())
        n.cancel_scope.cancel()
    assert lease.error is not None and lease.error.code == "shutting_down"


# ------------------------------------------------------------------ real server


async def _receiver(admin: Api, server: ServerInfo) -> tuple[Api, str, Writer]:
    """A system with a mailbox subscribed to TYPE1 (it sends to itself), and the writer."""
    sys = await admin.system()
    return sys, await sys.mailbox(TYPE1), server.broker.writer


async def _served(api: Api) -> float:
    text = (await api.call("GET", "/metrics", expect=200)).text
    (line,) = [x for x in text.splitlines() if x.startswith("dueslag_standing_leases_served_total")]
    return float(line.split()[1])


async def test_a_long_poll_is_served_by_the_publishing_commit(
    admin: Api, server: ServerInfo
) -> None:
    with trio.fail_after(30):
        sys, mb, writer = await _receiver(admin, server)
        got: list[dict[str, object]] = []

        async def long_poll() -> None:
            got.extend(await sys.poll(mb, wait=20, max=5))

        async with trio.open_nursery() as n:
            n.start_soon(long_poll)
            while writer.statistics().standing_leases == 0:
                await trio.sleep(0.01)
            sent = await sys.send(envelope(TYPE1))
        (d,) = got
        li = d["envelope"]["Beskedkuvert"]["Leveranceinformation"]  # type: ignore[index]
        assert li["TransaktionsId"] == {"UUIDIdentifikator": sent["transaction_id"]}
        assert await _served(admin) == 1
        assert (await sys.stats(mb))["in_flight"] == 1
        assert writer.statistics().standing_leases == 0
        # a long-poll that times out takes its lease back
        assert await sys.poll(mb, wait=0.2) == []
        assert writer.statistics().standing_leases == 0


async def test_a_dropped_long_poll_takes_its_lease_back(admin: Api, server: ServerInfo) -> None:
    with trio.fail_after(30):
        sys, mb, writer = await _receiver(admin, server)
        with trio.move_on_after(0.5):
            await sys.poll(mb, wait=20)
        while writer.statistics().standing_leases:  # the server sees the client go
            await trio.sleep(0.01)
        await sys.send(envelope(TYPE1))
        assert (await sys.stats(mb))["ready"] == 1  # nobody leased it
        assert await _served(admin) == 0


async def test_a_waiting_consume_stream_is_served_by_the_publishing_commit(
    admin: Api, server: ServerInfo
) -> None:
    with trio.fail_after(30):
        sys, mb, writer = await _receiver(admin, server)
        async with connect(server, f"/v1/stream/mailboxes/{mb}/consume", sys) as ws:
            await ws.send_message(json.dumps({"credit": 3}))
            while writer.statistics().standing_leases == 0:
                await trio.sleep(0.01)
            for _ in range(2):
                await sys.send(envelope(TYPE1))
                (d,) = await deliveries(ws, 1)
                assert d["attempt"] == 1
            assert await _served(admin) == 2
            # credit 1 left: the next standing lease asks for no more than that
            await trio.testing.wait_all_tasks_blocked()
            two = [envelope(TYPE1), envelope(TYPE1)]
            await sys.call("POST", "/v1/messages/batch", json=two, expect=200)
            (d,) = await deliveries(ws, 1)
            stats = await sys.stats(mb)
            assert (stats["in_flight"], stats["ready"]) == (3, 1)
        while writer.statistics().standing_leases:  # the closed stream's lease is withdrawn
            await trio.sleep(0.01)


# ------------------------------------------------------------------ property


_steps = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.sampled_from(["mb", "other"]), st.integers(1, 3)),
        st.tuples(st.just("stand"), st.sampled_from(["mb", "other"]), st.integers(1, 4)),
        st.tuples(st.just("withdraw"), st.integers(0, 20)),
        st.tuples(st.just("lease"), st.sampled_from(["mb", "other"]), st.integers(1, 4)),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(_steps)
def test_every_delivery_is_handed_out_once(steps: list[tuple[object, ...]]) -> None:
    """Whatever mix of publishes, plain leases and standing leases filed or withdrawn: no
    delivery is leased twice, each standing lease gets at most its ``max`` of its own mailbox,
    a withdrawn one gets nothing, and the store's counts agree with what was handed out."""
    store = MemoryStore()
    _setup(store)
    MemoryStore.apply(store, [CreateMailbox(id="other", owner="sys", name="o")], 0)
    filed: list[StandingLease] = []
    withdrawn: list[StandingLease] = []
    handed: list[tuple[str, int]] = []
    published = dict.fromkeys(["mb", "other"], 0)

    async def run() -> None:
        writer = Writer(store, Notifier(), clock=FakeClock())
        async with trio.open_nursery() as n:
            await n.start(writer.run)
            for i, step in enumerate(steps):
                if step[0] == "publish":
                    _, mailbox, count = step
                    await writer.submit([_to(str(mailbox), i) for _ in range(int(count))])  # type: ignore[call-overload]
                    published[str(mailbox)] += int(count)  # type: ignore[call-overload]
                elif step[0] == "stand":
                    filed.append(writer.stand(_lease(str(step[1]), int(step[2]))))  # type: ignore[call-overload]
                elif step[0] == "withdraw":
                    if filed:
                        lease = filed[int(step[1]) % len(filed)]  # type: ignore[call-overload]
                        if writer.withdraw(lease):
                            withdrawn.append(lease)
                else:
                    got = await writer.submit_one(_lease(str(step[1]), int(step[2])))  # type: ignore[call-overload]
                    assert isinstance(got, list)
                    handed.extend((str(step[1]), d.seq) for d in got)
            n.cancel_scope.cancel()

    trio.run(run)
    for lease in filed:
        if lease in withdrawn:
            assert not lease.done.is_set() and lease.results == []
            continue
        assert lease.done.is_set()  # served, or failed when the writer stopped
        assert len(lease.results) <= lease.op.max
        handed.extend((lease.op.mailbox_id, d.seq) for d in lease.results)
    assert len(handed) == len(set(handed))  # nothing handed out twice
    for mailbox, count in published.items():
        stats = store.mailbox_stats(mailbox)
        mine = sum(1 for m, _ in handed if m == mailbox)
        assert stats.in_flight == mine
        assert stats.ready + stats.in_flight == count
