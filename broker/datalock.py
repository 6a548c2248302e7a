"""One serving process tree per data directory: an advisory lock on ``<data_dir>/serve.lock``.

LMDB itself lets any number of processes open the environment, so two independent
``dueslag serve`` on one data dir would both start: two sweepers, and long polls that never hear
of the other's commits. The lock is held by the process that serves (``--workers 1``) or by the
supervisor (``--workers N``, whose workers run under it and take no lock). It is a ``flock``:
the kernel drops it when the holder dies, even by ``kill -9``, so a crash leaves nothing stale.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

__all__ = ["DataDirBusy", "DataDirLock"]

LOCK_FILE = "serve.lock"


class DataDirBusy(RuntimeError):
    """Another process is serving the data directory (the message names its pid)."""


class DataDirLock:
    """``with DataDirLock(data_dir):`` — raises :class:`DataDirBusy` when already held."""

    def __init__(self, data_dir: str | Path) -> None:
        self.path = Path(data_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirBusy(
                f"another dueslag is serving {self.path.parent} (pid {holder}); "
                "stop it, or use another --data directory"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
