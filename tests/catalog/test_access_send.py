"""The send decision: every refusal code, on KOMBIT's samples and synthetic envelopes."""

from __future__ import annotations

import msgspec
import pytest
from catalogkit import (
    AARHUS,
    CPR_DEMO,
    DOEDSFALD,
    FOEDSEL,
    HORSENS,
    KBH,
    L1,
    L2,
    L3,
    L4,
    NOW,
    TYPE1,
    TYPE2,
    TYPE3,
    TYPE_PUSH,
    agreement,
    demo_catalog,
    envelope,
    sample,
)

from broker.errors import BrokerError
from catalog.access import check_send, extract_facts
from catalog.messagetypes import MessageType

CAT = demo_catalog()


def refusal(
    facts_env: object, agreements: list[object], catalog: object = CAT, now: int = NOW
) -> BrokerError:
    facts = extract_facts(facts_env)  # type: ignore[arg-type]
    with pytest.raises(BrokerError) as info:
        check_send(facts, agreements, catalog, now)  # type: ignore[arg-type]
    return info.value


def test_facts_of_kombit_samples() -> None:
    f = extract_facts(sample("testbesked01.xml"))
    assert f.message_type == TYPE1
    assert f.owners == {"12345678"} and not f.owner_missing and not f.owner_wildcard
    assert f.kle == (("32", "01", "01"),)
    assert f.sensitivity == L4 and f.sensitivity_rank == 4
    assert f.tilladt == frozenset({"12345678"}) and not f.tilladt_wildcard
    assert f.actions == {FOEDSEL}
    f2 = extract_facts(sample("testbesked02.xml"))
    assert f2.message_type == TYPE2 and f2.owners == {HORSENS}
    assert f2.kle == (None,)  # "OpgaveEmne udelades for CPR"
    assert f2.sensitivity_rank == 2 and f2.actions == {DOEDSFALD}
    f3 = extract_facts(sample("testbesked03.xml"))
    assert f3.message_type == TYPE3 and f3.owners == {AARHUS}
    push = extract_facts(sample("ModtagBeskedInput-example.xml"))
    assert push.message_type == TYPE_PUSH and push.owner_missing and push.tilladt is None
    assert push.sensitivity is None and push.sensitivity_rank == 4


def test_kombit_samples_pass_with_approved_agreements() -> None:
    a = agreement("send", ["12345678", "99999999", HORSENS, AARHUS], [TYPE1, TYPE2, TYPE3])
    for name in (
        "testbesked01.xml",
        "testbesked02.xml",
        "testbesked03.xml",
        "externTestBesked.xml",
    ):
        assert check_send(extract_facts(sample(name)), [a], CAT, NOW) is a


def test_push_example_has_no_data_owner() -> None:
    a = agreement("send", [HORSENS], [TYPE_PUSH])
    err = refusal(sample("ModtagBeskedInput-example.xml"), [a])
    assert (err.code, err.http_status) == ("missing_authority", 403)


@pytest.mark.parametrize(
    ("env_kw", "code", "status"),
    [
        ({"message_type": "00000000-0000-4000-8000-000000000000"}, "unknown_message_type", 422),
        ({"sensitivity": "00000000-0000-4000-8000-000000000000"}, "unknown_sensitivity", 422),
        ({"owners": ["urn:oio:cpr:0101011234"]}, "invalid_authority", 422),
        ({"owners": []}, "missing_authority", 403),
        ({"owners": [HORSENS, None]}, "missing_authority", 403),
        ({"owners": ["*"]}, "wildcard_authority", 403),
        ({"owners": [KBH]}, "authority_not_covered", 403),
        ({"owners": [HORSENS, KBH]}, "authority_not_covered", 403),
        ({"sensitivity": L4}, "sensitivity_not_covered", 403),
        ({"sensitivity": None}, "sensitivity_not_covered", 403),  # unclassified counts as 4
        ({"kle": ["urn:oio:kle:33.01.01"]}, "kle_not_covered", 403),
        ({"kle": [None]}, "kle_not_covered", 403),
    ],
)
def test_refusal_codes(env_kw: dict[str, object], code: str, status: int) -> None:
    a = agreement(
        "send",
        [HORSENS, AARHUS, KBH],
        [TYPE1],
        approved=[HORSENS, AARHUS],
        max_sensitivity=L3,
        kle=["32.*"],
    )
    err = refusal(envelope(**env_kw), [a])  # type: ignore[arg-type]
    assert (err.code, err.http_status) == (code, status)
    assert err.message  # names the rule and the values


