"""The expression language: parser, error messages, semantics, and a reference interpreter.

The Hypothesis tests generate random syntax trees over the real envelope model, print them,
and check that parsing gives the tree back and that the compiled closures agree with
:func:`ref_eval`, a deliberately naive interpreter over the envelope's JSON form written from
``docs/filters.md`` alone.
"""

from __future__ import annotations

import re
from pathlib import Path as FilePath
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.codec import decode_envelope
from broker.envelope import Haendelsesbesked, expand_shorthands, to_builtins
from broker.errors import ERROR_STATUS, InvalidInput
from broker.filters import (
    MAX_DEPTH,
    MAX_EXPRESSION_LENGTH,
    And,
    AnyOf,
    Compare,
    EqAtom,
    Expression,
    ExpressionError,
    Get,
    InValueList,
    InValues,
    ListAtom,
    Node,
    Not,
    Or,
    Path,
    compile_expression,
    format_path_key,
    parse,
    path_extractor,
    unparse,
)
from broker.index import InMemoryValueLists
from tests.conftest import SAMPLES

# --------------------------------------------------------------------------------------------
# envelopes

K = ("Beskedkuvert",)
F = ("Beskedkuvert", "Filtreringsdata")
OR = ("Beskedkuvert", "Filtreringsdata", "ObjektRegistrering")

ORG_BRUGER = "94ef3c82-10e9-4d12-a9d9-7a7242d5ba83"
BRUGER_OPRETTET = "6ce72dab-1e09-425e-8503-5d6522f72fdf"
BRUGER_AENDRET = "862f6d4e-f70a-4e27-9383-24bb32919cf0"
PKO_POSTSTATUS = "d2bed63c-4853-4008-b6e0-a74c15b15fbf"
DIGITAL_POST = "96514e13-afdd-44d6-95a8-adc2ca19b127"
FOEDSEL = "1e5bb089-5445-44f8-9b65-bc854053f423"  # ObjektHandling in KOMBIT's testbesked01/03


def decode(doc: dict[str, Any] | bytes) -> Haendelsesbesked:
    """Decode JSON (or builtins, where bare-string ids and times are expanded first)."""
    if not isinstance(doc, bytes):
        expand_shorthands(doc)
        doc = msgspec.json.encode(doc)
    return msgspec.json.decode(doc, type=Haendelsesbesked)


def envelope(
    *,
    beskedtype: str = ORG_BRUGER,
    registreringer: list[dict[str, Any]] | None = None,
    **filtrering: Any,
) -> Haendelsesbesked:
    """A minimal canonical envelope; keyword arguments are Filtreringsdata fields."""
    f: dict[str, Any] = {"Beskedtype": beskedtype, **filtrering}
    if registreringer is not None:
        f["ObjektRegistrering"] = registreringer
    return decode(
        {
            "BeskedId": "0d6f4b2e-9a51-4b8e-8d43-3c1f1f6f2a10",
            "BeskedVersion": "1.0",
            "Beskedkuvert": {"Filtreringsdata": f, "Leveranceinformation": {}},
        }
    )


# KOMBIT's testbesked01.xml and testbesked03.xml (sample pack K8), decoded by the broker's own XML
# codec from the copies in tests/data/kombit. 03 has the id "1" and mixed-case UUIDs.
def _sample(name: str) -> Haendelsesbesked:
    return decode_envelope((SAMPLES / name).read_bytes(), "application/xml")


NO_LISTS = InMemoryValueLists()


def ev(text: str, besked: Haendelsesbesked, lists: Any = NO_LISTS, owner: str = "sys") -> bool:
    return compile_expression(text).evaluate(besked, lists, owner)


# --------------------------------------------------------------------------------------------
# parsing: every construct


def p(*names: str) -> Path:
    return Path(names)


def test_kombit_published_examples_verbatim() -> None:
    # beskedfordeler.md §3, character for character (the '…' is part of the literals there)
    a = "Beskedkuvert.Filtreringsdata.BeskedAnsvarligAktoer.UUIDIdentifikator = '96514e13-…'"
    b = (
        "get(Beskedkuvert.Filtreringsdata.ObjektRegistrering, 0).ObjektHandling.UUIDIdentifikator"
        " in ('fa833512-…', 'a826e32f-…')"
    )
    assert parse(a) == Compare(
        p(*F, "BeskedAnsvarligAktoer", "UUIDIdentifikator"), "=", "96514e13-…"
    )
    assert parse(b) == InValues(
        Path(("ObjektHandling", "UUIDIdentifikator"), base=Get(p(*OR), 0)),
        ("fa833512-…", "a826e32f-…"),
    )
    assert unparse(parse(a)) == a
    assert unparse(parse(b)) == b


