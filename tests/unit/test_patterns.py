"""Unit tests for routing.patterns (no Django, no database).

Run: .venv/bin/python -m pytest -p no:django -p no:cacheprovider tests/unit/test_patterns.py -q
"""

from __future__ import annotations

import enum
import json
import operator
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routing.patterns import (
    MAX_PATTERN_CHARS,
    MAX_PATTERN_DEPTH,
    Matcher,
    PatternError,
    compile_pattern,
    parse_pattern,
)

CONFORMANCE = Path(__file__).resolve().parents[2].parent / "shared/conformance/eventbridge_patterns.jsonl"


def _load_cases() -> list[dict[str, Any]]:
    if not CONFORMANCE.exists():
        return []
    with CONFORMANCE.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


CASES = _load_cases()


def match(pattern: Any, event: dict[str, Any]) -> bool:
    return compile_pattern(pattern).matches(event)


def error_of(pattern: Any) -> str:
    with pytest.raises(PatternError) as info:
        compile_pattern(pattern)
    return str(info.value)


# --------------------------------------------------------------------------------------------------- conformance


def test_conformance_file_is_present() -> None:
    assert CONFORMANCE.exists(), f"missing {CONFORMANCE}"
    assert len(CASES) >= 130
    assert {c["expect"] for c in CASES} == {"match", "no_match", "invalid"}


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_conformance(case: dict[str, Any]) -> None:
    if case["expect"] == "invalid":
        with pytest.raises(PatternError):
            compile_pattern(case["pattern"])
        return
    matcher = compile_pattern(case["pattern"])
    assert matcher.matches(case["event"]) is (case["expect"] == "match")
    # The JSON text form must behave exactly like the dict form.
    assert compile_pattern(json.dumps(case["pattern"])).matches(case["event"]) is (case["expect"] == "match")


# --------------------------------------------------------------------------------------------------- exact values


def test_exact_strings_are_character_exact() -> None:
    m = compile_pattern({"s": ["Hello", ""]})
    assert m.matches({"s": "Hello"})
    assert m.matches({"s": ""})
    assert not m.matches({"s": "hello"})
    assert not m.matches({"s": "Hello "})
    assert not m.matches({})


def test_numbers_compare_numerically_and_never_equal_booleans_or_strings() -> None:
    m = compile_pattern({"n": [3, 0.5]})
    assert m.matches({"n": 3})
    assert m.matches({"n": 3.0})
    assert m.matches({"n": 0.5})
    assert not m.matches({"n": "3"})
    assert not m.matches({"n": 4})
    one = compile_pattern({"n": [1]})
    assert not one.matches({"n": True})  # True == 1 in Python, never in a pattern
    assert not compile_pattern({"n": [True]}).matches({"n": 1})
    assert not compile_pattern({"n": [0]}).matches({"n": False})


def test_true_false_null() -> None:
    assert match({"b": [True]}, {"b": True})
    assert not match({"b": [True]}, {"b": False})
    assert match({"b": [False]}, {"b": False})
    assert match({"x": [None]}, {"x": None})
    assert not match({"x": [None]}, {"x": "null"})
    assert not match({"x": [None]}, {})  # null is a value; a missing field is not null
    assert not match({"x": ["null"]}, {"x": None})


def test_event_arrays_match_if_any_element_matches() -> None:
    m = compile_pattern({"tags": ["b", "z"]})
    assert m.matches({"tags": ["a", "b"]})
    assert m.matches({"tags": [["nested", ["b"]]]})
    assert not m.matches({"tags": ["a", "c"]})
    assert not m.matches({"tags": []})


def test_values_of_subclassed_types_match_as_their_json_type() -> None:
    # The (str, Enum) mixin on purpose: it is what Django's TextChoices are, and its str() is the member name.
    class Color(str, enum.Enum):  # noqa: UP042
        RED = "red"

    class Shade(enum.StrEnum):
        DARK = "dark"

    class Level(enum.IntEnum):
        HIGH = 5

    assert match({"c": ["red"]}, {"c": Color.RED})
    assert match({"c": [{"prefix": "da"}]}, {"c": Shade.DARK})
    assert match({"l": [{"numeric": [">=", 4]}]}, {"l": Level.HIGH})
    assert match({"l": [5]}, {"l": Level.HIGH})


# --------------------------------------------------------------------------------------------------- prefix / suffix


def test_prefix_and_suffix() -> None:
    assert match({"t": [{"prefix": "2022-"}]}, {"t": "2022-07-13"})
    assert not match({"t": [{"prefix": "2022-"}]}, {"t": "x2022-"})
    assert match({"f": [{"suffix": ".png"}]}, {"f": "a.png"})
    assert not match({"f": [{"suffix": ".png"}]}, {"f": "a.PNG"})
    assert not match({"f": [{"prefix": "1"}]}, {"f": 12})  # prefix applies to strings only
    assert match({"f": [{"prefix": ""}]}, {"f": "anything"})


