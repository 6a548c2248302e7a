"""The writer process (store.applier): writes in a child, reads in the parent, failures.

The conformance suite runs over ApplierStore too (``storekit.BACKENDS``); these tests are about
what only a second process can do: die, ignore signals, stop with the store.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from storekit import TEST_MAP_SIZE, one, publish, published, setup

from broker.errors import NotFound, StoreError
from store import Ack, AckResult, Lease, LmdbStore
from store.applier import ApplierStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ApplierStore]:
    opened = ApplierStore(tmp_path / "env", map_size=TEST_MAP_SIZE, sync=False)
    yield opened
    opened.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_child_writes_and_the_parent_reads(store: ApplierStore) -> None:
    pid = store.child_pid
    assert pid is not None and pid != os.getpid() and _alive(pid)
    setup(store)
    assert published(one(store, publish(1, "mb1", "mb2"))).mailboxes == 2
    assert store.mailbox_stats("mb1").ready == 1  # read in this process, written in the child
    (delivery,) = store.apply([Lease(mailbox_id="mb1", max=10, lease_ms=30_000)], 2_000).results[0]
    assert delivery.body == b'{"n":"1"}'
    assert store.get_leased("mb1", delivery.delivery_id, 2_000).seq == delivery.seq
    acked = one(store, Ack(mailbox_id="mb1", delivery_ids=(delivery.delivery_id,)), 2_000)
    assert isinstance(acked, AckResult) and acked.count == 1
    assert store.mailbox_stats("mb1").in_flight == 0


def test_refusals_come_back_as_the_same_errors(store: ApplierStore, tmp_path: Path) -> None:
    plain = LmdbStore(tmp_path / "plain", map_size=TEST_MAP_SIZE, sync=False)
    try:
        op = Lease(mailbox_id="nope", max=1, lease_ms=1_000)
        here, there = one(plain, op), one(store, op)
    finally:
        plain.close()
    assert isinstance(there, NotFound) and type(there) is type(here)
    assert (there.code, there.message, there.path) == (here.code, here.message, here.path)


def test_a_refused_batch_raises_and_applies_nothing(store: ApplierStore) -> None:
    setup(store)
    with pytest.raises(StoreError, match="now_ms"):
        store.apply([publish(1, "mb1")], -1)
    assert store.mailbox_stats("mb1").ready == 0
    assert store.child_pid is not None and _alive(store.child_pid)  # the child carries on


def test_a_killed_child_fails_its_batch_and_the_next_batch_starts_another(
    store: ApplierStore,
) -> None:
    setup(store)
    published(one(store, publish(1, "mb1")))
    old = store.child_pid
    assert old is not None
    os.kill(old, signal.SIGKILL)
    with pytest.raises(StoreError, match="may or may not have been applied"):
        store.apply([publish(2, "mb1")], 1_000)
    assert store.child_pid is None and not _alive(old)  # reaped
    assert published(one(store, publish(3, "mb1"))).mailboxes == 1
    assert store.child_pid not in (None, old)
    assert store.mailbox_stats("mb1").ready in (2, 3)  # 1 and 3, and 2 if it got in first


def test_the_child_ignores_sigterm_and_stops_with_the_store(tmp_path: Path) -> None:
    store = ApplierStore(tmp_path / "env", map_size=TEST_MAP_SIZE, sync=False)
    pid = store.child_pid
    assert pid is not None
    os.kill(pid, signal.SIGTERM)  # e.g. a Ctrl-C or a stop sent to the whole process group
    setup(store)
    assert store.child_pid == pid
    store.close()
    assert not _alive(pid)
    reopened = LmdbStore(tmp_path / "env", map_size=TEST_MAP_SIZE, sync=False)
    try:  # everything the child committed is there, and nobody holds the environment
        assert reopened.get_mailbox("mb1") is not None
    finally:
        reopened.close()


def test_a_taken_socket_turns_blocking_apply_off(store: ApplierStore) -> None:
    sock = store.take_socket()
    assert sock.fileno() >= 0
    with pytest.raises(StoreError, match="take_socket"):
        store.apply([publish(1, "mb1")], 1_000)
    pid = store.child_pid
    assert pid is not None
    sock.close()  # as the taker does when the child died; the child exits at EOF
    assert store.forget_child() == (pid, 0)  # reaped: the next apply starts another
    setup(store)
    assert store.get_mailbox("mb1") is not None


def test_a_child_that_does_not_come_up_fails_the_constructor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("store.applier.sys.executable", "/bin/false")  # exits at once
    with pytest.raises(StoreError, match="did not start"):
        ApplierStore(tmp_path / "env", map_size=TEST_MAP_SIZE, sync=False)
    reopened = LmdbStore(tmp_path / "env", map_size=TEST_MAP_SIZE, sync=False)
    reopened.close()  # the constructor closed its environment again
