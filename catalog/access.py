"""Enforcement: may a system send this envelope, and may a receiver get it? Pure decisions.

Theory of operation
-------------------
:func:`extract_facts` (:mod:`catalog.facts`, re-exported here) reads what access control needs
from a canonical envelope ONCE, so every later decision is a handful of set operations.

**Send** (:func:`check_send`, at accept time). In this order, the first failure refuses:

1. ``Beskedtype`` is in the catalog (``unknown_message_type``, 422) and active
   (``inactive_message_type``, 422); a classification, if given, is one of the four levels
   (``unknown_sensitivity``, 422); for a type with ``strict_actions``, every ``ObjektHandling``
   is listed (``unknown_object_action``, 422).
2. Every ``ObjektRegistrering`` names its ``ObjektAnsvarligMyndighed`` as a CVR: not a CVR in any
   written form is ``invalid_authority`` (422); no registration, or one without the field, is
   ``missing_authority`` (403); ``*`` is ``wildcard_authority`` (403): data always has one
   concrete owner who approved its sending.
3. ONE approved (neither expired nor withdrawn) ``send`` agreement of the sender admits the
   whole envelope: it lists the message type (else ``no_send_agreement``; listed only by
   agreements that are not approved: ``agreement_not_approved``), every owner CVR approved it
   (``authority_not_covered``), its maximum sensitivity admits the classification
   (``sensitivity_not_covered``) and its KLE patterns admit every OpgaveEmne
   (``kle_not_covered``); all 403. When several agreements fail, the code is that of the one
   that got furthest.

**Receive** (:class:`ReceiveIndex`, at distribution time). A receiver gets an envelope only if
ONE of its approved ``receive`` agreements admits it: message type listed, not expired, every
owner CVR among the approving authorities, sensitivity within the maximum, every OpgaveEmne
within the KLE patterns, and (``sending_authorities``, KOMBIT's *Afsendende myndighed*) the
envelope's ``TilladtModtager`` is ``*`` or names one of those CVRs. If the envelope has a
``TilladtModtager``, the agreement must also let the receiver act for one of the listed
authorities; the copy's ``TilladtModtager`` is then rewritten as KOMBIT does: ``*`` becomes the
approving authorities of the admitting agreements, CVRs outside them are removed, and the rest
is written ``urn:oio:cvr-nr:NNNNNNNN``, sorted. An envelope without ``TilladtModtager`` is
delivered unchanged (and is refused by agreements with ``sending_authorities``).

A :class:`ReceiveIndex` is built per receiving system from its agreements and filed by message
type; rebuild it whenever one of the system's agreements changes (expiry needs no rebuild: it is
checked per decision).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Final, TypeVar

import msgspec

from broker.envelope import Haendelsesbesked, StoredBesked, UnikId
from broker.errors import Forbidden, InvalidInput
from catalog import sensitivity
from catalog.agreements import Agreement, approvers, effective_authorities, status
from catalog.authorities import cvr_urn
from catalog.facts import EnvelopeFacts, extract_facts
from catalog.kle import KleFilter
from catalog.messagetypes import MessageType

__all__ = [
    "REFUSED",
    "EnvelopeFacts",
    "ReceiveDecision",
    "ReceiveIndex",
    "ReceiveIndexes",
    "check_send",
    "extract_facts",
    "receive_decision",
    "rewrite_tilladt_modtager",
]

_F: Final = "$.Beskedkuvert.Filtreringsdata"
_REG: Final = _F + ".ObjektRegistrering"


@lru_cache(maxsize=1024)
def _kle_filter(patterns: tuple[str, ...]) -> KleFilter:
    return KleFilter(patterns)


def _kle_text(facts: EnvelopeFacts) -> str:
    return ", ".join("(none)" if k is None else ".".join(k) for k in facts.kle) or "(none)"


def _check_envelope(facts: EnvelopeFacts, catalog: Mapping[str, MessageType]) -> None:
    mt = catalog.get(facts.message_type)
    if mt is None:
        raise InvalidInput(
            f"Beskedtype {facts.message_type} is not in the message catalog",
            code="unknown_message_type",
            path=_F + ".Beskedtype",
        )
    if not mt.active:
        raise InvalidInput(
            f"Beskedtype {facts.message_type} ({mt.name} {mt.version}) is not active",
            code="inactive_message_type",
            path=_F + ".Beskedtype",
        )
    if facts.sensitivity is not None and sensitivity.rank(facts.sensitivity) is None:
        raise InvalidInput(
            f"Sikkerhedsklassificering {facts.sensitivity} is not one of the four levels",
            code="unknown_sensitivity",
            path="$.Beskedkuvert.Leveranceinformation.Sikkerhedsklassificering",
        )
    if mt.strict_actions and (unknown := facts.actions - mt.action_ids):
        raise InvalidInput(
            f"ObjektHandling {', '.join(sorted(unknown))} is not an action of {mt.name}",
            code="unknown_object_action",
            path=_REG,
        )
    if facts.owner_invalid:
        raise InvalidInput(
            f"ObjektAnsvarligMyndighed {facts.owner_invalid[0]!r} is not a CVR number"
            " (8 digits, bare or as urn:oio:cvr-nr:N / urn:oio:cvr:N)",
            code="invalid_authority",
            path=_REG,
        )
    if facts.owner_missing:
        raise Forbidden(
            "every ObjektRegistrering must name its ObjektAnsvarligMyndighed (the data-owning"
            " authority whose approval the send needs)",
            code="missing_authority",
            path=_REG,
        )
    if facts.owner_wildcard:
        raise Forbidden(
            "ObjektAnsvarligMyndighed '*' names no authority: the data owner must be one CVR",
            code="wildcard_authority",
            path=_REG,
        )


def check_send(
    facts: EnvelopeFacts,
    agreements_of_sender: Iterable[Agreement],
    catalog: Mapping[str, MessageType],
    now_ms: int,
) -> Agreement:
    """Refuse a send the catalog or the sender's agreements do not allow; return the agreement
    that admits it (for the audit log).

    ``catalog`` maps lower-case message type ids to types (:func:`catalog_by_id`).

    Error handling:
        :class:`InvalidInput` (422 codes) or :class:`Forbidden` (403 codes) with a code naming
        the rule, as listed in the module docstring and ``docs/catalog.md``.
    """
    _check_envelope(facts, catalog)
    t = facts.message_type
    candidates = [a for a in agreements_of_sender if a.kind == "send" and t in a.message_types]
    if not candidates:
        raise Forbidden(
            f"the sender has no send agreement covering message type {t}",
            code="no_send_agreement",
        )
    approved = [(a, eff) for a in candidates if (eff := effective_authorities(a, now_ms))]
    if not approved:
        states = ", ".join(f"{a.id} is {status(a, now_ms)}" for a in candidates)
        raise Forbidden(
            f"no approved send agreement covers message type {t}: {states}",
            code="agreement_not_approved",
        )
    approved_by = frozenset().union(*(eff for _, eff in approved))
    best_stage, best = -1, None
    for agreement, eff in approved:
        stage, refusal = _send_refusal(facts, agreement, eff, approved_by)
        if refusal is None:
            return agreement
        if stage > best_stage:
            best_stage, best = stage, refusal
    assert best is not None
    raise best


def _send_refusal(
    facts: EnvelopeFacts, a: Agreement, eff: frozenset[str], approved_by: frozenset[str]
) -> tuple[int, Forbidden | None]:
    if not facts.owners <= eff:
        missing = ", ".join(sorted(facts.owners - approved_by)) or ", ".join(sorted(facts.owners))
        return 0, Forbidden(
            f"ObjektAnsvarligMyndighed {missing} has not approved a send agreement for message"
            f" type {facts.message_type} (approved by: {', '.join(sorted(approved_by))})",
            code="authority_not_covered",
            path=_REG,
        )
    if not sensitivity.admits(a.max_sensitivity, facts.sensitivity):
        return 1, Forbidden(
            f"Sikkerhedsklassificering {facts.sensitivity or '(none: counts as level 4)'}"
            f" exceeds the maximum level {sensitivity.rank(a.max_sensitivity)} of send"
            f" agreement {a.id}",
            code="sensitivity_not_covered",
            path="$.Beskedkuvert.Leveranceinformation.Sikkerhedsklassificering",
        )
    if a.kle is not None and not _kle_filter(a.kle).admits_all(facts.kle):
        return 2, Forbidden(
            f"OpgaveEmne {_kle_text(facts)} is not within the KLE patterns"
            f" {', '.join(a.kle)} of send agreement {a.id}",
            code="kle_not_covered",
            path=_REG,
        )
    return 3, None


# --------------------------------------------------------------------------------------------
# receive


class ReceiveDecision(msgspec.Struct, frozen=True, kw_only=True):
    """Whether one receiver gets one envelope, and the ``TilladtModtager`` of its copy
    (``None``: leave the element as it is, the envelope had none)."""

    admitted: bool
    tilladt_modtager: tuple[str, ...] | None = None
    agreements: tuple[str, ...] = ()  # ids of the admitting agreements


REFUSED: Final = ReceiveDecision(admitted=False)


class _Compiled:
    """One approved receive agreement, prepared for the hot path."""

    __slots__ = ("authorities", "id", "kle", "max_rank", "sending", "valid_until_ms")

    def __init__(self, agreement: Agreement, approved: frozenset[str]) -> None:
        self.id = agreement.id
        self.authorities = approved
        self.max_rank = sensitivity.rank(agreement.max_sensitivity)
        if agreement.max_sensitivity is not None and self.max_rank is None:
            self.max_rank = 0  # an unknown maximum admits nothing (corrupt record)
        self.kle = None if agreement.kle is None else KleFilter(agreement.kle)
        self.sending = (
            None
            if agreement.sending_authorities is None
            else frozenset(agreement.sending_authorities)
        )
        self.valid_until_ms = agreement.valid_until_ms


class ReceiveIndex:
    """One receiving system's approved ``receive`` agreements, filed by message type."""

    __slots__ = ("_by_type", "_count")

    def __init__(self, agreements: Iterable[Agreement]) -> None:
        by_type: dict[str, list[_Compiled]] = {}
        count = 0
        for agreement in agreements:
            if agreement.kind != "receive" or agreement.withdrawn_ms is not None:
                continue
            # expiry is left to decide(), so the index stays valid as time passes
            approved = approvers(agreement)
            if not approved:
                continue
            compiled = _Compiled(agreement, approved)
            count += 1
            for t in agreement.message_types:
                by_type.setdefault(t, []).append(compiled)
        self._by_type: dict[str, tuple[_Compiled, ...]] = {t: tuple(v) for t, v in by_type.items()}
        self._count = count

    @property
    def message_types(self) -> frozenset[str]:
        """Types some approved agreement covers (expiry not considered)."""
        return frozenset(self._by_type)

    def decide(self, facts: EnvelopeFacts, now_ms: int) -> ReceiveDecision:
        """Does one of the agreements admit the envelope, and what TilladtModtager does the
        receiver's copy carry? See the module docstring for the rules."""
        candidates = self._by_type.get(facts.message_type)
        if not candidates or facts.owner_missing or facts.owner_wildcard or facts.owner_invalid:
            return REFUSED
        tilladt, wildcard, rank = facts.tilladt, facts.tilladt_wildcard, facts.sensitivity_rank
        rewritten: set[str] = set()
        ids: list[str] = []
        for c in candidates:
            if c.valid_until_ms is not None and now_ms >= c.valid_until_ms:
                continue
            if not facts.owners <= c.authorities:
                continue
            if c.max_rank is not None and rank > c.max_rank:
                continue
            if c.kle is not None and not c.kle.admits_all(facts.kle):
                continue
            if c.sending is not None:
                # KOMBIT's "Afsendende myndighed": TilladtModtager must be * or name one of them
                if tilladt is None:
                    continue
                if not wildcard and c.sending.isdisjoint(tilladt):
                    continue
            if tilladt is not None:
                part = c.authorities if wildcard else tilladt & c.authorities
                if not part:
                    continue
                rewritten |= part
            ids.append(c.id)
        if not ids:
            return REFUSED
        out = None if tilladt is None else tuple(cvr_urn(cvr) for cvr in sorted(rewritten))
        return ReceiveDecision(admitted=True, tilladt_modtager=out, agreements=tuple(ids))

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"<ReceiveIndex [{self._count} agreements | {len(self._by_type)} message types]>"


