"""The writer (group commit, back-pressure, deferred ops; on its commit thread and, through a
fake remote, on the event loop as with a writer process), the notifier and the sweeper, over
MemoryStore."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing

from broker.errors import Overloaded, StoreError
from broker.notifier import Notifier
from broker.sweeper import Sweeper
from broker.writer import Writer
from store import MemoryStore
from store.base import (
    AppendAudit,
    ApplyOutcome,
    CreateMailbox,
    CreateSubscription,
    CreateSystem,
    Lease,
    Op,
    Publish,
    PublishResult,
    Route,
)
from tests.conftest import TYPE1, FakeClock


class CountingStore(MemoryStore):
    """MemoryStore that records batch sizes and can be held inside apply (a slow fsync)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set when an apply() has begun
        self.fail_next = False

    def apply(self, ops: Sequence[Op], now_ms: int) -> ApplyOutcome:
        self.entered.set()
        self.gate.wait(10)
        if self.fail_next:
            self.fail_next = False
            raise StoreError("disk on fire")
        self.batches.append(len(ops))
        return super().apply(ops, now_ms)


class FakeRemote:
    """A RemoteApply (the writer's event-loop mode, as with a writer process) over a
    CountingStore: applied in a thread, so holding the store's gate holds the "child"; counts
    batches in flight."""

    def __init__(self, store: CountingStore) -> None:
        self.store = store
        self.in_flight = 0
        self.most_in_flight = 0
        self.closed = False

    async def apply(self, ops: list[Op], now_ms: int) -> ApplyOutcome:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await trio.to_thread.run_sync(self.store.apply, ops, now_ms)
        finally:
            self.in_flight -= 1

    async def aclose(self) -> None:
        self.closed = True


def _writer(store: CountingStore, mode: str, **options: Any) -> Writer:
    """A writer committing on its thread ("thread") or on the event loop ("remote")."""
    remote = FakeRemote(store) if mode == "remote" else None
    return Writer(store, Notifier(), clock=FakeClock(), remote=remote, **options)


#: the writer's two loops: the commit thread, and the event loop driving a writer process
MODES = pytest.mark.parametrize("mode", ["thread", "remote"])


def _setup(store: MemoryStore) -> None:
    MemoryStore.apply(
        store,
        [
            CreateSystem(id="sys", name="s", token_hash=b"h"),
            CreateMailbox(id="mb", owner="sys", name="mb"),
            CreateSubscription(id="sub", mailbox_id="mb", message_types=(TYPE1,)),
        ],
        0,
    )


def _publish(i: int) -> Publish:
    return Publish(
        sender="sys",
        dedup_key=f"sys\0{i}".encode(),
        transaction_id=f"t{i}",
        body=b'{"n": %d}' % i,
        routes=(Route("mb", "sub"),),
        received_ms=1,
    )


async def test_group_commit_batches_concurrent_submits() -> None:
    store = CountingStore()
    _setup(store)
    notifier = Notifier()
    writer = Writer(store, notifier, clock=FakeClock())
    results: dict[int, object] = {}

    async def send(i: int) -> None:
        (results[i],) = await writer.submit([_publish(i)])

    async with trio.open_nursery() as n:
        await n.start(writer.run)
        store.gate.clear()  # hold the first commit so the others queue up behind it
        for i in range(50):
            n.start_soon(send, i)
        await trio.testing.wait_all_tasks_blocked()
        store.gate.set()
        while len(results) < 50:
            await trio.sleep(0.01)
        n.cancel_scope.cancel()
    assert all(isinstance(r, PublishResult) and r.mailboxes == 1 for r in results.values())
    assert sum(store.batches) == 50
    assert len(store.batches) <= 3  # group commit: far fewer transactions than requests
    assert notifier.generation("mb") == len(store.batches)
    assert store.mailbox_stats("mb").ready == 50