def test_prefix_and_suffix_ignoring_case() -> None:
    assert match({"s": [{"prefix": {"equals-ignore-case": "EventB"}}]}, {"s": "eventbridge"})
    assert match({"s": [{"suffix": {"equals-ignore-case": ".png"}}]}, {"s": "IMAGE.PnG"})
    assert not match({"s": [{"suffix": {"equals-ignore-case": ".png"}}]}, {"s": "image.jpg"})


@pytest.mark.parametrize(
    ("pattern", "fragment"),
    [
        ({"time": [{"prefix": 123}]}, "time: prefix expects a string"),
        ({"time": [{"prefix": ["2022"]}]}, "time: prefix expects a string, not an array"),
        ({"a": {"b": [{"suffix": None}]}}, "a.b: suffix expects a string, not null"),
        ({"f": [{"prefix": {"equals-ignore-case": 1}}]}, "f: prefix/equals-ignore-case expects a string"),
        ({"f": [{"prefix": {"wildcard": "x*"}}]}, 'f: prefix object must be {"equals-ignore-case"'),
    ],
)
def test_prefix_suffix_errors_name_the_path(pattern: dict[str, Any], fragment: str) -> None:
    assert fragment in error_of(pattern)


# --------------------------------------------------------------------------------------------------- ignore case


def test_equals_ignore_case() -> None:
    m = compile_pattern({"n": [{"equals-ignore-case": "alice"}]})
    assert m.matches({"n": "ALICE"})
    assert m.matches({"n": "Alice"})
    assert not m.matches({"n": "alicia"})
    assert not m.matches({"n": None})
    assert "n: equals-ignore-case expects a string, not an array" in error_of({"n": [{"equals-ignore-case": ["a"]}]})


# --------------------------------------------------------------------------------------------------- wildcard


@pytest.mark.parametrize(
    ("wildcard", "value", "expected"),
    [
        ("*.png", "a.png", True),
        ("*.png", ".png", True),  # `*` matches zero characters too
        ("*.png", "a.png.bak", False),
        ("dir/*/file", "dir/a/b/file", True),
        ("*Title*", "MyTitleHere", True),
        ("a*b*c", "abc", True),
        ("a*b*c", "acb", False),
        ("a*ba", "aba", True),
        ("a*aa", "aa", False),  # pieces may not overlap
        ("", "", True),
        ("", "x", False),
        ("*", "", True),
        ("no-star", "no-star", True),
        ("lit\\*eral", "lit*eral", True),  # \* is a literal star
        ("lit\\*eral", "litXeral", False),
        ("back\\\\slash*", "back\\slash!", True),  # \\ is a literal backslash
        (".*(a+)+$", ".*(a+)+$", True),  # regex syntax is plain text
        (".*(a+)+$", "aaaa", False),
    ],
)
def test_wildcard(wildcard: str, value: str, expected: bool) -> None:
    assert match({"f": [{"wildcard": wildcard}]}, {"f": value}) is expected


def test_wildcard_only_applies_to_strings() -> None:
    assert not match({"f": [{"wildcard": "*"}]}, {"f": 5})
    assert match({"f": [{"wildcard": "*"}]}, {"f": ["", 5]})


@pytest.mark.parametrize(
    ("wildcard", "fragment"),
    [
        ("a**b", "f: wildcard has consecutive wildcard characters at position 1"),
        ("*a*b*c*d*e*", "f: wildcard is too complex: 6 wildcard characters"),
        ("bad\\escape", "f: wildcard has an invalid escape character at position 3"),
        ("trailing\\", "invalid escape character"),
        (7, "f: wildcard expects a string, not a number"),
    ],
)
def test_wildcard_errors(wildcard: Any, fragment: str) -> None:
    assert fragment in error_of({"f": [{"wildcard": wildcard}]})


def test_wildcard_is_linear_not_backtracking() -> None:
    m = compile_pattern({"f": [{"wildcard": "*a*a*a*a*b"}]})
    started = time.perf_counter()
    assert not m.matches({"f": "a" * 200_000})
    assert time.perf_counter() - started < 0.5


# --------------------------------------------------------------------------------------------------- numeric


