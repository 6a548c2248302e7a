"""The writer over a writer process: its event-loop loop (group commits, one batch in flight,
commit order; failures, deferred ops and stops run in both modes in tests/test_actors.py), a
real child dying under it (log line, metric, a new child), and a real server in both writer
modes across a restart."""

from __future__ import annotations

import os
import signal
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
import trio.testing

from broker.config import BrokerConfig
from broker.errors import StoreError
from broker.metrics import Metrics
from broker.notifier import Notifier
from broker.server import serve
from broker.writer import Writer
from store.applier import ApplierStore
from store.base import Lease, PublishResult
from tests.conftest import ADMIN_TOKEN, TYPE1, Api, FakeClock, envelope
from tests.test_actors import CountingStore, FakeRemote, _publish, _setup


async def test_remote_batches_are_group_commits_answered_in_order() -> None:
    store = CountingStore()
    _setup(store)
    remote = FakeRemote(store)
    notifier = Notifier()
    writer = Writer(store, notifier, clock=FakeClock(), remote=remote)
    order: list[int] = []

    async def send(i: int) -> None:
        (result,) = await writer.submit([_publish(i)])
        assert isinstance(result, PublishResult)
        order.append(i)

    async with trio.open_nursery() as n:
        await n.start(writer.run)
        store.gate.clear()  # the "child" is busy: the rest queue behind the first batch
        for i in range(50):
            n.start_soon(send, i)
            await trio.testing.wait_all_tasks_blocked()  # each one in its own job, in order
        store.gate.set()
        with trio.fail_after(10):
            while len(order) < 50:
                await trio.sleep(0.01)
        n.cancel_scope.cancel()
    assert remote.most_in_flight == 1
    assert sum(store.batches) == 50 and len(store.batches) <= 3  # group commits
    assert notifier.generation("mb") == len(store.batches)
    assert sorted(order) == list(range(50))
    (leased,) = store.apply([Lease(mailbox_id="mb", max=100, lease_ms=1_000)], 1).results
    assert isinstance(leased, list)  # committed in the order queued: seqs follow i
    assert [d.body for d in leased] == [b'{"n": %d}' % i for i in range(50)]
    assert remote.closed


async def test_writer_over_a_real_child_survives_its_death(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = ApplierStore(tmp_path / "env", map_size=64 << 20, sync=False)
    try:
        _setup(store)  # type: ignore[arg-type]  # plain apply: before the writer takes over
        metrics = Metrics()
        writer = Writer(store, Notifier(), clock=FakeClock(), metrics=metrics)
        async with trio.open_nursery() as n:
            await n.start(writer.run)
            results = await writer.submit([_publish(i) for i in range(100)])
            assert all(isinstance(r, PublishResult) for r in results)
            old = store.child_pid
            assert old is not None
            os.kill(old, signal.SIGKILL)
            with pytest.raises(StoreError, match="writer process"):
                await writer.submit([_publish(100)])
            (record,) = [r for r in caplog.records if r.name == "dueslag.writer"]
            assert f"pid {old}" in record.getMessage() and "exit code -9" in record.getMessage()
            assert b"dueslag_writer_process_deaths_total 1.0" in metrics.render()
            (result,) = await writer.submit([_publish(101)])  # a new child
            assert isinstance(result, PublishResult)
            assert store.child_pid not in (None, old)
            n.cancel_scope.cancel()
        assert store.mailbox_stats("mb").ready == 101
        with pytest.raises(StoreError, match="take_socket"):
            store.apply([_publish(102)], 1)  # the writer's socket; closed by the store
    finally:
        store.close()


@pytest.mark.parametrize("writer_process", [True, False], ids=["process", "thread"])
async def test_a_server_sends_delivers_and_restarts_in_either_mode(
    tmp_path: Path, writer_process: bool
) -> None:
    config = BrokerConfig(
        data_dir=str(tmp_path / "data"),
        bind="127.0.0.1:0",
        admin_token=ADMIN_TOKEN,
        access_control=False,
        graceful_timeout_s=0.5,
        writer="process" if writer_process else "thread",
    )
    token = mb = ""
    for restart in (False, True):  # the second time: a restart on the same data
        async with trio.open_nursery() as n:
            info = await n.start(partial(serve, config))
            store = info.broker.store
            assert isinstance(store, ApplierStore) is writer_process
            async with httpx.AsyncClient(base_url=info.url, timeout=30) as http:
                if not restart:
                    r = await Api(http, ADMIN_TOKEN).call(
                        "POST", "/v1/systems", json={"name": "s1"}, expect=201
                    )
                    token = r.json()["token"]
                    mb = await Api(http, token).mailbox(TYPE1)
                    await Api(http, token).send(envelope())
                    (got,) = await Api(http, token).poll(mb, max=10)
                    assert got["delivery_id"]
                st = await Api(http, token).stats(mb)
                assert (st["ready"], st["in_flight"]) == (0, 1)  # durable across the restart
            n.cancel_scope.cancel()
        if writer_process:
            assert isinstance(store, ApplierStore) and store.child_pid is None  # stopped with it
