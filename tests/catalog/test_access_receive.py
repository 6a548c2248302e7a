"""The receive decision and TilladtModtager rewriting, against a brute-force reference."""

from __future__ import annotations

import re
from typing import Any

import msgspec
from catalogkit import (
    AARHUS,
    HORSENS,
    KBH,
    L1,
    L2,
    L3,
    L4,
    NOW,
    RECEIVER,
    TYPE1,
    TYPE2,
    agreement,
    envelope,
    sample,
)
from hypothesis import event, given, settings
from hypothesis import strategies as st

from broker.envelope import Haendelsesbesked, StoredBesked, uid_value
from catalog.access import (
    REFUSED,
    ReceiveIndex,
    ReceiveIndexes,
    extract_facts,
    receive_decision,
    rewrite_tilladt_modtager,
)
from catalog.agreements import Agreement, decide, withdraw


def decision_for(
    env: Haendelsesbesked, agreements: list[Agreement], now: int = NOW
) -> tuple[bool, tuple[str, ...] | None]:
    d = receive_decision(extract_facts(env), agreements, now)
    return d.admitted, d.tilladt_modtager


def test_owner_must_have_approved() -> None:
    a = agreement(
        "receive", [HORSENS, AARHUS, KBH], [TYPE1], approved=[HORSENS, AARHUS], rejected=[KBH]
    )
    assert decision_for(envelope(owners=[HORSENS]), [a]) == (True, None)
    assert decision_for(envelope(owners=[KBH]), [a]) == (False, None)
    assert decision_for(envelope(owners=[HORSENS, KBH]), [a]) == (False, None)
    assert decision_for(envelope(owners=["*"]), [a]) == (False, None)
    assert decision_for(envelope(owners=[]), [a]) == (False, None)
    assert decision_for(envelope(message_type=TYPE2), [a]) == (False, None)


def test_tilladt_modtager_is_rewritten() -> None:
    a = agreement(
        "receive", [HORSENS, AARHUS, KBH], [TYPE1], approved=[HORSENS, AARHUS], rejected=[KBH]
    )
    urn = "urn:oio:cvr-nr:"
    # '*' becomes the approving authorities
    assert decision_for(envelope(tilladt=["*"]), [a]) == (True, (urn + HORSENS, urn + AARHUS))
    # CVRs without an agreement are dropped; every form comes out as urn:oio:cvr-nr:
    got = decision_for(envelope(tilladt=[f"urn:oio:cvr:{HORSENS}", KBH, "12345678"]), [a])
    assert got == (True, (urn + HORSENS,))
    # nobody the receiver may act for: not delivered
    assert decision_for(envelope(tilladt=[KBH]), [a]) == (False, None)
    assert decision_for(envelope(tilladt=["garbage"]), [a]) == (False, None)


def test_sending_authorities_compare_tilladt_modtager() -> None:
    a = agreement("receive", [HORSENS, AARHUS], [TYPE1], sending_authorities=[AARHUS])
    assert decision_for(envelope(tilladt=[AARHUS]), [a]) == (True, ("urn:oio:cvr-nr:" + AARHUS,))
    assert decision_for(envelope(tilladt=["*"]), [a])[0]
    assert not decision_for(envelope(tilladt=[HORSENS]), [a])[0]
    assert not decision_for(envelope(tilladt=None), [a])[0]  # nothing to compare with


def test_restrictions() -> None:
    a = agreement("receive", [HORSENS], [TYPE1], max_sensitivity=L2, kle=["32.01.*"])
    assert decision_for(envelope(sensitivity=L1), [a])[0]
    assert decision_for(envelope(sensitivity=L2.upper()), [a])[0]
    assert not decision_for(envelope(sensitivity=L3), [a])[0]
    assert not decision_for(envelope(sensitivity=None), [a])[0]
    assert not decision_for(envelope(kle=["urn:oio:kle:32.02.01"]), [a])[0]
    assert not decision_for(envelope(kle=[None]), [a])[0]
    wide = agreement("receive", [HORSENS], [TYPE1], kle=["*"], max_sensitivity=L4)
    assert decision_for(envelope(kle=[None], sensitivity=None), [wide])[0]
    unknown = "00000000-0000-4000-8000-000000000000"
    assert not decision_for(envelope(sensitivity=unknown), [wide])[0]
    unrestricted = agreement("receive", [HORSENS], [TYPE1])
    assert decision_for(envelope(sensitivity=unknown), [unrestricted])[0]


