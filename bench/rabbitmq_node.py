"""A private RabbitMQ node on loopback, for ``bench/compare_rabbitmq.py``.

What it does, and nothing more:

* :func:`ensure_installed` runs ``apt-get install -y rabbitmq-server`` (Debian's package) only
  when the server is missing, and says so.
* :class:`RabbitNode` starts ``rabbitmq-server`` as a child process in its own process group,
  with a private everything: a temp directory for the database, logs, config, enabled plugins
  (none: no management plugin) and ``$HOME`` (so the Erlang cookie is private too), a unique
  node name, AMQP on ``127.0.0.1:<free port>``, Erlang distribution on ``127.0.0.1:<free
  port>`` and its own ``epmd`` on ``127.0.0.1:<free port>``. It waits (bounded) for
  ``rabbitmqctl await_startup``. :meth:`RabbitNode.stop` stops the node (``rabbitmqctl stop``,
  then SIGTERM/SIGKILL to its process group), then the private ``epmd`` it caused to start
  (found by its port in ``/proc``, killed by pid), then removes the temp directory. It never
  touches a system-wide instance: :func:`foreign_instances` only reports one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

__all__ = [
    "RabbitNode",
    "RabbitStartError",
    "ensure_installed",
    "foreign_instances",
    "installed_version",
]

HOST = "127.0.0.1"
SERVER_CANDIDATES = ("/usr/lib/rabbitmq/bin/rabbitmq-server", "/usr/sbin/rabbitmq-server")
CTL_CANDIDATES = ("/usr/lib/rabbitmq/bin/rabbitmqctl", "/usr/sbin/rabbitmqctl")
INSTALL_TIMEOUT_S = 900.0
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0

Log = Callable[[str], None]


class RabbitStartError(RuntimeError):
    """The node did not come up; the message ends with the tail of its log."""


def _first(paths: tuple[str, ...]) -> str | None:
    # the real scripts in /usr/lib/rabbitmq/bin: /usr/sbin's wrappers would switch to the
    # 'rabbitmq' user and its home, and this node must stay in its own directory
    return next((p for p in paths if os.access(p, os.X_OK)), None)


def installed_version() -> str | None:
    """The installed Debian package's version, or None."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}|${Version}", "rabbitmq-server"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    status, _, version = out.stdout.partition("|")
    return version if out.returncode == 0 and "installed" in status.split() else None


def ensure_installed(log: Log = print) -> str:
    """Install Debian's ``rabbitmq-server`` if it is missing; return its version.

    Error handling:
        Raises RuntimeError when apt-get fails (its output's tail in the message).
    """
    version = installed_version()
    if version and _first(SERVER_CANDIDATES) and _first(CTL_CANDIDATES):
        log(f"rabbitmq-server {version} is installed")
        return version
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "rabbitmq-server"]
    for attempt in (1, 2):
        log(f"rabbitmq-server is missing: running {' '.join(cmd)}")
        r = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
        )
        if r.returncode == 0:
            break
        if attempt == 1:  # a stale package list is the usual cause
            log("apt-get install failed; running apt-get update once and retrying")
            subprocess.run(
                ["apt-get", "update", "-q"],
                env=env,
                capture_output=True,
                timeout=INSTALL_TIMEOUT_S,
                check=False,
            )
            continue
        raise RuntimeError(f"apt-get install rabbitmq-server failed:\n{r.stdout[-2000:]}")
    version = installed_version()
    if not version:
        raise RuntimeError("apt-get succeeded but rabbitmq-server is not installed")
    log(f"installed rabbitmq-server {version}")
    return version


def _listening_ports() -> dict[int, set[int]]:
    """inode -> listening TCP ports, from /proc/net/tcp{,6}."""
    out: dict[int, set[int]] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(name, encoding="ascii") as f:
            next(f, None)
            for line in f:
                parts = line.split()
                if len(parts) > 9 and parts[3] == "0A":  # LISTEN
                    out.setdefault(int(parts[9]), set()).add(int(parts[1].rsplit(":", 1)[1], 16))
    return out


