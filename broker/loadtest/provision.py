"""Set-up through the public API, as a real deployment would do it, with the admin token.

In order (each step is one or a few requests; nothing is created behind the API's back):

1. the public catalog (``GET /v1/catalog/message-types``) -> :func:`plan_topology`;
2. ``authorities`` bundled municipalities, chosen with the scenario's seed, each given an
   authority token (``POST /v1/authorities/{cvr}/token``);
3. one system per sender and per receiver (``POST /v1/systems``);
4. a ``send`` agreement per sender and a ``receive`` agreement per receiver over the planned
   types and those municipalities, approved by every one of them;
5. the mailboxes (owned by the receivers in turn) and their subscriptions.

:func:`cleanup` undoes 4 and 5 at the end of the run (mailboxes deleted, agreements withdrawn),
so runs on one broker do not pile up subscribers: a stale mailbox would keep receiving copies of
the next run's envelopes and make its routing (and the server's counters) larger.

Everything is named ``bench-<run id>-…`` so a run's objects can be told apart afterwards.
"""

from __future__ import annotations

import random
from typing import Any

import httpx
import msgspec

from broker.loadtest.scenario import Scenario
from broker.loadtest.topology import Topology, catalog_types, plan_topology

__all__ = ["MailboxInfo", "Provisioned", "SetupError", "cleanup", "provision"]


class SetupError(Exception):
    """A set-up request failed; the message names the step and the broker's answer."""


class MailboxInfo(msgspec.Struct, frozen=True):
    id: str
    token: str  # the owning receiver system's token


class Provisioned(msgspec.Struct, frozen=True, kw_only=True):
    topology: Topology
    authorities: tuple[str, ...]  # CVRs (8 digits)
    sender_tokens: tuple[str, ...]
    receiver_tokens: tuple[str, ...]
    mailboxes: tuple[MailboxInfo, ...]
    #: (agreement id, the requesting system's token), to withdraw them at the end
    agreements: tuple[tuple[str, str], ...]
    requests: int  # set-up requests made


class _Api:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.requests = 0

    async def call(
        self, step: str, method: str, path: str, token: str | None, *, expect: int, **kw: Any
    ) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.requests += 1
        try:
            r = await self.http.request(method, path, headers=headers, **kw)
        except httpx.HTTPError as exc:
            raise SetupError(f"{step}: cannot reach the broker: {exc!r}") from exc
        if r.status_code != expect:
            try:
                err = r.json()["error"]
                what = f"{err['code']}: {err['message']}"
            except (ValueError, KeyError, TypeError):
                what = r.text[:300]
            raise SetupError(f"{step}: {method} {path} answered {r.status_code} {what}")
        return r


async def provision(
    http: httpx.AsyncClient, admin_token: str, scenario: Scenario, run_id: str
) -> Provisioned:
    """Create everything ``scenario`` needs on the broker behind ``http`` (its base URL).

    Error handling:
        Raises :class:`SetupError` naming the failed step (e.g. a wrong admin token answers
        401 at the first admin step), or ``ScenarioError`` if the catalog cannot serve it.
    """
    api = _Api(http)
    r = await api.call("catalog", "GET", "/v1/catalog/message-types", None, expect=200)
    topology = plan_topology(catalog_types(r.content), scenario)
    type_ids = [t.id for t in topology.types]

    r = await api.call("authorities", "GET", "/v1/authorities", admin_token, expect=200)
    bundled = sorted(a["cvr"] for a in r.json()["authorities"] if a.get("kommunekode"))
    if len(bundled) < scenario.authorities:
        raise SetupError(
            f"authorities: the broker has {len(bundled)} bundled municipalities, "
            f"the scenario needs {scenario.authorities}"
        )
    cvrs = sorted(random.Random(scenario.seed).sample(bundled, scenario.authorities))
    authority_tokens = []
    for cvr in cvrs:
        r = await api.call(
            "authority token", "POST", f"/v1/authorities/{cvr}/token", admin_token, expect=200
        )
        authority_tokens.append(r.json()["token"])

    async def system(name: str) -> str:
        r = await api.call(
            "system", "POST", "/v1/systems", admin_token, json={"name": name}, expect=201
        )
        return str(r.json()["token"])

    agreements: list[tuple[str, str]] = []

    async def agreement(token: str, kind: str) -> None:
        body = {
            "kind": kind,
            "authorities": cvrs,
            "message_types": type_ids,
            "name": f"bench-{run_id}",
            "purpose": "dueslag bench load test",
        }
        r = await api.call(
            f"{kind} agreement", "POST", "/v1/agreements", token, json=body, expect=201
        )
        agreement_id = r.json()["id"]
        agreements.append((agreement_id, token))
        for auth in authority_tokens:
            await api.call(
                "approval",
                "POST",
                f"/v1/agreements/{agreement_id}/decision",
                auth,
                json={"approve": True, "reason": "dueslag bench"},
                expect=200,
            )

    senders = [await system(f"bench-{run_id}-send-{i}") for i in range(scenario.senders)]
    receivers = [await system(f"bench-{run_id}-recv-{i}") for i in range(scenario.receivers)]
    for token in senders:
        await agreement(token, "send")
    for token in receivers:
        await agreement(token, "receive")

    mailboxes = []
    for m in range(scenario.mailboxes):
        owner = receivers[topology.owners[m]]
        body = {"name": f"bench-{run_id}-{m}", "retention_s": scenario.retention_s}
        r = await api.call("mailbox", "POST", "/v1/mailboxes", owner, json=body, expect=201)
        mb_id = str(r.json()["id"])
        types = topology.subscriptions(m)
        if types:
            await api.call(
                "subscription",
                "POST",
                f"/v1/mailboxes/{mb_id}/subscriptions",
                owner,
                json={"message_types": types},
                expect=201,
            )
        mailboxes.append(MailboxInfo(mb_id, owner))
    return Provisioned(
        topology=topology,
        authorities=tuple(cvrs),
        sender_tokens=tuple(senders),
        receiver_tokens=tuple(receivers),
        mailboxes=tuple(mailboxes),
        agreements=tuple(agreements),
        requests=api.requests,
    )


async def cleanup(http: httpx.AsyncClient, prov: Provisioned) -> dict[str, Any]:
    """Undo a run's set-up: delete its mailboxes (with whatever is left in them) and withdraw
    its agreements, so a later run on the same broker routes nothing to them. The systems stay
    (the API cannot delete a system); without agreements they can neither send nor receive.

    Never raises for a refused step: the failures are counted in the answer.
    """
    api = _Api(http)
    failed: list[str] = []
    for mb in prov.mailboxes:
        try:
            await api.call("cleanup", "DELETE", f"/v1/mailboxes/{mb.id}", mb.token, expect=204)
        except SetupError as exc:
            failed.append(str(exc))
    for agreement_id, token in prov.agreements:
        try:
            await api.call(
                "cleanup", "POST", f"/v1/agreements/{agreement_id}/withdraw", token, expect=200
            )
        except SetupError as exc:
            failed.append(str(exc))
    return {
        "mailboxes_deleted": len(prov.mailboxes),
        "agreements_withdrawn": len(prov.agreements),
        "failed": failed[:10],
    }