async def test_full_queue_answers_overloaded(autojump_clock: trio.abc.Clock) -> None:
    store = CountingStore()
    _setup(store)
    writer = Writer(store, Notifier(), queue_size=1, admission_timeout=2.0, clock=FakeClock())
    outcomes: list[object] = []

    async def send(i: int) -> None:
        try:
            await writer.submit([_publish(i)])
            outcomes.append("ok")
        except Overloaded as exc:
            outcomes.append(exc)

    async with trio.open_nursery() as n:
        await n.start(writer.run)
        store.gate.clear()
        n.start_soon(send, 0)
        # the commit thread is now inside apply() (and has given job 0's room back: it does
        # that before applying, and this wait's own answer comes through the same queue)
        assert await trio.to_thread.run_sync(store.entered.wait, 10)
        for i in range(1, 4):  # one fits the queue, two wait for room and time out
            n.start_soon(send, i)
        await trio.sleep(3)  # past the admission timeout (autojump: no real wait)
        store.gate.set()
        # The held commits now finish on a real thread while the autojump clock races ahead,
        # so bound this wait by iterations, not by (virtual) time.
        for _ in range(200_000):
            if len(outcomes) == 4:
                break
            await trio.sleep(0.01)
        assert len(outcomes) == 4
        n.cancel_scope.cancel()
    errors = [o for o in outcomes if isinstance(o, Overloaded)]
    assert len(errors) == 2 and all(e.http_status == 503 and e.retry_after >= 1 for e in errors)
    assert store.mailbox_stats("mb").ready == 2  # refused ones stored nothing


@MODES
async def test_failed_commit_raises_and_stores_nothing(mode: str) -> None:
    store = CountingStore()
    _setup(store)
    writer = _writer(store, mode)
    async with trio.open_nursery() as n:
        await n.start(writer.run)
        store.fail_next = True
        with pytest.raises(StoreError, match="disk on fire"):
            await writer.submit([_publish(1)])
        (ok,) = await writer.submit([_publish(2)])  # the writer survives a failed batch
        assert isinstance(ok, PublishResult)
        n.cancel_scope.cancel()
    assert writer.statistics().failed_batches == 1
    assert store.mailbox_stats("mb").ready == 1


async def test_submit_after_stop_is_refused() -> None:
    store = CountingStore()
    writer = Writer(store, Notifier(), clock=FakeClock())
    async with trio.open_nursery() as n:
        await n.start(writer.run)
        n.cancel_scope.cancel()
    with pytest.raises(Overloaded) as exc:
        await writer.submit([_publish(1)])
    assert exc.value.code == "shutting_down"


async def test_stop_commits_the_batch_in_hand_and_refuses_the_queued() -> None:
    store = CountingStore()
    _setup(store)
    writer = Writer(store, Notifier(), clock=FakeClock())
    outcomes: dict[int, object] = {}

    async def send(i: int) -> None:
        try:
            (outcomes[i],) = await writer.submit([_publish(i)])
        except Overloaded as exc:
            outcomes[i] = exc

    async with trio.open_nursery() as outer, trio.open_nursery() as n:
        await n.start(writer.run)
        store.gate.clear()
        outer.start_soon(send, 0)
        assert await trio.to_thread.run_sync(store.entered.wait, 10)
        outer.start_soon(send, 1)  # queued behind the held commit
        await trio.testing.wait_all_tasks_blocked()

        async def open_gate_once_stopping() -> None:
            await trio.testing.wait_all_tasks_blocked()  # run()'s stop has been signalled
            store.gate.set()

        outer.start_soon(open_gate_once_stopping)
        n.cancel_scope.cancel()  # stop the writer while batch 0 is inside apply()
    assert isinstance(outcomes[0], PublishResult)  # the batch in hand committed and answered
    assert isinstance(outcomes[1], Overloaded) and outcomes[1].code == "shutting_down"
    assert store.mailbox_stats("mb").ready == 1


