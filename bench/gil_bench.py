"""What a busy event-loop thread costs the commit thread's LMDB calls (the GIL hand-off).

Usage (from the repository root)::

    python3 bench/gil_bench.py [--items 200] [--runs 5]

py-lmdb releases the GIL around every LMDB call, and inside ``putmulti``/``getmulti`` around
every item. When another thread wants the GIL (the broker's event loop, busy with Python), each
release hands it over, and the calling thread gets it back only when the other one blocks in a
system call or after the interpreter's switch interval (``sys.getswitchinterval()``, 5 ms). This
script times one write transaction with one ``putmulti`` of ``--items`` small items (no fsync,
so only the hand-offs differ) alone, then while a second thread runs pure Python, and prints
both with their ratio. See docs/performance.md (fifth session) for what it means for the broker.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time

import lmdb


def one_txn(env: lmdb.Environment, db: object, items: int, tag: int) -> float:
    rows = [(b"%08d%08d" % (tag, i), b"v" * 40) for i in range(items)]
    started = time.perf_counter()
    with env.begin(write=True) as txn:
        txn.cursor(db).putmulti(rows)
    return (time.perf_counter() - started) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dueslag-gil-") as tmp:
        env = lmdb.open(tmp, map_size=1 << 30, sync=False, max_dbs=1)
        db = env.open_db(b"d")
        alone = [one_txn(env, db, args.items, i) for i in range(args.runs)]
        stop = threading.Event()

        def busy() -> None:  # pure Python, as an event loop between two system calls
            n = 0
            while not stop.is_set():
                n += 1

        thread = threading.Thread(target=busy)
        thread.start()
        try:
            time.sleep(0.05)
            contended = [one_txn(env, db, args.items, 1000 + i) for i in range(args.runs)]
        finally:
            stop.set()
            thread.join()
        env.close()
    a, c = statistics.median(alone), statistics.median(contended)
    print(f"one putmulti of {args.items} items, median of {args.runs} (ms):")
    print(f"  alone                      {a:9.2f}")
    print(f"  next to a busy thread      {c:9.2f}   ({c / a:,.0f}x)")
    print(f"  switch interval            {1000 * sys.getswitchinterval():9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
