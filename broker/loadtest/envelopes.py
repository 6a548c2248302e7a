"""Realistic envelopes from the catalog, cheap enough to make 100,000 a second.

Every envelope of a run carries its own identity twice:

* ``BeskedId`` is ``<run prefix>-<n as 12 hex digits>``: a UUID-shaped id that is unique per
  run and gives back the envelope's number ``n`` without any lookup (:meth:`IdScheme.parse`);
* the content (``Beskeddata[0].json.dueslag_bench``) holds the run, ``n`` and the send time
  (``sent_ns``, wall clock), so a receiver outside this process could measure latency too.

The kuvert is what a municipal event looks like: the type's ``ObjektHandling`` actions in turn,
a CPR-like ``ObjektId``, ``ObjektAnsvarligMyndighed`` and ``TilladtModtager`` = the approving
municipality, the type's object type and default classification, a KLE ``OpgaveEmne``. All ids
are canonical objects (``{"UUIDIdentifikator": …}``), the broker's fast decode path. The
content is padded so the whole envelope is ``envelope_bytes`` long (give or take a few bytes).

Speed: one byte template per (type, action) with ``%`` slots, filled per envelope; a batch
body is the envelopes joined into a JSON array without re-encoding anything.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from broker.loadtest.topology import CatalogType, Topology

__all__ = ["EnvelopeFactory", "IdScheme"]

KLE_EMNE = "urn:oio:kle:32.01.01"
N_HEX = 12  # hex digits of n in a BeskedId: 2**48 envelopes per run


class IdScheme:
    """BeskedIds ``<8>-<4>-<4>-<4>-<12 hex of n>`` for one run (prefix from ``run_id``)."""

    def __init__(self, run_id: str) -> None:
        h = uuid.uuid5(uuid.NAMESPACE_URL, f"dueslag-bench:{run_id}").hex
        self.prefix = f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}"
        self._plen = len(self.prefix)

    def besked_id(self, n: int) -> str:
        return f"{self.prefix}-{n:0{N_HEX}x}"

    def parse(self, besked_id: str) -> int | None:
        """``n`` of one of this run's BeskedIds; None for anything else (any case accepted)."""
        if len(besked_id) != self._plen + 1 + N_HEX:
            return None
        if besked_id[: self._plen].lower() != self.prefix:
            return None
        try:
            return int(besked_id[self._plen + 1 :], 16)
        except ValueError:
            return None


#: distinct persons (CPR numbers) the envelopes are about; envelope n is about person n % PERSONS
PERSONS = 16384


