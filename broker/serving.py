"""The ``dueslag serve`` command: one serving process, or the supervisor of ``--workers N``.

The root of the serving process tree holds the data directory's lock (:mod:`broker.datalock`);
workers run under the supervisor's lock. A single process prints the ``dueslag: listening on``
line itself; with workers the supervisor prints it once every worker is ready.
"""

from __future__ import annotations

import argparse
import errno
import gc
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import trio

from broker.config import GC_THRESHOLDS, BrokerConfig
from broker.datalock import DataDirBusy, DataDirLock
from broker.peers import WorkerSlot
from broker.server import ServerInfo, prepare_data, serve
from broker.workers import MAX_WORKERS, Supervisor, ready_signal, watch_parent

__all__ = ["serve_command"]


def serve_command(args: argparse.Namespace) -> int:
    """``dueslag serve``: refuse a busy data dir, then serve in this process or supervise
    ``--workers N``. Returns the exit status."""

    if not 1 <= args.workers <= MAX_WORKERS:
        print(f"dueslag: --workers must be between 1 and {MAX_WORKERS}", file=sys.stderr)
        return 2
    config = BrokerConfig(
        data_dir=args.data,
        bind=args.bind,
        workers=args.workers,
        admin_token=args.admin_token,
        sync=not args.no_sync,
        writer=args.writer,
        demo=args.demo,
        dedup_window_s=args.dedup_window,
        access_control=not args.no_access_control,
    )
    if args.worker_index is None:  # the serving process tree's root holds the data dir
        lock = DataDirLock(args.data)
        try:
            lock.acquire()
        except DataDirBusy as exc:
            print(f"dueslag: {exc}", file=sys.stderr)
            return 2
        try:
            if args.workers > 1:
                return _serve_workers(config)
            return _serve_one(args, config)
        finally:
            lock.release()
    return _serve_one(args, config)


def _serve_one(args: argparse.Namespace, config: Any) -> int:
    """One serving process: the only one (``--workers 1``) or a worker of the supervisor."""

    worker = None
    if args.worker_index is not None:
        worker = WorkerSlot(index=args.worker_index, count=args.workers, data_dir=args.data)

    gc.set_threshold(*GC_THRESHOLDS)

    async def run() -> None:
        stop = trio.Event()
        watchers = [trio.CancelScope(), trio.CancelScope()]  # what sets ``stop``; ended after
        async with trio.open_nursery() as nursery:

            async def on_signals() -> None:
                with (
                    watchers[0],
                    trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
                ):
                    async for _ in signals:
                        stop.set()
                        return

            async def on_parent_exit() -> None:

                with watchers[1]:
                    await watch_parent(stop)

            nursery.start_soon(on_signals)
            if worker is not None:
                nursery.start_soon(on_parent_exit)
            info: ServerInfo = await nursery.start(
                lambda task_status: serve(
                    config, shutdown_trigger=stop.wait, worker=worker, task_status=task_status
                )
            )
            gc.collect()
            gc.freeze()  # start-up objects (catalog, index) leave the collector's generations
            if worker is None:
                _announce(info, config)
            elif args.ready_fd is not None:
                ready_signal(args.ready_fd)
            await stop.wait()
            for scope in watchers:
                scope.cancel()
        if worker is None:
            print("dueslag: stopped", flush=True)

    try:
        trio.run(run)
    except BaseExceptionGroup as group:
        bind_error = _bind_error(group)
        if bind_error is None:
            raise
        print(f"dueslag: cannot listen on {config.bind}: {bind_error}", file=sys.stderr)
        return 1
    return 0


_BIND_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


def _bind_error(exc: BaseException) -> OSError | None:
    """The address error inside the start-up's exception group (the one user-facing start-up
    failure that is not a bug): a busy port, an address not on this host, a privileged port."""
    if isinstance(exc, OSError) and exc.errno in _BIND_ERRNOS:
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _bind_error(inner)
            if found is not None:
                return found
    return None


def _serve_workers(config: Any) -> int:
    """The parent of ``--workers N``: prepare once, then run and watch the workers."""

    token, token_new = prepare_data(config)

    def announce(url: str) -> None:
        info = argparse.Namespace(binds=[url], admin_token=token, admin_token_new=token_new)
        _announce(info, config)
        print(f"dueslag: {config.workers} worker processes", flush=True)

    rc = trio.run(Supervisor(config, token, announce).run)
    print("dueslag: stopped", flush=True)
    return rc


def _announce(info: Any, config: Any) -> None:
    data = Path(config.data_dir)
    print(f"dueslag: listening on {', '.join(info.binds)} (data in {data.resolve()})", flush=True)
    if info.admin_token_new:
        print(
            f"dueslag: admin token (shown once, also in {data / 'admin-token'}): {info.admin_token}",
            flush=True,
        )
    elif config.admin_token or os.environ.get("DUESLAG_ADMIN_TOKEN"):
        print("dueslag: admin token: as given (--admin-token / $DUESLAG_ADMIN_TOKEN)", flush=True)
    else:
        print(f"dueslag: admin token: in {data / 'admin-token'}", flush=True)
    demo = data / "demo.json"
    if config.demo and demo.exists():
        d = json.loads(demo.read_text())
        print(
            f"dueslag: demo system {d['system_id']}, mailbox {d['mailbox_id']} (token in {demo})",
            flush=True,
        )
    print("dueslag: authenticate with 'Authorization: Bearer <token>'", flush=True)
