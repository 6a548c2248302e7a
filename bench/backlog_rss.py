"""Bounded memory under backlog: push N envelopes that nobody consumes, watch the server's RSS.

What it does:

1. Starts ``dueslag serve`` as a subprocess on 127.0.0.1 with a fresh data dir (see
   ``tests/serverproc.py``).
2. Creates one system with four mailboxes and four message types. Fan-out is 1 or 2 per type,
   1.5 on average.
3. Pushes ``--count`` envelopes of about 1 KiB each, in batches of ``--batch`` through
   ``POST /v1/messages/batch``, over keep-alive httpx clients. Nothing is consumed.
4. Every ``--sample-every`` envelopes it samples ``/proc/<pid>/status`` of the server and its
   child processes (its writer process or workers), summed: VmRSS, RssAnon, RssFile, RssShmem.
5. Prints a table and a final JSON summary: throughput, RssAnon at 10 %, 50 % and 100 % of the
   backlog, and the last/first RssAnon ratio.
6. Restarts the server twice, after SIGTERM and after SIGKILL. Each time it measures time-to-ready
   (spawn to the first ``/readyz`` 200) and checks that the whole backlog is still there.

How to read it: **RssAnon** is the process's own memory (Python heap, msgspec buffers, LMDB's
dirty pages of the running write transaction). It must stay flat as the backlog grows.
**RssFile** counts the pages of LMDB's memory-mapped data file that are mapped into the process:
the pages it read, plus the kernel's fault-around of neighbouring pages already in the page cache.
They are page cache: shared, clean once committed, and reclaimable by the kernel under memory
pressure. RssFile grows with the file, not with a heap, so it is reported apart and is not part of
the bounded-memory claim.

Usage (from the repository root)::

    python3 bench/backlog_rss.py --count 200000
    python3 bench/backlog_rss.py                 # the full million
    python3 bench/backlog_rss.py --json-out result.json --keep

The server subprocess is stopped in a ``finally``; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

import httpx
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.serverproc import ServerProcess, tree_cpu_s, tree_status_kb, tree_write_bytes

#: message type -> the mailboxes (by index) subscribed to it; fan-out 1 or 2, mean 1.5
TYPES = {
    "5a1b0c3d-0001-4e00-8a00-000000000001": (0,),
    "5a1b0c3d-0002-4e00-8a00-000000000002": (1, 2),
    "5a1b0c3d-0003-4e00-8a00-000000000003": (3,),
    "5a1b0c3d-0004-4e00-8a00-000000000004": (0, 3),
}
MAILBOXES = 4
FIELDS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")
MAX_503_RETRIES = 50
MAX_RUN_S = 3600.0  # the push phase gives up after an hour, whatever the count
HTTP_TIMEOUT = httpx.Timeout(120.0, connect=10.0)

_results = msgspec.json.Decoder()


def _template(size: int) -> tuple[bytes, bytes, bytes]:
    """A realistic envelope of about ``size`` bytes as (head, middle, tail) around the
    BeskedId and the Beskedtype, so building one is two byte joins."""

    def build(filler: str) -> str:
        env = {
            "BeskedId": {"UUIDIdentifikator": "@BID@"},
            "BeskedVersion": "1.0",
            "Beskedkuvert": {
                "Filtreringsdata": {
                    "Beskedtype": {"UUIDIdentifikator": "@TYPE@"},
                    "BeskedAnsvarligAktoer": {
                        "UUIDIdentifikator": "795ac65f-b480-4a01-98af-441980b192c3"
                    },
                    "TilladtModtager": [{"URNIdentifikator": "urn:oio:cvr-nr:29189846"}],
                    "RelateretObjekt": [
                        {
                            "ObjektId": {"URNIdentifikator": "urn:oio:cpr:0101709999"},
                            "ObjektType": {
                                "UUIDIdentifikator": "ce7fcf97-a8a2-447a-8690-d38aa0f6e23c"
                            },
                        }
                    ],
                    "ObjektRegistrering": [
                        {
                            "ObjektAnsvarligMyndighed": {
                                "URNIdentifikator": "urn:oio:cvr-nr:29189846"
                            },
                            "ObjektHandling": {
                                "UUIDIdentifikator": "6ce72dab-1e09-425e-8503-5d6522f72fdf"
                            },
                            "OpgaveEmne": {"URNIdentifikator": "urn:oio:kle:32.01.01"},
                        }
                    ],
                },
                "Leveranceinformation": {
                    "Dannelsestidspunkt": {"TidsstempelDatoTid": "2026-11-27T08:00:00Z"},
                    "Sikkerhedsklassificering": {
                        "UUIDIdentifikator": "292e85a9-8ad4-46df-9e50-f97d6837ad74"
                    },
                },
            },
            "Beskeddata": [{"json": {"status": "Afleveret", "note": filler}}],
        }
        return json.dumps(env, separators=(",", ":"))

    base = len(build("")) - len("@BID@") + 36 - len("@TYPE@") + 36
    text = build("x" * max(0, size - base))
    head, rest = text.split("@BID@")
    middle, tail = rest.split("@TYPE@")
    return head.encode(), middle.encode(), tail.encode()


class Pusher:
    """Sends batches from a few threads; samples RSS whenever a threshold is crossed."""

    def __init__(self, args: argparse.Namespace, url: str, token: str, pid: int) -> None:
        self.args = args
        self.url = url
        self.token = token
        self.pid = pid
        self.head, self.middle, self.tail = _template(args.size)
        self.types = [t.encode() for t in TYPES]
        self.lock = threading.Lock()
        self.next_batch = 0
        self.batches = (args.count + args.batch - 1) // args.batch
        self.accepted = 0
        self.deliveries = 0
        self.failed = 0
        self.retries_503 = 0
        self.bytes_sent = 0
        self.samples: list[dict[str, Any]] = []
        self.next_sample = args.sample_every
        self.t0 = 0.0
        self.error: BaseException | None = None

    def sample(self, accepted: int) -> dict[str, Any]:
        now = time.monotonic()
        row: dict[str, Any] = {
            "envelopes": accepted,
            "deliveries": self.deliveries,
            "elapsed_s": round(now - self.t0, 3),
            **{k + "_kib": v for k, v in tree_status_kb(self.pid, FIELDS).items()},
        }
        prev = self.samples[-1] if self.samples else {"envelopes": 0, "elapsed_s": 0.0}
        dt = row["elapsed_s"] - prev["elapsed_s"]
        row["interval_env_s"] = round((accepted - prev["envelopes"]) / dt) if dt > 0 else None
        self.samples.append(row)
        _print_row(row)
        return row

    def _body(self, first: int, n: int) -> bytes:
        parts = []
        types = self.types
        for i in range(first, first + n):
            bid = str(uuid.uuid4()).encode()
            parts.append(self.head + bid + self.middle + types[i % len(types)] + self.tail)
        return b"[" + b",".join(parts) + b"]"

    def run_thread(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def _run(self) -> None:
        deadline = self.t0 + MAX_RUN_S
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=HTTP_TIMEOUT) as c:
            for _ in range(self.batches):
                if self.error is not None or time.monotonic() > deadline:
                    return
                with self.lock:
                    b = self.next_batch
                    if b >= self.batches:
                        return
                    self.next_batch += 1
                first = b * self.args.batch
                n = min(self.args.batch, self.args.count - first)
                body = self._body(first, n)
                out = self._post(c, body)
                with self.lock:
                    self.accepted += out["accepted"]
                    self.failed += out["failed"]
                    self.deliveries += out["routed"]
                    self.bytes_sent += len(body)
                    while self.accepted >= self.next_sample:
                        self.sample(self.accepted)
                        self.next_sample += self.args.sample_every

    def _post(self, c: httpx.Client, body: bytes) -> dict[str, int]:
        for _ in range(MAX_503_RETRIES):
            r = c.post("/v1/messages/batch", content=body)
            if r.status_code == 503:
                with self.lock:
                    self.retries_503 += 1
                time.sleep(float(r.headers.get("Retry-After", "0.5") or 0.5))
                continue
            if r.status_code != 200:
                raise RuntimeError(f"batch answered {r.status_code}: {r.text[:500]}")
            res = _results.decode(r.content)
            routed = sum(x.get("mailboxes", 0) for x in res["results"] if "error" not in x)
            errors = [x["error"] for x in res["results"] if "error" in x]
            if errors:
                raise RuntimeError(f"{len(errors)} items refused, first: {errors[0]}")
            return {"accepted": res["accepted"], "failed": res["failed"], "routed": routed}
        raise RuntimeError(f"still 503 after {MAX_503_RETRIES} retries")


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:8.1f}"


def _print_header() -> None:
    print(
        f"{'envelopes':>10} {'deliveries':>10} {'elapsed s':>9} {'env/s':>7} "
        f"{'VmRSS MiB':>9} {'RssAnon MiB':>11} {'RssFile MiB':>11} {'RssShmem MiB':>12}",
        flush=True,
    )


def _print_row(row: dict[str, Any]) -> None:
    rate = row.get("interval_env_s")
    print(
        f"{row['envelopes']:>10} {row['deliveries']:>10} {row['elapsed_s']:>9.1f} "
        f"{rate if rate is not None else '-':>7} {_mib(row.get('VmRSS_kib')):>9} "
        f"{_mib(row.get('RssAnon_kib')):>11} {_mib(row.get('RssFile_kib')):>11} "
        f"{_mib(row.get('RssShmem_kib')):>12}",
        flush=True,
    )


def _at(samples: list[dict[str, Any]], fraction: float, count: int) -> dict[str, Any]:
    """The first sample at or after ``fraction`` of the backlog."""
    want = fraction * count
    for s in samples:
        if s["envelopes"] >= want:
            return s
    return samples[-1]


def _setup(srv: ServerProcess) -> tuple[str, list[str]]:
    def call(c: httpx.Client, path: str, body: dict[str, Any]) -> Any:
        r = c.post(path, json=body)
        if r.status_code != 201:
            raise RuntimeError(f"POST {path} answered {r.status_code}: {r.text[:300]}")
        return r.json()

    admin = {"Authorization": f"Bearer {srv.admin_token}"}
    with httpx.Client(base_url=srv.url, headers=admin, timeout=HTTP_TIMEOUT) as c:
        token = call(c, "/v1/systems", {"name": "bench"})["token"]
    with httpx.Client(
        base_url=srv.url, headers={"Authorization": f"Bearer {token}"}, timeout=HTTP_TIMEOUT
    ) as c:
        boxes = [call(c, "/v1/mailboxes", {"name": f"backlog-{i}"})["id"] for i in range(MAILBOXES)]
        for i, mb in enumerate(boxes):
            types = [t for t, subs in TYPES.items() if i in subs]
            call(c, f"/v1/mailboxes/{mb}/subscriptions", {"message_types": types})
    return token, boxes


def _backlog(srv: ServerProcess, token: str, boxes: list[str]) -> dict[str, int]:
    total = {"ready": 0, "in_flight": 0, "copy": 0, "dead": 0}
    with httpx.Client(
        base_url=srv.url, headers={"Authorization": f"Bearer {token}"}, timeout=HTTP_TIMEOUT
    ) as c:
        for mb in boxes:
            st = c.get(f"/v1/mailboxes/{mb}").json()
            for k in total:
                total[k] += st[k]
    return total


def _restart(old: ServerProcess, how: str) -> ServerProcess:
    if how == "SIGKILL":
        old.kill()
    else:
        old.stop()
    return ServerProcess(old.data_dir, admin_token=old.admin_token, extra_args=old.extra_args)


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=1_000_000, help="envelopes (default %(default)s)")
    p.add_argument("--batch", type=int, default=1000, help="envelopes per request")
    p.add_argument("--size", type=int, default=1024, help="bytes of JSON per envelope")
    p.add_argument("--sample-every", type=int, default=None, help="default: count/20")
    p.add_argument("--concurrency", type=int, default=2, help="sending threads (keep-alive each)")
    p.add_argument("--data", default=None, help="data dir (default: a fresh temp dir, removed)")
    p.add_argument("--keep", action="store_true", help="keep the temp data dir")
    p.add_argument("--json-out", default=None, help="also write the summary JSON here")
    p.add_argument("--server-arg", action="append", default=[], help="extra 'serve' flag")
    args = p.parse_args(argv)
    if args.count < 1 or not 1 <= args.batch <= 5000:
        p.error("--count must be >= 1 and --batch between 1 and 5000")
    args.sample_every = args.sample_every or max(args.batch, args.count // 20)

    tmp = None
    if args.data is None:
        tmp = Path(tempfile.mkdtemp(prefix="dueslag-bench-"))
        data = tmp / "data"
    else:
        data = Path(args.data)
    srv = ServerProcess(data, extra_args=args.server_arg, start_timeout=120)
    summary: dict[str, Any] = {
        "count": args.count,
        "batch": args.batch,
        "size": args.size,
        "cpus": os.cpu_count(),
        "loadavg_1m_before": os.getloadavg()[0],
    }
    failure: Exception | None = None
    try:
        srv.start()
        summary["fresh_start_to_ready_s"] = round(srv.ready_after_s or 0, 3)
        token, boxes = _setup(srv)
        idle = tree_status_kb(srv.pid, FIELDS)
        print(f"server pid {srv.pid} on {srv.url}, data in {data}")
        print(
            f"idle after setup: RssAnon {idle.get('RssAnon', 0) / 1024:.1f} MiB, "
            f"RssFile {idle.get('RssFile', 0) / 1024:.1f} MiB"
        )
        pusher = Pusher(args, srv.url, token, srv.pid)
        head, middle, tail = pusher.head, pusher.middle, pusher.tail
        print(f"envelope: {len(head) + len(middle) + len(tail) + 72} bytes of JSON; fan-out 1-2\n")
        _print_header()
        cpu0, my_cpu0, wb0 = tree_cpu_s(srv.pid), time.process_time(), tree_write_bytes(srv.pid)
        pusher.t0 = time.monotonic()
        threads = [
            threading.Thread(target=pusher.run_thread, daemon=True)
            for _ in range(max(1, args.concurrency))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(MAX_RUN_S + 60)
        elapsed = time.monotonic() - pusher.t0
        server_cpu, my_cpu = tree_cpu_s(srv.pid) - cpu0, time.process_time() - my_cpu0
        summary["loadavg_1m_after_push"] = os.getloadavg()[0]
        wb1 = tree_write_bytes(srv.pid)
        if wb0 is not None and wb1 is not None and pusher.accepted:
            summary["server_disk_write_bytes_per_envelope"] = round((wb1 - wb0) / pusher.accepted)
        if pusher.error is not None:
            raise pusher.error
        if not pusher.samples or pusher.samples[-1]["envelopes"] != pusher.accepted:
            pusher.sample(pusher.accepted)
        s = pusher.samples
        first, last = s[0], s[-1]
        at = {f: _at(s, f, args.count) for f in (0.1, 0.5, 1.0)}
        backlog = _backlog(srv, token, boxes)
        summary.update(
            {
                "accepted": pusher.accepted,
                "deliveries": pusher.deliveries,
                "backlog": backlog,
                "elapsed_s": round(elapsed, 2),
                "throughput_env_s": round(pusher.accepted / elapsed),
                "throughput_deliveries_s": round(pusher.deliveries / elapsed),
                "throughput_mib_s": round(pusher.bytes_sent / elapsed / 2**20, 1),
                "retries_503": pusher.retries_503,
                "server_cpu_s": round(server_cpu, 1),
                "server_cores": round(server_cpu / elapsed, 2),
                "bench_client_cores": round(my_cpu / elapsed, 2),
                "idle_rss_anon_kib": idle.get("RssAnon"),
                "rss_anon_kib": {
                    f"{int(f * 100)}%": {"envelopes": r["envelopes"], "kib": r["RssAnon_kib"]}
                    for f, r in at.items()
                },
                "rss_file_kib": {f"{int(f * 100)}%": r["RssFile_kib"] for f, r in at.items()},
                "vm_rss_kib": {f"{int(f * 100)}%": r["VmRSS_kib"] for f, r in at.items()},
                "rss_anon_ratio_last_first": round(last["RssAnon_kib"] / first["RssAnon_kib"], 3),
                "rss_anon_first_sample_envelopes": first["envelopes"],
                "store_bytes_on_disk": _du(data),
            }
        )
        if backlog["ready"] != pusher.deliveries:
            raise RuntimeError(f"backlog {backlog} != {pusher.deliveries} routed deliveries")

        for how in ("SIGTERM", "SIGKILL"):
            srv = _restart(srv, how)
            srv.start()
            after = _backlog(srv, token, boxes)
            rss = tree_status_kb(srv.pid, FIELDS)
            summary[f"restart_after_{how}"] = {
                "spawn_to_ready_s": round(srv.ready_after_s or 0, 3),
                "backlog_ready": after["ready"],
                "rss_anon_kib": rss.get("RssAnon"),
                "rss_file_kib": rss.get("RssFile"),
            }
            if after["ready"] != pusher.deliveries:
                raise RuntimeError(f"after {how} restart: backlog {after} != {pusher.deliveries}")
    except Exception as exc:  # still print what was measured
        failure = exc
        summary["error"] = f"{type(exc).__name__}: {exc}"[:3000]
    finally:
        srv.close()
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    print(
        "\nRssAnon = the server's own memory (heap, buffers): must stay flat as the backlog grows."
        "\nRssFile = pages of LMDB's memory-mapped data file mapped into the server (pages it read,"
        "\n          plus the kernel's fault-around of neighbouring cached pages): page cache, shared,"
        "\n          clean after commit and reclaimable by the kernel. It grows with the file, not with"
        "\n          a heap, so it is not part of the bounded-memory claim."
        "\nserver_cores = server CPU seconds / wall seconds; well below 1 with a high load average"
        "\n          means the machine was busy with other work and the throughput is understated."
        "\ntime-to-ready = spawn of 'dueslag serve' to the first /readyz 200 (includes Python"
        f"\n          start-up; a fresh empty store took {summary.get('fresh_start_to_ready_s')} s).\n"
    )
    print(json.dumps(summary, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=2) + "\n")
    if failure is not None:
        traceback.print_exception(failure)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
