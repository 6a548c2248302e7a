"""Write transactions in a child process: :class:`ApplierStore` and the child's main loop.

Theory of operation
-------------------
py-lmdb releases the GIL around every LMDB call, and inside ``putmulti``/``getmulti`` around
every item. In the serving process the event loop wants the GIL nearly all the time, so each
of those releases hands it over, and a group commit of a few hundred operations (thousands of
LMDB items) took about three times its CPU in wall time (``bench/gil_bench.py``;
docs/performance.md), while the commit thread's Python work took GIL time from the loop.

:class:`ApplierStore` is an :class:`~store.lmdb_store.LmdbStore` whose writes run in a child
process (the *writer process*) with a GIL of its own, on the same LMDB environment. The serving
process keeps its own environment handle for every read (short read transactions, as before),
exactly as several ``--workers`` share one environment: LMDB's lock file coordinates the
processes, and readers see each commit as soon as it returns. Only ``apply`` crosses the
process boundary: the ops and ``now_ms`` go to the child, the
:class:`~store.base.ApplyOutcome` (or the :class:`~broker.errors.StoreError`) comes back, each
as one length-prefixed pickle on a private socket pair. Pickle, not msgspec, because what
crosses is the store's own Python values of this very build, including per-op refusals that
are exception objects; nothing from outside the two processes is ever unpickled.

Durability is unchanged: the child commits (with fsync) before it answers, and nobody is
answered before the outcome is back.

The serving process's writer (``broker.writer``) talks to the child from its event loop through
:meth:`take_socket` (``broker.applierlink``); :meth:`apply` is the blocking form, for start-up
seeding and tests. The child ignores SIGINT and SIGTERM (a Ctrl-C reaches the whole process
group, and must not abort the batch in hand under the parent's feet); it exits when its socket
closes, after the batch in hand, so also when the parent dies.

Failure: when the child dies (killed, out of memory, a bug), the batch in hand fails with a
StoreError and the next batch starts a new child. Whether the failed batch committed is
unknown; its callers got an error, so they retry (publishes are deduplicated by their
``dedup_key``), and a lease or ack that committed without its answer is settled by lease
expiry and redelivery, as after a crash. Nothing acknowledged is lost.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Final

from broker.config import GC_THRESHOLDS
from broker.errors import StoreError

from .base import ApplyOutcome, Op
from .kv import DEFAULT_MAP_SIZE
from .lmdb_store import LmdbStore

__all__ = [
    "HEADER",
    "ApplierStore",
    "decode_answer",
    "died_with_batch",
    "encode_request",
    "main",
]

#: Bytes of a frame's length prefix (big-endian).
HEADER: Final = 8
#: Seconds to wait for a child to come up, or to exit once its socket closed.
STOP_TIMEOUT_S: Final = 10.0
_READY: Final = b"ready"


def frame(payload: bytes) -> bytes:
    return len(payload).to_bytes(HEADER, "big") + payload


def encode_request(ops: Sequence[Op], now_ms: int) -> bytes:
    return frame(pickle.dumps((list(ops), now_ms), pickle.HIGHEST_PROTOCOL))


def decode_answer(payload: bytes) -> ApplyOutcome:
    """The outcome in a child's answer; its StoreError is raised."""
    answer = pickle.loads(payload)
    if isinstance(answer, StoreError):
        raise answer
    if not isinstance(answer, ApplyOutcome):
        raise StoreError(f"the writer process answered a {type(answer).__name__}")
    return answer


def died_with_batch(exc: BaseException) -> StoreError:
    """The error of a batch whose writer process died under it (``exc``: how that showed)."""
    return StoreError(
        f"the writer process died during a commit ({type(exc).__name__}); "
        "the batch may or may not have been applied"
    )


def receive_frame(sock: socket.socket) -> bytes:
    """One frame's payload from a blocking socket (EOFError when it closed)."""
    size = int.from_bytes(_receive_exactly(sock, HEADER), "big")
    return _receive_exactly(sock, size)


def _receive_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray(n)
    view = memoryview(data)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise EOFError("the socket closed")
        got += k
    return bytes(data)


