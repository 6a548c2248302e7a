"""Scenarios as data: what a load test does, as one frozen msgspec Struct.

A scenario names its workload completely: who sends (``senders``, ``mode``, ``batch``,
``rate``), for how long (``duration_s``, ``count``), to whom (``mailboxes``, their
subscriptions' ``fanout_min``..``fanout_max`` and ``match_ratio``), what (``message_types``,
``envelope_bytes``, ``authorities``) and how it is received (``receivers``, ``pollers``,
``receive``). The built-ins are in :data:`BUILTIN`; a JSON file with the same fields is a
scenario too (``--scenario my.json``). Command-line overrides go through :func:`with_overrides`,
which validates the result again, so an override can never produce a scenario a file could not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

__all__ = [
    "BUILTIN",
    "MAX_ENVELOPES",
    "Scenario",
    "ScenarioError",
    "load_scenario",
    "scenario_names",
    "with_overrides",
]

#: Upper bound on the envelopes of one run: the ledger holds ~20 bytes per envelope.
MAX_ENVELOPES = 5_000_000

Mode = Literal["batch", "single", "stream"]
Receive = Literal["concurrent", "after"]
Consume = Literal["poll", "stream"]


class ScenarioError(ValueError):
    """A scenario that cannot run: unknown name, bad field (``path`` names it), bad combination."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message + (f" (at {path})" if path else ""))
        self.path = path


