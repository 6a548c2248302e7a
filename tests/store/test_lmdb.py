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
    AppendAudit,
    CreateMailbox,
    Lease,
    LmdbStore,
    MailboxRecord,
    MemoryStore,
    SetChange,
    open_store,
)
from store import keys as k
from store import values as v
from store.keys import DB_NAMES, META_FORMAT, Db
from store.values import encode_format


def test_reopen_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "env"
    first = LmdbStore(path, map_size=TEST_MAP_SIZE)
    setup(first)
    first.apply([publish(n, "mb1", "mb2") for n in range(1, 4)], 1_000)
    first.apply([AppendAudit(events=(b"e1", b"e2")), SetChange(kind="v", id="l", add=("a",))], 1)
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
        # the audit counter continues from meta too; sets keep their size
        one(again, AppendAudit(events=(b"e3",)), 1)
        assert [k.parse_audit_key(key)[1] for key, _ in again.scan_audit(0, None, 9)] == [1, 2, 3]
        assert again.set_size("v", "l") == 1
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
        StoreError,
        match=rf"format version {FORMAT_VERSION + 1} is newer than this build supports "
        rf"\({FORMAT_VERSION}\)",
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


def _as_format_1(path: Path, dedup: dict[bytes, v.DedupValue]) -> None:
    """Rewrite a closed environment the way format 1 stored dedup records."""
    env = lmdb.open(str(path), max_dbs=len(DB_NAMES) + 4, map_size=TEST_MAP_SIZE)
    dbs = {db: env.open_db(DB_NAMES[db]) for db in Db}
    with env.begin(write=True) as txn:
        txn.drop(dbs[Db.DEDUP_GENS], delete=False)
        for key, record in dedup.items():
            stored = k.normalize_dedup_key(key)
            txn.put(stored, v.encode_value(record), db=dbs[Db.DEDUP])
            txn.put(k.dedup_expiry_key(record.expires_ms, stored), b"", db=dbs[Db.DEDUP_EXPIRY])
        txn.put(META_FORMAT, encode_format(1), db=dbs[Db.META])
    env.close()


def test_format_1_is_upgraded(tmp_path: Path) -> None:
    first = LmdbStore(tmp_path, map_size=TEST_MAP_SIZE)
    setup(first)
    first.apply([publish(n, "mb1") for n in range(1, 4)], 1_000)
    deliveries = one(first, Lease(mailbox_id="mb1", max=1, lease_ms=60_000))
    assert isinstance(deliveries, list)
    first.close()
    long_key = b"L" * 300
    _as_format_1(
        tmp_path,
        {
            b"key-1": v.DedupValue("tx-1", 1, 61_000),
            long_key: v.DedupValue("0f8fad5b-d9cb-469f-a165-70867728950e", 2, 61_000),
            b"old": v.DedupValue("tx-old", 1, 500),
        },
    )
    again = LmdbStore(tmp_path, map_size=TEST_MAP_SIZE)
    try:
        assert again.statistics().format_version == FORMAT_VERSION
        content = dump(again)
        assert content["DEDUP"] == content["DEDUP_EXPIRY"] == []
        assert len(content["DEDUP_GENS"]) == 3
        assert content["META"][0] == (META_FORMAT, encode_format())
        dup = published(one(again, publish(1, "mb1"), 2_000))
        assert (dup.transaction_id, dup.mailboxes, dup.duplicate) == ("tx-1", 1, True)
        dup = published(one(again, publish(9, "mb1", key=long_key), 2_000))
        assert dup.transaction_id == "0f8fad5b-d9cb-469f-a165-70867728950e"
        assert dup.duplicate
        assert not published(one(again, publish(8, "mb1", key=b"old"), 2_000)).duplicate
        # the deliveries written before read on: format-1 values lack only the optional tm
        assert again.get_leased("mb1", "1-1", 2_000).tilladt_modtager is None
        rest = one(again, Lease(mailbox_id="mb1", max=10, lease_ms=60_000), 2_000)
        assert isinstance(rest, list)
        assert [d.seq for d in rest] == [2, 3, 4]
    finally:
        again.close()
    # and it stays upgraded
    LmdbStore(tmp_path, map_size=TEST_MAP_SIZE).close()