@pytest.mark.parametrize(
    ("numeric", "value", "expected"),
    [
        (["=", 3], 3.0, True),
        (["=", 3], 3.5, False),
        (["=", 301.8], 301.8, True),
        ([">", 0], 0, False),
        ([">", 0], 0.000001, True),
        ([">=", 4], 4, True),
        ([">=", 4], 3.999999, False),
        (["<", 10], 9, True),
        (["<", 10], 10, False),
        (["<=", 10], 10.0, True),
        ([">", 0, "<=", 5], 5, True),
        ([">", 0, "<=", 5], 0, False),
        ([">=", 0, "<", 5], 5, False),
        ([">=", -5, "<", -1], -3.5, True),
        ([">", 100], "300", False),  # a numeric string is not a number
        ([">", 100], None, False),
        ([">", 0], True, False),  # nor is a boolean
        ([">", 0], [-1, 7], True),
    ],
)
def test_numeric(numeric: list[Any], value: Any, expected: bool) -> None:
    assert match({"q": [{"numeric": numeric}]}, {"q": value}) is expected


def test_numeric_precision_is_eventbridges_six_decimals() -> None:
    # EventBridge compares numbers at six decimal places; differences below that do not count.
    assert not match({"q": [{"numeric": [">", 0]}]}, {"q": 1e-7})
    assert match({"q": [{"numeric": ["=", 1]}]}, {"q": 1.0000001})
    assert not match({"q": [{"numeric": ["=", 1]}]}, {"q": 1.00001})
    assert match({"q": [1]}, {"q": 1.0000001})


def test_numeric_range_limits() -> None:
    m = compile_pattern({"q": [{"numeric": [">", 0]}]})
    assert m.matches({"q": 5e9})
    assert not m.matches({"q": 5e9 + 1})  # outside EventBridge's numeric range: never matches `numeric`
    assert not m.matches({"q": 10**400})
    assert not m.matches({"q": float("nan")})
    assert not m.matches({"q": float("inf")})


@pytest.mark.parametrize(
    ("numeric", "fragment"),
    [
        (10, 'detail.q: numeric expects an array like [">", 0, "<=", 5], not a number'),
        ([], "detail.q: numeric expects an array"),
        (["!=", 5], "detail.q: numeric: unknown operator '!='"),
        ([5, ">"], "detail.q: numeric: unknown operator 5"),
        ([">"], "detail.q: numeric: operator '>' needs a number after it"),
        (["=", "5"], "detail.q: numeric: the value of '=' must be a number, not a string"),
        ([">", True], "must be a number, not a boolean"),
        (["=", 5, "<", 6], "detail.q: numeric: '=' takes exactly one number"),
        (["<", 5, ">", 0], "detail.q: numeric: '<' must come last"),
        ([">", 0, "<"], "a range has exactly four members"),
        ([">", 0, "<", 5, 6], "a range has exactly four members"),
        ([">", 0, ">", 5], "the upper bound operator must be '<' or '<='"),
        ([">", 5, "<", 1], "the lower bound must be less than the upper bound"),
        ([">=", 5, "<=", 5], "the lower bound must be less than the upper bound"),
        ([">", 1e10], "out of range; numbers must be between -5e9 and 5e9"),
        ([">", 0, "<", 10**400], "out of range"),
    ],
)
def test_numeric_errors_name_the_path(numeric: Any, fragment: str) -> None:
    assert fragment in error_of({"detail": {"q": [{"numeric": numeric}]}})


# --------------------------------------------------------------------------------------------------- cidr


@pytest.mark.parametrize(
    ("cidr", "value", "expected"),
    [
        ("10.0.0.0/24", "10.0.0.255", True),
        ("10.0.0.0/24", "10.0.1.0", False),
        ("10.0.0.0/24", "10.0.0.256", False),
        ("10.0.0.0/24", "not an ip", False),
        ("10.0.0.0/24", 167772161, False),  # an integer is not an address string
        ("10.0.0.5/24", "10.0.0.7", True),  # host bits in the pattern are ignored
        ("0.0.0.0/0", "203.0.113.9", True),
        ("192.0.2.1/32", "192.0.2.1", True),
        ("2001:db8:1234:1a00::/64", "2001:0db8:1234:1a00:0000:0000:0000:0001", True),
        ("2001:db8:1234:1a00::/64", "2001:db8:1234:1a01::1", False),
        ("2001:db8::/32", "10.0.0.1", False),
        ("10.0.0.0/8", "::ffff:10.0.0.1", False),  # IPv6 addresses never fall in IPv4 networks
    ],
)
def test_cidr(cidr: str, value: Any, expected: bool) -> None:
    assert match({"ip": [{"cidr": cidr}]}, {"ip": value}) is expected


@pytest.mark.parametrize(
    ("cidr", "fragment"),
    [
        ("bad-filter", "src.ip: cidr 'bad-filter' is malformed: exactly one '/' is required"),
        ("10.0.0.1", "exactly one '/' is required"),
        ("10.0.0.0/8/8", "exactly one '/' is required"),
        ("10.0.0.0/x", "mask bits must be an integer"),
        ("10.0.0.0/255.0.0.0", "mask bits must be an integer"),
        ("10.0.0.0/33", "is not a valid IPv4 or IPv6 network"),
        ("xx.11.xx/8", "is not a valid IPv4 or IPv6 network"),
        ("xxxx:db8::/64", "is not a valid IPv4 or IPv6 network"),
        (["10.0.0.0/8"], "src.ip: cidr expects a string"),
    ],
)
def test_cidr_errors(cidr: Any, fragment: str) -> None:
    assert fragment in error_of({"src": {"ip": [{"cidr": cidr}]}})


