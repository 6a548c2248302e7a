"""Notices: what one worker tells the others after a commit (see broker/peers.py).

A :class:`Notice` is one datagram's content (msgpack, after a magic/version prefix);
:func:`notice_of` makes one from a commit; an :class:`Outbox` merges the notices a peer has not
been sent yet and cuts them into datagrams of at most :data:`MAX_DATAGRAM` bytes;
:func:`apply_notice` brings a broker's memory up to the store for what a notice names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from broker.registry import AGREEMENT, AUTHORITY, MESSAGE_TYPE, VALUE_LIST
from catalog.agreements import Agreement
from catalog.authorities import Authority
from catalog.messagetypes import MessageType
from catalog.valuelists import ValueList
from store.base import (
    CreateSubscription,
    DeleteDoc,
    DeleteMailbox,
    DeleteSubscription,
    Op,
    PutDoc,
    SetChange,
    UpdateSubscription,
)

if TYPE_CHECKING:
    from broker.service import Broker

__all__ = [
    "MAX_DATAGRAM",
    "NOTICE_OPS",
    "Notice",
    "Outbox",
    "apply_notice",
    "decode_notice",
    "encode_notices",
    "notice_of",
]

#: Largest datagram sent; bigger notices are split. Far below the socket buffer (~200 KiB).
MAX_DATAGRAM = 8192
#: Leading bytes of every datagram (format version 1).
MAGIC = b"DQ\x01"

_DOC_TYPES: dict[str, type[Any]] = {
    MESSAGE_TYPE: MessageType,
    AUTHORITY: Authority,
    AGREEMENT: Agreement,
    VALUE_LIST: ValueList,
}
_doc_decoders = {kind: msgspec.msgpack.Decoder(cls) for kind, cls in _DOC_TYPES.items()}


class Notice(msgspec.Struct, frozen=True, array_like=True):
    """One datagram's content (see the module docstring). New fields go at the end."""

    ready: tuple[str, ...] = ()
    subscriptions: tuple[str, ...] = ()
    mailboxes: tuple[str, ...] = ()
    docs: tuple[tuple[str, str], ...] = ()
    reload: bool = False


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Notice)


def decode_notice(datagram: bytes) -> Notice:
    """The notice in a datagram. Raises ValueError for anything else."""
    if not datagram.startswith(MAGIC):
        raise ValueError("not a dueslag peer notice (bad magic)")
    try:
        return _decoder.decode(datagram[len(MAGIC) :])
    except msgspec.DecodeError as exc:
        raise ValueError(f"malformed peer notice: {exc}") from exc


def _cost(s: str) -> int:
    return len(s.encode()) + 5  # msgpack str header is at most 5 bytes


def _doc_cost(doc: tuple[str, str]) -> int:
    return _cost(doc[0]) + _cost(doc[1]) + 1


def _pop_within(
    pool: set[Any], cost: Callable[[Any], int], budget: int, first: bool
) -> tuple[list[Any], int]:
    """Pop items of ``pool`` while their cost fits ``budget``; with ``first``, at least one
    (so a notice always makes progress; store ids are far below :data:`MAX_DATAGRAM`)."""
    out: list[Any] = []
    while pool:
        item = pool.pop()
        c = cost(item)
        if c > budget and not (first and not out):
            pool.add(item)
            break
        budget -= c
        out.append(item)
    return out, budget


