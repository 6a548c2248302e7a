"""Paths into the envelope: how far one is resolved, and the closures that read its values.

Theory of operation
-------------------
The parser resolves a path name by name against the model (:mod:`broker.expressions.model`),
keeping a :class:`Resolution`: the node reached, whether the value so far is an uncrossed list,
and the steps taken (a :data:`~broker.expressions.probes.PathKey`: names, ``"*"`` for every
element of a list, an int for ``get(list, i)``). A path starts either at the envelope
(absolute) or, inside ``any()``, at the list element the :class:`Scope` describes (relative);
:meth:`Resolution.full_key` gives the absolute key the index files probes under.

A path's values are a list: a list on the way is crossed element by element ("exists"), and a
missing element yields no value. :func:`build` turns steps into a chain of closures (one
``attrgetter`` per run of field names), ending in a *final* that maps a value to its comparison
keys (:func:`leaf_final`) or keeps it whole (:func:`identity_final`, for the elements ``any()``
iterates). Built chains and interned keys are shared by every expression using the same path,
in bounded caches, since 100,000 subscriptions use a handful of paths.

:func:`path_extractor` is the same machinery for the index, which holds absolute keys only.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import Any, Final, NamedTuple, TypeAlias, TypeVar

from broker.envelope import Haendelsesbesked
from broker.expressions.model import ROOT, Leaf, ModelType
from broker.expressions.probes import PathKey

__all__ = [
    "TOP",
    "Extract",
    "Resolution",
    "Scope",
    "build",
    "identity_final",
    "intern",
    "leaf_final",
    "path_extractor",
]

_T = TypeVar("_T")


class Scope(NamedTuple):
    """Where relative paths start: the envelope, or the list element inside ``any()``."""

    element: ModelType | None  # None: top level, paths start at the root
    prefix: PathKey  # absolute key of the element (ends with "*")


class Resolution(NamedTuple):
    """A path resolved as far as it has been read."""

    type: ModelType
    is_list: bool  # the value so far is a list (not yet crossed)
    steps: PathKey  # from where the path starts (root or element)
    absolute: bool
    label: str  # last name, for messages

    def full_key(self, scope: Scope) -> PathKey:
        return self.steps if self.absolute else scope.prefix + self.steps


#: The top level: no element, paths start at the envelope.
TOP: Final = Scope(None, ())


# --------------------------------------------------------------------------------------------
# extraction closures: node -> list of comparison keys (or of list elements)

Extract: TypeAlias = Callable[[Any], list[Any]]


def _attr_step(dotted: str, then: Extract) -> Extract:
    get = attrgetter(dotted)

    def step(node: Any) -> list[Any]:
        try:
            v = get(node)
        except AttributeError:  # an optional element on the way is absent (None)
            return []
        return [] if v is None else then(v)

    return step


def _each_step(then: Extract) -> Extract:
    def step(items: Any) -> list[Any]:
        out: list[Any] = []
        for item in items:
            out += then(item)
        return out

    return step


def _index_step(i: int, then: Extract) -> Extract:
    def step(items: Any) -> list[Any]:
        return then(items[i]) if i < len(items) else []

    return step


def leaf_final(leaf: Leaf) -> Extract:
    """The final step reading a leaf's comparison key (one shared closure per leaf reader)."""
    final = _FINALS.get(leaf)
    if final is None:

        def final(v: Any) -> list[Any]:
            k = leaf(v)
            return [] if k is None else [k]

        _FINALS[leaf] = final
    return final


def identity_final(v: Any) -> list[Any]:
    """The final step keeping the value itself (the elements ``any()`` iterates)."""
    return [v]


_FINALS: dict[Leaf, Extract] = {}
#: One shared copy of each path and path key (100,000 subscriptions use a handful of paths).
_INTERNED: dict[Any, Any] = {}
_MAX_INTERNED: Final = 4096


def intern(obj: _T) -> _T:
    """The shared copy of ``obj`` (``obj`` itself the first time, while there is room)."""
    found: _T | None = _INTERNED.get(obj)
    if found is None:
        found = obj
        if len(_INTERNED) < _MAX_INTERNED:
            _INTERNED[obj] = obj
    return found


#: Built extractors, shared by every expression using the same path (bounded: get() indexes
#: make the number of distinct paths unbounded in principle).
_BUILT: dict[tuple[PathKey, Extract], Extract] = {}
_MAX_BUILT: Final = 4096


def build(steps: PathKey, final: Extract) -> Extract:
    """The closure chain following ``steps`` and ending in ``final`` (cached, bounded)."""
    f = _BUILT.get((steps, final))
    if f is None:
        f = _build_new(steps, final)
        if len(_BUILT) < _MAX_BUILT:
            _BUILT[steps, final] = f
    return f


def _build_new(steps: PathKey, final: Extract) -> Extract:
    f = final
    i = len(steps)
    while i > 0:
        s = steps[i - 1]
        if isinstance(s, int):
            f, i = _index_step(s, f), i - 1
        elif s == "*":
            f, i = _each_step(f), i - 1
        else:  # one attrgetter for a run of field names
            j = i - 1
            while j > 0 and isinstance(steps[j - 1], str) and steps[j - 1] != "*":
                j -= 1
            f, i = _attr_step(".".join(str(x) for x in steps[j:i]), f), j
    return f


_EXTRACTORS: dict[PathKey, Extract] = {}


def path_extractor(key: PathKey) -> Callable[[Haendelsesbesked], list[str]]:
    """The comparison keys at an absolute path of a canonical envelope (cached per path).

    Error handling:
        Raises ``ValueError`` if ``key`` is not a path to a comparable value of the model
        (keys come from :class:`~broker.expressions.probes.Probe` atoms, so this is a
        programming error).
    """
    f = _EXTRACTORS.get(key)
    if f is None:
        node, is_list = ROOT, False
        for step in key:
            if isinstance(step, int) or step == "*":
                if not is_list:
                    raise ValueError(f"not a list before {step!r} in {key!r}")
                is_list = False
            elif is_list or step not in node.fields:
                raise ValueError(f"no field {step!r} in {key!r}")
            else:
                node, is_list = node.fields[step]
        if is_list or node.leaf is None:
            raise ValueError(f"{key!r} does not end at a single comparable value")
        f = _EXTRACTORS[key] = build(key, leaf_final(node.leaf))
    return f
