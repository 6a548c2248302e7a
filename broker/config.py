"""Broker configuration: one Struct with every tunable and its default."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

from msgspec import Struct

__all__ = [
    "GC_THRESHOLDS",
    "MAX_REQUEST_BYTES",
    "BrokerConfig",
    "load_or_create_admin_token",
    "load_or_create_instance_id",
]

ADMIN_TOKEN_ENV = "DUESLAG_ADMIN_TOKEN"
ADMIN_TOKEN_FILE = "admin-token"
INSTANCE_ID_FILE = "instance-id"
#: ``gc.set_threshold`` for a serving process and its writer process. The envelope path
#: allocates many small containers, and the default gen-0 threshold (700) runs a collection
#: every few envelopes; this one costs a little memory and saves ~40% of decode time
#: (bench/pipeline_bench.py), and 4-5 % of the writer process's CPU (docs/performance.md).
GC_THRESHOLDS = (20_000, 20, 50)
#: Default limit of a request body (``BrokerConfig.max_request_bytes``).
MAX_REQUEST_BYTES = 64 * 1024 * 1024


class BrokerConfig(Struct, kw_only=True):
    """Everything ``dueslag serve`` can set. Limits are documented in docs/api.md."""

    data_dir: str = "./dueslag-data"
    bind: str = "127.0.0.1:8080"
    workers: int = 1
    admin_token: str | None = None  # None: DUESLAG_ADMIN_TOKEN, else the data dir's file
    dedup_window_s: int = 24 * 3600
    max_request_bytes: int = MAX_REQUEST_BYTES
    writer_queue: int = 4096
    admission_timeout_s: float = 2.0
    sweep_interval_s: float = 1.0
    map_size: int = 32 * 1024**3
    sync: bool = True
    #: where commits run: "process" (a writer process with a GIL of its own, store.applier),
    #: "thread" (a thread of the serving process), or "auto" (see writer_process())
    writer: Literal["auto", "thread", "process"] = "auto"
    max_poll: int = 1000
    max_wait_s: float = 30.0
    default_lease_s: float = 30.0
    max_lease_s: float = 12 * 3600.0
    graceful_timeout_s: float = 5.0
    demo: bool = False
    #: enforce the catalog and service agreements (off only for local experiments/benchmarks)
    access_control: bool = True
    #: write an audit event for every send, lease, ack, agreement and value-list change
    audit: bool = True

    def writer_process(self) -> bool:
        """Whether commits run in a writer process. ``auto``: when the CPUs this process may
        use outnumber the processes it takes (each worker plus its writer process), so one is
        left for clients and the kernel; else the writer process would take CPU from the
        serving process it is meant to relieve (docs/performance.md)."""
        if self.writer != "auto":
            return self.writer == "process"
        return available_cpus() > 2 * self.workers


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` (mode 0600) atomically: a crash leaves either no file or the whole one.

    Raises FileExistsError when another process created it first.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)  # fails if it exists: the first writer wins, never a torn file
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_private(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


def load_or_create_admin_token(
    data_dir: str | Path, explicit: str | None = None
) -> tuple[str, bool]:
    """The admin token and whether it was generated just now (so it is printed exactly once).

    Order: ``explicit``, then ``$DUESLAG_ADMIN_TOKEN``, then ``<data_dir>/admin-token`` (mode
    0600), generating that file on first start.
    """
    if explicit:
        return explicit, False
    env = os.environ.get(ADMIN_TOKEN_ENV)
    if env:
        return env, False
    path = Path(data_dir) / ADMIN_TOKEN_FILE
    existing = _read_private(path)
    if existing:
        return existing, False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)  # an empty file left by an older version's crash
    token = "adm_" + secrets.token_urlsafe(32)
    try:
        _write_private(path, token)
    except FileExistsError:  # another worker process won the race
        return _read_private(path) or token, False
    return token, True


def load_or_create_instance_id(data_dir: str | Path) -> str:
    """This broker's Fordelingssystem UUID, stamped into every Leverancerute."""
    import uuid

    path = Path(data_dir) / INSTANCE_ID_FILE
    existing = _read_private(path)
    if existing:
        return existing
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    value = str(uuid.uuid4())
    try:
        _write_private(path, value)
    except FileExistsError:  # another worker process won the race
        return _read_private(path) or value
    return value