class Outbox:
    """What one peer has not been sent yet; later notices merge into it (sets)."""

    def __init__(self) -> None:
        self.ready: set[str] = set()
        self.subscriptions: set[str] = set()
        self.mailboxes: set[str] = set()
        self.docs: set[tuple[str, str]] = set()
        self.reload = False

    def __bool__(self) -> bool:
        return bool(self.ready or self.subscriptions or self.mailboxes or self.docs or self.reload)

    def add(self, notice: Notice) -> None:
        self.ready.update(notice.ready)
        self.subscriptions.update(notice.subscriptions)
        self.mailboxes.update(notice.mailboxes)
        self.docs.update(notice.docs)
        self.reload = self.reload or notice.reload

    def clear(self) -> None:
        self.ready.clear()
        self.subscriptions.clear()
        self.mailboxes.clear()
        self.docs.clear()
        self.reload = False

    def take(self, limit: int = MAX_DATAGRAM) -> tuple[bytes, Notice]:
        """Remove and encode as much as fits in one datagram of at most ``limit`` bytes.

        Changes go first (they matter more than wake-ups). Returns the datagram and its
        notice (to :meth:`add` back if the send failed).
        """
        budget = limit - len(MAGIC) - 32  # array headers and the reload flag
        subs, budget = _pop_within(self.subscriptions, _cost, budget, first=True)
        mbs, budget = _pop_within(self.mailboxes, _cost, budget, first=not subs)
        docs, budget = _pop_within(self.docs, _doc_cost, budget, first=not (subs or mbs))
        ready, budget = _pop_within(self.ready, _cost, budget, first=not (subs or mbs or docs))
        notice = Notice(tuple(ready), tuple(subs), tuple(mbs), tuple(docs), self.reload)
        self.reload = False
        return MAGIC + _encoder.encode(notice), notice


def encode_notices(notice: Notice, limit: int = MAX_DATAGRAM) -> list[bytes]:
    """``notice`` as datagrams of at most ``limit`` bytes each (split when it is large)."""
    box = Outbox()
    box.add(notice)
    out = []
    while box:
        out.append(box.take(limit)[0])
    return out


def notice_of(ops: Sequence[Op], ready: Iterable[str]) -> Notice:
    """What peers must hear about one commit: its ready mailboxes and the changed state."""
    subs: list[str] = []
    mailboxes: list[str] = []
    docs: list[tuple[str, str]] = []
    reload = False
    for op in ops:
        t = type(op)
        if t in _SUBSCRIPTION_OPS:
            subs.append(op.id)  # type: ignore[attr-defined]
        elif t is DeleteMailbox:
            mailboxes.append(op.id)  # type: ignore[attr-defined]
        elif t is PutDoc:
            docs.append((op.kind, op.id))  # type: ignore[attr-defined]
        elif t is DeleteDoc or t is SetChange:
            reload = True
    return Notice(tuple(ready), tuple(subs), tuple(mailboxes), tuple(docs), reload)


_SUBSCRIPTION_OPS = frozenset({CreateSubscription, UpdateSubscription, DeleteSubscription})
#: Operations whose commit peers must hear about even when no mailbox became ready.
NOTICE_OPS = _SUBSCRIPTION_OPS | {DeleteMailbox, PutDoc, DeleteDoc, SetChange}


def apply_notice(broker: Broker, notice: Notice) -> None:
    """Bring ``broker``'s memory up to the store for what ``notice`` names, then wake waiters."""
    if notice.reload:
        broker.reload()
    for mailbox_id in notice.mailboxes:
        broker.forget_mailbox(mailbox_id)
    for sub_id in notice.subscriptions:
        broker.refresh_subscription(sub_id)
    for kind, doc_id in notice.docs:
        refresh_doc(broker, kind, doc_id)
    if notice.ready:
        broker.notifier.notify(notice.ready)


_PUT: dict[str, Callable[[Any, Any], None]] = {
    MESSAGE_TYPE: lambda reg, rec: reg.put_message_type(rec),
    AUTHORITY: lambda reg, rec: reg.put_authority(rec),
    AGREEMENT: lambda reg, rec: reg.put_agreement(rec),
    VALUE_LIST: lambda reg, rec: reg.put_value_list(rec),
}


def refresh_doc(broker: Broker, kind: str, doc_id: str) -> None:
    """Re-read one registry document and file it (documents of other kinds are not cached)."""
    put = _PUT.get(kind)
    if put is None:
        return
    raw = broker.store.get_doc(kind, doc_id)
    if raw is None:  # registry documents are only ever replaced; deletion reloads
        return
    put(broker.registry, _doc_decoders[kind].decode(raw))
