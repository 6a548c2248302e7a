"""Publish-stream throughput: N envelopes of ~1 KiB over one WebSocket, each confirmed durably.

What it does, per run (``--runs``, each on a fresh server and data dir):

1. Starts ``python3 -m cli serve --bind 127.0.0.1:PORT --data DIR --no-access-control`` from the
   repository root (``tests/serverproc.py``), sync on (every commit fsyncs before a confirm).
2. Creates one system and one mailbox subscribed to the envelopes' message type (fan-out 1).
3. Builds every frame up front (``--per-frame`` envelopes in each, canonical JSON, a text frame),
   so the client's encoding is not in the measured time.
4. Opens ``/v1/stream/publish?window=W`` and sends while fewer than ``--window`` frames are
   unconfirmed, reading confirms in a sibling task. The clock runs from the first send to the
   last confirm; every seq must be confirmed exactly once with no error, and the mailbox must
   then hold exactly N ready deliveries.
5. Reports env/s and frames/s, and the CPU the server used (``/proc/<pid>/stat``).

The load generator is this Python process (trio-websocket, wsproto), on the same cores as the
server; it costs CPU the server could have used, so the figures are a floor.

Usage (from the repository root)::

    python3 bench/stream_bench.py                          # 100k envelopes, 1 and 10 per frame
    python3 bench/stream_bench.py --count 300000 --per-frame 10 --runs 3 --json-out r.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import trio
from trio_websocket import WebSocketConnection, wrap_client_stream

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.serverproc import ServerProcess

MESSAGE_TYPE = "5a1b0c3d-0001-4e00-8a00-000000000001"
MAX_RUN_S = 600.0
PATH = "/v1/stream/publish?window={window}"  # the server's window matches the client's


def envelope_bytes(size: int) -> tuple[str, str]:
    """An envelope of about ``size`` bytes of JSON, as the text before and after its BeskedId."""
    env = {
        "BeskedId": {"UUIDIdentifikator": "@BID@"},
        "BeskedVersion": "1.0",
        "Beskedkuvert": {
            "Filtreringsdata": {
                "Beskedtype": {"UUIDIdentifikator": MESSAGE_TYPE},
                "BeskedAnsvarligAktoer": {
                    "UUIDIdentifikator": "795ac65f-b480-4a01-98af-441980b192c3"
                },
                "TilladtModtager": [{"URNIdentifikator": "urn:oio:cvr-nr:29189846"}],
                "RelateretObjekt": [
                    {
                        "ObjektId": {"URNIdentifikator": "urn:oio:cpr:0101709999"},
                        "ObjektType": {"UUIDIdentifikator": "ce7fcf97-a8a2-447a-8690-d38aa0f6e23c"},
                    }
                ],
            },
            "Leveranceinformation": {
                "Dannelsestidspunkt": {"TidsstempelDatoTid": "2026-11-27T08:00:00Z"}
            },
        },
        "Beskeddata": [{"json": {"status": "Afleveret", "note": "@FILL@"}}],
    }
    text = json.dumps(env, separators=(",", ":"))
    fill = max(0, size - (len(text) - len("@BID@") + 36 - len("@FILL@")))
    head, tail = text.replace("@FILL@", "x" * fill).split("@BID@")
    return head, tail


def build_frames(count: int, per_frame: int, size: int) -> list[str]:
    """The frames' JSON text (sent as text frames, or UTF-8 in binary frames with --binary)."""
    head, tail = envelope_bytes(size)
    frames = []
    for seq, first in enumerate(range(0, count, per_frame)):
        n = min(per_frame, count - first)
        envs = ",".join(f"{head}{uuid.uuid4()}{tail}" for _ in range(n))
        if per_frame == 1:
            frames.append(f'{{"seq":{seq},"envelope":{envs}}}')
        else:
            frames.append(f'{{"seq":{seq},"envelopes":[{envs}]}}')
    return frames


def setup(srv: ServerProcess) -> tuple[str, str]:
    """A system (its token) and one mailbox subscribed to MESSAGE_TYPE."""
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        admin = {"Authorization": f"Bearer {srv.admin_token}"}
        r = c.post("/v1/systems", json={"name": "bench"}, headers=admin)
        r.raise_for_status()
        token = r.json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        r = c.post("/v1/mailboxes", json={"name": "bench"}, headers=auth)
        r.raise_for_status()
        mb = r.json()["id"]
        r = c.post(
            f"/v1/mailboxes/{mb}/subscriptions",
            json={"message_types": [MESSAGE_TYPE]},
            headers=auth,
        )
        r.raise_for_status()
    return token, mb


def ready_count(srv: ServerProcess, token: str, mb: str) -> int:
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.get(f"/v1/mailboxes/{mb}", headers={"Authorization": f"Bearer {token}"})
        r.raise_for_status()
        return int(r.json()["ready"])


