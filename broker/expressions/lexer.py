"""Tokens of the expression language.

Theory of operation
-------------------
:func:`tokenize` reads the whole text up front with one verbose regular expression into a list
of :class:`Token`: names (keywords are names whose lower-cased text is in :data:`KEYWORDS`, so
keywords are case-insensitive and field names are not), integers, literals (single-quoted, with
``''`` for a quote), operators (``<>`` is read as ``!=``) and a final ``end``. Columns are
1-based, in characters.

The lexer never raises. A lexical error becomes a final ``error`` token carrying the message,
which the parser reports only if it reads that far, so errors always come in reading order.
:func:`describe` words a token for the "found …" part of parser messages.
"""

from __future__ import annotations

import re
import sys
from typing import Final, Literal, NamedTuple

__all__ = ["KEYWORDS", "Token", "describe", "tokenize"]

KEYWORDS: Final = frozenset({"and", "or", "not", "in", "get", "any", "valueliste", "it"})


class Token(NamedTuple):
    kind: Literal["name", "int", "str", "op", "end", "error"]
    text: str  # source text (for "error": the message)
    value: str  # literal content, name, digits, operator ("<>" is "!=")
    col: int
    kw: str = ""  # the keyword, lower-cased, if this name is one


_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<name>[^\W\d]\w*)
      | (?P<int>-?[0-9]+)
      | (?P<str>'(?:[^']|'')*')
      | (?P<op>!=|<>|[=(),.])
      | (?P<bad>\S)
      | (?P<end>\Z)
    )""",
    re.VERBOSE,
)


def tokenize(text: str) -> list[Token]:
    """All tokens; a lexical error becomes a final "error" token, so it is reported only if
    the parser gets that far (errors come in reading order)."""
    toks: list[Token] = []
    new = tuple.__new__  # a NamedTuple's own __new__ is a slow Python function
    for m in _TOKEN_RE.finditer(text):
        kind = m.lastgroup
        if kind == "end" or kind is None:
            break
        tok = m.group(kind)
        col = m.start(kind) + 1
        if kind == "name":
            tok = sys.intern(tok)
            low = tok.lower()
            toks.append(new(Token, ("name", tok, tok, col, low if low in KEYWORDS else "")))
        elif kind == "str":
            toks.append(new(Token, ("str", tok, tok[1:-1].replace("''", "'"), col, "")))
        elif kind == "op":
            toks.append(new(Token, ("op", tok, "!=" if tok == "<>" else tok, col, "")))
        elif kind == "int":
            toks.append(new(Token, ("int", tok, tok, col, "")))
        else:
            if tok == "'":
                msg = "unterminated literal (a literal ends with ' ; write '' for a quote)"
            else:
                hint = "; literals use single quotes" if tok in '"`´‘’“”' else ""
                msg = f"unexpected character {tok!r}{hint}"
            toks.append(Token("error", msg, "", col))
            return toks
    toks.append(Token("end", "", "", len(text) + 1))
    return toks


def describe(tok: Token) -> str:
    """How a message names ``tok``: ``'and'``, ``literal 'x'`` or ``end of expression``."""
    if tok.kind == "end":
        return "end of expression"
    if tok.kind == "str":
        return f"literal {tok.text if len(tok.text) <= 40 else tok.text[:37] + '...'}"
    return f"'{tok.text}'"
