"""``bench/stack_floor.py``: each stage's floor really does the stage's work, on a real LMDB
environment in a temp dir (a floor that skipped work would flatter every ratio against it)."""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec

from broker.demo import DEMO_MESSAGE_TYPES

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

from pipeline_bench import envelope  # noqa: E402
from stack_floor import StackFloor  # noqa: E402


class _Copy(msgspec.Struct):
    BeskedId: dict[str, str]


def test_a_batch_goes_through_every_stage_once(tmp_path: Path) -> None:
    bodies = [envelope(n) for n in range(7)]
    floor = StackFloor(tmp_path / "floor", DEMO_MESSAGE_TYPES[:2])  # the third type: no route
    try:
        items = floor.decode(b"[" + b",".join(bodies) + b"]")
        assert [str(i.BeskedId.UUIDIdentifikator) for i in items] == [
            msgspec.json.decode(b)["BeskedId"]["UUIDIdentifikator"] for b in bodies
        ]
        prepared = floor.prepare(items)
        routed = [n for n in range(7) if n % 3 != 2]  # envelope(n) has type n % 3
        assert [n for n, (mailboxes, _) in enumerate(prepared) if mailboxes] == routed
        assert floor.commit(prepared) == len(routed)

        leased = floor.lease(4, until_ms=10_000)
        assert len(leased) == 4
        rest = floor.lease(100, until_ms=10_000)
        assert len(rest) == len(routed) - 4
        assert floor.lease(100, until_ms=10_000) == []  # leased: not ready any more

        out = msgspec.json.decode(floor.render(leased + rest), type=list[tuple[str, _Copy]])
        got = [copy.BeskedId["UUIDIdentifikator"] for _, copy in out]
        assert got == [str(items[n].BeskedId.UUIDIdentifikator) for n in routed]

        keys = [key for key, _ in leased + rest]
        assert floor.ack(keys) == len(routed)
        assert floor.ack(keys) == 0  # settled once
        with floor.env.begin() as txn:  # the acks took the bodies with them
            assert txn.stat(floor.bodies)["entries"] == 0
            assert txn.stat(floor.leases)["entries"] == 0
            assert txn.stat(floor.ready)["entries"] == 0
    finally:
        floor.close()
