"""Store hot-path benchmark: LmdbStore publish and lease+ack against raw LMDB in the same run.

Usage: ``python3 bench/store_bench.py [--batches 200] [--batch 500] [--fanout 2] [--no-sync]``
and ``python3 bench/store_bench.py --io [--prefill 1000000]`` (bytes written per envelope).

Publishes ``batches`` apply calls of ``batch`` envelopes (``body`` bytes each, routed to
``fanout`` of ``mailboxes`` mailboxes, dedup keys as the service makes them with random or
``--keys sequential`` BeskedIds), then drains every mailbox with Lease (``batch`` per call)
and Ack apply calls, then sweeps past the lease deadlines ("later sweep": what the acks left
to the sweep, CPU per delivery). The baseline does the same LMDB work with no store logic: one write txn per
batch of ``putmulti`` bodies (append) + sorted delivery keys + a meta seq (the prototype's
commit), and for the drain a scan/delete/put + body gets per lease and a delete/put per ack.
Both run in fresh environments in a temporary directory with the same sync setting.

``--io`` measures write amplification instead: the bytes written per envelope while publishing
with *sequential* and with *random* (uuid4) BeskedIds, the key shape the service uses
(``sender \\0 BeskedId``), after optionally prefilling the dedup index with ``--prefill``
unrouted envelopes (a day of earlier traffic: the index size is what makes random keys
expensive), and then the bytes per purged dedup record while sweeps expire them all. The clock
advances by ``--tick`` ms per batch. Three counts are shown: ``wchar`` (what LMDB handed to
``write``: each dirty page once per commit), ``write_bytes`` of ``/proc/self/io`` and the
machine's ``pgpgout`` (what reached the disk). On kernels with large page-cache folios (ext4,
>= 6.16) ``write_bytes`` charges a whole folio (often 16 or more 4 KiB pages) for every page LMDB
rewrites, while the disk receives about ``wchar``: compare ``wchar``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
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
    Sweep,
    SweepResult,
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


SENDER = "5b8ad3d1-92b2-4b2a-9a1f-63b6f1d0c2f7"


def dedup_key(n: int, keys: str) -> bytes:
    """The service's dedup key (``sender \\0 BeskedId``) of envelope n: a random (uuid4) or a
    sequential BeskedId."""
    if keys == "random":
        return f"{SENDER}\0{uuid.uuid4()}".encode()
    return f"{SENDER}\x0000000000-0000-4000-8000-{n:012d}".encode()


def bench_store(path: Path, args: argparse.Namespace) -> tuple[Rates, ...]:
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
                dedup_key=dedup_key(n, args.keys),
                transaction_id=str(uuid.uuid4()),
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
    # the sweep after the leases' deadlines (acks may leave lease index entries to it)
    clock = Clock()
    while True:
        (swept,) = store.apply([Sweep(max_items=10_000)], 2_000 + 60_000).results
        assert isinstance(swept, SweepResult), swept
        assert swept.expired_leases == 0, swept
        if not swept.more:
            break
    sweep_rate = clock.stop(delivered)
    store.close()
    return publish_rate, drain_rate, sweep_rate


def bench_raw(path: Path, args: argparse.Namespace) -> tuple[Rates, ...]:
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


class IoCount(NamedTuple):
    """Written bytes so far, three ways (see :func:`io_counts`)."""

    wchar: int  # bytes this process handed to write()/pwrite(): LMDB writes each dirty page once
    write_bytes: int  # this process's page-cache pages dirtied (whole folios, see main_io)
    device: int  # bytes submitted to block devices, whole machine (pgpgout; noisy)

    def __sub__(self, other: tuple[int, ...]) -> IoCount:  # type: ignore[override]
        return IoCount(*(a - b for a, b in zip(self, other, strict=True)))

    def per(self, n: int) -> tuple[float, float, float]:
        return (self.wchar / n, self.write_bytes / n, self.device / n)


def io_counts() -> IoCount:
    """Linux's /proc/self/io (wchar, write_bytes) and /proc/vmstat (pgpgout, in KiB)."""
    found: dict[str, int] = {}
    for name in ("/proc/self/io", "/proc/vmstat"):
        with open(name) as f:
            for line in f:
                key, _, value = line.replace(":", " ").partition(" ")
                found[key] = int(value)
    return IoCount(found["wchar"], found["write_bytes"], found["pgpgout"] * 1024)


class IoRates(NamedTuple):
    publish_b: tuple[float, float, float]  # bytes per published envelope (IoCount.per)
    publish: Rates
    sweep_b: tuple[float, float, float]  # bytes per purged dedup record
    sweep: Rates