def test_kombit_examples_with_full_ids_select_envelopes() -> None:
    pko = envelope(beskedtype=PKO_POSTSTATUS, BeskedAnsvarligAktoer=DIGITAL_POST)
    expr = (
        f"Beskedkuvert.Filtreringsdata.BeskedAnsvarligAktoer.UUIDIdentifikator = '{DIGITAL_POST}'"
    )
    assert ev(expr, pko)
    assert not ev(expr, envelope(BeskedAnsvarligAktoer="afd21f3d-11c7-4f51-b2a6-f31d6480a9fb"))
    orgenhed_aendret = "fa833512-46a9-4830-acac-bf362f1144ba"
    expr = (
        "get(Beskedkuvert.Filtreringsdata.ObjektRegistrering, 0).ObjektHandling.UUIDIdentifikator"
        f" in ('{orgenhed_aendret}', 'a826e32f-0000-4000-8000-000000000000')"
    )
    assert ev(expr, envelope(registreringer=[{"ObjektHandling": orgenhed_aendret}]))
    assert not ev(expr, envelope(registreringer=[{"ObjektHandling": BRUGER_OPRETTET}]))
    assert not ev(expr, envelope(registreringer=[]))


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("Beskedkuvert.GyldighedFra = 'x'", Compare(p(*K, "GyldighedFra"), "=", "x")),
        ("Beskedkuvert.GyldighedFra != 'x'", Compare(p(*K, "GyldighedFra"), "!=", "x")),
        ("Beskedkuvert.GyldighedFra <> 'x'", Compare(p(*K, "GyldighedFra"), "!=", "x")),
        ("Beskedkuvert.GyldighedFra = 'it''s'", Compare(p(*K, "GyldighedFra"), "=", "it's")),
        ("Beskedkuvert.GyldighedFra = ''''''", Compare(p(*K, "GyldighedFra"), "=", "''")),
        ("Beskedkuvert.GyldighedFra = ''", Compare(p(*K, "GyldighedFra"), "=", "")),
        ("Beskedkuvert.GyldighedFra in ('a')", InValues(p(*K, "GyldighedFra"), ("a",))),
        (
            "Beskedkuvert.GyldighedFra not in ('a','b' , 'c')",
            InValues(p(*K, "GyldighedFra"), ("a", "b", "c"), negated=True),
        ),
        (
            "Beskedkuvert.Filtreringsdata.ObjektRegistrering.ObjektId in valueliste('cpr')",
            InValueList(p(*OR, "ObjektId"), "cpr"),
        ),
        (
            "Beskedkuvert.GyldighedFra NOT IN VALUELISTE('x y')",
            InValueList(p(*K, "GyldighedFra"), "x y", negated=True),
        ),
        (
            "not Beskedkuvert.GyldighedFra = 'a'",
            Not(Compare(p(*K, "GyldighedFra"), "=", "a")),
        ),
        (
            "not not Beskedkuvert.GyldighedFra = 'a'",
            Not(Not(Compare(p(*K, "GyldighedFra"), "=", "a"))),
        ),
        (
            "Beskedkuvert.GyldighedFra = 'a' and Beskedkuvert.GyldighedTil = 'b'"
            " or Beskedkuvert.GyldighedFra = 'c'",
            Or(
                (
                    And(
                        (
                            Compare(p(*K, "GyldighedFra"), "=", "a"),
                            Compare(p(*K, "GyldighedTil"), "=", "b"),
                        )
                    ),
                    Compare(p(*K, "GyldighedFra"), "=", "c"),
                )
            ),
        ),
        (
            "Beskedkuvert.GyldighedFra = 'a' and (Beskedkuvert.GyldighedTil = 'b'"
            " or Beskedkuvert.GyldighedFra = 'c')",
            And(
                (
                    Compare(p(*K, "GyldighedFra"), "=", "a"),
                    Or(
                        (
                            Compare(p(*K, "GyldighedTil"), "=", "b"),
                            Compare(p(*K, "GyldighedFra"), "=", "c"),
                        )
                    ),
                )
            ),
        ),
        (
            "((Beskedkuvert.GyldighedFra = 'a'))",
            Compare(p(*K, "GyldighedFra"), "=", "a"),
        ),
        (
            "get(get(Beskedkuvert.Filtreringsdata.ObjektRegistrering, 1).ObjektId"
            ".URNIdentifikator, 0) = 'x'",
            None,  # ObjektId is not a list: an error, see test_errors
        ),
        (
            "any(Beskedkuvert.Filtreringsdata.ObjektRegistrering, ObjektId = 'a'"
            " and ObjektHandling != 'b')",
            AnyOf(
                p(*OR),
                And(
                    (
                        Compare(p("ObjektId"), "=", "a"),
                        Compare(p("ObjektHandling"), "!=", "b"),
                    )
                ),
            ),
        ),
        (
            "any(Beskedkuvert.Filtreringsdata.TilladtModtager, it = 'a' or it.URNIdentifikator"
            " = 'b')",
            AnyOf(
                p(*F, "TilladtModtager"),
                Or(
                    (
                        Compare(Path(it=True), "=", "a"),
                        Compare(Path(("URNIdentifikator",), it=True), "=", "b"),
                    )
                ),
            ),
        ),
        (
            "get(Beskedkuvert.Filtreringsdata.TilladtModtager, 2) = 'a'",
            Compare(Path(base=Get(p(*F, "TilladtModtager"), 2)), "=", "a"),
        ),
        (
            "  Beskedkuvert .\tGyldighedFra\n=\r\n'a'  ",
            Compare(p(*K, "GyldighedFra"), "=", "a"),
        ),
    ],
)
def test_parse_constructs(text: str, tree: Node | None) -> None:
    if tree is None:
        with pytest.raises(ExpressionError):
            parse(text)
        return
    assert parse(text) == tree
    assert parse(unparse(tree)) == tree
    assert compile_expression(text) == compile_expression(unparse(tree))


def test_keywords_are_case_insensitive_names_are_not() -> None:
    lower = (
        "not any(Beskedkuvert.Filtreringsdata.TilladtModtager, it = 'a')"
        " and get(Beskedkuvert.Filtreringsdata.ObjektRegistrering, 0).ObjektId not in ('b')"
        " or Beskedkuvert.GyldighedFra in valueliste('c')"
    )
    wild = re.sub(
        r"\b(not|any|get|it|and|in|or|valueliste)\b",
        lambda m: m.group(1).upper() if len(m.group(1)) % 2 else m.group(1).title(),
        lower,
    )
    assert "NOT ANY(" in wild and " It = " in wild and "Valueliste(" in wild
    assert parse(wild) == parse(lower)
    with pytest.raises(ExpressionError, match="did you mean 'GyldighedFra'"):
        parse("Beskedkuvert.gyldighedfra = 'a'")


def test_expression_object() -> None:
    text = "Beskedkuvert.GyldighedFra = 'a' and Beskedkuvert.GyldighedTil in valueliste('l')"
    e = compile_expression(text)
    assert e.text == text
    assert e.canonical == text
    assert e.value_lists == frozenset({"l"})
    assert repr(e) == f"<Expression {text!r}>"
    assert e == compile_expression(text.replace(" and ", "\n AND "))
    assert hash(e) == hash(compile_expression(text.replace(" and ", " AnD ")))
    with pytest.raises(AttributeError):
        e.text = "x"
    assert (
        len(
            repr(
                compile_expression("Beskedkuvert.GyldighedFra in (" + ", ".join(["'x'"] * 50) + ")")
            )
        )
        < 100
    )


