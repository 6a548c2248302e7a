"""Notices between the worker processes of one ``dueslag serve --workers N``.

Theory of operation
-------------------
Every worker holds in-memory state built from the shared LMDB environment: the notifier's
waiters, the subscription index, the registry (catalog, authorities, agreements, value lists)
and the mailbox cache. A commit made by one worker changes the store for all of them, but only
its own memory. So after each commit (the writer's ``on_commit`` hook) the committing worker
sends each peer one small datagram (a :class:`Notice`) over a unix datagram socket
(``<data_dir>/run/worker-<n>.sock``):

* ``ready``: mailboxes that gained ready deliveries; the peer wakes its long-pollers and
  consume streams on them (:meth:`~broker.notifier.Notifier.notify`);
* ``subscriptions``, ``mailboxes`` (deleted), ``docs`` ((kind, id) of a registry document):
  what changed; the peer re-reads each from the store and updates its index and caches. Every
  change is applied by *re-reading the current state*, so notices are idempotent and their
  order does not matter;
* ``reload``: a change with no cheaper path (``DeleteDoc``, ``SetChange``): a full
  :meth:`~broker.service.Broker.reload`.

Creating a system or a mailbox needs no notice: those caches fill on a miss from the store.

Delivery: the notice is sent from ``on_commit``, i.e. before the committing request answers, so
it is normally already queued at every peer when the client hears back, and each peer drains its
socket at the start of every request (:meth:`Peers.drain`) as well as from a reader task. A
change acknowledged to a client is therefore seen by requests to any worker that start after the
answer, unless a peer's queue was full (Linux queues 10 datagrams per socket by default): then
the notice waits in a per-peer outbox, which merges later notices into it, and a flusher task
sends it as soon as the peer reads; the window is then as long as the peer's event loop is busy.
Sends never block the event loop. A peer that is not there (starting or restarting) is skipped:
it binds its socket *before* it loads its state from the store, so it misses nothing.

Datagrams are bounded (:data:`MAX_DATAGRAM`); a large notice is split. A single-process server
creates none of this.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import msgspec
import trio

from broker.notices import MAX_DATAGRAM, NOTICE_OPS, Outbox, apply_notice, decode_notice, notice_of
from store.base import ApplyOutcome, Op

if TYPE_CHECKING:
    from broker.service import Broker

__all__ = ["Peers", "WorkerSlot", "socket_address"]

log = logging.getLogger("dueslag.peers")

#: How long the flusher waits for a blocked peer before it retries (a peer may go away).
FLUSH_RETRY_S = 0.05
_UNIX_PATH_MAX = 100  # sun_path is 108 bytes on Linux; stay below it


class WorkerSlot(msgspec.Struct, frozen=True, kw_only=True):
    """Which worker this process is: ``index`` of ``count``, all sharing ``data_dir``."""

    index: int
    count: int
    data_dir: str


def socket_address(data_dir: str | os.PathLike[str], index: int) -> str:
    """Where worker ``index`` listens: ``<data_dir>/run/worker-<index>.sock``, or a Linux
    abstract name derived from it when that path is too long for a unix socket."""
    path = Path(data_dir).resolve() / "run" / f"worker-{index}.sock"
    if len(os.fsencode(path)) < _UNIX_PATH_MAX:
        return str(path)
    digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:32]
    return f"\0dueslag-{digest}"


class _Peer:
    __slots__ = ("address", "index", "kick", "outbox", "sock")

    def __init__(self, index: int, address: str) -> None:
        self.index = index
        self.address = address
        self.sock: socket.socket | None = None
        self.outbox = Outbox()
        self.kick = trio.Event()


class Peers:
    """This worker's end of the notices: one bound socket, one connected socket per peer.

    Resource handling: the receiving socket is bound in ``__init__`` (before the broker loads
    its state, so no change is missed) and every socket is closed by :meth:`close`.
    """

    def __init__(self, slot: WorkerSlot) -> None:
        self.slot = slot
        self.index = slot.index
        self.address = socket_address(slot.data_dir, slot.index)
        if not self.address.startswith("\0"):
            Path(self.address).parent.mkdir(mode=0o700, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.address)  # left by a previous run of this worker
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._sock.bind(self.address)
        self._peers = [
            _Peer(i, socket_address(slot.data_dir, i)) for i in range(slot.count) if i != slot.index
        ]
        self._broker: Broker | None = None
        self.sent = 0
        self.received = 0
        self.dropped = 0

    # ------------------------------------------------------------------ sending

    def on_commit(self, ops: Sequence[Op], outcome: ApplyOutcome) -> None:
        """The writer's hook: tell every peer about this commit. Never blocks."""
        if not outcome.ready and not any(type(op) in NOTICE_OPS for op in ops):
            return
        notice = notice_of(ops, outcome.ready)
        for peer in self._peers:
            peer.outbox.add(notice)
            if not self._flush(peer):
                peer.kick.set()

    def _flush(self, peer: _Peer) -> bool:
        """Send the peer's outbox; False when the peer's queue is full (retry later)."""
        while peer.outbox:
            if peer.sock is None and not self._connect(peer):
                self.dropped += 1
                peer.outbox.clear()  # not running: it loads everything when it starts
                return True
            assert peer.sock is not None
            datagram, notice = peer.outbox.take()
            try:
                peer.sock.send(datagram)
                self.sent += 1
            except BlockingIOError:
                peer.outbox.add(notice)
                return False
            except OSError:  # gone or restarted (ECONNREFUSED): reconnect once, else drop
                peer.outbox.add(notice)
                self._disconnect(peer)
        return True

    def _connect(self, peer: _Peer) -> bool:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.connect(peer.address)
        except OSError as exc:
            sock.close()
            if exc.errno not in (errno.ENOENT, errno.ECONNREFUSED):
                log.warning("cannot reach worker %d at %r: %s", peer.index, peer.address, exc)
            return False
        peer.sock = sock
        return True

    def _disconnect(self, peer: _Peer) -> None:
        if peer.sock is not None:
            trio.lowlevel.notify_closing(peer.sock)  # a flusher may be waiting on it
            peer.sock.close()
            peer.sock = None

    async def _flusher(self, peer: _Peer) -> NoReturn:
        while True:
            await peer.kick.wait()
            peer.kick = trio.Event()
            while not self._flush(peer):
                sock = peer.sock
                assert sock is not None
                with (
                    trio.move_on_after(FLUSH_RETRY_S),
                    contextlib.suppress(trio.ClosedResourceError),
                ):
                    await trio.lowlevel.wait_writable(sock)

    # ------------------------------------------------------------------ receiving

    def drain(self) -> None:
        """Apply every notice queued at this worker's socket (non-blocking; cheap when empty)."""
        broker = self._broker
        if broker is None:
            return
        while True:
            try:
                datagram = self._sock.recv(MAX_DATAGRAM + 64)
            except (BlockingIOError, InterruptedError):
                return
            self.received += 1
            try:
                notice = decode_notice(datagram)
            except ValueError as exc:
                log.warning("ignoring a datagram on %r: %s", self.address, exc)
                continue
            apply_notice(broker, notice)

    async def run(
        self, broker: Broker, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Receive notices for ``broker`` and flush blocked outboxes, until cancelled."""
        self._broker = broker
        async with trio.open_nursery() as nursery:
            for peer in self._peers:
                nursery.start_soon(self._flusher, peer)
            self.drain()  # what arrived while the broker was loading
            task_status.started()
            while True:
                await trio.lowlevel.wait_readable(self._sock)
                self.drain()
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        for peer in self._peers:
            if peer.sock is not None:
                peer.sock.close()
                peer.sock = None
        self._sock.close()
        if not self.address.startswith("\0"):
            with contextlib.suppress(OSError):
                os.unlink(self.address)

    def __repr__(self) -> str:
        return (
            f"<Peers worker {self.index} of {self.slot.count} [{self.sent} sent,"
            f" {self.received} received, {self.dropped} dropped]>"
        )
