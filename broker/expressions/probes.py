"""Index probes: the necessary conditions an expression hands to the subscription index.

Theory of operation
-------------------
Evaluating every subscription's expression against every envelope does not scale, so each
compiled expression also carries *probes* (:class:`Probe`): sets of atoms of which at least one
must hold if the expression does. An atom names an absolute path of the envelope
(:data:`PathKey`) and either a comparison key (:class:`EqAtom`) or one of the owner's value
lists (:class:`ListAtom`). The index (:mod:`broker.index`) files a subscription under the atoms
of one probe and, for an envelope, looks up the values it has at those paths; only the
subscriptions found are evaluated, and not even those when the probe is ``exact``.

The compiler (:mod:`broker.expressions.compiler`) derives probes bottom-up: a comparison gives
an exact probe, ``and`` keeps any conjunct's probes as inexact alternatives (at most
:data:`MAX_PROBES`), ``or`` unites one probe per disjunct, and negations give none.
"""

from __future__ import annotations

from typing import Final, TypeAlias

import msgspec

__all__ = ["MAX_PROBES", "EqAtom", "ListAtom", "PathKey", "Probe", "format_path_key"]

#: Alternative probes kept per expression (the index picks the cheapest when adding).
MAX_PROBES: Final = 8

#: An absolute path as the index sees it: field names, ``"*"`` for every element of a list,
#: an int for ``get(list, i)``. ``("Beskedkuvert", "Filtreringsdata", "TilladtModtager", "*")``.
PathKey: TypeAlias = tuple[str | int, ...]


class EqAtom(msgspec.Struct, frozen=True):
    """Some value at ``path`` has comparison key ``value``."""

    path: PathKey
    value: str


class ListAtom(msgspec.Struct, frozen=True):
    """Some value at ``path`` is in the subscription owner's value list ``name``."""

    path: PathKey
    name: str


class Probe(msgspec.Struct, frozen=True):
    """A necessary condition: if the expression holds, at least one atom holds.

    ``exact`` means sufficient too: the expression holds exactly when some atom holds, so the
    index need not evaluate it.
    """

    atoms: frozenset[EqAtom | ListAtom]
    exact: bool


def format_path_key(key: PathKey) -> str:
    """``Beskedkuvert.Filtreringsdata.ObjektRegistrering[*].ObjektId`` style text."""
    out = ""
    for step in key:
        if isinstance(step, int):
            out += f"[{step}]"
        elif step == "*":
            out += "[*]"
        else:
            out += f".{step}" if out else step
    return out