def receive_decision(
    facts: EnvelopeFacts, agreements_of_receiver: Iterable[Agreement], now_ms: int
) -> ReceiveDecision:
    """One-off form of :meth:`ReceiveIndex.decide` (builds the index each call)."""
    return ReceiveIndex(agreements_of_receiver).decide(facts, now_ms)


class ReceiveIndexes:
    """The :class:`ReceiveIndex` of every receiving system; one owner (the router) mutates it."""

    def __init__(self) -> None:
        self._indexes: dict[str, ReceiveIndex] = {}

    def rebuild(self, system_id: str, agreements: Iterable[Agreement]) -> ReceiveIndex:
        """Refile ``system_id`` from ALL its agreements (call after any of them changed)."""
        index = ReceiveIndex(agreements)
        if len(index):
            self._indexes[system_id] = index
        else:
            self._indexes.pop(system_id, None)
        return index

    def decide(self, system_id: str, facts: EnvelopeFacts, now_ms: int) -> ReceiveDecision:
        index = self._indexes.get(system_id)
        return REFUSED if index is None else index.decide(facts, now_ms)

    def get(self, system_id: str) -> ReceiveIndex | None:
        return self._indexes.get(system_id)

    def __repr__(self) -> str:
        total = sum(map(len, self._indexes.values()))
        return f"<ReceiveIndexes [{len(self._indexes)} systems | {total} agreements]>"


B = TypeVar("B", Haendelsesbesked, StoredBesked)


def rewrite_tilladt_modtager(besked: B, decision: ReceiveDecision) -> B:
    """The receiver's copy: ``besked`` with ``TilladtModtager`` replaced by the decision's list
    (URNIdentifikator values). Returns ``besked`` itself when there is nothing to rewrite."""
    if decision.tilladt_modtager is None:
        return besked
    kuvert = besked.Beskedkuvert
    data = msgspec.structs.replace(
        kuvert.Filtreringsdata,
        TilladtModtager=[UnikId(URNIdentifikator=urn) for urn in decision.tilladt_modtager],
    )
    return msgspec.structs.replace(
        besked, Beskedkuvert=msgspec.structs.replace(kuvert, Filtreringsdata=data)
    )
