"""``dueslag serve --workers N``: the parent process that runs N broker processes on one store.

Theory of operation
-------------------
The parent never opens trio-unsafe state before it spawns: it prepares the data dir once
(admin token, instance id, the seeded store, the demo set-up; :func:`broker.server.prepare_data`
opens and closes the store), binds one listening TCP socket per worker on the same port
(SO_REUSEPORT: the kernel spreads new connections over them by a hash of the connection), and
starts N workers with ``python -m cli serve --bind fd://<fd> --worker-index i ...`` (fork +
exec; nothing is forked without exec). Each worker inherits its socket and accepts from it,
opens the LMDB environment itself and serves like a single-process broker, plus the notices of
broker/peers.py. The parent keeps the sockets open, so a restarting worker's connections wait
in its backlog instead of being refused.
Worker 0 runs the sweeper.

Each worker reports readiness by writing to a pipe; once all are ready the parent prints the
usual ``dueslag: listening on URL`` line (exactly once). The admin token reaches the workers in
``$DUESLAG_ADMIN_TOKEN``.

Supervision: SIGINT/SIGTERM to the parent are forwarded (SIGTERM) to every worker, which drain
like a single server; a worker still running after ``graceful_timeout + STOP_GRACE_S`` is
killed. A worker that exits on its own is restarted, at most :data:`MAX_RESTARTS` times in
:data:`RESTART_WINDOW_S` seconds per worker; beyond that (or if a first start fails) the parent
stops every worker and exits 1 with a message. Workers run in their own session (a terminal's
Ctrl-C goes to the parent only) and exit when the parent dies, however it dies: each watches
its stdin, a pipe from the parent that nothing writes to, and the kernel closes it (EOF) when the
parent exits. (``PR_SET_PDEATHSIG`` does not fit: it fires when the parent *thread* that
spawned the child exits, and trio spawns processes from its worker threads, which come and go.)
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import trio
from prometheus_client.multiprocess import mark_process_dead

from broker.config import BrokerConfig

__all__ = [
    "MAX_RESTARTS",
    "MAX_WORKERS",
    "RESTART_WINDOW_S",
    "Supervisor",
    "listen_socket",
    "ready_signal",
    "watch_parent",
]

MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 5.0
LISTEN_BACKLOG = 1024
MAX_WORKERS = 64


def listen_socket(bind: str, *, reuse_port: bool = False) -> socket.socket:
    """A listening TCP socket on ``HOST:PORT`` that child processes can inherit.

    ``reuse_port``: several such sockets share the port (SO_REUSEPORT) and the kernel spreads
    new connections over them by a hash of the connection, one socket per worker. One shared
    socket instead lets the worker that happens to call ``accept`` first take a burst of
    connections, and long-lived ones (streams, keep-alive senders) then load one worker only.
    """
    host, _, port = bind.replace("[", "").replace("]", "").rpartition(":")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it
        sock.bind((host or "127.0.0.1", int(port)))
        sock.listen(LISTEN_BACKLOG)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


async def watch_parent(stop: trio.Event) -> None:
    """Set ``stop`` when standard input (the parent's pipe) reaches EOF: the parent is gone."""
    stream = trio.lowlevel.FdStream(os.dup(0))
    async with stream:
        while await stream.receive_some(4096):
            pass
    stop.set()


class Supervisor:
    """Starts, watches and stops the worker processes (see the module docstring).

    Arguments:
        config: the serve configuration (``workers`` processes, ``bind`` address).
        admin_token: given to every worker in ``$DUESLAG_ADMIN_TOKEN``.
        announce: called once with the URL when every worker is ready.
    """

    def __init__(
        self, config: BrokerConfig, admin_token: str, announce: Callable[[str], None]
    ) -> None:
        self.config = config
        self.admin_token = admin_token
        self.announce = announce
        self.stopping = False
        self.failure: str | None = None
        self._procs: dict[int, trio.Process] = {}
        self._ready = 0
        self._socks: list[socket.socket] = []
        # The workers' Prometheus values, one set of files per process (prometheus_client's
        # multiprocess mode), so that /metrics on any worker reports the whole broker.
        self.metrics_dir = Path(config.data_dir).resolve() / "run" / "metrics"

    def command(self, index: int, listen_fd: int, ready_fd: int) -> list[str]:
        c = self.config
        cmd = [sys.executable, "-m", "cli", "serve", "--data", c.data_dir]
        cmd += ["--bind", f"fd://{listen_fd}", "--workers", str(c.workers)]
        cmd += ["--worker-index", str(index), "--ready-fd", str(ready_fd)]
        cmd += ["--dedup-window", str(c.dedup_window_s), "--writer", c.writer]
        if not c.sync:
            cmd.append("--no-sync")
        if not c.access_control:
            cmd.append("--no-access-control")
        return cmd

    async def run(self) -> int:
        """Serve until SIGINT/SIGTERM (exit 0) or a worker cannot be kept running (exit 1)."""
        shutil.rmtree(self.metrics_dir, ignore_errors=True)  # counters start at 0, as they do
        self.metrics_dir.mkdir(parents=True, exist_ok=True)  # in a single-process server
        # A plain bind first: it fails when anything listens on the port, even another group of
        # SO_REUSEPORT sockets (another supervisor), which a reuse-port bind would silently join.
        try:
            with listen_socket(self.config.bind) as probe:
                host, port = probe.getsockname()[:2]  # port 0 is resolved here
        except OSError as exc:
            print(
                f"dueslag: cannot listen on {self.config.bind}: {exc}", file=sys.stderr, flush=True
            )
            return 1
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            for _ in range(self.config.workers):
                self._socks.append(listen_socket(bind, reuse_port=True))
        except BaseException:
            for sock in self._socks:
                sock.close()
            raise
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._on_signals, nursery.cancel_scope)
                for i in range(self.config.workers):
                    nursery.start_soon(self._keep, i, nursery.cancel_scope, url)
        finally:
            with trio.CancelScope(shield=True):
                await self._stop_all()
            for sock in self._socks:
                sock.close()
        if self.failure is not None:
            print(f"dueslag: {self.failure}; stopped every worker", file=sys.stderr, flush=True)
            return 1
        return 0

    async def _on_signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                self.stopping = True
                scope.cancel()
                return

    async def _keep(self, index: int, scope: trio.CancelScope, url: str) -> None:
        """Run worker ``index``; restart it when it exits on its own (bounded)."""
        starts: collections.deque[float] = collections.deque(maxlen=MAX_RESTARTS + 1)
        first = True
        while True:
            starts.append(time.monotonic())
            proc, ready = await self._start(index)
            if ready and first:
                first = False
                self._ready += 1
                if self._ready == self.config.workers:
                    self.announce(url)
            elif not ready and first:
                self.failure = f"worker {index} did not start (exit code {proc.returncode})"
                scope.cancel()
                return
            rc = await proc.wait()
            mark_process_dead(proc.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]
            if self.stopping:
                return
            if len(starts) == starts.maxlen and time.monotonic() - starts[0] < RESTART_WINDOW_S:
                self.failure = (
                    f"worker {index} exited with {rc} after {MAX_RESTARTS} restarts"
                    f" in {RESTART_WINDOW_S:g} s: giving up"
                )
                scope.cancel()
                return
            print(
                f"dueslag: worker {index} (pid {proc.pid}) exited with {rc}; restarting it",
                file=sys.stderr,
                flush=True,
            )

    async def _start(self, index: int) -> tuple[trio.Process, bool]:
        """Spawn worker ``index``; whether it became ready within ``READY_TIMEOUT_S`` (a
        worker that did not is stopped)."""
        listen_fd = self._socks[index].fileno()  # its own socket: see listen_socket()
        ready_r, ready_w = os.pipe()
        env = {
            **os.environ,
            "DUESLAG_ADMIN_TOKEN": self.admin_token,
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
        }
        try:
            proc = await trio.lowlevel.open_process(
                self.command(index, listen_fd, ready_w),
                stdin=subprocess.PIPE,  # never written: its EOF tells the worker we are gone
                pass_fds=(listen_fd, ready_w),
                env=env,
                start_new_session=True,  # signals come from us, not from the terminal
            )
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
        self._procs[index] = proc
        async with trio.lowlevel.FdStream(ready_r) as ready:
            with trio.move_on_after(READY_TIMEOUT_S):
                if await ready.receive_some(16):
                    return proc, True
        with trio.CancelScope(shield=True):
            await self._stop(proc)
        return proc, False

    async def _stop(self, proc: trio.Process) -> None:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            with trio.move_on_after(self.config.graceful_timeout_s + STOP_GRACE_S):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        if proc.stdin is not None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await proc.stdin.aclose()

    async def _stop_all(self) -> None:
        self.stopping = True
        async with trio.open_nursery() as nursery:
            for proc in self._procs.values():
                nursery.start_soon(self._stop, proc)


def ready_signal(fd: int) -> None:
    """Tell the parent (through the inherited pipe ``fd``) that this worker serves."""
    with contextlib.suppress(OSError):
        os.write(fd, b"ready\n")
    os.close(fd)