def test_one_admitting_agreement_is_enough_and_all_are_reported() -> None:
    strict = agreement("receive", [HORSENS], [TYPE1], agreement_id="strict", max_sensitivity=L1)
    loose = agreement("receive", [HORSENS, AARHUS], [TYPE1], agreement_id="loose")
    other = agreement("receive", [HORSENS], [TYPE1], agreement_id="other")
    d = receive_decision(
        extract_facts(envelope(sensitivity=L2, tilladt=["*"])), [strict, loose, other], NOW
    )
    assert d.admitted and d.agreements == ("loose", "other")
    assert d.tilladt_modtager == ("urn:oio:cvr-nr:" + HORSENS, "urn:oio:cvr-nr:" + AARHUS)


def test_lifecycle_is_respected() -> None:
    env = envelope()
    expiring = agreement("receive", [HORSENS], [TYPE1], valid_until=NOW + 5)
    index = ReceiveIndex([expiring])
    assert index.decide(extract_facts(env), NOW + 4).admitted
    assert index.decide(extract_facts(env), NOW + 5) is REFUSED  # no rebuild needed
    pending = agreement("receive", [HORSENS], [TYPE1], approved=[])
    assert decision_for(env, [pending]) == (False, None)
    assert decision_for(env, [withdraw(agreement("receive", [HORSENS], [TYPE1]), NOW)]) == (
        False,
        None,
    )
    revoked = decide(agreement("receive", [HORSENS], [TYPE1]), HORSENS, False, "nej", NOW)
    assert decision_for(env, [revoked]) == (False, None)
    assert decision_for(env, [agreement("send", [HORSENS], [TYPE1])]) == (False, None)


def test_kombit_sample_for_a_receiver_of_aarhus() -> None:
    a = agreement("receive", [AARHUS], ["b677c97e-aa5e-430e-9f60-9bbbbdb4ea1b"])
    besked = sample("testbesked03.xml")
    d = receive_decision(extract_facts(besked), [a], NOW)
    assert d.admitted and d.tilladt_modtager == ("urn:oio:cvr-nr:55133018",)
    assert not receive_decision(extract_facts(sample("testbesked01.xml")), [a], NOW).admitted


def test_rewrite_copies_the_envelope() -> None:
    a = agreement("receive", [HORSENS, AARHUS], [TYPE1])
    besked = envelope(tilladt=["*"])
    d = receive_decision(extract_facts(besked), [a], NOW)
    copy = rewrite_tilladt_modtager(besked, d)
    assert [uid_value(u) for u in copy.Beskedkuvert.Filtreringsdata.TilladtModtager] == [
        "urn:oio:cvr-nr:" + HORSENS,
        "urn:oio:cvr-nr:" + AARHUS,
    ]
    assert [uid_value(u) for u in besked.Beskedkuvert.Filtreringsdata.TilladtModtager] == ["*"]
    assert (
        copy.Beskedkuvert.Filtreringsdata.ObjektRegistrering
        == besked.Beskedkuvert.Filtreringsdata.ObjektRegistrering
    )
    stored = msgspec.json.decode(msgspec.json.encode(besked), type=StoredBesked)
    assert rewrite_tilladt_modtager(stored, d).Beskedkuvert == copy.Beskedkuvert
    plain = envelope()
    assert (
        rewrite_tilladt_modtager(plain, receive_decision(extract_facts(plain), [a], NOW)) is plain
    )