# --------------------------------------------------------------------------------------------------- exists


def test_exists_true_needs_a_leaf_value() -> None:
    m = compile_pattern({"d": {"s": [{"exists": True}]}})
    assert m.matches({"d": {"s": "x"}})
    assert m.matches({"d": {"s": None}})  # null is a value
    assert m.matches({"d": {"s": 0}})
    assert m.matches({"d": {"s": [1]}})
    assert not m.matches({"d": {"s": []}})  # an empty array holds no value
    assert not m.matches({"d": {"s": {"inner": 1}}})  # objects are not leaves
    assert not m.matches({"d": {}})
    assert not m.matches({"d": "s"})
    assert not m.matches({})


def test_exists_false_matches_a_missing_field() -> None:
    m = compile_pattern({"d": {"s": [{"exists": False}]}})
    assert m.matches({})
    assert m.matches({"d": {}})
    assert m.matches({"d": {"s": []}})
    assert m.matches({"d": {"s": {"inner": 1}}})
    assert not m.matches({"d": {"s": None}})
    assert not m.matches({"d": {"s": "x"}})


def test_exists_false_ors_with_other_alternatives() -> None:
    m = compile_pattern({"s": [{"anything-but": "roses"}, {"exists": False}]})
    assert m.matches({})
    assert m.matches({"s": "tulips"})
    assert not m.matches({"s": "roses"})


def test_exists_errors() -> None:
    assert "a.b: exists expects true or false, not a string" in error_of({"a": {"b": [{"exists": "true"}]}})
    assert "exists expects true or false, not null" in error_of({"a": [{"exists": None}]})


# --------------------------------------------------------------------------------------------------- anything-but


@pytest.mark.parametrize(
    ("anything_but", "value", "expected"),
    [
        ("init", "pending", True),
        ("init", "init", False),
        ("init", None, True),
        ("init", 5, True),
        ("init", ["init", "other"], True),  # an array matches if any element does
        ("init", ["init"], False),
        (["a", "b"], "c", True),
        (["a", "b"], "b", False),
        (123, 123.0, False),
        (123, "123", True),
        (123, 124, True),
        ([100, 200], 200, False),
        ([100, 200], None, True),
        ({"prefix": "init"}, "post-init", True),
        ({"prefix": "init"}, "init-x", False),
        ({"prefix": ["a", "b"]}, "bcd", False),
        ({"prefix": "init"}, 12, True),
        ({"suffix": ".txt"}, "f.txt", False),
        ({"suffix": [".txt", ".jpg"]}, "f.png", True),
        ({"equals-ignore-case": "Stopped"}, "STOPPED", False),
        ({"equals-ignore-case": ["a", "b"]}, "C", True),
        ({"equals-ignore-case": "x"}, None, True),
        ({"wildcard": "*/lib/*"}, "/usr/lib/x", False),
        ({"wildcard": ["*/lib/*", "*.so"]}, "/usr/bin/x", True),
        ({"wildcard": "*"}, 5, True),
    ],
)
def test_anything_but(anything_but: Any, value: Any, expected: bool) -> None:
    assert match({"s": [{"anything-but": anything_but}]}, {"s": value}) is expected


def test_anything_but_never_matches_a_missing_field() -> None:
    for operand in ("x", [1, 2], {"prefix": "p"}, {"suffix": "s"}, {"equals-ignore-case": "e"}, {"wildcard": "w*"}):
        m = compile_pattern({"d": {"s": [{"anything-but": operand}]}})
        assert not m.matches({"d": {}}), operand
        assert not m.matches({"d": {"s": []}}), operand
        assert not m.matches({}), operand


