"""What only the durable store has: reopening, the format check, LMDB's limits."""

from __future__ import annotations

from pathlib import Path

import lmdb
import pytest
from storekit import TEST_MAP_SIZE, dump, one, publish, published, setup

from broker.errors import StoreError
from store import (
    FORMAT_VERSION,
    Ack,
    CreateMailbox,
    Lease,
    LmdbStore,
    MailboxRecord,
    MemoryStore,
    open_store,
)
from store.keys import DB_NAMES, META_FORMAT, encode_format


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "env"
    first = LmdbStore(path, map_size=TEST_MAP_SIZE)
    setup(first)
    first.apply([publish(n, "mb1", "mb2") for n in range(1, 4)], 1_000)
    deliveries = one(first, Lease(mailbox_id="mb1", max=2, lease_ms=60_000))
    assert isinstance(deliveries, list)
    one(first, Ack(mailbox_id="mb1", delivery_ids=(deliveries[0].delivery_id,)))
    before = dump(first)
    stats = first.mailbox_stats("mb1")
    first.close()
    first.close()  # idempotent

    again = LmdbStore(path, map_size=TEST_MAP_SIZE)
    try:
        assert dump(again) == before
        assert again.mailbox_stats("mb1") == stats
        assert again.get_leased("mb1", "2-1", 2_000).seq == 2
        assert again.statistics().next_seq == 4
        assert published(one(again, publish(9, "mb2"))).mailboxes == 1
        assert again.statistics().next_seq == 5  # sequence continues from meta, not memory
        new = one(again, CreateMailbox(id="mb3", owner="sys", name="three"))
        assert isinstance(new, MailboxRecord)
        assert new.num == 3
        assert published(one(again, publish(1, "mb1"))).duplicate
    finally:
        again.close()


def _write_format(path: Path, raw: bytes) -> None:
    env = lmdb.open(str(path), max_dbs=len(DB_NAMES) + 4, map_size=TEST_MAP_SIZE)
    meta = env.open_db(DB_NAMES[0])
    with env.begin(write=True) as txn:
        txn.put(META_FORMAT, raw, db=meta)
    env.close()


def test_newer_format_is_refused(tmp_path: Path) -> None:
    LmdbStore(tmp_path, map_size=TEST_MAP_SIZE).close()
    _write_format(tmp_path, encode_format(FORMAT_VERSION + 1))
    with pytest.raises(
        StoreError, match=r"format version 2 is newer than this build supports \(1\)"
    ):
        LmdbStore(tmp_path, map_size=TEST_MAP_SIZE)
    # the refused open closed its environment again: the path can be opened once fixed
    _write_format(tmp_path, encode_format())
    LmdbStore(tmp_path, map_size=TEST_MAP_SIZE).close()


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    LmdbStore(tmp_path, map_size=TEST_MAP_SIZE).close()
    _write_format(tmp_path, encode_format(0))
    with pytest.raises(StoreError, match="format version 0 is not supported"):
        LmdbStore(tmp_path, map_size=TEST_MAP_SIZE)
    _write_format(tmp_path, b"bogus")
    with pytest.raises(StoreError, match="not a dueslag store"):
        LmdbStore(tmp_path, map_size=TEST_MAP_SIZE)


def test_data_without_format_marker_is_refused(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path), max_dbs=len(DB_NAMES) + 4, map_size=TEST_MAP_SIZE)
    bodies = env.open_db(b"bodies")
    with env.begin(write=True) as txn:
        txn.put(b"x", b"y", db=bodies)
    env.close()
    with pytest.raises(StoreError, match="no format marker"):
        LmdbStore(tmp_path, map_size=TEST_MAP_SIZE)


def test_second_open_in_one_process(tmp_path: Path) -> None:
    first = LmdbStore(tmp_path, map_size=TEST_MAP_SIZE)
    try:
        with pytest.raises(StoreError, match="already open in this process"):
            LmdbStore(tmp_path, map_size=TEST_MAP_SIZE)
    finally:
        first.close()


def test_map_full_names_map_size(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path, map_size=1 << 20, sync=False)
    try:
        setup(store)
        before = dump(store)
        big = [publish(n, "mb1", body=b"x" * 4_000) for n in range(400)]
        with pytest.raises(StoreError, match=r"map_size=1048576 bytes"):
            store.apply(big, 1_000)
        assert dump(store) == before
        assert published(one(store, publish(1, "mb1"))).mailboxes == 1
    finally:
        store.close()


def test_use_after_close(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path, map_size=TEST_MAP_SIZE)
    store.close()
    with pytest.raises(StoreError):
        store.statistics()


def test_open_store(tmp_path: Path) -> None:
    assert isinstance(open_store(None), MemoryStore)
    durable = open_store(tmp_path / "env", map_size=TEST_MAP_SIZE)
    try:
        assert isinstance(durable, LmdbStore)
        assert durable.statistics().format_version == FORMAT_VERSION
        assert repr(durable) == f"<LmdbStore {str(tmp_path / 'env')!r}>"
    finally:
        durable.close()