def _pids_named(name: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if (d / "comm").read_text().strip() == name:
                    pids.append(int(d.name))
    return pids


def _pid_ports(pid: int, inodes: dict[int, set[int]]) -> set[int]:
    ports: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    ports |= inodes.get(int(target[8:-1]), set())
    return ports


def foreign_instances(exclude_pgid: int | None = None) -> list[str]:
    """Running Erlang VMs / epmds not started by us (e.g. a system-wide RabbitMQ), described."""
    inodes = _listening_ports()
    found = []
    for name in ("beam.smp", "epmd"):
        for pid in _pids_named(name):
            with contextlib.suppress(OSError):
                if exclude_pgid is not None and os.getpgid(pid) == exclude_pgid:
                    continue
            ports = sorted(_pid_ports(pid, inodes))
            found.append(f"{name} pid {pid} listening on {ports or 'nothing visible'}")
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class RabbitNode:
    """One private RabbitMQ node on 127.0.0.1 (see the module docstring). A context manager."""

    def __init__(self, log: Log = print, *, keep_dir: bool = False) -> None:
        self.log = log
        self.keep_dir = keep_dir
        self.dir: Path | None = None
        self.port = 0
        self.dist_port = 0
        self.epmd_port = 0
        self.nodename = f"dueslagbench{os.getpid()}x{int(time.time()) % 100000}@localhost"
        self.version: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: object | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{HOST}:{self.port}/%2F"

    def __enter__(self) -> RabbitNode:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _env(self) -> dict[str, str]:
        assert self.dir is not None
        d = self.dir
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(d),  # the Erlang cookie: $HOME/.erlang.cookie, private
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS=HOST,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_ADDRESS=HOST,
            ERL_EPMD_PORT=str(self.epmd_port),
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq"),  # + .conf
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_ENABLED_PLUGINS="",
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_LOGS=str(d / "log" / "rabbit.log"),
            RABBITMQ_PID_FILE=str(d / "rabbit.pid"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            RABBITMQ_CTL_DIST_PORT_MIN=str(self.dist_port + 1),
            RABBITMQ_CTL_DIST_PORT_MAX=str(self.dist_port + 10),
        )
        return env

    def _write_config(self) -> None:
        assert self.dir is not None
        (self.dir / "log").mkdir()
        (self.dir / "mnesia").mkdir()
        (self.dir / "rabbitmq-env.conf").write_text("# private: everything is in the environment\n")
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "advanced.config").write_text("[].\n")
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = {HOST}:{self.port}\n"
            "loopback_users.guest = true\n"
            "log.console = false\n"
            "log.file.level = warning\n"
            # the prefilled backlog of the consume scenario is ~100-300 MB: do not block on it
            "vm_memory_high_watermark.relative = 0.6\n"
            "disk_free_limit.absolute = 200MB\n"
        )

    def ctl(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        ctl = _first(CTL_CANDIDATES)
        if ctl is None:
            raise RabbitStartError("rabbitmqctl is not installed")
        proc = subprocess.Popen(
            [ctl, "-n", self.nodename, *args],
            env=self._env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        finally:  # the CLI's own Erlang VM leaves helpers (inet_gethost) in its group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")

    def log_tail(self, lines: int = 40) -> str:
        if self.dir is None:
            return ""
        chunks = []
        for f in (self.dir / "server.out", self.dir / "log" / "rabbit.log"):
            with contextlib.suppress(OSError):
                chunks.append(f"--- {f.name}\n" + "\n".join(f.read_text().splitlines()[-lines:]))
        return "\n".join(chunks)

    def start(self) -> RabbitNode:
        """Start the node and wait (bounded) until it is up. Raises RabbitStartError."""
        server = _first(SERVER_CANDIDATES)
        if server is None:
            raise RabbitStartError("rabbitmq-server is not installed (ensure_installed first)")
        self.version = installed_version()
        others = foreign_instances()
        if others:
            self.log("note: Erlang VMs not started by this bench are running (left alone): ")
            for o in others:
                self.log(f"  {o}")
        self.dir = Path(tempfile.mkdtemp(prefix="dueslag-rabbitmq-"))
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(free_port())
        self.port, self.epmd_port, self.dist_port = sorted(ports)
        self._write_config()
        out = open(self.dir / "server.out", "wb")  # noqa: SIM115 - closed in stop()
        self._log_file = out
        self.log(
            f"starting RabbitMQ {self.version} node {self.nodename} on {HOST}:{self.port} "
            f"(epmd {HOST}:{self.epmd_port}, dist {self.dist_port}, dir {self.dir})"
        )
        t0 = time.monotonic()
        self._proc = subprocess.Popen(
            [server],
            env=self._env(),
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() signals exactly that
        )
        deadline = t0 + START_TIMEOUT_S
        while True:
            if self._proc.poll() is not None:
                raise RabbitStartError(
                    f"rabbitmq-server exited with {self._proc.returncode}\n{self.log_tail()}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise RabbitStartError(f"not up within {START_TIMEOUT_S:g} s\n{self.log_tail()}")
            try:
                r = self.ctl("await_startup", "--timeout", str(int(max(5, left))), timeout=left + 5)
            except subprocess.TimeoutExpired:
                continue
            if r.returncode == 0:
                break
            time.sleep(0.5)  # the node may not have registered with epmd yet
        with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), 2.0):
            pass
        self.log(f"RabbitMQ up in {time.monotonic() - t0:.1f} s")
        return self

    def _epmd_pids(self) -> list[int]:
        inodes = _listening_ports()
        if not self.epmd_port:
            return []
        return [p for p in _pids_named("epmd") if self.epmd_port in _pid_ports(p, inodes)]

    def stop(self) -> None:
        """Stop the node, its private epmd and remove its directory. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(OSError, subprocess.TimeoutExpired, RabbitStartError):
                    self.ctl("stop", timeout=STOP_TIMEOUT_S)
                try:
                    proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait(10)
            # anything left in its group (erl_child_setup, inet_gethost)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            self.log("RabbitMQ node stopped")
        for pid in self._epmd_pids():  # started by our node (its port is private to this run)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
                self.log(f"stopped its epmd (pid {pid}, port {self.epmd_port})")
        if self._log_file is not None:
            with contextlib.suppress(OSError):
                self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None
        if self.dir is not None and not self.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