@pytest.mark.parametrize(
    ("operand", "fragment"),
    [
        (None, "d.s: anything-but expects a string, a number, a list of them"),
        (True, "anything-but expects a string, a number"),
        ([], "d.s: anything-but list must not be empty"),
        (["a", None], "only strings or only numbers"),
        (["a", 1], "all strings or all numbers, not a mix"),
        ([1e10], "out of range"),
        ({}, "d.s: anything-but object must have exactly one key"),
        ({"prefix": "a", "suffix": "b"}, "exactly one key"),
        ({"numeric": [">", 1]}, "d.s: unsupported anything-but operator 'numeric'"),
        ({"prefix": ""}, "d.s: anything-but/prefix value must not be empty"),
        ({"suffix": ["ok", ""]}, "anything-but/suffix value must not be empty"),
        ({"prefix": 1}, "anything-but/prefix expects strings, not a number"),
        ({"prefix": []}, "anything-but/prefix list must not be empty"),
        ({"prefix": {"equals-ignore-case": "x"}}, "anything-but/prefix takes strings only, not a nested operator"),
        ({"equals-ignore-case": 1}, "anything-but/equals-ignore-case expects strings, not a number"),
        ({"wildcard": "a**"}, "consecutive wildcard characters"),
        ({"wildcard": 5}, "anything-but/wildcard expects strings"),
    ],
)
def test_anything_but_errors(operand: Any, fragment: str) -> None:
    assert fragment in error_of({"d": {"s": [{"anything-but": operand}]}})


# --------------------------------------------------------------------------------------------------- structure


def test_fields_and_alternatives() -> None:
    m = compile_pattern({"a": ["x", "y"], "b": [{"prefix": "p"}, 5]})
    assert m.matches({"a": "y", "b": 5})
    assert m.matches({"a": "x", "b": "pq"})
    assert not m.matches({"a": "x", "b": 6})
    assert not m.matches({"a": "z", "b": 5})
    assert not m.matches({"b": 5})


def test_nested_objects_and_dotted_paths_are_the_same_field() -> None:
    nested = compile_pattern({"detail": {"state": {"status": ["running"]}}})
    dotted = compile_pattern({"detail": {"state.status": ["running"]}})
    flat = compile_pattern({"detail.state.status": ["running"]})
    for event in (
        {"detail": {"state": {"status": "running"}}},
        {"detail": {"state.status": "running"}},
        {"detail.state": {"status": "running"}},
        {"detail.state.status": "running"},
        {"detail": {"state": {"status": "stopped"}, "state.status": "running"}},  # any route may match
    ):
        assert nested.matches(event), event
        assert dotted.matches(event), event
        assert flat.matches(event), event
    assert not nested.matches({"detail": {"state": "running"}})
    assert not nested.matches({"detail": '{"state": {"status": "running"}}'})


def test_arrays_of_objects_are_descended() -> None:
    m = compile_pattern({"items": {"id": [{"exists": True}], "kind": ["book"]}})
    assert m.matches({"items": [{"x": 1}, {"id": 7, "kind": "book"}]})
    assert m.matches({"items": [[{"id": 7}], {"kind": "book"}]})
    assert not m.matches({"items": [{"x": 1}, {"kind": "book"}]})


def test_keys_are_case_sensitive() -> None:
    assert not match({"MY_KEY": ["v"]}, {"my_key": "v"})


def test_or_at_top_level_and_nested() -> None:
    top = compile_pattern({"source": ["s"], "$or": [{"a": [1]}, {"b": [{"numeric": [">", 5]}]}]})
    assert top.matches({"source": "s", "a": 1})
    assert top.matches({"source": "s", "b": 6})
    assert not top.matches({"source": "s", "b": 5})
    assert not top.matches({"source": "x", "a": 1})
    nested = compile_pattern({"detail": {"$or": [{"c": [{"numeric": [">", 0, "<=", 5]}]}, {"d": [{"exists": False}]}]}})
    assert nested.matches({"detail": {"c": 3, "d": 1}})
    assert nested.matches({"detail": {"c": 9}})
    assert not nested.matches({"detail": {"c": 9, "d": 1}})
    assert nested.matches({"c": 3, "d": 1})  # detail.d is missing, so the exists:false branch holds
    assert not compile_pattern({"detail": {"$or": [{"c": [3]}, {"d": [1]}]}}).matches({"c": 3, "d": 1})
    deep = compile_pattern({"$or": [{"a": ["1"]}, {"$or": [{"b": ["2"]}, {"c": ["3"]}]}]})
    assert deep.matches({"c": "3"})
    assert not deep.matches({"d": "4"})


@pytest.mark.parametrize(
    ("pattern", "fragment"),
    [
        ({"$or": [{"a": [1]}]}, "$or: $or needs at least 2 objects"),
        ({"detail": {"$or": {"a": [1]}}}, "detail.$or: $or expects an array of at least 2 objects, not an object"),
        ({"$or": [{"a": [1]}, "b"]}, "$or[1]: $or may contain only objects, not a string"),
        ({"$or": [{"a": [1]}, {}]}, "$or[1]: empty objects are not allowed"),
        ({"$or": [{"a": [1]}, {"b": {"c": []}}]}, "$or[1].b.c: empty arrays are not allowed"),
        ({"$or": [{"a": [1]}, {"prefix": ["x"]}]}, "$or[1].prefix: 'prefix' is a reserved operator name"),
        ({"$or": [{"a": [1]}, {"d": {"numeric": [1]}}]}, "$or[1].d.numeric: 'numeric' is a reserved operator name"),
    ],
)
def test_or_errors(pattern: dict[str, Any], fragment: str) -> None:
    assert fragment in error_of(pattern)