# --------------------------------------------------------------------------------------------
# errors: position and expectation


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        (
            "Beskedkuvert.Filtreringsdata.ObjektRegistrering.ObjektId in ('a', 'b' and x = 'c')",
            71,
            "expected ')' or ',' after literal, found 'and'",
        ),
        ("", 1, "expected a condition, found end of expression"),
        ("   ", 4, "expected a condition, found end of expression"),
        (
            "Beskedkuvert.Filtreringdata.Beskedtype = 'a'",
            14,
            "unknown name 'Filtreringdata' in Beskedkuvert; expected one of Filtreringsdata,"
            " Leveranceinformation, Modtagerhandling, GyldighedFra, GyldighedTil",
        ),
        ("Kuvert.Beskedtype = 'a'", 1, "unknown name 'Kuvert'; expected Beskedkuvert"),
        (
            "beskedkuvert.GyldighedFra = 'a'",
            1,
            "unknown name 'beskedkuvert' (names are case-sensitive: did you mean 'Beskedkuvert'?)",
        ),
        (
            "Beskedkuvert.Filtreringsdata = 'a'",
            30,
            "'Filtreringsdata' is a structure, not a value: expected '.' and one of Beskedtype,"
            " BeskedAnsvarligAktoer, TilladtModtager, RelateretObjekt, ObjektRegistrering,"
            " TvaergaaendeProces; found '='",
        ),
        (
            "Beskedkuvert.GyldighedFra.TidsstempelDatoTid.X = 'a'",
            46,
            "'TidsstempelDatoTid' is a value (text) and has no fields",
        ),
        (
            'Beskedkuvert.GyldighedFra = "a"',
            29,
            "unexpected character '\"'; literals use single quotes",
        ),
        ("Beskedkuvert.GyldighedFra = 'a", 29, "unterminated literal"),
        ("Beskedkuvert.GyldighedFra = 'a' ; x", 33, "unexpected character ';'"),
        ("Beskedkuvert.GyldighedFra = a", 29, "expected a literal ('…') after '=', found 'a'"),
        ("Beskedkuvert.GyldighedFra == 'a'", 28, "expected a literal ('…') after '=', found '='"),
        (
            "Beskedkuvert.GyldighedFra",
            26,
            "expected '=', '!=', 'in' or 'not in' after path, found end of expression",
        ),
        ("Beskedkuvert.GyldighedFra not = 'a'", 31, "expected 'in' after 'not', found '='"),
        (
            "Beskedkuvert.GyldighedFra in 'a'",
            30,
            "expected '(' or 'valueliste' after 'in', found literal 'a'",
        ),
        ("Beskedkuvert.GyldighedFra in ()", 31, "expected a literal ('…') after '(', found ')'"),
        (
            "Beskedkuvert.GyldighedFra in ('a',)",
            35,
            "expected a literal ('…') after ',', found ')'",
        ),
        (
            "Beskedkuvert.GyldighedFra in ('a'",
            34,
            "expected ')' or ',' after literal, found end of expression",
        ),
        ("Beskedkuvert.GyldighedFra in valueliste('')", 41, "a value list name must not be empty"),
        (
            "Beskedkuvert.GyldighedFra in valueliste(x)",
            41,
            "expected a literal ('…') naming the value list",
        ),
        (
            "Beskedkuvert.GyldighedFra in valueliste('a' 'b')",
            45,
            "expected ')' after the value list name, found literal 'b'",
        ),
        (
            "Beskedkuvert.GyldighedFra = 'a' Beskedkuvert",
            33,
            "expected 'and', 'or' or end of expression, found 'Beskedkuvert'",
        ),
        (
            "Beskedkuvert.GyldighedFra = 'a' and",
            36,
            "expected a path (Beskedkuvert, get(…) or any(…)), found end of expression",
        ),
        (
            "Beskedkuvert.GyldighedFra = 'a' and or",
            37,
            "expected a path (Beskedkuvert, get(…) or any(…)), found 'or'",
        ),
        (
            "(Beskedkuvert.GyldighedFra = 'a'",
            33,
            "expected 'and', 'or' or ')' to close '(' at column 1, found end of expression",
        ),
        (
            "Beskedkuvert.GyldighedFra = 'a')",
            32,
            "expected 'and', 'or' or end of expression, found ')'",
        ),
        ("Beskedkuvert. = 'a'", 15, "expected a name after '.', found '='"),
        (
            "get(Beskedkuvert.Filtreringsdata.Beskedtype, 0) = 'a'",
            5,
            "get() needs a list, but 'Beskedtype' is not a list",
        ),
        (
            "get(Beskedkuvert.Filtreringsdata.TilladtModtager) = 'a'",
            49,
            "expected ',' after the list in get(…), found ')'",
        ),
        (
            "get(Beskedkuvert.Filtreringsdata.TilladtModtager, x) = 'a'",
            51,
            "expected an index (0, 1, …) in get(…), found 'x'",
        ),
        (
            "get(Beskedkuvert.Filtreringsdata.TilladtModtager, -1) = 'a'",
            51,
            "an index counts from 0, found '-1'",
        ),
        (
            "get(Beskedkuvert.Filtreringsdata.TilladtModtager, 99999999) = 'a'",
            51,
            "index 99999999 is larger than 1000000",
        ),
        ("get Beskedkuvert = 'a'", 5, "expected '(' after 'get', found 'Beskedkuvert'"),
        (
            "any(Beskedkuvert.GyldighedFra, it = 'a')",
            5,
            "any() needs a list, but 'GyldighedFra' is not a list",
        ),
        (
            "any(Beskedkuvert.Filtreringsdata.TilladtModtager it = 'a')",
            50,
            "expected ',' after the list in any(…), found 'it'",
        ),
        (
            "any(Beskedkuvert.Filtreringsdata.ObjektRegistrering, Objektid = 'a')",
            54,
            "unknown name 'Objektid' (names are case-sensitive: did you mean 'ObjektId'?);"
            " expected it, ObjektRegistreringId, RegistreringsAktoer, Registreringstidspunkt,"
            " ObjektAnsvarligMyndighed, ObjektId, ObjektType, ObjektHandling, OpgaveEmne,"
            " Beskedkuvert",
        ),
        (
            "any(Beskedkuvert.Filtreringsdata.ObjektRegistrering, ObjektId = 'a'",
            68,
            "expected 'and', 'or' or ')' to close 'any(' at column 1, found end of expression",
        ),
        ("it = 'a'", 1, "'it' (the list element) is only valid inside any(…)"),
        (
            "any(Beskedkuvert.Filtreringsdata.ObjektRegistrering, it = 'a')",
            57,
            "'it' is a structure, not a value",
        ),
    ],
)
def test_errors(text: str, column: int, message: str) -> None:
    with pytest.raises(ExpressionError) as info:
        compile_expression(text)
    err = info.value
    assert isinstance(err, InvalidInput)
    assert err.code == "invalid_expression"
    assert err.http_status == ERROR_STATUS["invalid_expression"] == 400
    assert err.column == column, err.message
    assert err.message.startswith(f"column {column}: {message}"), err.message
    assert err.expression == text
    assert err.to_dict()["path"] == "$.expression"


