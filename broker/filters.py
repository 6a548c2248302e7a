"""The subscription expression language, under its historical name.

A facade: everything lives in :mod:`broker.expressions` (lexer, parser, model paths, syntax
tree, compiler, index probes; its docstring has the theory of operation). This module
re-exports the public surface so that callers importing ``broker.filters`` need not change.
"""

from broker.expressions import MAX_DEPTH as MAX_DEPTH
from broker.expressions import MAX_EXPRESSION_LENGTH as MAX_EXPRESSION_LENGTH
from broker.expressions import And as And
from broker.expressions import AnyOf as AnyOf
from broker.expressions import Compare as Compare
from broker.expressions import EqAtom as EqAtom
from broker.expressions import Expression as Expression
from broker.expressions import ExpressionError as ExpressionError
from broker.expressions import Get as Get
from broker.expressions import InValueList as InValueList
from broker.expressions import InValues as InValues
from broker.expressions import ListAtom as ListAtom
from broker.expressions import Node as Node
from broker.expressions import Not as Not
from broker.expressions import Or as Or
from broker.expressions import Path as Path
from broker.expressions import PathKey as PathKey
from broker.expressions import Probe as Probe
from broker.expressions import ValueLists as ValueLists
from broker.expressions import comparison_key as comparison_key
from broker.expressions import compile_expression as compile_expression
from broker.expressions import format_path_key as format_path_key
from broker.expressions import parse as parse
from broker.expressions import path_extractor as path_extractor
from broker.expressions import unparse as unparse

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