def test_operator_names_are_plain_fields_outside_or() -> None:
    assert match({"prefix": ["x"]}, {"prefix": "x"})


@pytest.mark.parametrize(
    ("pattern", "fragment"),
    [
        ({"resources": []}, "resources: empty arrays are not allowed"),
        ({"detail": {}}, "detail: empty objects are not allowed"),
        ({"int": 42}, "int: must be an object or an array of alternatives, not a number"),
        ({"s": "v"}, "s: must be an object or an array of alternatives, not a string"),
        ({"s": None}, "must be an object or an array of alternatives, not null"),
        ({"a": {"b": [["x"]]}}, "a.b: a match value must be a string, number, true, false, null or operator object"),
        ({"a": [{}]}, "a: a match expression must have exactly one operator key; this one is empty"),
        ({"a": [{"prefix": "x", "suffix": "y"}]}, "a: a match expression must have exactly one operator key"),
        ({"detail": {"equal": [{"NUMERIC": ["=", 5]}]}}, "detail.equal: unknown operator 'NUMERIC'"),
        ({"a": [{"exactly": "x"}]}, "a: unknown operator 'exactly'"),
        ({"a": [{"regex": ".*"}]}, "unknown operator 'regex'"),
    ],
)
def test_structure_errors_name_the_path(pattern: dict[str, Any], fragment: str) -> None:
    assert fragment in error_of(pattern)


def test_top_level_empty_object_matches_everything() -> None:
    m = compile_pattern({})
    assert m.matches({})
    assert m.matches({"anything": 1})
    assert compile_pattern("{}").matches({"x": None})


def test_pattern_error_is_a_value_error_with_parts() -> None:
    with pytest.raises(ValueError) as info:
        compile_pattern({"a": {"b": [{"numeric": "x"}]}})
    err = info.value
    assert isinstance(err, PatternError)
    assert err.where == "a.b"
    assert err.problem.startswith("numeric expects")


# --------------------------------------------------------------------------------------------------- parsing


def test_parse_pattern_text_and_dict() -> None:
    assert parse_pattern('{"a": ["x"]}') == {"a": ["x"]}
    source = {"a": ("x", "y")}
    parsed = parse_pattern(source)
    assert parsed == {"a": ["x", "y"]}
    original = {"a": ["x"]}
    m = compile_pattern(original)
    original["a"].append("y")  # compiling copied the pattern: later edits do not leak in
    assert not m.matches({"a": "y"})


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("[1, 2]", "(root): pattern must be a JSON object, not an array"),
        ('"text"', "pattern must be a JSON object, not a string"),
        ("null", "pattern must be a JSON object, not null"),
        ("{not json", "(root): pattern is not valid JSON"),
        ('{"a": [NaN]}', "NaN is not a JSON value"),
        ('{"a": [Infinity]}', "Infinity is not a JSON value"),
        ('{"a": [-Infinity]}', "-Infinity is not a JSON value"),
        ('{"a": [1e400]}', "out of range"),
        (b'{"a": ["x"]}', "pattern must be a JSON object or its text, not bytes"),
        ({"a": [float("nan")]}, "not a JSON number"),
        ({"a": [float("inf")]}, "not a JSON number"),
        ({"a": [{1, 2}]}, "set is not a JSON value"),
        ({"a": [object()]}, "object is not a JSON value"),
        ({1: ["x"]}, "object keys must be strings, not int"),
    ],
)
def test_parse_errors(source: Any, fragment: str) -> None:
    assert fragment in error_of(source)


# --------------------------------------------------------------------------------------------------- escape corpus


@pytest.mark.parametrize(
    "text",
    ["__class__", "__subclasses__", "__import__('os')", "__import__('os').system('id')", "{{7*7}}", "${jndi:x}"],
)
def test_dunder_and_code_like_strings_are_plain_data(text: str) -> None:
    for pattern in (
        {text: [text]},
        {"f": [{"prefix": text}]},
        {"f": [{"suffix": text}]},
        {"f": [{"equals-ignore-case": text}]},
        {"f": [{"anything-but": text}]},
        {"nested": {text: {"__globals__": [text]}}},
    ):
        compile_pattern(pattern)
    assert match({text: [text]}, {text: text})
    assert not match({text: [text]}, {text: text + "x"})
    assert not match({text: [{"exists": True}]}, {})  # no attribute of the event is ever looked up
    assert match({"f": [{"anything-but": text}]}, {"f": "other"})
    assert not match({"f": [{"anything-but": text}]}, {"f": text})