def test_errors_are_reported_in_reading_order() -> None:
    # the stray character comes after the first syntax error, so the syntax error wins
    with pytest.raises(ExpressionError, match=r"^column 1: unknown name 'x'"):
        compile_expression("x = 'a' %")


def test_length_and_depth_are_bounded() -> None:
    base = "Beskedkuvert.GyldighedFra = 'a'"
    at_limit = base + " " * (MAX_EXPRESSION_LENGTH - len(base))
    assert compile_expression(at_limit)
    with pytest.raises(
        ExpressionError, match=f"^column {MAX_EXPRESSION_LENGTH + 1}: expression is longer"
    ):
        compile_expression(at_limit + " ")
    deep = "(" * MAX_DEPTH + base + ")" * MAX_DEPTH
    assert compile_expression(deep).ast == parse(base)
    with pytest.raises(
        ExpressionError, match=f"^column {MAX_DEPTH + 1}: nested deeper than {MAX_DEPTH}"
    ):
        compile_expression("(" + deep + ")")
    with pytest.raises(ExpressionError, match="nested deeper"):
        compile_expression("not " * (MAX_DEPTH + 1) + base)
    # a long flat chain is not deep
    chain = " or ".join([base] * 100)
    assert isinstance(compile_expression(chain).ast, Or)


# --------------------------------------------------------------------------------------------
# semantics


def test_unikid_compares_its_value_whichever_branch() -> None:
    urn = envelope(BeskedAnsvarligAktoer={"URNIdentifikator": "urn:oio:cvr-nr:12345678"})
    uuid = envelope(BeskedAnsvarligAktoer=DIGITAL_POST)
    a = "Beskedkuvert.Filtreringsdata.BeskedAnsvarligAktoer"
    assert ev(f"{a} = 'urn:oio:cvr-nr:12345678'", urn)
    assert ev(f"{a}.URNIdentifikator = 'urn:oio:cvr-nr:12345678'", urn)
    assert not ev(f"{a}.UUIDIdentifikator = 'urn:oio:cvr-nr:12345678'", urn)
    assert ev(f"{a}.UUIDIdentifikator != 'urn:oio:cvr-nr:12345678'", urn)  # branch absent
    assert ev(f"{a} = '{DIGITAL_POST}'", uuid)
    assert ev(f"{a}.UUIDIdentifikator = '{DIGITAL_POST}'", uuid)
    assert not ev(f"{a}.URNIdentifikator = '{DIGITAL_POST}'", uuid)


def test_uuids_compare_case_insensitively_everything_else_exactly() -> None:
    b = envelope(
        BeskedAnsvarligAktoer=DIGITAL_POST.upper(), TilladtModtager=["urn:oio:cvr-nr:12345678"]
    )
    a = "Beskedkuvert.Filtreringsdata.BeskedAnsvarligAktoer"
    assert ev(f"{a} = '{DIGITAL_POST}'", b)
    assert ev(f"{a} = '{DIGITAL_POST.upper()}'", b)
    assert ev(f"{a}.UUIDIdentifikator in ('x', '{DIGITAL_POST.title()}')", b)
    t = "Beskedkuvert.Filtreringsdata.TilladtModtager"
    assert ev(f"{t} = 'urn:oio:cvr-nr:12345678'", b)
    assert not ev(f"{t} = 'URN:OIO:CVR-NR:12345678'", b)
    assert not ev(f"{t} = 'urn:oio:cvr:12345678'", b)  # other CVR forms are other texts
    # a 36-character non-UUID is exact
    odd = "g" * 8 + "-aaaa-aaaa-aaaa-" + "a" * 12
    assert ev(f"{a} = '{odd}'", envelope(BeskedAnsvarligAktoer=odd))
    assert not ev(f"{a} = '{odd.upper()}'", envelope(BeskedAnsvarligAktoer=odd))


def test_missing_values_make_comparisons_false_and_negations_true() -> None:
    b = envelope()  # no BeskedAnsvarligAktoer, no lists, no Modtagerhandling, no GyldighedFra
    for path in (
        "Beskedkuvert.Filtreringsdata.BeskedAnsvarligAktoer",
        "Beskedkuvert.Modtagerhandling.Handling",
        "Beskedkuvert.GyldighedFra",
        "Beskedkuvert.Filtreringsdata.ObjektRegistrering.ObjektId",
        "get(Beskedkuvert.Filtreringsdata.ObjektRegistrering, 0).ObjektId",
        "Beskedkuvert.Leveranceinformation.Leveranceruter.Leverancerute.Fordelingssystem",
    ):
        assert not ev(f"{path} = 'a'", b)
        assert not ev(f"{path} in ('a', 'b')", b)
        assert not ev(f"{path} in valueliste('l')", b)
        assert ev(f"{path} != 'a'", b)
        assert ev(f"{path} not in ('a', 'b')", b)
        assert ev(f"{path} not in valueliste('l')", b)
        assert ev(f"not {path} = 'a'", b)