def commit_stats(srv: ServerProcess) -> dict[str, float]:
    """The writer's group commits so far, from ``/metrics`` (count, mean seconds, mean ops)."""
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.get("/metrics", headers={"Authorization": f"Bearer {srv.admin_token}"})
        r.raise_for_status()
    values: dict[str, float] = {}
    for line in r.text.splitlines():
        name, _, value = line.partition(" ")
        if name in (
            "dueslag_commit_seconds_count",
            "dueslag_commit_seconds_sum",
            "dueslag_commit_ops_sum",
        ):
            values[name] = float(value)
    commits = values.get("dueslag_commit_seconds_count", 0.0) or 1.0
    return {
        "commits": commits,
        "mean_commit_ms": 1000 * values.get("dueslag_commit_seconds_sum", 0.0) / commits,
        "mean_ops_per_commit": values.get("dueslag_commit_ops_sum", 0.0) / commits,
    }


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def publish(
    url: str, token: str, frames: list[str] | list[bytes], window: int
) -> dict[str, Any]:
    host, _, port = url.removeprefix("http://").partition(":")
    stream = await trio.open_tcp_stream(host, int(port))
    confirmed: set[int] = set()
    envelopes = 0
    errors = 0
    messages = 0
    room = trio.Semaphore(window)
    done = trio.Event()

    async def reader(ws: WebSocketConnection) -> None:
        nonlocal envelopes, errors, messages
        while len(confirmed) < len(frames):
            msg = json.loads(await ws.get_message())
            messages += 1
            for c in msg["confirms"]:
                if c["seq"] in confirmed:
                    raise AssertionError(f"seq {c['seq']} confirmed twice")
                confirmed.add(c["seq"])
                room.release()
                if "error" in c:
                    errors += 1
                    continue
                for r in c["results"]:
                    if "error" in r:
                        errors += 1
                    else:
                        envelopes += 1
        done.set()

    async with stream, trio.open_nursery() as nursery:
        ws = await wrap_client_stream(
            nursery,
            stream,
            f"{host}:{port}",
            PATH.format(window=window),
            extra_headers=[(b"Authorization", f"Bearer {token}".encode())],
            max_message_size=64 * 1024 * 1024,
            message_queue_size=64,
        )
        t0 = time.perf_counter()
        c0 = time.process_time()
        nursery.start_soon(reader, ws)
        with trio.fail_after(MAX_RUN_S):
            for frame in frames:
                await room.acquire()
                await ws.send_message(frame)
            await done.wait()
        elapsed = time.perf_counter() - t0
        client_cpu = time.process_time() - c0
        await ws.aclose()
        await stream.aclose()
    return {
        "elapsed_s": elapsed,
        "client_cpu_s": client_cpu,
        "frames": len(frames),
        "confirmed_frames": len(confirmed),
        "confirm_messages": messages,
        "envelopes_ok": envelopes,
        "errors": errors,
    }


def one_run(args: argparse.Namespace, per_frame: int) -> dict[str, Any]:
    text = build_frames(args.count, per_frame, args.size)
    frames: list[str] | list[bytes] = [f.encode() for f in text] if args.binary else text
    with (
        tempfile.TemporaryDirectory(prefix="stream-bench-") as tmp,
        ServerProcess(Path(tmp) / "data", extra_args=args.server_arg) as srv,
    ):
        token, mb = setup(srv)
        cpu0 = cpu_s(srv.pid)
        out = trio.run(publish, srv.url, token, frames, args.window)
        out["server_cpu_s"] = cpu_s(srv.pid) - cpu0
        out["ready_after"] = ready_count(srv, token, mb)
        out.update(commit_stats(srv))
    out["per_frame"] = per_frame
    out["env_per_s"] = out["envelopes_ok"] / out["elapsed_s"]
    out["frames_per_s"] = out["frames"] / out["elapsed_s"]
    out["server_cores"] = out["server_cpu_s"] / out["elapsed_s"]
    out["server_cpu_us_per_env"] = 1e6 * out["server_cpu_s"] / max(1, out["envelopes_ok"])
    ok = (
        out["errors"] == 0
        and out["envelopes_ok"] == args.count
        and out["ready_after"] == args.count
    )
    out["ok"] = ok
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=100_000, help="envelopes per run")
    p.add_argument("--per-frame", type=int, nargs="+", default=[1, 10])
    p.add_argument("--window", type=int, default=1000, help="unconfirmed frames in flight")
    p.add_argument("--size", type=int, default=1024, help="bytes of JSON per envelope")
    p.add_argument("--runs", type=int, default=1, help="runs per setting; the median is shown")
    p.add_argument(
        "--binary", action="store_true", help="send the JSON in binary frames, not text frames"
    )
    p.add_argument("--server-arg", action="append", default=[], help="extra 'serve' flag")
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(argv)
    report: dict[str, Any] = {
        "binary": args.binary,
        "count": args.count,
        "window": args.window,
        "size": args.size,
        "settings": [],
    }
    failed = False
    for per_frame in args.per_frame:
        runs = []
        for i in range(args.runs):
            r = one_run(args, per_frame)
            runs.append(r)
            failed |= not r["ok"]
            print(
                f"per_frame={per_frame:>3} run {i + 1}: {r['env_per_s']:>9,.0f} env/s "
                f"{r['frames_per_s']:>9,.0f} frames/s  {r['elapsed_s']:6.2f} s  "
                f"server {r['server_cores']:.2f} cores "
                f"({r['server_cpu_us_per_env']:.0f} us/env), "
                f"client {r['client_cpu_s'] / r['elapsed_s']:.2f} cores  "
                f"{r['commits']:.0f} commits of {r['mean_ops_per_commit']:.0f} ops, "
                f"{r['mean_commit_ms']:.1f} ms  ok={r['ok']}",
                flush=True,
            )
        median = statistics.median(r["env_per_s"] for r in runs)
        report["settings"].append(
            {"per_frame": per_frame, "median_env_per_s": median, "runs": runs}
        )
        print(f"per_frame={per_frame:>3} median: {median:,.0f} env/s", flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