def test_dunder_field_names_do_not_reach_python_attributes() -> None:
    m = compile_pattern({"__class__": [{"exists": True}], "__dict__": [{"exists": True}]})
    assert not m.matches({})
    assert not m.matches({"x": 1})
    assert m.matches({"__class__": "dict", "__dict__": {"a": 1} and "v"})
    unknown_operator = error_of({"f": [{"__class__": "x"}]})
    assert "unknown operator '__class__'" in unknown_operator


def test_huge_numbers() -> None:
    big = 10**400
    assert match('{"x": [1e308]}', {"x": 1e308})
    assert not match('{"x": [1e308]}', {"x": 1e307})
    text = '{"x": [' + str(big) + "]}"
    m = compile_pattern(text)  # an exact value beyond double range still compares exactly
    assert m.matches({"x": big})
    assert not m.matches({"x": big + 1})
    assert not m.matches({"x": 1e308})
    assert "out of range" in error_of('{"x": [{"numeric": [">", 1e308]}]}')
    assert "out of range" in error_of('{"x": [{"numeric": ["<", ' + str(big) + "]}]}")
    assert "out of range" in error_of('{"x": [{"anything-but": ' + str(big) + "}]}")
    assert "out of range" in error_of('{"x": [1e999]}')
    assert match({"x": [{"anything-but": 5}]}, {"x": big})


def _nested(levels: int) -> dict[str, Any]:
    pattern: dict[str, Any] = {"leaf": ["x"]}
    for i in range(levels - 1):
        pattern = {f"l{i}": pattern}
    return pattern


def test_depth_limit() -> None:
    ok = _nested(MAX_PATTERN_DEPTH)
    compile_pattern(ok)
    compile_pattern(json.dumps(ok))
    assert "nested too deeply" in error_of(_nested(MAX_PATTERN_DEPTH + 1))
    assert "nested too deeply" in error_of(_nested(50))
    assert "nested too deeply" in error_of(json.dumps(_nested(50)))
    # Dotted keys nest like objects.
    compile_pattern({".".join(f"k{i}" for i in range(MAX_PATTERN_DEPTH)): ["x"]})
    assert "nested too deeply" in error_of({".".join(f"k{i}" for i in range(MAX_PATTERN_DEPTH + 1)): ["x"]})
    assert "nested too deeply" in error_of({"a": {"b" + ".c" * 20: {"d": ["x"]}}})


def test_very_deep_json_text_is_an_error_not_a_crash() -> None:
    assert "(root)" in error_of('{"a": ' + "[" * 2000 + "]" * 2000 + "}")
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(5000):
        node["a"] = {}
        node = node["a"]
    assert "(root)" in error_of(deep)


def test_cyclic_dict_is_rejected() -> None:
    cyclic: dict[str, Any] = {"a": ["x"]}
    cyclic["b"] = cyclic
    assert "(root)" in error_of(cyclic)


def test_size_limit() -> None:
    filler = "x" * (MAX_PATTERN_CHARS - len('{"a":[""]}'))
    exact = '{"a":["' + filler + '"]}'
    assert len(exact) == MAX_PATTERN_CHARS
    compile_pattern(exact)
    assert "the limit is 4096" in error_of('{"a":["' + filler + 'y"]}')
    assert "the limit is 4096" in error_of({"a": ["x" * MAX_PATTERN_CHARS]})
    assert "characters long" in error_of("{" + " " * MAX_PATTERN_CHARS + "}")


def test_deep_event_arrays_do_not_recurse() -> None:
    value: Any = "x"
    for _ in range(20_000):
        value = [value]
    assert match({"a": ["x"]}, {"a": value})
    nested_objects: Any = {"b": "x"}
    for _ in range(20_000):
        nested_objects = [nested_objects]
    assert match({"a": {"b": ["x"]}}, {"a": nested_objects})


def test_matcher_is_stateless_across_threads() -> None:
    m = compile_pattern({"q": [{"numeric": [">=", 4]}], "t": [{"prefix": "a"}]})
    failures: list[int] = []

    def worker(offset: int) -> None:
        for i in range(2000):
            q = (i + offset) % 8
            if m.matches({"q": q, "t": "abc"}) is not (q >= 4):
                failures.append(q)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_matcher_repr_and_subclassing() -> None:
    assert "quality" in repr(compile_pattern({"quality": [1]}))

    class Always(Matcher):
        def __init__(self) -> None:
            pass

        def matches(self, event: Any) -> bool:
            return True

    assert Always().matches({})
    assert repr(Always()) == "Always()"


# --------------------------------------------------------------------------------------------------- properties

# A deliberately naive reference for a subset of the language over flat events: exact values, prefix, numeric,
# exists and anything-but; numbers are integers and eighths, where EventBridge's six-decimal rounding is exact.