def test_indexes_per_system() -> None:
    indexes = ReceiveIndexes()
    a = agreement("receive", [HORSENS], [TYPE1, TYPE2], system_id=RECEIVER)
    index = indexes.rebuild(RECEIVER, [a, agreement("send", [HORSENS], [TYPE1])])
    assert len(index) == 1 and index.message_types == {TYPE1, TYPE2}
    assert repr(index) == "<ReceiveIndex [1 agreements | 2 message types]>"
    assert indexes.decide(RECEIVER, extract_facts(envelope()), NOW).admitted
    assert indexes.decide("someone-else", extract_facts(envelope()), NOW) is REFUSED
    assert repr(indexes) == "<ReceiveIndexes [1 systems | 1 agreements]>"
    indexes.rebuild(RECEIVER, [])
    assert indexes.get(RECEIVER) is None


# -------------------------------------------------------------------------------- reference

_CVR = re.compile(r"(?:(?i:urn:oio:cvr-nr:)|(?i:urn:oio:cvr:))?([0-9]{8})")
_RANK = {L1: 1, L2: 2, L3: 3, L4: 4}


def _cvr(text: str | None) -> str | None:
    m = None if text is None else _CVR.fullmatch(text.strip())
    return None if m is None else m.group(1)


def _kle_ok(pattern: str, value: str | None) -> bool:
    if pattern == "*":
        return True
    if value is None:
        return False
    text = re.sub(r"(?i)^urn:oio:kle:", "", value.strip())
    if not re.fullmatch(r"[0-9]{2}(\.[0-9]{2}){0,2}", text):
        return False
    if pattern.endswith(".*"):
        return text == pattern[:-2] or text.startswith(pattern[:-1])
    return text == pattern


def reference(
    env: Haendelsesbesked, agreements: list[Agreement], now: int
) -> tuple[bool, tuple[str, ...] | None, set[str]]:
    """The rules of docs/catalog.md, read straight off the envelope, agreement by agreement."""
    data = env.Beskedkuvert.Filtreringsdata
    regs = data.ObjektRegistrering
    owners_raw = [uid_value(r.ObjektAnsvarligMyndighed) for r in regs]
    owners = {_cvr(o) for o in owners_raw}
    if not regs or None in owners:
        return False, None, set()
    level = uid_value(env.Beskedkuvert.Leveranceinformation.Sikkerhedsklassificering)
    rank = 4 if level is None else _RANK.get(level.lower(), 5)
    tilladt_raw = [uid_value(u) or "" for u in data.TilladtModtager]
    star = any(t.strip() == "*" for t in tilladt_raw)
    tilladt = {c for t in tilladt_raw if (c := _cvr(t)) is not None}
    out: set[str] = set()
    ids: set[str] = set()
    for a in agreements:
        approved = {c for c, d in a.decisions.items() if d.status == "approved"}
        if a.kind != "receive" or a.withdrawn_ms is not None or not approved:
            continue
        if a.valid_until_ms is not None and now >= a.valid_until_ms:
            continue
        if (
            uid_value(data.Beskedtype) or ""
        ).lower() not in a.message_types or not owners <= approved:
            continue
        if a.max_sensitivity is not None and rank > _RANK[a.max_sensitivity]:
            continue
        kle = a.kle
        if (
            kle is not None
            and "*" not in kle
            and not all(any(_kle_ok(p, uid_value(r.OpgaveEmne)) for p in kle) for r in regs)
        ):
            continue
        sending = a.sending_authorities
        if sending is not None and (not tilladt_raw or not (star or tilladt & set(sending))):
            continue
        if tilladt_raw:
            part = approved if star else tilladt & approved
            if not part:
                continue
            out |= part
        ids.add(a.id)
    if not ids:
        return False, None, set()
    rewritten = tuple(f"urn:oio:cvr-nr:{c}" for c in sorted(out)) if tilladt_raw else None
    return True, rewritten, ids


TOWNS = [HORSENS, AARHUS, KBH]
towns = st.sampled_from(TOWNS)