class Scenario(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One workload. Every field has a default except ``name``; limits are in the annotations."""

    name: Annotated[str, Meta(min_length=1, max_length=64)]
    description: str = ""
    #: ``batch`` = POST /v1/messages/batch, ``single`` = POST /v1/messages (one per request),
    #: ``stream`` = the WebSocket publish channel /v1/stream/publish
    mode: Mode = "batch"
    #: concurrent sending tasks; each is its own system with its own approved send agreement
    senders: Annotated[int, Meta(ge=1, le=256)] = 4
    #: envelopes per request (batch) or per frame (stream); 1 for single
    batch: Annotated[int, Meta(ge=1, le=5000)] = 100
    #: stream: envelopes sent but not yet confirmed, per connection (like publisher confirms)
    window: Annotated[int, Meta(ge=1, le=100_000)] = 1000
    #: envelopes per second over all senders; None = as fast as the broker confirms
    rate: Annotated[float, Meta(gt=0, le=1_000_000)] | None = None
    duration_s: Annotated[float, Meta(gt=0, le=3600)] = 10.0
    #: stop after this many envelopes (or at ``duration_s``, whichever comes first)
    count: Annotated[int, Meta(ge=1, le=MAX_ENVELOPES)] | None = None
    #: receiving systems (each with an approved receive agreement); mailboxes are spread over them
    receivers: Annotated[int, Meta(ge=1, le=64)] = 2
    mailboxes: Annotated[int, Meta(ge=1, le=256)] = 10
    #: long-poll tasks per mailbox
    pollers: Annotated[int, Meta(ge=1, le=16)] = 1
    #: each subscribed message type is subscribed by fanout_min..fanout_max mailboxes
    fanout_min: Annotated[int, Meta(ge=1, le=256)] = 1
    fanout_max: Annotated[int, Meta(ge=1, le=256)] = 3
    #: selectivity: the share of envelopes whose type some mailbox subscribes to
    match_ratio: Annotated[float, Meta(ge=0.0, le=1.0)] = 1.0
    #: catalog ids or names; empty = every active type except KOMBIT's Test/ types
    message_types: list[str] = []
    #: bundled municipalities that own the data and approve the agreements
    authorities: Annotated[int, Meta(ge=1, le=98)] = 1
    #: target size of one envelope; the kuvert alone is ~1 KB, so smaller targets get no padding
    envelope_bytes: Annotated[int, Meta(ge=256, le=4 * 1024 * 1024)] = 1024
    #: what the run claims: the broker fsyncs before confirming (``serve`` without ``--no-sync``);
    #: the bench cannot switch the server, it records the claim next to the figures
    durable: bool = True
    #: ``concurrent``: receivers run during the load; ``after``: they drain the backlog after it
    receive: Receive = "concurrent"
    #: ``poll``: HTTP long-poll + ``POST …/ack``; ``stream``: the WebSocket consume stream with
    #: ``poll_max`` deliveries of credit per mailbox, acks (carrying new credit) as frames
    consume: Consume = "poll"
    poll_max: Annotated[int, Meta(ge=1, le=1000)] = 1000
    poll_wait_s: Annotated[float, Meta(ge=0, le=30)] = 5.0
    lease_s: Annotated[float, Meta(ge=1, le=3600)] = 30.0
    #: how long after the load the receivers may take to get every confirmed envelope
    drain_s: Annotated[float, Meta(ge=0, le=600)] = 30.0
    #: seconds of GET /healthz from the same senders before the load: the framework's ceiling
    baseline_s: Annotated[float, Meta(ge=0, le=60)] = 0.0
    retention_s: Annotated[int, Meta(ge=1, le=30 * 24 * 3600)] = 3600
    seed: int = 1

    def check(self) -> Scenario:
        """The combination rules a field annotation cannot say; returns ``self``."""
        if self.fanout_min > self.fanout_max:
            raise ScenarioError("fanout_min must be <= fanout_max", "$.fanout_min")
        if self.fanout_max > self.mailboxes:
            raise ScenarioError(
                f"fanout_max ({self.fanout_max}) cannot exceed mailboxes ({self.mailboxes})",
                "$.fanout_max",
            )
        if self.mode == "single" and self.batch != 1:
            raise ScenarioError(
                "mode 'single' sends one envelope per request: batch must be 1", "$.batch"
            )
        if self.mode == "stream" and self.batch > self.window:
            raise ScenarioError("a stream frame (batch) cannot exceed the window", "$.batch")
        if self.receivers > self.mailboxes:
            raise ScenarioError(
                "receivers cannot exceed mailboxes (each owns at least one)", "$.receivers"
            )
        return self

    def planned_envelopes(self) -> int:
        """An upper bound on the envelopes this scenario sends (sizes the ledger)."""
        if self.count is not None:
            return self.count
        if self.rate is not None:
            return min(MAX_ENVELOPES, int(self.rate * self.duration_s) + self.senders * self.batch)
        return MAX_ENVELOPES


_ANCHOR = dict(mailboxes=10, fanout_min=1, fanout_max=3, envelope_bytes=1024, durable=True)

#: The built-in scenarios. ``fanout`` is the anchor workload of the performance issue.
BUILTIN: dict[str, Scenario] = {
    s.name: s.check()
    for s in (
        Scenario(
            name="fanout",
            description="anchor: 1 KiB envelopes, 10 mailboxes, each envelope matching 1-3, "
            "batch ingest of 100, as fast as possible, durable, receivers draining concurrently "
            "on consume streams",
            mode="batch",
            senders=4,
            batch=100,
            consume="stream",
            **_ANCHOR,  # type: ignore[arg-type]
        ),
        Scenario(
            name="single",
            description="one envelope per POST /v1/messages from 16 concurrent senders, against "
            "a GET /healthz baseline on the same worker; the receivers drain after the load, so "
            "the ratio compares the send path alone with the trivial endpoint",
            mode="single",
            senders=16,
            batch=1,
            baseline_s=3.0,
            receive="after",
            **_ANCHOR,  # type: ignore[arg-type]
        ),
        Scenario(
            name="stream",
            description="one envelope per frame on the WebSocket publish stream, each confirmed, "
            "window of 1000 unconfirmed",
            mode="stream",
            senders=1,
            batch=1,
            window=1000,
            consume="stream",
            **_ANCHOR,  # type: ignore[arg-type]
        ),
        Scenario(
            name="latency",
            description="fixed 1,000 envelopes/s, each sent the moment it is due (one per frame "
            "on the publish stream), to receivers waiting on consume streams: send->delivered latency",
            mode="stream",
            senders=1,
            batch=1,
            window=1000,
            rate=1000.0,
            consume="stream",
            **_ANCHOR,  # type: ignore[arg-type]
        ),
        Scenario(
            name="drain",
            description="batch ingest of a backlog first, then the receivers drain it "
            "(deliver_per_s is the drain rate)",
            mode="batch",
            senders=4,
            batch=100,
            receive="after",
            **_ANCHOR,  # type: ignore[arg-type]
        ),
    )
}

_decoder = msgspec.json.Decoder(Scenario)


def scenario_names() -> list[str]:
    return sorted(BUILTIN)


def _validated(data: bytes | dict[str, Any]) -> Scenario:
    try:
        if isinstance(data, bytes):
            scenario = _decoder.decode(data)
        else:
            scenario = msgspec.convert(data, Scenario)
    except msgspec.ValidationError as exc:
        msg, _, path = str(exc).partition(" - at `")
        raise ScenarioError(msg, path.rstrip("`") or None) from None
    except msgspec.DecodeError as exc:
        raise ScenarioError(f"not a JSON scenario: {exc}") from None
    return scenario.check()


def load_scenario(spec: str) -> Scenario:
    """A built-in by name, or a JSON file of Scenario fields.

    Error handling:
        Raises :class:`ScenarioError` for an unknown name (listing the built-ins), an unreadable
        file, or a field that breaks its limits (with the field's path).
    """
    if spec in BUILTIN:
        return BUILTIN[spec]
    path = Path(spec)
    if spec.endswith(".json") or path.is_file():
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ScenarioError(f"cannot read scenario file {spec!r}: {exc.strerror}") from None
        return _validated(data)
    raise ScenarioError(
        f"unknown scenario {spec!r}; built-in: {', '.join(scenario_names())} (or a .json file)"
    )


def with_overrides(scenario: Scenario, **overrides: Any) -> Scenario:
    """``scenario`` with the given fields replaced, validated again.

    None values are ignored (an option that was not given); ``rate="max"`` means no rate limit.
    """
    changes = {k: v for k, v in overrides.items() if v is not None}
    if changes.get("rate") == "max":  # as fast as the broker confirms
        changes["rate"] = None
    if not changes:
        return scenario
    fields = set(Scenario.__struct_fields__)
    unknown = sorted(set(changes) - fields)
    if unknown:
        raise ScenarioError(f"unknown scenario field(s): {', '.join(unknown)}")
    return _validated({**msgspec.structs.asdict(scenario), **changes})
