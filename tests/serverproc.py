"""Run ``dueslag serve`` as a real subprocess, for crash tests and benchmarks.

Used by ``tests/test_crash.py`` and ``bench/backlog_rss.py``; reusable by any test that needs a
real process (to ``kill -9`` it, to measure its memory, to restart it on the same data dir).

Rules it keeps:

* It only ever binds and talks to 127.0.0.1.
* The port is chosen by binding a socket to port 0 and closing it. The CLI does not report a
  port-0 bind in a machine-readable way, so the chosen port is passed explicitly and confirmed from
  the ``dueslag: listening on <url>`` line on stdout. If another process takes the port in
  between, the start is retried on a fresh port (a bounded number of times).
* Every wait is bounded. :meth:`ServerProcess.close` (also run by ``__exit__``) always leaves the
  child dead and reaped.
* The command is ``python -m cli serve`` from the repository root, which is exactly what the
  ``dueslag`` console script runs, but never picks up a stale installed copy.

Example::

    with ServerProcess(tmp_path / "data") as srv:
        httpx.get(srv.url + "/readyz")
        srv.kill()  # SIGKILL
    srv = ServerProcess(tmp_path / "data").start()  # same data dir
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

__all__ = [
    "REPO_ROOT",
    "ServerProcess",
    "ServerStartError",
    "child_pids",
    "free_port",
    "pid_alive",
    "proc_status_kb",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
START_TIMEOUT_S = 30.0
START_ATTEMPTS = 3
STOP_TIMEOUT_S = 10.0
OUTPUT_LINES = 2000  # how much of the child's output is kept for diagnostics

_LISTENING = re.compile(r"dueslag: listening on (\S+?)(?:,|\s|$)")
_IN_USE = ("address already in use", "errno 98")


class ServerStartError(RuntimeError):
    """The server did not come up; the message ends with the tail of its output."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def proc_status_kb(
    pid: int, fields: Sequence[str] = ("VmRSS", "RssAnon", "RssFile")
) -> dict[str, int]:
    """Selected ``kB`` fields of ``/proc/<pid>/status`` (Linux), e.g. ``{"VmRSS": 51234, ...}``."""
    wanted = set(fields)
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in wanted:
                out[key] = int(rest.split()[0])
    return out


def tree_status_kb(
    pid: int, fields: Sequence[str] = ("VmRSS", "RssAnon", "RssFile")
) -> dict[str, int]:
    """:func:`proc_status_kb` summed over ``pid`` and its descendants: a server's writer
    process (``serve --writer process``) and workers are part of its memory."""
    total: dict[str, int] = {}
    for current in process_tree(pid):
        try:
            for key, kb in proc_status_kb(current, fields).items():
                total[key] = total.get(key, 0) + kb
        except FileNotFoundError:  # gone since it was listed
            continue
    return total


def process_tree(pid: int) -> list[int]:
    """The server and its descendants (its writer process, or workers and theirs)."""
    pids, todo = [], [pid]
    while todo:
        pids.append(todo.pop())
        todo.extend(child_pids(pids[-1]))
    return pids


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of the server's process tree so far (``/proc/<pid>/stat``)."""
    ticks = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # gone since it was listed
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_write_bytes(pid: int) -> int | None:
    """Bytes the server's process tree caused to be written to storage (``/proc/<pid>/io``),
    if readable."""
    total = 0
    try:
        for p in process_tree(pid):
            with open(f"/proc/{p}/io", encoding="ascii") as f:
                total += next(int(ln.split()[1]) for ln in f if ln.startswith("write_bytes:"))
    except (OSError, StopIteration):
        return None
    return total