def sometimes(p: int) -> st.SearchStrategy[bool]:
    """True with probability about 1/p."""
    return st.integers(1, p).map(lambda i: i == p)  # the shrink target (1) is False


def cvr_text(cvr: str, form: int) -> str:
    return (cvr, f"urn:oio:cvr-nr:{cvr}", f"URN:OIO:CVR:{cvr}")[form]


@st.composite
def agreements(draw: st.DrawFn, n: int) -> Agreement:
    parties = draw(st.lists(towns, min_size=1, max_size=3, unique=True))
    approved = (
        draw(st.lists(st.sampled_from(parties), unique=True)) if draw(sometimes(3)) else parties
    )
    rejected = [t for t in parties if t not in approved and draw(st.booleans())]
    kw: dict[str, Any] = {}
    if draw(sometimes(3)):
        kw["max_sensitivity"] = draw(st.sampled_from([L1, L2, L3, L4]))
    if draw(sometimes(3)):
        kw["kle"] = draw(
            st.lists(
                st.sampled_from(["*", "32.*", "32.01.*", "32.01.01", "01.*"]),
                min_size=1,
                max_size=2,
            )
        )
    if draw(sometimes(4)):
        kw["sending_authorities"] = draw(st.lists(towns, min_size=1, max_size=2))
    if draw(sometimes(4)):
        kw["valid_until"] = NOW + draw(st.integers(1, 20))
    kind = "receive" if "sending_authorities" in kw or not draw(sometimes(6)) else "send"
    a = agreement(
        kind,
        parties,
        draw(st.lists(st.sampled_from([TYPE1, TYPE2]), min_size=1, max_size=2)),
        approved=approved,
        rejected=rejected,
        agreement_id=f"a{n}",
        **kw,
    )
    return withdraw(a, NOW) if draw(sometimes(10)) else a


@st.composite
def envelopes(draw: st.DrawFn) -> Haendelsesbesked:
    n = draw(st.sampled_from([0, 1, 1, 1, 1, 1, 2, 2, 3]))
    owners: list[str | None] = []
    for _ in range(n):
        if draw(sometimes(10)):
            owners.append(draw(st.sampled_from(["*", "garbage", "1234567", None])))
        else:
            owners.append(cvr_text(draw(towns), draw(st.integers(0, 2))))
    tilladt = None
    if draw(st.booleans()):
        tilladt = [
            draw(st.sampled_from(["*", "junk"]))
            if draw(sometimes(3))
            else cvr_text(draw(towns), draw(st.integers(0, 2)))
            for _ in range(draw(st.integers(1, 3)))
        ]
    kle = st.sampled_from(
        [
            "urn:oio:kle:32.01.01",
            "urn:oio:kle:32.01.01",
            "32.01.02",
            "32.02",
            "01.01.01",
            "junk",
            None,
        ]
    )
    return envelope(
        message_type=draw(st.sampled_from([TYPE1, TYPE2, TYPE1.upper()])),
        owners=owners,
        kle=[draw(kle) for _ in range(n)],
        actions=[None] * n,
        sensitivity=draw(
            st.sampled_from(
                [L1, L1, L2, L2.upper(), L3, L4, None, "00000000-0000-4000-8000-000000000000"]
            )
        ),
        tilladt=tilladt,
    )


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 4).flatmap(lambda k: st.tuples(*(agreements(i) for i in range(k)))),
    envelopes(),
    st.integers(0, 25),
)
def test_index_agrees_with_brute_force(
    agrs: tuple[Agreement, ...], env: Haendelsesbesked, dt: int
) -> None:
    now = NOW + dt
    d = ReceiveIndex(agrs).decide(extract_facts(env), now)
    admitted, rewritten, ids = reference(env, list(agrs), now)
    event(f"admitted={admitted}, rewritten={rewritten is not None}")
    assert (d.admitted, d.tilladt_modtager, set(d.agreements)) == (admitted, rewritten, ids)
