"""The subscription expression language: parser, compiler and index probes. Pure, sans-IO.

Theory of operation
-------------------
An expression selects envelopes for a subscription, in KOMBIT's syntax extended with boolean
operators, ``any(list, condition)`` and value lists (the grammar and every semantic rule are in
``docs/filters.md``)::

    get(Beskedkuvert.Filtreringsdata.ObjektRegistrering, 0).ObjektHandling = '6ce72dab-…'
    and Beskedkuvert.Filtreringsdata.ObjektRegistrering.ObjektId in valueliste('borgere')

:func:`compile_expression` makes one pass over the text, checking every path against the
envelope model as it reads it, and yields for every construct at once its syntax tree, a
predicate closure and its index probes. The modules, in the order the pass uses them:

* :mod:`~broker.expressions.lexer`: text to tokens;
* :mod:`~broker.expressions.parser`: tokens to constructs, :class:`ExpressionError` with a
  column for anything wrong, and the entry points :func:`compile_expression` and :func:`parse`;
* :mod:`~broker.expressions.model`: the envelope model read from :mod:`broker.envelope`, and
  :func:`comparison_key`, the form every value, literal and value-list entry is compared in;
* :mod:`~broker.expressions.paths`: path resolution and the closures reading a path's values
  (:func:`path_extractor` for the index);
* :mod:`~broker.expressions.syntax`: the immutable tree (:class:`Compare`, :class:`And`, …)
  and :func:`unparse`;
* :mod:`~broker.expressions.compiler`: predicates and probes per construct, the
  :class:`ValueLists` protocol, and the compiled :class:`Expression`;
* :mod:`~broker.expressions.probes`: the necessary conditions (:class:`Probe`) the subscription
  index (:mod:`broker.index`) looks up instead of evaluating.

:mod:`broker.filters` re-exports this surface under its historical name.
"""

from broker.expressions.compiler import Expression as Expression
from broker.expressions.compiler import ValueLists as ValueLists
from broker.expressions.model import comparison_key as comparison_key
from broker.expressions.parser import MAX_DEPTH as MAX_DEPTH
from broker.expressions.parser import MAX_EXPRESSION_LENGTH as MAX_EXPRESSION_LENGTH
from broker.expressions.parser import ExpressionError as ExpressionError
from broker.expressions.parser import compile_expression as compile_expression
from broker.expressions.parser import parse as parse
from broker.expressions.paths import path_extractor as path_extractor
from broker.expressions.probes import EqAtom as EqAtom
from broker.expressions.probes import ListAtom as ListAtom
from broker.expressions.probes import PathKey as PathKey
from broker.expressions.probes import Probe as Probe
from broker.expressions.probes import format_path_key as format_path_key
from broker.expressions.syntax import And as And
from broker.expressions.syntax import AnyOf as AnyOf
from broker.expressions.syntax import Compare as Compare
from broker.expressions.syntax import Get as Get
from broker.expressions.syntax import InValueList as InValueList
from broker.expressions.syntax import InValues as InValues
from broker.expressions.syntax import Node as Node
from broker.expressions.syntax import Not as Not
from broker.expressions.syntax import Or as Or
from broker.expressions.syntax import Path as Path
from broker.expressions.syntax import unparse as unparse

__all__ = [
    "MAX_DEPTH",
    "MAX_EXPRESSION_LENGTH",
    "And",
    "AnyOf",
    "Compare",
    "EqAtom",
    "Expression",
    "ExpressionError",
    "Get",
    "InValueList",
    "InValues",
    "ListAtom",
    "Node",
    "Not",
    "Or",
    "Path",
    "PathKey",
    "Probe",
    "ValueLists",
    "comparison_key",
    "compile_expression",
    "format_path_key",
    "parse",
    "path_extractor",
    "unparse",
]