def test_the_refusal_message_names_the_values() -> None:
    a = agreement("send", [HORSENS, KBH], [TYPE1], approved=[HORSENS])
    err = refusal(envelope(owners=[f"urn:oio:cvr:{KBH}"]), [a])
    assert KBH in err.message and HORSENS in err.message
    assert err.path == "$.Beskedkuvert.Filtreringsdata.ObjektRegistrering"


def test_inactive_type() -> None:
    cat = dict(CAT)
    cat[TYPE1] = msgspec.structs.replace(cat[TYPE1], active=False)
    err = refusal(envelope(), [agreement("send", [HORSENS], [TYPE1])], catalog=cat)
    assert (err.code, err.http_status) == ("inactive_message_type", 422)


def test_strict_actions() -> None:
    cat = dict(CAT)
    strict: MessageType = msgspec.structs.replace(cat[CPR_DEMO], strict_actions=True)
    cat[CPR_DEMO] = strict
    a = agreement("send", [HORSENS], [CPR_DEMO])
    check_send(extract_facts(envelope(message_type=CPR_DEMO, actions=[FOEDSEL])), [a], cat, NOW)
    err = refusal(envelope(message_type=CPR_DEMO, actions=[TYPE1]), [a], catalog=cat)
    assert (err.code, err.http_status) == ("unknown_object_action", 422)
    # descriptive only when not strict
    check_send(extract_facts(envelope(message_type=CPR_DEMO, actions=[TYPE1])), [a], CAT, NOW)


def test_agreement_presence_and_state() -> None:
    env = envelope()
    assert refusal(env, []).code == "no_send_agreement"
    other_type = agreement("send", [HORSENS], [TYPE2])
    receive = agreement("receive", [HORSENS], [TYPE1])
    assert refusal(env, [other_type, receive]).code == "no_send_agreement"
    pending = agreement("send", [HORSENS], [TYPE1], approved=[])
    err = refusal(env, [pending])
    assert (err.code, err.http_status) == ("agreement_not_approved", 403)
    assert "requested" in err.message
    rejected = agreement("send", [HORSENS], [TYPE1], approved=[], rejected=[HORSENS])
    assert refusal(env, [rejected]).code == "agreement_not_approved"
    expiring = agreement("send", [HORSENS], [TYPE1], valid_until=NOW + 10)
    assert check_send(extract_facts(env), [expiring], CAT, NOW + 9) is expiring
    err = refusal(env, [expiring], now=NOW + 10)
    assert err.code == "agreement_not_approved" and "expired" in err.message


def test_one_agreement_must_admit_everything() -> None:
    # two owners, each approved a different agreement: no single agreement covers both
    a = agreement("send", [HORSENS], [TYPE1], agreement_id="a")
    b = agreement("send", [AARHUS], [TYPE1], agreement_id="b")
    env = envelope(owners=[HORSENS, AARHUS])
    assert refusal(env, [a, b]).code == "authority_not_covered"
    both = agreement("send", [HORSENS, AARHUS], [TYPE1], agreement_id="c")
    assert check_send(extract_facts(env), [a, b, both], CAT, NOW) is both


def test_the_closest_agreement_names_the_failure() -> None:
    wrong_town = agreement("send", [KBH], [TYPE1], agreement_id="a")
    too_low = agreement("send", [HORSENS], [TYPE1], agreement_id="b", max_sensitivity=L1)
    env = envelope(sensitivity=L2)
    assert refusal(env, [wrong_town, too_low]).code == "sensitivity_not_covered"
    assert refusal(env, [too_low, wrong_town]).code == "sensitivity_not_covered"
    wrong_kle = agreement("send", [HORSENS], [TYPE1], agreement_id="c", kle=["01.*"])
    assert refusal(env, [too_low, wrong_kle]).code == "kle_not_covered"


def test_restrictions_left_out_do_not_restrict() -> None:
    a = agreement("send", [HORSENS], [TYPE1])
    for env in (
        envelope(sensitivity=None),
        envelope(kle=[None]),
        envelope(kle=["urn:oio:kle:99.99.99"], sensitivity=L4),
    ):
        assert check_send(extract_facts(env), [a], CAT, NOW) is a


def test_every_cvr_form_is_one_authority() -> None:
    a = agreement("send", [HORSENS], [TYPE1])
    for form in (HORSENS, f"urn:oio:cvr:{HORSENS}", f"URN:OIO:CVR-NR:{HORSENS}"):
        check_send(extract_facts(envelope(owners=[form])), [a], CAT, NOW)