def test_lists_without_get_mean_some_element() -> None:
    regs = [{"ObjektHandling": BRUGER_OPRETTET}, {"ObjektHandling": BRUGER_AENDRET}, {}]
    b = envelope(registreringer=regs)
    h = "Beskedkuvert.Filtreringsdata.ObjektRegistrering.ObjektHandling"
    assert ev(f"{h} = '{BRUGER_OPRETTET}'", b)
    assert ev(f"{h} = '{BRUGER_AENDRET}'", b)
    assert ev(f"{h} in ('x', '{BRUGER_AENDRET}')", b)
    assert not ev(f"{h} != '{BRUGER_AENDRET}'", b)  # != : no element equals
    assert ev(f"{h} != 'x'", b)
    assert not ev(f"{h} not in ('{BRUGER_OPRETTET}', 'x')", b)
    g = "get(Beskedkuvert.Filtreringsdata.ObjektRegistrering, {}).ObjektHandling"
    assert ev(g.format(0) + f" = '{BRUGER_OPRETTET}'", b)
    assert not ev(g.format(0) + f" = '{BRUGER_AENDRET}'", b)
    assert ev(g.format(1) + f" = '{BRUGER_AENDRET}'", b)
    assert not ev(g.format(2) + " = 'x'", b)  # element without ObjektHandling
    assert ev(g.format(2) + " != 'x'", b)
    assert not ev(g.format(3) + " = 'x'", b)  # out of range: missing
    assert ev(g.format(3) + " != 'x'", b)


def test_any_binds_conditions_to_one_element() -> None:
    cpr = "urn:oio:cpr:0101011234"
    b = envelope(
        registreringer=[
            {"ObjektId": cpr, "ObjektHandling": BRUGER_AENDRET},
            {"ObjektId": "urn:oio:cpr:0202021234", "ObjektHandling": BRUGER_OPRETTET},
        ],
        TilladtModtager=["urn:oio:cvr-nr:12345678", "urn:oio:cvr-nr:87654321"],
    )
    o = "Beskedkuvert.Filtreringsdata.ObjektRegistrering"
    # without any(), the two conditions may hold on different elements
    assert ev(f"{o}.ObjektId = '{cpr}' and {o}.ObjektHandling = '{BRUGER_OPRETTET}'", b)
    assert not ev(f"any({o}, ObjektId = '{cpr}' and ObjektHandling = '{BRUGER_OPRETTET}')", b)
    assert ev(f"any({o}, ObjektId = '{cpr}' and ObjektHandling = '{BRUGER_AENDRET}')", b)
    # an absolute path inside any() reads the envelope
    assert ev(
        f"any({o}, ObjektId = '{cpr}' and Beskedkuvert.Filtreringsdata.Beskedtype = '{ORG_BRUGER}')",
        b,
    )
    assert not ev(f"any({o}, Beskedkuvert.Filtreringsdata.Beskedtype = '{ORG_BRUGER}')", envelope())
    t = "Beskedkuvert.Filtreringsdata.TilladtModtager"
    assert ev(f"any({t}, it = 'urn:oio:cvr-nr:87654321')", b)
    assert ev(f"any({t}, it.URNIdentifikator = 'urn:oio:cvr-nr:87654321')", b)
    assert ev(f"any({t}, URNIdentifikator = 'urn:oio:cvr-nr:87654321')", b)
    assert not ev(f"any({t}, it.UUIDIdentifikator = 'urn:oio:cvr-nr:87654321')", b)
    assert ev(f"any({t}, it != 'urn:oio:cvr-nr:87654321')", b)  # the other element
    assert not ev(f"any({t}, it != 'x')", envelope())  # no elements


def test_value_lists_are_read_live_per_owner() -> None:
    lists = InMemoryValueLists()
    lists.create("sysA", "borgere", ["urn:oio:cpr:0101011234"])
    lists.create("sysB", "borgere", [])
    b = envelope(registreringer=[{"ObjektId": "urn:oio:cpr:0202021234"}])
    e = compile_expression(
        "Beskedkuvert.Filtreringsdata.ObjektRegistrering.ObjektId in valueliste('borgere')"
    )
    assert not e.evaluate(b, lists, "sysA")
    lists.add("sysA", "borgere", ["urn:oio:cpr:0202021234"])
    assert e.evaluate(b, lists, "sysA")
    assert not e.evaluate(b, lists, "sysB")  # another system's list of the same name
    assert not e.evaluate(b, lists, "sysC")  # no such list: empty
    lists.set_active("sysA", "borgere", False)
    assert not e.evaluate(b, lists, "sysA")
    lists.set_active("sysA", "borgere", True)
    assert e.evaluate(b, lists, "sysA")
    neg = compile_expression(
        "Beskedkuvert.Filtreringsdata.ObjektRegistrering.ObjektId not in valueliste('borgere')"
    )
    assert not neg.evaluate(b, lists, "sysA")
    lists.remove("sysA", "borgere", ["urn:oio:cpr:0202021234"])
    assert neg.evaluate(b, lists, "sysA")


def test_value_lists_match_uuids_case_insensitively() -> None:
    lists = InMemoryValueLists()
    lists.create("s", "h", [BRUGER_OPRETTET.upper()])
    b = envelope(registreringer=[{"ObjektHandling": BRUGER_OPRETTET.title()}])
    assert ev(
        "Beskedkuvert.Filtreringsdata.ObjektRegistrering.ObjektHandling in valueliste('h')",
        b,
        lists,
        "s",
    )


def test_times_booleans_and_integers() -> None:
    b = decode(
        {
            "BeskedId": "1",
            "BeskedVersion": "1.0",
            "Beskedkuvert": {
                "Filtreringsdata": {"Beskedtype": ORG_BRUGER},
                "Leveranceinformation": {
                    "Leveranceruter": {
                        "Leverancerute": [
                            {"LeveranceruteLokalUdvidelse": {"AntalLeveranceforsoeg": 3}}
                        ]
                    }
                },
                "GyldighedFra": True,
                "GyldighedTil": "2026-01-01T00:00:00Z",
            },
        }
    )
    assert ev("Beskedkuvert.GyldighedFra = 'true'", b)
    assert ev("Beskedkuvert.GyldighedFra.GraenseIndikator = 'true'", b)
    assert not ev("Beskedkuvert.GyldighedFra = 'True'", b)
    assert not ev("Beskedkuvert.GyldighedFra.TidsstempelDatoTid = 'true'", b)
    assert ev("Beskedkuvert.GyldighedTil = '2026-01-01T00:00:00Z'", b)
    assert ev("Beskedkuvert.GyldighedTil.TidsstempelDatoTid = '2026-01-01T00:00:00Z'", b)
    r = "Beskedkuvert.Leveranceinformation.Leveranceruter.Leverancerute"
    assert ev(f"{r}.LeveranceruteLokalUdvidelse.AntalLeveranceforsoeg = '3'", b)
    assert ev(f"get({r}, 0).LeveranceruteLokalUdvidelse.AntalLeveranceforsoeg in ('2', '3')", b)


