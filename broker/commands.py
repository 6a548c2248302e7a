"""The CLI's governance commands: catalog, authorities, agreements, value lists, audit.

Kept apart from ``cli.py`` (which owns serve, send, poll and mailboxes); each command is one
HTTP call through :class:`broker.client.Client`.
"""

from __future__ import annotations

import argparse
from typing import Any

from broker.client import Client

__all__ = ["ADMIN_COMMANDS", "GOVERNANCE_COMMANDS", "add_governance_parsers", "run_governance"]

#: The commands this module runs.
GOVERNANCE_COMMANDS = frozenset({"catalog", "authority", "agreement", "valuelist", "audit"})

#: Commands whose default token is the admin token (others use the demo system's).
ADMIN_COMMANDS = frozenset({"admin", "authority", "audit", "catalog"})


def add_governance_parsers(sub: Any, leaf: dict[str, Any]) -> None:
    s = sub.add_parser("catalog", help="the message catalog (reads are public)")
    a = s.add_subparsers(dest="action", required=True)
    a.add_parser("list", **leaf)
    a.add_parser("show", **leaf).add_argument("type_id")
    for name in ("activate", "deactivate"):
        a.add_parser(name, help=f"{name} a message type (admin)", **leaf).add_argument("type_id")
    c = a.add_parser("create", help="add a message type from a JSON file (admin)", **leaf)
    c.add_argument("file", help="JSON body, see docs/catalog.md")

    s = sub.add_parser("authority", help="authorities (municipalities by CVR)")
    a = s.add_subparsers(dest="action", required=True)
    c = a.add_parser("create", help="register an authority (admin); prints its token once", **leaf)
    c.add_argument("cvr")
    c.add_argument("name")
    a.add_parser("token", help="issue a token for an authority (admin)", **leaf).add_argument("cvr")
    a.add_parser("list", **leaf)

    s = sub.add_parser("agreement", help="service agreements (serviceaftaler)")
    a = s.add_subparsers(dest="action", required=True)
    c = a.add_parser("request", help="request an agreement (system token)", **leaf)
    c.add_argument("kind", choices=["send", "receive"])
    c.add_argument("--authority", action="append", required=True, help="CVR (repeatable)")
    c.add_argument("--type", action="append", required=True, dest="types", help="message type UUID")
    c.add_argument("--max-sensitivity", default=None)
    c.add_argument("--kle", action="append", default=None, help="KLE pattern (repeatable)")
    c.add_argument("--sending-authority", action="append", default=None, help="CVR (receive only)")
    c.add_argument("--valid-until", default=None, help="RFC 3339 or epoch ms")
    a.add_parser("list", **leaf)
    a.add_parser("show", **leaf).add_argument("agreement_id")
    c = a.add_parser("decide", help="approve or reject (authority token)", **leaf)
    c.add_argument("agreement_id")
    c.add_argument("decision", choices=["approve", "reject"])
    c.add_argument("--reason", default=None)
    a.add_parser("withdraw", **leaf).add_argument("agreement_id")

    s = sub.add_parser("valuelist", help="value lists (værdilister) of the calling system")
    a = s.add_subparsers(dest="action", required=True)
    c = a.add_parser("create", **leaf)
    c.add_argument("name")
    c.add_argument("values", nargs="*")
    c = a.add_parser(
        "import", help="create with a given id, or reactivate a passivated list", **leaf
    )
    c.add_argument("list_id")
    c.add_argument("name")
    c.add_argument("values", nargs="*")
    a.add_parser("list", **leaf)
    a.add_parser("show", **leaf).add_argument("list_id")
    for name in ("add", "remove", "replace"):
        c = a.add_parser(name, **leaf)
        c.add_argument("list_id")
        c.add_argument("values", nargs="*")
    a.add_parser("passivate", **leaf).add_argument("list_id")
    a.add_parser("delete", **leaf).add_argument("list_id")

    s = sub.add_parser("audit", help="the audit log (admin)", **leaf)
    for name in ("since", "until", "actor", "action", "outcome", "limit"):
        s.add_argument(f"--{name}", default=None)


def _agreement_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": args.kind,
        "authorities": args.authority,
        "message_types": args.types,
    }
    if args.max_sensitivity:
        body["max_sensitivity"] = args.max_sensitivity
    if args.kle:
        body["kle"] = args.kle
    if args.sending_authority:
        body["sending_authorities"] = args.sending_authority
    if args.valid_until:
        body["valid_until"] = (
            int(args.valid_until) if args.valid_until.isdigit() else args.valid_until
        )
    return body


def run_governance(c: Client, args: argparse.Namespace) -> Any:
    """Run one governance command; returns the JSON answer to print."""
    cmd, act = args.command, getattr(args, "action", None)
    if cmd == "catalog":
        if act == "list":
            return c.request("GET", "/v1/catalog/message-types")
        if act == "show":
            return c.request("GET", f"/v1/catalog/message-types/{args.type_id}")
        if act == "create":
            with open(args.file, "rb") as f:
                return c.request(
                    "POST",
                    "/v1/catalog/message-types",
                    content=f.read(),
                    headers={"Content-Type": "application/json"},
                )
        return c.request(
            "POST",
            f"/v1/catalog/message-types/{args.type_id}/active",
            json={"active": act == "activate"},
        )
    if cmd == "authority":
        if act == "create":
            return c.request("POST", "/v1/authorities", json={"cvr": args.cvr, "name": args.name})
        if act == "token":
            return c.request("POST", f"/v1/authorities/{args.cvr}/token")
        return c.request("GET", "/v1/authorities")
    if cmd == "agreement":
        if act == "request":
            return c.request("POST", "/v1/agreements", json=_agreement_body(args))
        if act == "list":
            return c.request("GET", "/v1/agreements")
        if act == "show":
            return c.request("GET", f"/v1/agreements/{args.agreement_id}")
        if act == "decide":
            body = {"approve": args.decision == "approve", "reason": args.reason}
            return c.request("POST", f"/v1/agreements/{args.agreement_id}/decision", json=body)
        return c.request("POST", f"/v1/agreements/{args.agreement_id}/withdraw")
    if cmd == "valuelist":
        base = "/v1/value-lists"
        if act == "create":
            return c.request("POST", base, json={"name": args.name, "values": args.values})
        if act == "import":
            return c.request(
                "PUT", f"{base}/{args.list_id}", json={"name": args.name, "values": args.values}
            )
        if act == "list":
            return c.request("GET", base)
        if act == "show":
            return c.request("GET", f"{base}/{args.list_id}")
        if act in ("add", "remove"):
            return c.request("POST", f"{base}/{args.list_id}/values", json={act: args.values})
        if act == "replace":
            return c.request("PUT", f"{base}/{args.list_id}/values", json={"values": args.values})
        if act == "passivate":
            return c.request("POST", f"{base}/{args.list_id}/passivate")
        return c.request("DELETE", f"{base}/{args.list_id}")
    if cmd == "audit":
        names = ("since", "until", "actor", "action", "outcome", "limit")
        params = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
        return c.request("GET", "/v1/audit", params=params)
    raise ValueError(f"not a governance command: {cmd}")