def bench_io(path: Path, args: argparse.Namespace, keys: str) -> IoRates:
    """Publish with sequential or random BeskedIds; bytes written per envelope, then per purge."""
    store = LmdbStore(path, map_size=MAP_SIZE, sync=args.sync)
    setup: list[Op] = [CreateSystem(id="sys", name="bench", token_hash=b"t" * 32)]
    for m in range(args.mailboxes):
        setup.append(CreateMailbox(id=f"mb{m}", owner="sys", name=f"mb{m}"))
        setup.append(CreateSubscription(id=f"sub{m}", mailbox_id=f"mb{m}", message_types=("t",)))
    store.apply(setup, 0)

    def publish(n: int, now: int, routes: tuple[Route, ...], body: bytes) -> Publish:
        return Publish(
            sender=SENDER,
            dedup_key=dedup_key(n, keys),
            transaction_id=str(uuid.uuid4()),
            body=body,
            routes=routes,
            received_ms=now,
        )

    now = 1_000
    n = 0
    chunk = 5_000
    for _ in range(0, args.prefill, chunk):  # earlier traffic: dedup records only
        store.apply([publish(n + i, now, (), b"") for i in range(chunk)], now)
        n += chunk
        now += args.tick
    body = b"x" * args.body
    batches = []
    for _ in range(args.batches):
        batches.append(
            [
                publish(n + i, now, _routes(n + i, args.fanout, args.mailboxes), body)
                for i in range(args.batch)
            ]
        )
        n += args.batch
        now += args.tick
    os.sync()
    before = io_counts()
    clock = Clock()
    for ops in batches:
        store.apply(ops, ops[0].received_ms)
    envelopes = args.batches * args.batch
    publish_rate = clock.stop(envelopes)
    publish_b = (io_counts() - before).per(envelopes)

    later = now + 2 * 24 * 3600 * 1000  # every dedup record has expired, and its generation
    purged = 0
    os.sync()
    before = io_counts()
    clock = Clock()
    while True:
        (swept,) = store.apply([Sweep(max_items=10_000)], later).results
        assert isinstance(swept, SweepResult), swept
        purged += swept.purged_dedup
        if not swept.more:
            break
    assert purged == n, (purged, n)
    sweep_rate = clock.stop(purged)
    sweep_b = (io_counts() - before).per(purged)
    store.close()
    return IoRates(publish_b, publish_rate, sweep_b, sweep_rate)


def main_io(args: argparse.Namespace) -> int:
    print(
        f"write amplification: {args.prefill:,} earlier dedup records, then {args.batches} "
        f"batches x {args.batch} envelopes, {args.body} B bodies, fan-out {args.fanout}, "
        f"sync={args.sync}, median of {args.runs}"
    )
    results: dict[str, list[IoRates]] = {"sequential": [], "random": []}
    for _ in range(args.runs):
        for keys in results:
            with tempfile.TemporaryDirectory(prefix="dueslag-bench-") as tmp:
                results[keys].append(bench_io(Path(tmp) / "env", args, keys))
    print(
        "bytes per envelope (publish) and per dedup record (sweep): written by LMDB (wchar), "
        "page-cache\npages dirtied (write_bytes: whole large folios on kernels >= 6.16), "
        "to the disk (pgpgout,\nwhole machine)"
    )
    print(
        f"{'BeskedIds':11}{'phase':>8}{'wchar':>9}{'wr_bytes':>10}{'disk':>8}"
        f"{'items/s':>10}{'CPU us/item':>12}"
    )
    for keys, runs in results.items():
        for phase, io_of, rate_of in (
            ("publish", lambda r: r.publish_b, lambda r: r.publish),
            ("sweep", lambda r: r.sweep_b, lambda r: r.sweep),
        ):
            io = [statistics.median(io_of(r)[i] for r in runs) for i in range(3)]
            per_s = statistics.median(rate_of(r).per_s for r in runs)
            cpu = statistics.median(rate_of(r).cpu_us for r in runs)
            print(
                f"{keys:11}{phase:>8}{io[0]:9,.0f}{io[1]:10,.0f}{io[2]:8,.0f}"
                f"{per_s:10,.0f}{cpu:12.1f}"
            )
    return 0


def run(args: argparse.Namespace) -> dict[str, list[tuple[Rates, ...]]]:
    """Alternate raw and store runs, so both see the same background load."""
    results: dict[str, list[tuple[Rates, ...]]] = {"store": [], "raw": []}
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
    parser.add_argument(
        "--keys", choices=("random", "sequential"), default="random", help="BeskedIds"
    )
    parser.add_argument("--io", action="store_true", help="bytes written per envelope")
    parser.add_argument("--prefill", type=int, default=0, help="--io: earlier dedup records")
    parser.add_argument("--tick", type=int, default=10, help="--io: clock ms per batch")
    args = parser.parse_args(argv)
    if args.io:
        return main_io(args)
    print(
        f"{args.batches} batches x {args.batch} envelopes, {args.body} B bodies, fan-out "
        f"{args.fanout} over {args.mailboxes} mailboxes, {args.keys} BeskedIds, "
        f"sync={args.sync}, median of {args.runs}"
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
    # what acks left to the sweep (CPU per delivery of the sweeps after the lease deadlines)
    sweep_cpu = statistics.median(r[2].cpu_us for r in results["store"])
    print(f"{'later sweep':20}{'':29}  {sweep_cpu:19.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
