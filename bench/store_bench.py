"""Store hot-path benchmark: LmdbStore publish and lease+ack against raw LMDB in the same run.

Usage: ``python3 bench/store_bench.py [--batches 200] [--batch 500] [--fanout 2] [--no-sync]``

Publishes ``batches`` apply calls of ``batch`` envelopes (``body`` bytes each, routed to
``fanout`` of ``mailboxes`` mailboxes), then drains every mailbox with Lease (``batch`` per call)
and Ack apply calls. The baseline does the same LMDB work with no store logic: one write txn per
batch of ``putmulti`` bodies (append) + sorted delivery keys + a meta seq (the prototype's
commit), and for the drain a scan/delete/put + body gets per lease and a delete/put per ack.
Both run in fresh environments in a temporary directory with the same sync setting.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import lmdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from store import (
    Ack,
    CreateMailbox,
    CreateSubscription,
    CreateSystem,
    Lease,
    LmdbStore,
    Op,
    Publish,
    Route,
)

MAP_SIZE = 8 << 30


def _routes(n: int, fanout: int, mailboxes: int) -> tuple[Route, ...]:
    return tuple(
        Route(f"mb{(n + i) % mailboxes}", f"sub{(n + i) % mailboxes}") for i in range(fanout)
    )


class Clock:
    """Wall and CPU time of a phase (CPU time is what other load on the box disturbs least)."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def stop(self, items: int) -> Rates:
        wall = time.perf_counter() - self.wall
        cpu = time.process_time() - self.cpu
        return Rates(items / wall, cpu / items * 1e6)


class Rates(NamedTuple):
    per_s: float  # items per wall-clock second
    cpu_us: float  # CPU microseconds per item


def bench_store(path: Path, args: argparse.Namespace) -> tuple[Rates, Rates]:
    store = LmdbStore(path, map_size=MAP_SIZE, sync=args.sync)
    setup: list[Op] = [CreateSystem(id="sys", name="bench", token_hash=b"t" * 32)]
    for m in range(args.mailboxes):
        setup.append(CreateMailbox(id=f"mb{m}", owner="sys", name=f"mb{m}"))
        setup.append(CreateSubscription(id=f"sub{m}", mailbox_id=f"mb{m}", message_types=("t",)))
    store.apply(setup, 0)
    body = b"x" * args.body
    batches = [
        [
            Publish(
                sender="sys",
                dedup_key=b"sys/%d" % n,
                transaction_id=f"tx-{n}",
                body=body,
                routes=_routes(n, args.fanout, args.mailboxes),
                received_ms=1_000,
            )
            for n in range(b * args.batch, (b + 1) * args.batch)
        ]
        for b in range(args.batches)
    ]
    clock = Clock()
    for ops in batches:
        store.apply(ops, 1_000)
    publish_rate = clock.stop(args.batches * args.batch)

    delivered = 0
    clock = Clock()
    for m in range(args.mailboxes):
        while True:
            (leased,) = store.apply(
                [Lease(mailbox_id=f"mb{m}", max=args.batch, lease_ms=60_000)], 2_000
            ).results
            assert isinstance(leased, list)
            if not leased:
                break
            ids = tuple(d.delivery_id for d in leased)
            store.apply([Ack(mailbox_id=f"mb{m}", delivery_ids=ids)], 2_000)
            delivered += len(leased)
    drain_rate = clock.stop(delivered)
    assert delivered == args.batches * args.batch * args.fanout, delivered
    store.close()
    return publish_rate, drain_rate


def bench_raw(path: Path, args: argparse.Namespace) -> tuple[Rates, Rates]:
    env = lmdb.open(str(path), map_size=MAP_SIZE, max_dbs=8, sync=args.sync, metasync=args.sync)
    meta, bodies, ready, flight, copy = (
        env.open_db(name) for name in (b"meta", b"bodies", b"ready", b"flight", b"copy")
    )
    body = b"x" * args.body
    clock = Clock()
    for _ in range(args.batches):
        with env.begin(write=True) as txn:
            raw = txn.get(b"next_seq", db=meta)
            seq = int.from_bytes(raw, "big") if raw else 1
            body_items = []
            delivery_items = []
            for n in range(seq, seq + args.batch):
                key = n.to_bytes(8, "big")
                body_items.append((key, b"\x01" + key + body))
                for i in range(args.fanout):
                    mb = (n + i) % args.mailboxes
                    delivery_items.append((mb.to_bytes(4, "big") + key, b"\x01\x00"))
            txn.cursor(db=bodies).putmulti(body_items, append=True)
            delivery_items.sort()
            txn.cursor(db=ready).putmulti(delivery_items)
            txn.put(b"next_seq", (seq + args.batch).to_bytes(8, "big"), db=meta)
    publish_rate = clock.stop(args.batches * args.batch)

    delivered = 0
    clock = Clock()
    for m in range(args.mailboxes):
        prefix = m.to_bytes(4, "big")
        while True:
            with env.begin(write=True) as txn:
                cursor = txn.cursor(db=ready)
                taken: list[bytes] = []
                if cursor.set_range(prefix):
                    while len(taken) < args.batch and cursor.key()[:4] == prefix:
                        taken.append(cursor.key())
                        cursor.delete()
                txn.cursor(db=flight).putmulti([(key, b"\x01\x01") for key in taken])
                out = [txn.get(key[4:], db=bodies) for key in taken]
            if not out:
                break
            with env.begin(write=True) as txn:
                for key in taken:
                    txn.delete(key, db=flight)
                txn.cursor(db=copy).putmulti([(key, b"\x01\x01") for key in taken])
            delivered += len(out)
    drain_rate = clock.stop(delivered)
    env.close()
    return publish_rate, drain_rate


def run(args: argparse.Namespace) -> dict[str, list[tuple[Rates, Rates]]]:
    """Alternate raw and store runs, so both see the same background load."""
    results: dict[str, list[tuple[Rates, Rates]]] = {"store": [], "raw": []}
    for _ in range(args.runs):
        for name, fn in (("raw", bench_raw), ("store", bench_store)):
            with tempfile.TemporaryDirectory(prefix="dueslag-bench-") as tmp:
                results[name].append(fn(Path(tmp) / "env", args))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--fanout", type=int, default=2)
    parser.add_argument("--mailboxes", type=int, default=10)
    parser.add_argument("--body", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3, help="median of this many runs")
    parser.add_argument("--no-sync", dest="sync", action="store_false")
    args = parser.parse_args(argv)
    print(
        f"{args.batches} batches x {args.batch} envelopes, {args.body} B bodies, fan-out "
        f"{args.fanout} over {args.mailboxes} mailboxes, sync={args.sync}, median of {args.runs}"
    )
    results = run(args)
    print(
        f"{'':20}{'LmdbStore':>11}{'raw lmdb':>11}{'ratio':>7}  {'CPU us/item: store':>19}{'raw':>6}{'ratio':>7}"
    )
    for phase, label in ((0, "publish env/s"), (1, "lease+ack deliv/s")):
        store_rate = statistics.median(r[phase].per_s for r in results["store"])
        raw_rate = statistics.median(r[phase].per_s for r in results["raw"])
        store_cpu = statistics.median(r[phase].cpu_us for r in results["store"])
        raw_cpu = statistics.median(r[phase].cpu_us for r in results["raw"])
        print(
            f"{label:20}{store_rate:11,.0f}{raw_rate:11,.0f}{store_rate / raw_rate:7.2f}"
            f"  {store_cpu:19.1f}{raw_cpu:6.1f}{raw_cpu / store_cpu:7.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
