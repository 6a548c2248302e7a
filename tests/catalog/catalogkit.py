"""Builders shared by the catalog tests: sample envelopes, synthetic envelopes, agreements."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from broker.codec import decode_envelope
from broker.envelope import (
    Beskedkuvert,
    Filtreringsdata,
    Haendelsesbesked,
    Leveranceinformation,
    ObjektRegistrering,
    UnikId,
)
from catalog.agreements import Agreement, AgreementIn, decide, validate_agreement_request
from catalog.messagetypes import MessageType, catalog_by_id, load_demo_catalog
from catalog.sensitivity import LEVELS

SAMPLES = Path(__file__).parent.parent / "data" / "kombit"

TYPE1 = "7654895c-a3f3-4c77-8afd-4c77330f963c"  # Test/TestbeskedType1
TYPE2 = "832d0676-d0a0-4522-8f57-ac126dc8270e"  # Test/TestbeskedType2
TYPE3 = "b677c97e-aa5e-430e-9f60-9bbbbdb4ea1b"  # Test/TestbeskedType3
TYPE_PUSH = "c8673551-981e-4be1-b1a6-180cf6fa61f0"  # type of the ModtagBeskedInput example
PKO = "d2bed63c-4853-4008-b6e0-a74c15b15fbf"
CPR_DEMO = "32e21412-a2ce-4873-8ef0-37609f32b10b"
L1, L2, L3, L4 = (level.id for level in LEVELS)
FOEDSEL = "1e5bb089-5445-44f8-9b65-bc854053f423"
DOEDSFALD = "298aa424-0a16-4a5a-956c-2bdab17fd11f"

HORSENS = "29189889"
AARHUS = "55133018"
KBH = "64942212"
SENDER = "cf12c051-39ce-4066-ba11-704b46fa23c4"
RECEIVER = "0b8c2d7e-5b3f-4a35-9a51-6f3c7d1e2a90"
NOW = 1_800_000_000_000


@cache
def sample(name: str) -> Haendelsesbesked:
    """A KOMBIT sample envelope from ``tests/data/kombit`` (decoded by the XML codec)."""
    return decode_envelope((SAMPLES / name).read_bytes(), "application/xml")


@cache
def demo_catalog() -> dict[str, MessageType]:
    return catalog_by_id(load_demo_catalog())


def uid(text: str) -> UnikId:
    if text.lower().startswith("urn:"):
        return UnikId(URNIdentifikator=text)
    return UnikId(UUIDIdentifikator=text)


def envelope(
    *,
    message_type: str = TYPE1,
    owners: list[str | None] | None = None,
    kle: list[str | None] | None = None,
    actions: list[str | None] | None = None,
    sensitivity: str | None = L2,
    tilladt: list[str] | None = None,
) -> Haendelsesbesked:
    """A synthetic envelope: one ObjektRegistrering per entry of ``owners`` (None: the field is
    left out), with the matching ``kle``/``actions`` entries."""
    owners = [f"urn:oio:cvr-nr:{HORSENS}"] if owners is None else owners
    kle = kle if kle is not None else ["urn:oio:kle:32.01.01"] * len(owners)
    actions = actions if actions is not None else [FOEDSEL] * len(owners)
    regs = [
        ObjektRegistrering(
            ObjektAnsvarligMyndighed=None if o is None else uid(o),
            OpgaveEmne=None if k is None else uid(k),
            ObjektHandling=None if a is None else uid(a),
            ObjektId=uid("urn:oio:cpr:0101011234"),
        )
        for o, k, a in zip(owners, kle, actions, strict=True)
    ]
    return Haendelsesbesked(
        BeskedId=uid("01157488-c45c-4fd2-b076-1de12effbf66"),
        BeskedVersion="1.0",
        Beskedkuvert=Beskedkuvert(
            Filtreringsdata=Filtreringsdata(
                Beskedtype=uid(message_type),
                TilladtModtager=[uid(t) for t in tilladt or []],
                ObjektRegistrering=regs,
            ),
            Leveranceinformation=Leveranceinformation(
                Sikkerhedsklassificering=None if sensitivity is None else uid(sensitivity)
            ),
        ),
    )


def agreement(
    kind: str,
    authorities: list[str],
    message_types: list[str],
    *,
    approved: list[str] | None = None,
    rejected: tuple[str, ...] | list[str] = (),
    system_id: str = SENDER,
    agreement_id: str = "a-1",
    now: int = NOW,
    **restrictions: object,
) -> Agreement:
    """A validated agreement; ``approved`` (default: all authorities) approve, ``rejected``
    reject, at ``now``."""
    body = AgreementIn(
        kind=kind,  # type: ignore[arg-type]
        authorities=authorities,
        message_types=message_types,
        **restrictions,  # type: ignore[arg-type]
    )
    a = validate_agreement_request(
        body, agreement_id=agreement_id, system_id=system_id, now_ms=now - 1
    )
    for cvr in authorities if approved is None else approved:
        a = decide(a, cvr, True, None, now)
    for cvr in rejected:
        a = decide(a, cvr, False, "nej tak", now)
    return a