def test_samples_from_kombit() -> None:
    b1, b3 = _sample("testbesked01.xml"), _sample("testbesked03.xml")
    f = "Beskedkuvert.Filtreringsdata"
    birth = f"get({f}.ObjektRegistrering, 0).ObjektHandling.UUIDIdentifikator = '{FOEDSEL}'"
    assert ev(birth, b1) and ev(birth, b3)
    aarhus = f"{f}.TilladtModtager = 'urn:oio:cvr-nr:12345678'"
    assert ev(aarhus, b1) and not ev(aarhus, b3)
    assert ev(f"{f}.BeskedAnsvarligAktoer = '1'", b3)
    actor = "d92bb9c2-d826-4028-8fb5-d8b88b4377d4"  # written upper-case in the samples
    assert ev(f"{f}.ObjektRegistrering.RegistreringsAktoer = '{actor}'", b1)
    kle = f"any({f}.ObjektRegistrering, OpgaveEmne = 'urn:oio:kle:32.01.01' and ObjektAnsvarligMyndighed = 'urn:oio:cvr-nr:55133018')"
    assert ev(kle, b3) and not ev(kle, b1)
    lists = InMemoryValueLists()
    lists.create("receiver", "cpr", ["urn:oio:cpr-nr:2204151234"])
    both = f"{f}.Beskedtype in ('7654895c-a3f3-4c77-8afd-4c77330f963c', 'B677C97E-AA5E-430E-9F60-9BBBBDB4EA1B') and {f}.RelateretObjekt.ObjektId not in valueliste('cpr') and {f}.ObjektRegistrering.ObjektId in valueliste('cpr')"
    assert ev(both, b1, lists, "receiver") and ev(both, b3, lists, "receiver")
    assert not ev(both, b1, lists, "other")
    sensitive = "Beskedkuvert.Leveranceinformation.Sikkerhedsklassificering = '44F4108B-26D4-46DE-A90F-35E35B55B8D8'"
    assert ev(sensitive, b1)


def test_the_examples_in_docs_compile() -> None:
    doc = (FilePath(__file__).parents[1] / "docs" / "filters.md").read_text(encoding="utf-8")
    blocks, block, fence = [], [], None
    for line in doc.splitlines():
        if line.startswith("```"):
            if fence is None:
                fence, block = line[3:], []
            else:
                if not fence and not block[0].startswith("column "):
                    blocks.append("\n".join(block))
                fence = None
        elif fence is not None:
            block.append(line)
    assert len(blocks) >= 8
    for text in blocks:
        text = re.sub(r"<[^>]+>", "1b2a9c3e-0000-4000-8000-000000000001", text)
        assert compile_expression(text).evaluate(_sample("testbesked01.xml"), NO_LISTS, "s") in (
            True,
            False,
        )


# --------------------------------------------------------------------------------------------
# probes (what the index gets)


def test_probes() -> None:
    o = "Beskedkuvert.Filtreringsdata.ObjektRegistrering"
    cpr_path = ("Beskedkuvert", "Filtreringsdata", "ObjektRegistrering", 0, "ObjektId")
    e = compile_expression(f"get({o}, 0).ObjektId = 'urn:oio:cpr:1'")
    assert [(set(pr.atoms), pr.exact) for pr in e.probes] == [
        ({EqAtom(cpr_path, "urn:oio:cpr:1")}, True)
    ]
    e = compile_expression(f"{o}.ObjektHandling in ('{BRUGER_OPRETTET.upper()}', 'b')")
    hp = ("Beskedkuvert", "Filtreringsdata", "ObjektRegistrering", "*", "ObjektHandling")
    assert e.probes[0].atoms == {EqAtom(hp, BRUGER_OPRETTET), EqAtom(hp, "b")}
    assert (
        format_path_key(hp) == "Beskedkuvert.Filtreringsdata.ObjektRegistrering[*].ObjektHandling"
    )
    assert (
        format_path_key(cpr_path) == "Beskedkuvert.Filtreringsdata.ObjektRegistrering[0].ObjektId"
    )
    # and: one alternative per conjunct, none exact
    e = compile_expression(
        f"{o}.ObjektHandling = 'a' and {o}.ObjektId in valueliste('l') and {o}.ObjektId != 'x'"
    )
    assert len(e.probes) == 2
    assert not any(pr.exact for pr in e.probes)
    assert {a for pr in e.probes for a in pr.atoms} == {
        EqAtom(hp, "a"),
        ListAtom((*hp[:-1], "ObjektId"), "l"),
    }
    # or: the union, exact when every disjunct is
    e = compile_expression(f"{o}.ObjektHandling = 'a' or {o}.ObjektId in valueliste('l')")
    assert len(e.probes) == 1 and e.probes[0].exact and len(e.probes[0].atoms) == 2
    e = compile_expression(f"{o}.ObjektHandling = 'a' or {o}.ObjektId != 'x'")
    assert e.probes == ()
    # any: relative paths become element paths; exact when nothing else is required
    e = compile_expression(f"any({o}, ObjektHandling = 'a')")
    assert e.probes[0].exact and e.probes[0].atoms == {EqAtom(hp, "a")}
    e = compile_expression(f"any({o}, Beskedkuvert.GyldighedFra = 'a')")
    assert not e.probes[0].exact
    e = compile_expression("any(Beskedkuvert.Filtreringsdata.TilladtModtager, it = 'a')")
    assert e.probes[0].exact
    assert (
        e.probes == compile_expression("Beskedkuvert.Filtreringsdata.TilladtModtager = 'a'").probes
    )
    # negations give nothing
    for text in (f"{o}.ObjektId != 'a'", f"not {o}.ObjektId = 'a'", f"{o}.ObjektId not in ('a')"):
        assert compile_expression(text).probes == ()