KEYS = ("a", "b", "c", "d")
numbers = st.one_of(st.integers(-50, 50), st.integers(-400, 400).map(lambda n: n / 8))
strings = st.text(alphabet="ab", max_size=3)
scalars = st.one_of(strings, numbers, st.booleans(), st.none())
event_values = st.one_of(scalars, st.lists(scalars, max_size=3))
events = st.dictionaries(st.sampled_from(KEYS), event_values, max_size=4)


def _numeric_alternative() -> st.SearchStrategy[dict[str, Any]]:
    single = st.tuples(st.sampled_from(["=", "<", "<=", ">", ">="]), numbers).map(lambda t: list(t))
    ranged = st.tuples(st.sampled_from([">", ">="]), numbers, st.sampled_from(["<", "<="]), numbers).filter(
        lambda t: t[1] < t[3]
    )
    return st.one_of(single, ranged.map(lambda t: list(t))).map(lambda ops: {"numeric": ops})


anything_but = st.one_of(
    strings,
    numbers,
    st.lists(strings, min_size=1, max_size=3),
    st.lists(numbers, min_size=1, max_size=3),
    st.builds(lambda p: {"prefix": p}, st.text(alphabet="ab", min_size=1, max_size=2)),
).map(lambda operand: {"anything-but": operand})
alternatives = st.one_of(
    scalars,
    st.builds(lambda p: {"prefix": p}, strings),
    _numeric_alternative(),
    st.builds(lambda e: {"exists": e}, st.booleans()),
    anything_but,
)
patterns = st.dictionaries(st.sampled_from(KEYS), st.lists(alternatives, min_size=1, max_size=3), min_size=1)


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _same(x: Any, v: Any) -> bool:
    if x is None or isinstance(x, bool):
        return v is x
    if isinstance(x, str):
        return isinstance(v, str) and v == x
    return _is_num(v) and v == x


_COMPARE = {"=": operator.eq, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def _ref_numeric(ops: list[Any], v: Any) -> bool:
    if not _is_num(v):
        return False
    return all(_COMPARE[ops[i]](v, ops[i + 1]) for i in range(0, len(ops), 2))


def _ref_alternative(alt: Any, v: Any) -> bool:
    if not isinstance(alt, dict):
        return _same(alt, v)
    ((op, arg),) = alt.items()
    if op == "prefix":
        return isinstance(v, str) and v.startswith(arg)
    if op == "numeric":
        return _ref_numeric(arg, v)
    assert op == "anything-but"
    if isinstance(arg, dict):
        return not (isinstance(v, str) and v.startswith(arg["prefix"]))
    excluded = arg if isinstance(arg, list) else [arg]
    return not any(_same(x, v) for x in excluded)


def reference_match(pattern: dict[str, list[Any]], event: dict[str, Any]) -> bool:
    for key, alts in pattern.items():
        raw = event.get(key)
        values = raw if isinstance(raw, list) else [raw]
        present = key in event and values != []
        ok = False
        for alt in alts:
            if isinstance(alt, dict) and "exists" in alt:
                ok = ok or alt["exists"] is present
            elif present:
                ok = ok or any(_ref_alternative(alt, v) for v in values)
        if not ok:
            return False
    return True


@settings(max_examples=400, deadline=None)
@given(pattern=patterns, event=events)
def test_matches_reference_implementation(pattern: dict[str, list[Any]], event: dict[str, Any]) -> None:
    assert compile_pattern(pattern).matches(event) is reference_match(pattern, event)


@settings(max_examples=200, deadline=None)
@given(pattern=patterns, events_=st.lists(events, min_size=1, max_size=4))
def test_text_and_dict_forms_agree(pattern: dict[str, list[Any]], events_: list[dict[str, Any]]) -> None:
    from_dict = compile_pattern(pattern)
    from_text = compile_pattern(json.dumps(pattern))
    for event in events_:
        assert from_dict.matches(event) is from_text.matches(event)


@settings(max_examples=200, deadline=None)
@given(alts=st.lists(alternatives, min_size=1, max_size=3), value=event_values, dotted_event=st.booleans())
def test_nested_and_dotted_patterns_agree(alts: list[Any], value: Any, dotted_event: bool) -> None:
    event = {"outer.inner": value} if dotted_event else {"outer": {"inner": value}}
    expected = reference_match({"k": alts}, {"k": value})
    assert compile_pattern({"outer": {"inner": alts}}).matches(event) is expected
    assert compile_pattern({"outer.inner": alts}).matches(event) is expected


@settings(max_examples=200, deadline=None)
@given(a=patterns, b=patterns, event=events)
def test_or_is_the_disjunction_of_its_branches(a: dict[str, Any], b: dict[str, Any], event: dict[str, Any]) -> None:
    combined = compile_pattern({"$or": [a, b]})
    assert combined.matches(event) is (reference_match(a, event) or reference_match(b, event))
