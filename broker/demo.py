"""A demo setup for a fresh data dir: one system with one mailbox subscribed to KOMBIT's
public test message types, so a newcomer can send a KOMBIT sample and see it arrive.

With access control on, the demo system also holds a ``send`` and a ``receive`` service
agreement for those types, approved by the authorities KOMBIT's samples name as data owners
(Aarhus 55133018, Horsens 29189889, and KOMBIT's test CVRs 12345678 and 99999999, registered
here as demo authorities).

The credentials go to ``<data_dir>/demo.json`` (mode 0600). Created once; later starts reuse it.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Literal

from broker.errors import BrokerError
from broker.registry import AGREEMENT, AUTHORITY, Registry
from broker.service import hash_token, new_token
from broker.writer import wall_ms
from catalog.agreements import Agreement, Decision
from catalog.authorities import Authority
from store.base import CreateMailbox, CreateSubscription, CreateSystem, Op, Store

__all__ = ["DEMO_FILE", "DEMO_MESSAGE_TYPES", "ensure_demo"]

DEMO_FILE = "demo.json"
#: Data owners named by KOMBIT's samples; the two test CVRs are not municipalities.
DEMO_AUTHORITIES = {
    "55133018": "Aarhus Kommune",
    "29189889": "Horsens Kommune",
    "12345678": "KOMBIT testmyndighed 12345678 (demo)",
    "99999999": "KOMBIT testmyndighed 99999999 (demo)",
}

#: KOMBIT's test types (used by its sample messages) and the public ones (beskedfordeler.md §2).
DEMO_MESSAGE_TYPES = (
    "7654895c-a3f3-4c77-8afd-4c77330f963c",  # Test/TestbeskedType1 (testbesked01, externTestBesked)
    "832d0676-d0a0-4522-8f57-ac126dc8270e",  # Test/TestbeskedType2 (testbesked02)
    "b677c97e-aa5e-430e-9f60-9bbbbdb4ea1b",  # Test/TestbeskedType3 (testbesked03)
    "c8673551-981e-4be1-b1a6-180cf6fa61f0",  # test type of the ModtagBeskedInput example
    "d2bed63c-4853-4008-b6e0-a74c15b15fbf",  # PKO_PostStatus
    "94ef3c82-10e9-4d12-a9d9-7a7242d5ba83",  # ORG_Bruger 1.0
    "1996db0e-0a7c-425f-b2c2-03466a536c4d",  # ORG_OrgEnhed 1.0
)


def ensure_demo(store: Store, data_dir: str | Path) -> dict[str, str]:
    """Create the demo system, mailbox and subscription unless they exist; return them."""
    path = Path(data_dir) / DEMO_FILE
    if path.exists():
        data: dict[str, str] = json.loads(path.read_text())
        if store.get_system(data["system_id"]) is not None:
            return data
    token = new_token("sys")
    system_id, mailbox_id, sub_id = (str(uuid.uuid4()) for _ in range(3))
    now = wall_ms()
    ops: list[Op] = [CreateSystem(id=system_id, name="demo", token_hash=hash_token(token))]
    registry = Registry.load(store)
    for cvr, name in DEMO_AUTHORITIES.items():
        if cvr not in registry.authorities:
            ops.append(Registry.doc(AUTHORITY, cvr, Authority(cvr=cvr, name=name, created_ms=now)))
    kinds: tuple[Literal["send"], Literal["receive"]] = ("send", "receive")
    for kind in kinds:
        approved = Decision(status="approved", reason="demo", decided_ms=now)
        agreement = Agreement(
            id=str(uuid.uuid4()),
            system_id=system_id,
            kind=kind,
            authorities=tuple(sorted(DEMO_AUTHORITIES)),
            message_types=tuple(sorted(DEMO_MESSAGE_TYPES)),
            decisions={cvr: approved for cvr in DEMO_AUTHORITIES},
            created_ms=now,
            name=f"demo {kind}",
            purpose="dueslag demo set-up",
        )
        ops.append(Registry.doc(AGREEMENT, agreement.id, agreement))
    ops += [
        CreateMailbox(id=mailbox_id, owner=system_id, name="demo-inbox"),
        CreateSubscription(id=sub_id, mailbox_id=mailbox_id, message_types=DEMO_MESSAGE_TYPES),
    ]
    outcome = store.apply(ops, now)
    for result in outcome.results:
        if isinstance(result, BrokerError):
            raise result
    data = {
        "system_id": system_id,
        "token": token,
        "mailbox_id": mailbox_id,
        "subscription_id": sub_id,
    }
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)
    return data
