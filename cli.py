"""The ``dueslag`` command: serve, send, poll, ack and administration, all over HTTP.

``main(argv) -> int``; nothing happens at import. Client commands find the broker at ``--url``
(``$DUESLAG_URL``, default http://127.0.0.1:8080) and their token at ``--token``
(``$DUESLAG_TOKEN``); without one they fall back to the local data dir's demo system token
(system commands) or admin token (``admin`` commands), so the README quick start needs no
copying of secrets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_DATA = "./dueslag-data"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dueslag", description="Durable message distributor (Beskedfordeler)."
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the broker")
    s.add_argument(
        "--bind", default="127.0.0.1:8080", help="HOST:PORT to listen on (default %(default)s)"
    )
    s.add_argument(
        "--data",
        default=DEFAULT_DATA,
        help="data directory (LMDB store, admin token) (default %(default)s)",
    )
    s.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes sharing the store and the port (docs/workers.md)",
    )
    # internal: how the parent of --workers N starts each worker process (broker/workers.py)
    s.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    s.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    s.add_argument(
        "--admin-token",
        default=None,
        help="admin token (default: $DUESLAG_ADMIN_TOKEN or generated)",
    )
    s.add_argument(
        "--demo", action="store_true", help="create a demo system + mailbox on a fresh data dir"
    )
    s.add_argument(
        "--no-sync", action="store_true", help="do not fsync commits (unsafe; for experiments only)"
    )
    s.add_argument(
        "--writer",
        choices=("auto", "thread", "process"),
        default="auto",
        help="where commits run: a writer process per worker with a GIL of its own, or a "
        "thread of the serving process; auto: a process when the CPUs outnumber 2 x workers "
        "(default: auto; docs/performance.md)",
    )
    s.add_argument(
        "--no-access-control",
        action="store_true",
        help="accept any message type from any system, no agreements needed (local experiments only)",
    )
    s.add_argument(
        "--dedup-window",
        type=int,
        default=24 * 3600,
        help="seconds a BeskedId is remembered per sender",
    )

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--url",
        default=os.environ.get("DUESLAG_URL", DEFAULT_URL),
        help="broker URL ($DUESLAG_URL)",
    )
    common.add_argument(
        "--token", default=os.environ.get("DUESLAG_TOKEN"), help="bearer token ($DUESLAG_TOKEN)"
    )
    common.add_argument(
        "--data", default=DEFAULT_DATA, help="where to find demo/admin tokens when none is given"
    )
    leaf: dict[str, Any] = {"parents": [common]}

    s = sub.add_parser("send", help="send an envelope (JSON, XML or msgpack), or a batch", **leaf)
    s.add_argument("file", help="file to send, or - for standard input")
    s.add_argument("--content-type", default=None, help="override the detected Content-Type")
    s.add_argument("--batch", action="store_true", help="send as a batch (JSON array or NDJSON)")

    s = sub.add_parser("poll", help="lease deliveries from a mailbox and print them", **leaf)
    s.add_argument("mailbox")
    s.add_argument("--max", type=int, default=10)
    s.add_argument(
        "--wait", type=float, default=0.0, help="seconds to long-poll for the first delivery"
    )
    s.add_argument("--lease", type=float, default=None, help="lease length in seconds")
    s.add_argument("--ack", action="store_true", help="acknowledge what was received")
    s.add_argument("--xml", action="store_true", help="print each delivery as Haendelsesbesked XML")

    s = sub.add_parser("ack", help="acknowledge deliveries", **leaf)
    s.add_argument("mailbox")
    s.add_argument("delivery_ids", nargs="+")

    s = sub.add_parser("nack", help="requeue (or dead-letter) deliveries", **leaf)
    s.add_argument("mailbox")
    s.add_argument("delivery_ids", nargs="+")
    s.add_argument("--dead", action="store_true", help="dead-letter instead of requeueing")

    s = sub.add_parser("mailbox", help="mailboxes of the calling system")
    ms = s.add_subparsers(dest="action", required=True)
    c = ms.add_parser("create", **leaf)
    c.add_argument("name")
    c.add_argument("--strict", action="store_true", help="head-of-line FIFO (KOMBIT's udkø)")
    c.add_argument(
        "--retention", type=int, default=None, help="seconds acked copies are kept (max 30 days)"
    )
    c.add_argument("--max-deliveries", type=int, default=None)
    ms.add_parser("list", **leaf)
    for name in ("show", "delete", "dead-letters", "requeue-dead", "replay"):
        ms.add_parser(name, **leaf).add_argument("mailbox")

    s = sub.add_parser("subscription", help="subscriptions of a mailbox")
    ss = s.add_subparsers(dest="action", required=True)
    c = ss.add_parser("create", **leaf)
    c.add_argument("mailbox")
    c.add_argument("message_types", nargs="+", help="Beskedtype UUIDs")
    c.add_argument("--expression", default=None, help="a filter expression (docs/filters.md)")
    ss.add_parser("list", **leaf).add_argument("mailbox")
    for name in ("activate", "deactivate"):
        c = ss.add_parser(name, **leaf)
        c.add_argument("mailbox")
        c.add_argument("subscription")
    d = ss.add_parser("delete", **leaf)
    d.add_argument("mailbox")
    d.add_argument("subscription")

    from broker.commands import add_governance_parsers
    from broker.loadtest import add_bench_arguments

    add_governance_parsers(sub, leaf)
    add_bench_arguments(
        sub.add_parser("bench", help="load-test a broker: throughput, latency, loss")
    )

    s = sub.add_parser("admin", help="administration (admin token)")
    adm = s.add_subparsers(dest="what", required=True)
    sy = adm.add_parser("system", help="systems (anvendersystemer)")
    sya = sy.add_subparsers(dest="action", required=True)
    sya.add_parser("create", **leaf).add_argument("name")
    sya.add_parser("list", **leaf)
    return p


def _token(args: argparse.Namespace, *, admin: bool) -> str | None:
    if args.token:
        return str(args.token)
    data = Path(args.data)
    if admin:
        env = os.environ.get("DUESLAG_ADMIN_TOKEN")
        if env:
            return env
        f = data / "admin-token"
        return f.read_text().strip() if f.exists() else None
    f = data / "demo.json"
    return str(json.loads(f.read_text())["token"]) if f.exists() else None


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def _detect(path: str, data: bytes, explicit: str | None, batch: bool) -> tuple[str, bool]:
    if explicit:
        return explicit, batch
    head = data.lstrip()[:1]
    if path.endswith(".xml") or head == b"<":
        return "application/xml", False
    if path.endswith((".ndjson", ".jsonl")):
        return "application/x-ndjson", True
    if path.endswith((".msgpack", ".mpk")):
        return "application/msgpack", batch
    if head == b"[":
        return "application/json", True
    return "application/json", batch


def _client_command(args: argparse.Namespace) -> int:
    from broker.client import Client
    from broker.commands import ADMIN_COMMANDS, GOVERNANCE_COMMANDS, run_governance

    admin = args.command in ADMIN_COMMANDS
    with Client(args.url, _token(args, admin=admin)) as c:
        if args.command in GOVERNANCE_COMMANDS:
            _print(run_governance(c, args))
        elif args.command == "send":
            data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
            ctype, batch = _detect(args.file, data, args.content_type, args.batch)
            _print(c.send_batch(data, ctype) if batch else c.send(data, ctype))
        elif args.command == "poll":
            got = c.poll(args.mailbox, max=args.max, wait=args.wait, lease=args.lease)
            for d in got:
                if args.xml:
                    print(c.delivery_xml(args.mailbox, d["delivery_id"]).decode())
                else:
                    _print(d)
            if args.ack and got:
                c.ack(args.mailbox, [d["delivery_id"] for d in got])
            print(
                f"# {len(got)} deliveries{' acknowledged' if args.ack and got else ''}",
                file=sys.stderr,
            )
        elif args.command == "ack":
            _print(c.ack(args.mailbox, args.delivery_ids))
        elif args.command == "nack":
            _print(c.nack(args.mailbox, args.delivery_ids, requeue=not args.dead))
        elif args.command == "mailbox":
            _mailbox(c, args)
        elif args.command == "subscription":
            if args.action == "create":
                _print(c.subscribe(args.mailbox, args.message_types, args.expression))
            elif args.action == "list":
                _print(c.list_subscriptions(args.mailbox))
            elif args.action in ("activate", "deactivate"):
                path = f"/v1/mailboxes/{args.mailbox}/subscriptions/{args.subscription}"
                _print(c.request("PATCH", path, json={"active": args.action == "activate"}))
            else:
                c.delete_subscription(args.mailbox, args.subscription)
        elif args.command == "admin":
            _print(c.create_system(args.name) if args.action == "create" else c.list_systems())
    return 0


def _mailbox(c: Any, args: argparse.Namespace) -> None:
    if args.action == "create":
        options = {}
        if args.retention is not None:
            options["retention_s"] = args.retention
        if args.max_deliveries is not None:
            options["max_deliveries"] = args.max_deliveries
        _print(c.create_mailbox(args.name, strict=args.strict, **options))
    elif args.action == "list":
        _print(c.list_mailboxes())
    elif args.action == "show":
        _print(c.get_mailbox(args.mailbox))
    elif args.action == "delete":
        c.delete_mailbox(args.mailbox)
    elif args.action == "dead-letters":
        _print(c.dead_letters(args.mailbox))
    elif args.action == "requeue-dead":
        _print({"requeued": c.requeue_dead(args.mailbox)})
    elif args.action == "replay":
        _print({"replayed": c.replay(args.mailbox)})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        from broker.serving import serve_command

        return serve_command(args)
    if args.command == "bench":
        from broker.loadtest import run_bench

        return run_bench(args)
    from broker.client import ClientError

    try:
        return _client_command(args)
    except ClientError as exc:
        print(f"dueslag: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"dueslag: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