class ApplierStore(LmdbStore):
    """An LmdbStore whose writes run in a writer process (see the module docstring).

    Resource handling: the child starts with the store (after the parent opened, and if
    needed upgraded, the environment) and stops in :meth:`close`, which waits for it.

    Error handling: a child that fails to start raises StoreError (from the constructor the
    environment is closed again).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        sync: bool = True,
    ) -> None:
        super().__init__(path, map_size=map_size, sync=sync)
        path_arg = os.path.abspath(self.path)  # the child must not depend on our cwd
        self._argv = [sys.executable, "-m", "store.applier", path_arg, str(map_size)]
        self._argv.append("1" if sync else "0")
        self._lock = threading.Lock()  # guards the child and the socket
        self._child: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._taken = False  # the socket belongs to take_socket's caller
        try:
            with self._lock:
                self._start()
        except BaseException:
            super().close()
            raise

    def _start(self) -> None:
        parent, child = socket.socketpair()
        try:
            proc = subprocess.Popen(
                [*self._argv, str(child.fileno())],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            parent.close()
            raise StoreError(f"could not start the writer process: {exc}") from exc
        finally:
            child.close()
        parent.settimeout(STOP_TIMEOUT_S)
        try:
            ready = receive_frame(parent)
        except (OSError, EOFError):
            ready = b""
        if ready != _READY:
            parent.close()
            _stop(proc)
            raise StoreError(f"the writer process did not start (exit code {proc.returncode})")
        parent.settimeout(None)
        self._child, self._sock = proc, parent

    def apply(self, ops: Sequence[Op], now_ms: int) -> ApplyOutcome:
        with self._lock:
            if self._taken:
                raise StoreError("the writer process is driven through take_socket")
            if self._sock is None:
                self._start()
            assert self._sock is not None
            try:
                self._sock.sendall(encode_request(ops, now_ms))
                answer = receive_frame(self._sock)
            except (OSError, EOFError) as exc:
                self._forget()
                raise died_with_batch(exc) from exc
        return decode_answer(answer)

    def take_socket(self) -> socket.socket:
        """The socket to a running writer process (started if needed), for a caller that sends
        :func:`encode_request` frames and reads the answers itself, one batch at a time. From
        now on :meth:`apply` refuses; :meth:`forget_child` when the child died."""
        with self._lock:
            if self._sock is None:
                self._start()
            assert self._sock is not None
            self._taken = True
            return self._sock

    def forget_child(self) -> tuple[int, int] | None:
        """The taken socket broke (the caller closed it): reap the child, and say which it was
        (pid, exit code); the next :meth:`take_socket` or :meth:`apply` starts another."""
        with self._lock:
            return self._forget()

    def _forget(self) -> tuple[int, int] | None:
        if self._sock is not None:
            self._sock.close()
        child, self._sock, self._child = self._child, None, None
        self._taken = False
        if child is None:
            return None
        _stop(child)
        return child.pid, child.returncode

    @property
    def child_pid(self) -> int | None:
        """The writer process's pid (None between a death and the next start)."""
        return None if self._child is None else self._child.pid

    def close(self) -> None:
        with self._lock:
            self._forget()
        super().close()

    def __repr__(self) -> str:
        return f"<ApplierStore {self.path!r} writer pid {self.child_pid}>"


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Wait for a child whose socket is closed (it exits after the batch in hand)."""
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def serve(sock: socket.socket, store: LmdbStore) -> None:
    """The child's loop: apply each batch received, answer its outcome, until EOF."""
    sock.sendall(frame(_READY))
    while True:
        try:
            ops, now_ms = pickle.loads(receive_frame(sock))
        except EOFError:
            return
        try:
            answer: ApplyOutcome | StoreError = store.apply(ops, now_ms)
        except StoreError as exc:
            answer = exc
        sock.sendall(frame(pickle.dumps(answer, pickle.HIGHEST_PROTOCOL)))


def main(argv: Sequence[str]) -> int:
    """``python -m store.applier PATH MAP_SIZE SYNC FD`` (started by ApplierStore only)."""
    path, map_size, sync, fd = argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=int(fd))
    store = LmdbStore(path, map_size=int(map_size), sync=sync == "1")
    gc.set_threshold(*GC_THRESHOLDS)  # as the serving process: each batch unpickles many objects
    gc.freeze()  # what start-up made lives as long as the process
    try:
        serve(sock, store)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the parent went away mid-answer: the batch is committed, nobody to tell
    finally:
        store.close()
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