def _cpr(n: int) -> str:
    """A CPR-shaped number (DDMMYY + 4 digits) with a valid date; never checksum-checked."""
    day = 1 + n % 28
    month = 1 + (n // 28) % 12
    year = (n // 336) % 100
    serial = (n * 7919 + 1) % 10000
    return f"{day:02d}{month:02d}{year:02d}{serial:04d}"


_CPRS = [_cpr(i).encode() for i in range(PERSONS)]


def _uid(value: str) -> str:
    """A canonical UnikId object as JSON text, ``%`` escaped for the byte template."""
    key = "URNIdentifikator" if value.startswith("urn:") else "UUIDIdentifikator"
    return _lit(json.dumps({key: value}, ensure_ascii=False, separators=(",", ":")))


def _lit(text: str) -> str:
    """Text from the catalog, safe inside a ``%`` template."""
    return text.replace("%", "%%")


class EnvelopeFactory:
    """Builds envelope ``n`` of a run as canonical JSON bytes.

    Arguments:
        topology: the planned types (their actions, object types, classifications).
        authorities: CVRs (8 digits) that own the data, used in turn.
        ids: the run's :class:`IdScheme`.
        envelope_bytes: the target size of one envelope.
    """

    def __init__(
        self,
        topology: Topology,
        authorities: Sequence[str],
        ids: IdScheme,
        envelope_bytes: int = 1024,
        *,
        run_id: str = "",
    ) -> None:
        if not authorities:
            raise ValueError("authorities must name at least one CVR")
        self.topology = topology
        self.ids = ids
        self.authorities = list(authorities)
        self.target = envelope_bytes
        now = datetime.now(UTC).replace(microsecond=0)
        stamp = now.isoformat().replace("+00:00", "Z")
        self._date = now.date().isoformat()
        self._run = run_id or ids.prefix
        # templates[type][action][authority] -> bytes with %s (ids, cpr) and %d (n, sent_ns)
        self._templates = [
            [
                [self._template(t, a, cvr, stamp) for cvr in self.authorities]
                for a in range(len(t.object_actions))
            ]
            for t in topology.types
        ]

    def _template(self, t: CatalogType, a_index: int, cvr: str, stamp: str) -> bytes:
        action = t.object_actions[a_index]
        cvr_urn = f"urn:oio:cvr-nr:{cvr}"
        reg = [
            f'"ObjektAnsvarligMyndighed":{_uid(cvr_urn)}',
            '"ObjektId":{"URNIdentifikator":"urn:oio:cpr:%s"}',
        ]
        if t.object_type:
            reg.append(f'"ObjektType":{_uid(t.object_type)}')
        reg.append(f'"ObjektHandling":{_uid(action.id)}')
        reg.append(f'"OpgaveEmne":{_uid(KLE_EMNE)}')
        leverance = [f'"Dannelsestidspunkt":{{"TidsstempelDatoTid":"{stamp}"}}']
        if t.default_sensitivity:
            leverance.append(f'"Sikkerhedsklassificering":{_uid(t.default_sensitivity)}')
        head = (
            f'{{"BeskedId":{{"UUIDIdentifikator":"{self.ids.prefix}-%s"}},"BeskedVersion":"1.0",'
            f'"Beskedkuvert":{{"Filtreringsdata":{{"Beskedtype":{_uid(t.id)},'
            f'"TilladtModtager":[{_uid(cvr_urn)}],'
            f'"ObjektRegistrering":[{{{",".join(reg)}}}]}},'
            f'"Leveranceinformation":{{{",".join(leverance)}}}}},'
        )
        haendelse = _lit(json.dumps(action.name or t.name, ensure_ascii=False))
        body = (
            f'"Beskeddata":[{{"json":{{"dueslag_bench":{{"run":"{self._run}","n":%d,"sent_ns":%d}},'
            f'"cpr":"%s","haendelse":{haendelse},"dato":"{self._date}","fyld":"'
        )
        tail = '"}}]}'
        # size of a typical filled envelope without padding: fixed-width slots, n ~ 7 digits
        sample = (head + body + tail).encode() % (
            b"0" * N_HEX,
            b"0" * 10,
            1_000_000,
            time.time_ns(),
            b"0" * 10,
        )
        self.min_bytes = max(getattr(self, "min_bytes", 0), len(sample))
        pad = max(0, self.target - len(sample))
        return (head + body + "x" * pad + tail).encode()

    def build(self, n: int, type_index: int, sent_ns: int) -> bytes:
        """Envelope ``n`` of type ``type_index`` (canonical JSON bytes)."""
        per_type = self._templates[type_index]
        per_action = per_type[n % len(per_type)]
        tmpl = per_action[(n // len(per_type)) % len(per_action)]
        hex_n = n.to_bytes(6, "big").hex().encode()
        cpr = _CPRS[n % PERSONS]
        return tmpl % (hex_n, cpr, n, sent_ns, cpr)

    def type_of(self, n: int) -> int:
        """The type index envelope ``n`` is sent with (the topology's cyclic sequence)."""
        seq = self.topology.sequence
        return seq[n % len(seq)]

    @staticmethod
    def batch_body(envelopes: Sequence[bytes]) -> bytes:
        """A JSON array of already-encoded envelopes."""
        return b"[" + b",".join(envelopes) + b"]"