def test_path_extractor() -> None:
    b = _sample("testbesked01.xml")
    assert path_extractor(
        ("Beskedkuvert", "Filtreringsdata", "ObjektRegistrering", "*", "RegistreringsAktoer")
    )(b) == ["d92bb9c2-d826-4028-8fb5-d8b88b4377d4"]
    assert path_extractor(("Beskedkuvert", "Filtreringsdata", "TilladtModtager", 3))(b) == []
    for bad in (
        ("Beskedkuvert", "Nope"),
        ("Beskedkuvert", "Filtreringsdata"),
        ("Beskedkuvert", "Filtreringsdata", "TilladtModtager"),
    ):
        with pytest.raises(ValueError, match="Beskedkuvert"):
            path_extractor(bad)


# --------------------------------------------------------------------------------------------
# Hypothesis: print/parse round trip and agreement with a reference interpreter

CPRS = ["urn:oio:cpr:0101011234", "urn:oio:cpr:0202021234", "urn:oio:cpr-nr:0303031234"]
CVRS = ["urn:oio:cvr-nr:12345678", "urn:oio:cvr-nr:29189889", "12345678"]
HANDLINGER = [BRUGER_OPRETTET, BRUGER_AENDRET, FOEDSEL]
TIMES = ["2016-03-15T08:00:00", "2026-01-01T00:00:00Z"]
TYPES = [ORG_BRUGER, PKO_POSTSTATUS]


def cased(uuid: str) -> st.SearchStrategy[str]:
    return st.sampled_from([uuid, uuid.upper(), uuid.title()])


uids = st.one_of([cased(u) for u in HANDLINGER + TYPES]) | st.sampled_from(CPRS + CVRS + ["1"])
uid_json = (
    uids.map(
        lambda v: {"URNIdentifikator": v} if v.startswith("urn:") else {"UUIDIdentifikator": v}
    )
    | uids
)
time_json = (
    st.sampled_from(TIMES)
    | st.booleans()
    | st.sampled_from(TIMES).map(lambda t: {"TidsstempelDatoTid": t})
)


