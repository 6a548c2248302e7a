"""Service agreements: request validation, the lifecycle table, derived status."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest
from catalogkit import AARHUS, HORSENS, KBH, L3, NOW, SENDER, TYPE1, TYPE2, agreement, demo_catalog
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from broker.errors import BrokerError, Conflict, Forbidden, InvalidInput
from catalog.agreements import (
    AGREEMENT_ACTIONS,
    DECISION_TRANSITIONS,
    Agreement,
    AgreementIn,
    decide,
    decode_agreement_in,
    effective_authorities,
    status,
    validate_agreement_request,
    view,
    withdraw,
)

TOWNS = [HORSENS, AARHUS, KBH]


def request(**kw: object) -> AgreementIn:
    fields: dict[str, object] = {
        "kind": "receive",
        "authorities": [f"urn:oio:cvr-nr:{HORSENS}", AARHUS],
        "message_types": [TYPE1.upper()],
    }
    fields.update(kw)
    return AgreementIn(**fields)  # type: ignore[arg-type]


def make(body: AgreementIn, **kw: object) -> Agreement:
    args: dict[str, object] = {"agreement_id": "a-1", "system_id": SENDER, "now_ms": NOW}
    args.update(kw)
    return validate_agreement_request(body, **args)  # type: ignore[arg-type]


def test_request_is_normalised() -> None:
    a = make(
        request(
            max_sensitivity=L3.upper(),
            kle=["32.*", "32.*"],
            sending_authorities=[KBH, f"urn:oio:cvr:{KBH}"],
            valid_until=NOW + 1000,
            name=" Aftale ",
        )
    )
    assert a.authorities == (HORSENS, AARHUS)  # sorted, normalised
    assert a.message_types == (TYPE1,)
    assert a.max_sensitivity == L3
    assert a.kle == ("32.*",)
    assert a.sending_authorities == (KBH,)
    assert a.valid_until_ms == NOW + 1000
    assert a.name == "Aftale"
    assert {c: d.status for c, d in a.decisions.items()} == {
        HORSENS: "requested",
        AARHUS: "requested",
    }
    assert status(a, NOW) == "requested"


def test_valid_until_as_datetime() -> None:
    when = datetime(2030, 1, 1, tzinfo=UTC)
    a = make(request(valid_until=when), now_ms=0)
    assert a.valid_until_ms == int(when.timestamp() * 1000)
    naive = make(request(valid_until=datetime(2030, 1, 1)), now_ms=0)
    assert naive.valid_until_ms == a.valid_until_ms


def test_decode_request_body() -> None:
    got = decode_agreement_in(
        b'{"kind":"send","authorities":["29189889"],"message_types":["%s"],'
        b'"valid_until":"2030-01-01T00:00:00Z"}' % TYPE1.encode()
    )
    assert got.kind == "send" and isinstance(got.valid_until, datetime)
    with pytest.raises(BrokerError) as info:
        decode_agreement_in(b'{"kind":"both","authorities":[],"message_types":[]}')
    assert info.value.code == "invalid" and info.value.path == "$.kind"


@pytest.mark.parametrize(
    ("kw", "path", "code"),
    [
        ({"authorities": []}, "$.authorities", "invalid"),
        ({"authorities": ["*"]}, "$.authorities[0]", "invalid"),
        ({"authorities": [HORSENS, "123"]}, "$.authorities[1]", "invalid"),
        ({"message_types": []}, "$.message_types", "invalid"),
        ({"message_types": ["PKO_PostStatus"]}, "$.message_types[0]", "invalid"),
        ({"max_sensitivity": TYPE1}, "$.max_sensitivity", "invalid"),
        ({"kle": ["32"]}, "$.kle[0]", "invalid"),
        ({"kle": []}, "$.kle", "invalid"),
        ({"sending_authorities": ["x"]}, "$.sending_authorities[0]", "invalid"),
        ({"kind": "send", "sending_authorities": [KBH]}, "$.sending_authorities", "invalid"),
        ({"valid_until": NOW}, "$.valid_until", "invalid"),
        ({"purpose": "x" * 1001}, "$.purpose", "invalid"),
    ],
)
def test_request_refusals_name_the_field(kw: dict[str, object], path: str, code: str) -> None:
    with pytest.raises(InvalidInput) as info:
        make(request(**kw))
    assert (info.value.path, info.value.code) == (path, code)


def test_unknown_types_and_authorities_are_422() -> None:
    unknown_type = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(InvalidInput) as info:
        make(request(message_types=[TYPE1, unknown_type]), catalog=demo_catalog())
    assert (info.value.code, info.value.http_status, info.value.path) == (
        "unknown_message_type",
        422,
        "$.message_types[1]",
    )
    with pytest.raises(InvalidInput) as info:
        make(request(), known_authorities={HORSENS})
    assert (info.value.code, info.value.http_status, info.value.path) == (
        "unknown_authority",
        422,
        "$.authorities[1]",
    )
    make(request(), catalog=demo_catalog(), known_authorities={HORSENS, AARHUS})


def test_status_is_derived() -> None:
    a = make(request(authorities=TOWNS, valid_until=NOW + 100))
    assert status(a, NOW) == "requested"
    a = decide(a, KBH, False, "nej", NOW)
    assert status(a, NOW) == "requested"  # some still undecided
    a = decide(a, HORSENS, True, None, NOW)
    assert status(a, NOW) == "approved"
    assert effective_authorities(a, NOW) == {HORSENS}
    a = decide(a, f"urn:oio:cvr:{AARHUS}", True, "ok", NOW)
    assert effective_authorities(a, NOW) == {HORSENS, AARHUS}
    assert status(a, NOW + 100) == "expired"
    assert effective_authorities(a, NOW + 100) == frozenset()
    w = withdraw(a, NOW + 1)
    assert status(w, NOW + 1) == "withdrawn"
    assert effective_authorities(w, NOW + 1) == frozenset()
    v = view(a, NOW)
    assert v.status == "approved" and v.effective_authorities == tuple(sorted((HORSENS, AARHUS)))


def test_all_rejected_is_rejected() -> None:
    a = agreement("receive", [HORSENS, AARHUS], [TYPE2], approved=[], rejected=[HORSENS, AARHUS])
    assert status(a, NOW) == "rejected"
    assert a.decisions[HORSENS].reason == "nej tak"
    assert a.decisions[HORSENS].decided_ms == NOW


def test_decision_rules() -> None:
    a = make(request())
    with pytest.raises(Forbidden) as info:
        decide(a, KBH, True, None, NOW)
    assert info.value.code == "not_agreement_authority" and info.value.http_status == 403
    approved = decide(a, HORSENS, True, None, NOW)
    assert decide(approved, HORSENS, True, "again", NOW + 5) is approved  # a repeat changes nothing
    revoked = decide(approved, HORSENS, False, "revoked", NOW + 5)
    assert revoked.decisions[HORSENS].status == "rejected"
    with pytest.raises(Conflict) as conflict:
        decide(revoked, HORSENS, True, None, NOW + 6)
    assert conflict.value.code == "agreement_state" and conflict.value.http_status == 409
    with pytest.raises(InvalidInput):
        decide(a, HORSENS, True, "x" * 1001, NOW)


def test_no_decisions_after_expiry_or_withdrawal() -> None:
    a = make(request(valid_until=NOW + 10))
    with pytest.raises(Conflict, match="expired") as info:
        decide(a, HORSENS, True, None, NOW + 10)
    assert info.value.code == "agreement_state"
    w = withdraw(a, NOW)
    assert withdraw(w, NOW + 1) is w
    with pytest.raises(Conflict, match="withdrawn"):
        decide(w, HORSENS, True, None, NOW)
    assert status(withdraw(a, NOW + 20), NOW + 20) == "withdrawn"  # withdrawing expired is fine


def test_tables_cover_every_status() -> None:
    assert set(AGREEMENT_ACTIONS) == {"requested", "approved", "rejected", "expired", "withdrawn"}
    assert ("rejected", "approve") not in DECISION_TRANSITIONS
    assert all(after != "requested" for after in DECISION_TRANSITIONS.values())


def test_records_survive_json() -> None:
    a = agreement("send", TOWNS, [TYPE1], approved=[HORSENS], rejected=[KBH], kle=["32.*"])
    again = msgspec.json.decode(msgspec.json.encode(a), type=Agreement)
    assert again == a


class AgreementMachine(RuleBasedStateMachine):
    """Random decisions, withdrawals and time: the derived state always matches a model, and no
    sequence reaches an illegal state (rejected -> approved, changes after withdrawal)."""

    def __init__(self) -> None:
        super().__init__()
        self.now = NOW
        self.a = make(request(authorities=TOWNS, valid_until=NOW + 50))
        self.model: dict[str, str] = dict.fromkeys(TOWNS, "requested")
        self.withdrawn = False

    def closed(self) -> bool:
        return self.withdrawn or self.now >= NOW + 50

    @rule(cvr=st.sampled_from(TOWNS), approve=st.booleans())
    def decide(self, cvr: str, approve: bool) -> None:
        before = self.model[cvr]
        legal = not self.closed() and not (before == "rejected" and approve)
        if not legal:
            with pytest.raises(Conflict) as info:
                decide(self.a, cvr, approve, None, self.now)
            assert info.value.code == "agreement_state"
            return
        self.a = decide(self.a, cvr, approve, None, self.now)
        self.model[cvr] = "approved" if approve else "rejected"

    @rule(cvr=st.sampled_from(["12345678", "*", "garbage"]))
    def stranger(self, cvr: str) -> None:
        with pytest.raises(Forbidden):
            decide(self.a, cvr, True, None, self.now)

    @rule()
    def withdraw(self) -> None:
        self.a = withdraw(self.a, self.now)
        self.withdrawn = True

    @precondition(lambda self: self.now < NOW + 60)
    @rule(ms=st.integers(1, 20))
    def tick(self, ms: int) -> None:
        self.now += ms

    @invariant()
    def status_matches_model(self) -> None:
        got = status(self.a, self.now)
        if self.withdrawn:
            expected = "withdrawn"
        elif self.now >= NOW + 50:
            expected = "expired"
        elif "approved" in self.model.values():
            expected = "approved"
        elif all(v == "rejected" for v in self.model.values()):
            expected = "rejected"
        else:
            expected = "requested"
        assert got == expected
        assert {c: d.status for c, d in self.a.decisions.items()} == self.model
        eff = effective_authorities(self.a, self.now)
        assert eff == (
            {c for c, v in self.model.items() if v == "approved"} if got == "approved" else set()
        )


AgreementMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=25, deadline=None
)
TestAgreementLifecycle = AgreementMachine.TestCase