def child_pids(pid: int) -> list[int]:
    """The live child processes of ``pid`` (Linux ``/proc``), e.g. the workers of a server."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()  # after "pid (comm)": state, ppid, ...
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return sorted(out)


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (a dead child nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


class ServerProcess:
    """One ``dueslag serve`` child process on 127.0.0.1.

    Arguments:
        data_dir: the ``--data`` directory (created by the server if missing).
        admin_token: passed as ``$DUESLAG_ADMIN_TOKEN``; a random one by default.
        extra_args: more ``serve`` flags (e.g. ``["--no-sync"]``).
        env: extra environment variables for the child.
        start_timeout: seconds :meth:`start` waits for the listening line and ``/readyz`` 200.
        workers: ``--workers`` (processes serving one store); the default 1 is one process.
        access_control: False (the default) passes ``--no-access-control``.
    """

    def __init__(
        self,
        data_dir: str | Path,
        *,
        admin_token: str | None = None,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        start_timeout: float = START_TIMEOUT_S,
        workers: int = 1,
        access_control: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.workers = workers
        self.access_control = access_control
        self.admin_token = admin_token or "adm_test_" + secrets.token_hex(16)
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.start_timeout = start_timeout
        self.port = 0
        self.url = ""
        self.ready_after_s: float | None = None  # spawn -> first /readyz 200, of the last start
        self._proc: subprocess.Popen[str] | None = None
        self._lines: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES)
        self._listening = threading.Event()
        self._listen_url = ""
        self._reader: threading.Thread | None = None

    def __repr__(self) -> str:
        state = "not started" if self._proc is None else f"pid {self.pid}, {self.state()}"
        return f"<ServerProcess {self.url or '-'} [{state}] data={self.data_dir}>"

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> ServerProcess:
        return self.start() if self._proc is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("the server was not started")
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def state(self) -> str:
        rc = self.returncode
        return "running" if rc is None else f"exited {rc}"

    def output(self) -> str:
        """The child's stdout+stderr so far (the last ``OUTPUT_LINES`` lines)."""
        return "".join(self._lines)

    def command(self, port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "cli",
            "serve",
            "--bind",
            f"{HOST}:{port}",
            "--data",
            str(self.data_dir),
            # these tests and benches exercise the delivery core: no catalog/agreement set-up
            *([] if self.access_control else ["--no-access-control"]),
            *([] if self.workers == 1 else ["--workers", str(self.workers)]),
            *self.extra_args,
        ]

    def start(self) -> ServerProcess:
        """Spawn the server and wait (bounded) until ``/readyz`` answers 200.

        Error handling:
            Raises :class:`ServerStartError` when the child exits, never prints its listening
            line, or is not ready within ``start_timeout``; the child is killed first.
        """
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError(f"{self!r} is already running")
        last: ServerStartError | None = None
        for _ in range(START_ATTEMPTS):
            try:
                self._spawn(free_port())
                return self
            except ServerStartError as err:
                self.close()
                last = err
                if not any(s in str(err).lower() for s in _IN_USE):
                    raise
        assert last is not None
        raise last

    def _spawn(self, port: int) -> None:
        env = {**os.environ, **self.extra_env}
        env["DUESLAG_ADMIN_TOKEN"] = self.admin_token
        env["PYTHONUNBUFFERED"] = "1"
        self._lines.clear()
        self._listening.clear()
        self._listen_url = ""
        self.port = port
        self.url = f"http://{HOST}:{port}"
        t0 = time.monotonic()
        self._proc = subprocess.Popen(
            self.command(port),
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(
            target=self._read_output, args=(self._proc,), name=f"dueslag-{port}-out", daemon=True
        )
        self._reader.start()
        deadline = t0 + self.start_timeout
        while not self._listening.wait(0.05):
            if self._proc.poll() is not None:
                self._reader.join(2.0)
                raise self._failure(
                    f"the server exited with {self._proc.returncode} before listening"
                )
            if time.monotonic() > deadline:
                raise self._failure(f"no 'listening on' line within {self.start_timeout:g} s")
        if not self._listen_url.endswith(f":{port}"):
            raise self._failure(f"listening on {self._listen_url}, expected port {port}")
        self.wait_ready(max(0.5, deadline - time.monotonic()))
        self.ready_after_s = time.monotonic() - t0

    def _read_output(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:  # ends at EOF, i.e. when the child is gone
            self._lines.append(line)
            if not self._listening.is_set():
                m = _LISTENING.search(line)
                if m:
                    self._listen_url = m.group(1)
                    self._listening.set()
        proc.stdout.close()

    def _failure(self, what: str) -> ServerStartError:
        tail = "".join(list(self._lines)[-40:])
        return ServerStartError(f"{what}; command {self.command(self.port)}; output:\n{tail}")

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> float:
        """Poll ``GET /readyz`` until 200; return the seconds it took. Bounded by ``timeout``."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        last = "no answer"
        with httpx.Client(base_url=self.url, timeout=2.0) as c:
            while time.monotonic() < deadline:
                if self.returncode is not None:
                    raise self._failure(f"the server exited with {self.returncode}")
                try:
                    r = c.get("/readyz")
                    if r.status_code == 200:
                        return time.monotonic() - t0
                    last = f"{r.status_code} {r.text[:200]}"
                except httpx.TransportError as exc:
                    last = repr(exc)
                time.sleep(0.02)
        raise self._failure(f"/readyz not 200 within {timeout:g} s (last: {last})")

    def kill(self) -> None:
        """``kill -9`` the server (SIGKILL) and reap it. No-op if it is not running."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
        self._proc.wait(STOP_TIMEOUT_S)
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT_S)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """Graceful stop (SIGTERM), SIGKILL after ``timeout``. Returns the exit code."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(STOP_TIMEOUT_S)
        if self._reader is not None:
            self._reader.join(STOP_TIMEOUT_S)
        return self._proc.returncode

    def close(self) -> None:
        """Make sure the child is dead and reaped (SIGKILL if needed). Safe to call twice."""
        with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL cannot be ignored
            self.kill()