def opt(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


def compact(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


registrering = st.builds(
    lambda *v: compact(
        dict(
            zip(
                [
                    "ObjektId",
                    "ObjektHandling",
                    "OpgaveEmne",
                    "ObjektAnsvarligMyndighed",
                    "Registreringstidspunkt",
                ],
                v,
                strict=True,
            )
        )
    ),
    opt(uid_json),
    opt(uid_json),
    opt(st.sampled_from(["urn:oio:kle:32.01.01", "urn:oio:kle:27.24.00"])),
    opt(st.sampled_from(CVRS)),
    opt(time_json),
)
relateret = st.builds(
    lambda i, t, r: compact({"ObjektId": i, "ObjektType": t, "ObjektRolle": r}),
    uid_json,
    uid_json,
    opt(uid_json),
)
rute = st.builds(
    lambda f, n: compact(
        {
            "Fordelingssystem": f,
            "LeveranceruteLokalUdvidelse": None if n is None else {"AntalLeveranceforsoeg": n},
        }
    ),
    opt(uid_json),
    opt(st.integers(0, 3)),
)


@st.composite
def beskeder(draw: st.DrawFn) -> Haendelsesbesked:
    f = compact(
        {
            "Beskedtype": draw(st.sampled_from(TYPES)),
            "BeskedAnsvarligAktoer": draw(opt(uid_json)),
            "TilladtModtager": draw(st.lists(uid_json, max_size=3)),
            "RelateretObjekt": draw(st.lists(relateret, max_size=2)),
            "ObjektRegistrering": draw(st.lists(registrering, max_size=3)),
            "TvaergaaendeProces": draw(st.lists(uid_json, max_size=2)),
        }
    )
    li = compact(
        {
            "Sikkerhedsklassificering": draw(opt(uid_json)),
            "Dannelsestidspunkt": draw(opt(time_json)),
            "KildesystemIPAdresse": draw(opt(st.sampled_from(["10.0.0.1", "::1"]))),
            "Leveranceruter": draw(
                opt(st.builds(lambda r: {"Leverancerute": r}, st.lists(rute, max_size=2)))
            ),
        }
    )
    k = compact(
        {
            "Filtreringsdata": f,
            "Leveranceinformation": li,
            "Modtagerhandling": draw(
                opt(st.builds(lambda h: compact({"Handling": h}), opt(uid_json)))
            ),
            "GyldighedFra": draw(opt(time_json)),
        }
    )
    return decode({"BeskedId": "1", "BeskedVersion": "1.0", "Beskedkuvert": k})


# leaf paths relative to a list element (() is the element itself, written `it`)
ELEMENT_LEAVES: dict[tuple[str, ...], list[tuple[str, ...]]] = {
    (*F, "TilladtModtager"): [(), ("UUIDIdentifikator",), ("URNIdentifikator",)],
    (*F, "TvaergaaendeProces"): [(), ("URNIdentifikator",)],
    (*F, "RelateretObjekt"): [
        ("ObjektId",),
        ("ObjektType",),
        ("ObjektRolle",),
        ("ObjektId", "URNIdentifikator"),
    ],
    (*F, "ObjektRegistrering"): [
        ("ObjektId",),
        ("ObjektHandling",),
        ("ObjektHandling", "UUIDIdentifikator"),
        ("OpgaveEmne",),
        ("ObjektAnsvarligMyndighed",),
        ("Registreringstidspunkt",),
        ("Registreringstidspunkt", "GraenseIndikator"),
    ],
    ("Beskedkuvert", "Leveranceinformation", "Leveranceruter", "Leverancerute"): [
        ("Fordelingssystem",),
        ("LeveranceruteLokalUdvidelse", "AntalLeveranceforsoeg"),
    ],
}
SCALAR_LEAVES = [
    (*F, "Beskedtype"),
    (*F, "BeskedAnsvarligAktoer"),
    (*F, "BeskedAnsvarligAktoer", "UUIDIdentifikator"),
    ("Beskedkuvert", "Leveranceinformation", "Sikkerhedsklassificering"),
    ("Beskedkuvert", "Leveranceinformation", "Dannelsestidspunkt"),
    ("Beskedkuvert", "Leveranceinformation", "KildesystemIPAdresse"),
    ("Beskedkuvert", "Modtagerhandling", "Handling"),
    ("Beskedkuvert", "GyldighedFra"),
    ("Beskedkuvert", "GyldighedFra", "GraenseIndikator"),
]
LISTS = sorted(ELEMENT_LEAVES)


def _absolute_paths() -> st.SearchStrategy[Path]:
    options: list[st.SearchStrategy[Path]] = [st.sampled_from([Path(p) for p in SCALAR_LEAVES])]
    for lst, rels in ELEMENT_LEAVES.items():
        options.append(st.sampled_from([Path(lst + rel) for rel in rels]))
        options.append(
            st.builds(
                lambda rel, i, lst=lst: Path(rel, base=Get(Path(lst), i)),
                st.sampled_from(rels),
                st.integers(0, 3),
            )
        )
    return st.one_of(options)


absolute_paths = _absolute_paths()


def relative_paths(lst: tuple[str, ...]) -> st.SearchStrategy[Path]:
    rels = ELEMENT_LEAVES[lst]
    own = [Path(rel, it=True) for rel in rels] + [Path(rel) for rel in rels if rel]
    return st.sampled_from(own) | absolute_paths


values = (
    st.sampled_from(CPRS + CVRS + TIMES + ["true", "false", "1", "3", "10.0.0.1"])
    | st.one_of([cased(u) for u in HANDLINGER + TYPES])
    | st.text(alphabet="a'b ()=,.æ", max_size=4)
)
LIST_NAMES = ["cpr", "handlinger", "it's"]


def conditions(paths: st.SearchStrategy[Path], with_any: bool) -> st.SearchStrategy[Node]:
    leaf: st.SearchStrategy[Node] = st.one_of(
        st.builds(Compare, paths, st.sampled_from(["=", "!="]), values),
        st.builds(
            InValues, paths, st.lists(values, min_size=1, max_size=3).map(tuple), st.booleans()
        ),
        st.builds(InValueList, paths, st.sampled_from(LIST_NAMES), st.booleans()),
    )
    if with_any:
        leaf = leaf | st.one_of(
            [
                st.builds(AnyOf, st.just(Path(lst)), conditions(relative_paths(lst), False))
                for lst in LISTS
            ]
        )

    def extend(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
        return st.one_of(
            st.builds(Not, children),
            st.lists(children, min_size=2, max_size=3).map(lambda c: And(tuple(c))),
            st.lists(children, min_size=2, max_size=3).map(lambda c: Or(tuple(c))),
        )

    return st.recursive(leaf, extend, max_leaves=6)


expressions = conditions(absolute_paths, True)


_REF_UUID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$", re.IGNORECASE)


def ref_key(v: Any) -> str | None:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return v.lower() if _REF_UUID.match(v) else v
    if isinstance(v, dict):
        for branch in (
            "UUIDIdentifikator",
            "URNIdentifikator",
            "TidsstempelDatoTid",
            "GraenseIndikator",
        ):
            if branch in v:
                return ref_key(v[branch])
    return None


def ref_walk(path: Path, root: Any, here: Any) -> list[Any]:
    """Nodes at the end of a path; a list value stays a list (a ``list`` node)."""
    if path.base is not None:
        nodes = [
            lst[path.base.index]
            for lst in ref_walk(path.base.path, root, here)
            if path.base.index < len(lst)
        ]
        names = path.names
    elif path.it or (here is not root and path.names[0] != "Beskedkuvert"):
        nodes, names = [here], path.names
    else:
        nodes, names = [root], path.names
    for name in names:
        nxt = []
        for n in nodes:
            for m in n if isinstance(n, list) else [n]:
                if isinstance(m, dict) and name in m:
                    nxt.append(m[name])
        nodes = nxt
    return nodes


def ref_values(path: Path, root: Any, here: Any) -> list[str]:
    out = []
    for n in ref_walk(path, root, here):
        for m in n if isinstance(n, list) else [n]:
            k = ref_key(m)
            if k is not None:
                out.append(k)
    return out


def ref_eval(node: Node, root: Any, here: Any, lists: dict[str, set[str]]) -> bool:
    if isinstance(node, Compare):
        found = ref_key(node.value) in ref_values(node.path, root, here)
        return found if node.op == "=" else not found
    if isinstance(node, InValues):
        wanted = {ref_key(v) for v in node.values}
        found = any(v in wanted for v in ref_values(node.path, root, here))
        return found != node.negated
    if isinstance(node, InValueList):
        found = any(v in lists.get(node.name, set()) for v in ref_values(node.path, root, here))
        return found != node.negated
    if isinstance(node, Not):
        return not ref_eval(node.operand, root, here, lists)
    if isinstance(node, And):
        return all(ref_eval(o, root, here, lists) for o in node.operands)
    if isinstance(node, Or):
        return any(ref_eval(o, root, here, lists) for o in node.operands)
    elements = [e for n in ref_walk(node.path, root, here) for e in n]
    return any(ref_eval(node.condition, root, e, lists) for e in elements)


@given(expressions)
@settings(max_examples=200)
def test_print_then_parse_gives_the_same_tree(tree: Node) -> None:
    text = unparse(tree)
    assert parse(text) == tree
    assert unparse(parse(text)) == text


@given(
    expressions,
    st.lists(beskeder(), min_size=1, max_size=3),
    st.dictionaries(st.sampled_from(LIST_NAMES), st.sets(values, max_size=4)),
)
@settings(max_examples=200, deadline=None)
def test_compiled_evaluation_agrees_with_reference(
    tree: Node, envelopes: list[Haendelsesbesked], contents: dict[str, set[str]]
) -> None:
    lists = InMemoryValueLists()
    for name, vals in contents.items():
        lists.create("me", name, vals)
        lists.create("other", name, [])
    keyed = {name: {ref_key(v) or "" for v in vals} for name, vals in contents.items()}
    expr = compile_expression(unparse(tree))
    assert isinstance(expr, Expression)
    for b in envelopes:
        doc = to_builtins(b)
        want = ref_eval(tree, doc, doc, keyed)
        assert expr.evaluate(b, lists, "me") == want, (unparse(tree), doc)
        # probes are necessary conditions (if it matches, some atom holds), exact ones sufficient
        for probe in expr.probes:
            holds = any(
                (isinstance(a, EqAtom) and a.value in path_extractor(a.path)(b))
                or (
                    isinstance(a, ListAtom)
                    and any(lists.contains("me", a.name, v) for v in path_extractor(a.path)(b))
                )
                for a in probe.atoms
            )
            assert holds if want else not (probe.exact and holds), (unparse(tree), probe)