async def test_notifier_wakes_waiter_and_never_loses_a_wakeup(
    autojump_clock: trio.abc.Clock,
) -> None:
    notifier = Notifier()
    since = notifier.generation("mb")
    notifier.notify(["mb"])  # lands between "lease found nothing" and "wait"
    assert await notifier.wait_ready("mb", since, trio.current_time() + 60) is True

    woke: list[bool] = []

    async def wait() -> None:
        woke.append(
            await notifier.wait_ready("mb", notifier.generation("mb"), trio.current_time() + 60)
        )

    async with trio.open_nursery() as n:
        n.start_soon(wait)
        n.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        assert notifier.statistics().waiting_mailboxes == 1
        notifier.notify(["other", "mb"])
    assert woke == [True, True]
    start = trio.current_time()
    assert await notifier.wait_ready("mb", notifier.generation("mb"), start + 5) is False
    assert trio.current_time() - start == pytest.approx(5)


async def test_sweeper_expires_leases_on_its_timer() -> None:
    store = MemoryStore()
    _setup(store)
    clock = FakeClock()
    writer = Writer(store, Notifier(), clock=clock)
    sweeper = Sweeper(writer, interval=0.01)
    async with trio.open_nursery() as n:
        await n.start(writer.run)
        await writer.submit([_publish(1)])
        (leased,) = await writer.submit([Lease(mailbox_id="mb", max=1, lease_ms=5000)])
        assert isinstance(leased, list) and len(leased) == 1
        await n.start(sweeper.run)
        with trio.fail_after(5):
            while sweeper.passes < 1:
                await trio.sleep(0.005)
            assert store.mailbox_stats("mb").in_flight == 1  # not yet expired: clock unchanged
            clock.advance(6)
            passes = sweeper.passes
            while sweeper.passes < passes + 2:  # a pass that started after the clock moved
                await trio.sleep(0.005)
        n.cancel_scope.cancel()
    st = store.mailbox_stats("mb")
    assert (st.ready, st.in_flight) == (1, 0)


# ---------------------------------------------------------------- deferred ops (audit lines)


def _audit_line(text: str) -> AppendAudit:
    return AppendAudit(events=(text.encode(),))


def _audit_texts(store: MemoryStore) -> list[bytes]:
    return [raw for _, raw in store.scan_audit(0, None, 100)]


@MODES
async def test_deferred_ops_ride_with_the_next_batch(mode: str) -> None:
    store = CountingStore()
    _setup(store)
    writer = _writer(store, mode, defer_linger=10.0)
    async with trio.open_nursery() as n:
        await n.start(writer.run)
        writer.defer([_audit_line("a"), _audit_line("b")])
        (result,) = await writer.submit([_publish(1)])  # gets its own result, not theirs
        assert isinstance(result, PublishResult)
        n.cancel_scope.cancel()
    assert store.batches == [3]  # no commit of their own
    assert _audit_texts(store) == [b"a", b"b"]


@MODES
async def test_deferred_ops_alone_are_committed_after_the_linger(mode: str) -> None:
    store = CountingStore()
    writer = _writer(store, mode, defer_linger=0.2)
    async with trio.open_nursery() as n:
        await n.start(writer.run)
        writer.defer([_audit_line("x")])
        await trio.sleep(0.01)
        assert store.batches == []  # still lingering
        with trio.fail_after(10):
            while not store.batches:
                await trio.sleep(0.01)
        n.cancel_scope.cancel()
    assert store.batches == [1] and _audit_texts(store) == [b"x"]


@MODES
async def test_deferred_ops_are_bounded_and_written_before_the_writer_stops(mode: str) -> None:
    store = CountingStore()
    _setup(store)
    writer = _writer(store, mode, defer_linger=3600, max_deferred=2)
    async with trio.open_nursery() as n:
        await n.start(writer.run)
        writer.defer([_audit_line("1"), _audit_line("2")])
        with pytest.raises(Overloaded):
            writer.defer([_audit_line("3")])
        await trio.testing.wait_all_tasks_blocked()
        assert store.batches == []  # still lingering
        n.cancel_scope.cancel()
    assert _audit_texts(store) == [b"1", b"2"]  # the stop wrote them
    with pytest.raises(Overloaded) as exc:
        writer.defer([_audit_line("4")])
    assert exc.value.code == "shutting_down"
    with pytest.raises(Overloaded) as refused:
        await writer.submit([_publish(1)])
    assert refused.value.code == "shutting_down"
