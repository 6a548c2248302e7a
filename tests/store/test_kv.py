"""The key-value layer: both backends behave alike, and a failed write leaves nothing."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from storekit import TEST_MAP_SIZE

from broker.errors import StoreError
from store.kv import KvEnv, LmdbKv
from store.memorykv import MemoryKv

NAMES = (b"one", b"two")


@pytest.fixture(params=["memory", "lmdb"])
def kv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KvEnv]:
    env: KvEnv = (
        MemoryKv(NAMES)
        if request.param == "memory"
        else LmdbKv(tmp_path, NAMES, map_size=TEST_MAP_SIZE, sync=False)
    )
    yield env
    env.close()


def test_reads_and_writes(kv: KvEnv) -> None:
    with kv.write() as txn:
        txn.put_many(0, [(bytes([n]), b"v%d" % n) for n in range(1, 10)], append=True)
        txn.put(1, b"a", b"other db")
        assert txn.delete(0, b"\x05")
        assert not txn.delete(0, b"\x05")
    with kv.read() as txn:
        assert txn.get(0, b"\x01") == b"v1"
        assert txn.get(0, b"\x05") is None
        assert txn.get(1, b"a") == b"other db"
        assert txn.count(0) == 8
        assert [k for k, _ in txn.scan(0, b"\x03", b"\x08")] == [b"\x03", b"\x04", b"\x06", b"\x07"]
        assert [k for k, _ in txn.scan(0, b"\x03", None, 2)] == [b"\x03", b"\x04"]
        assert txn.scan(0, b"\x03", None, 0) == []
        assert txn.scan(0, b"\x0a") == []
        assert txn.first(0, b"\x05") == (b"\x06", b"v6")
        assert txn.first(0, b"\x05", b"\x06") is None
        assert txn.first(0, b"\x0a") is None
    with kv.write() as txn:
        taken = txn.take(0, b"\x02", b"\x07", 3)
        assert taken == [(b"\x02", b"v2"), (b"\x03", b"v3"), (b"\x04", b"v4")]
        assert txn.take(0, b"\x06", None, 10) == [
            (b"\x06", b"v6"),
            (b"\x07", b"v7"),
            (b"\x08", b"v8"),
            (b"\x09", b"v9"),
        ]
        assert txn.take(0, b"\x06", None, 10) == []
    with kv.read() as txn:
        assert txn.scan(0, b"\x00") == [(b"\x01", b"v1")]


def test_failed_write_leaves_nothing(kv: KvEnv) -> None:
    with kv.write() as txn:
        txn.put(0, b"keep", b"1")

    def write_then_fail() -> None:
        with kv.write() as txn:
            txn.put(0, b"keep", b"changed")
            txn.put(0, b"new", b"2")
            txn.delete(0, b"keep")
            txn.put(1, b"x", b"3")
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError):
        write_then_fail()
    with kv.read() as reader:
        assert reader.scan(0, b"\x00") == [(b"keep", b"1")]
        assert reader.count(1) == 0


def test_append_out_of_order_is_an_error(kv: KvEnv) -> None:
    with kv.write() as txn:
        txn.put(0, b"m", b"1")
    with pytest.raises(StoreError), kv.write() as txn:
        txn.put_many(0, [(b"a", b"2")], append=True)
    with kv.read() as txn:
        assert txn.scan(0, b"\x00") == [(b"m", b"1")]


def test_empty_key_is_refused(kv: KvEnv) -> None:
    with pytest.raises(StoreError), kv.write() as txn:
        txn.put(0, b"", b"1")


def test_put_sorted_appends_when_it_can(kv: KvEnv) -> None:
    with kv.write() as txn:
        txn.put_sorted(0, [(b"b", b"1"), (b"c", b"2")])  # empty db: append
        txn.put_sorted(0, [(b"d", b"3")])  # after every key: append
        txn.put_sorted(0, [(b"a", b"0"), (b"e", b"4")])  # not after: an ordinary put
        txn.put_sorted(0, [(b"e", b"5")])  # equal to the last key: an ordinary put
        txn.put_sorted(0, [])
    with kv.read() as txn:
        assert txn.scan(0, b"\x00") == [
            (b"a", b"0"),
            (b"b", b"1"),
            (b"c", b"2"),
            (b"d", b"3"),
            (b"e", b"5"),
        ]


def test_add_many_get_found_and_delete_many_count(kv: KvEnv) -> None:
    with kv.write() as txn:
        assert txn.add_many(0, [(b"a", b"1"), (b"c", b"1")]) == 2
        assert txn.add_many(0, [(b"a", b"2"), (b"b", b"2"), (b"c", b"2")]) == 1
        assert txn.add_many(0, []) == 0
        assert txn.get_found(0, [b"a", b"x", b"b"]) == [(b"a", b"1"), (b"b", b"2")]
        assert txn.delete_many(0, [b"a", b"x", b"a"]) == 1
    with kv.read() as txn:
        assert txn.scan(0, b"\x00") == [(b"b", b"2"), (b"c", b"1")]
        assert txn.get_found(0, []) == []


def key(n: int) -> bytes:
    return b"%03d" % n


@settings(max_examples=40, deadline=None)
@given(
    stored=st.sets(st.integers(0, 60), max_size=40),
    deleted=st.lists(st.integers(0, 70), max_size=30),
    in_order=st.booleans(),
)
def test_delete_many_matches_a_set(stored: set[int], deleted: list[int], in_order: bool) -> None:
    """Runs of neighbours (deleted without a search), gaps, misses, repeats and any order."""
    if in_order:
        deleted.sort()
    with tempfile.TemporaryDirectory() as tmp:
        for env in (MemoryKv(NAMES), LmdbKv(tmp, NAMES, map_size=TEST_MAP_SIZE, sync=False)):
            with env.write() as txn:
                txn.put_many(0, [(key(n), b"v") for n in sorted(stored)], append=True)
                txn.put(1, b"010", b"other db")
                assert txn.delete_many(0, [key(n) for n in deleted]) == len(stored & set(deleted))
                assert txn.delete_many(0, []) == 0
            with env.read() as txn:
                assert [k for k, _ in txn.scan(0, b"")] == [
                    key(n) for n in sorted(stored - set(deleted))
                ]
                assert txn.get(1, b"010") == b"other db"
            env.close()
