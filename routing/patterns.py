"""AWS EventBridge event patterns (content filtering): validation and a compiled matcher.

A pattern is compiled once into a tree of small objects; matching an event walks that tree and never evaluates
anything taken from the pattern or the event (no eval/exec/getattr/regex built from user text).

Semantics follow EventBridge (and Event Ruler, the engine behind it):

* Fields AND together; the alternatives in a field's array OR; `$or` (two or more sub-patterns) at any level.
* Paths are dot-joined: `{"a": {"b": [..]}}`, `{"a.b": [..]}` and an event key `"a.b"` all name the same field.
* Only leaf values (not objects) are matched; an array in the event matches if any element does, and arrays of
  objects are descended into. An empty array holds no value, so the field counts as missing.
* Numbers compare as EventBridge does: as doubles in [-5e9, 5e9] rounded down to six decimal places (so
  3 == 3.0). `numeric` never matches a number outside that range; exact values outside it compare as-is.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "MAX_JSON_NESTING",
    "MAX_PATTERN_CHARS",
    "MAX_PATTERN_DEPTH",
    "Matcher",
    "PatternError",
    "compile_pattern",
    "json_depth",
    "parse_pattern",
    "text_depth",
]

MAX_PATTERN_CHARS: Final = 4096
# Nesting of objects in the pattern; dotted keys count as nesting ("a.b" is two levels), as do `$or` branches.
MAX_PATTERN_DEPTH: Final = 10
# Nesting of JSON (objects and arrays) the rule form, the rule tester and POST /api/routing/test accept at all,
# for patterns and sample events. A valid pattern nests far less (MAX_PATTERN_DEPTH objects, plus the arrays of
# `$or` and of an operator). Deeper JSON is refused, naming this limit, before anything recursive (json.loads,
# the matcher, the page's pretty-printing) walks it.
MAX_JSON_NESTING: Final = 64

# EventBridge caps the `*` characters of one wildcard pattern (six are refused, see the conformance cases).
MAX_WILDCARDS: Final = 5

_NUMBER_LIMIT: Final = 5e9
_OR: Final = "$or"
_MISSING: Final = object()
# Field names Event Ruler refuses inside `$or`, so an operator cannot be mistaken for a field there.
_RESERVED_IN_OR: Final = frozenset(
    {
        "exactly",
        "equals-ignore-case",
        "prefix",
        "suffix",
        "anything-but",
        "exists",
        "wildcard",
        "numeric",
        "cidr",
        "=",
        "<",
        "<=",
        ">",
        ">=",
        "regex",
        "not-wildcard",
        "not-equals-ignore-case",
        "date-after",
        "date-on-or-after",
        "date-before",
        "date-on-or-before",
        "in-date-range",
        "ip-address-in-range",
        "ip-address-not-in-range",
    }
)
_NUMERIC_OPERATORS: Final = frozenset({"=", "<", "<=", ">", ">="})
_ANYTHING_BUT_OPERATORS: Final = ("prefix", "suffix", "equals-ignore-case", "wildcard")
_NODE_BUDGET: Final = 20_000  # a dict pattern bigger than this cannot fit MAX_PATTERN_CHARS (also stops cycles)

# Result of walking a field: nothing there, values there but none matched, a value matched.
_ABSENT, _SEEN, _MATCHED = 0, 1, 2


class PatternError(ValueError):
    """An invalid pattern; the message names the problem and the JSON path in the pattern."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


# --------------------------------------------------------------------------------------------------- parsing


def reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to inf, which JSON cannot express
        raise ValueError(f"number {text} is out of range")
    return value


def text_depth(text: str, limit: int = MAX_JSON_NESTING) -> int:
    """How deep JSON text nests (`1` 0, `[1]` 1), from its brackets outside strings, without parsing it.

    Counting stops at the first level past `limit`. Malformed text is measured as far as it goes.
    """
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "[" or char == "{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    break
        elif char == "]" or char == "}":
            depth -= 1
    return deepest


def json_depth(value: Any, limit: int = MAX_JSON_NESTING) -> int:
    """How deep a parsed JSON value nests (a scalar 0, `{}` or `[]` 1), without recursion.

    Counting stops at the first level past `limit` (which also ends a cycle).
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Iterable[Any] = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                break
        stack.extend((child, depth) for child in children)
    return deepest


def parse_pattern(source: str | dict[str, Any]) -> dict[str, Any]:
    """Parse (str) or check (dict) a pattern's JSON form: size, plain JSON values only, an object at the top.

    Returns a fresh plain-JSON dict (a dict argument is copied, so later changes to it do not leak in).
    """
    if isinstance(source, str):
        text = source
        if len(text) > MAX_PATTERN_CHARS:
            raise PatternError("(root)", f"pattern is {len(text)} characters long; the limit is {MAX_PATTERN_CHARS}")
        if text_depth(text) > MAX_JSON_NESTING:
            raise PatternError("(root)", f"pattern is nested deeper than {MAX_JSON_NESTING} levels")
    elif isinstance(source, dict):
        _check_plain_json(source)
        try:
            text = json.dumps(source, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except (ValueError, TypeError, RecursionError) as exc:
            raise PatternError("(root)", f"pattern is not plain JSON: {exc}") from None
        if len(text) > MAX_PATTERN_CHARS:
            raise PatternError("(root)", f"pattern is {len(text)} characters long; the limit is {MAX_PATTERN_CHARS}")
    else:
        raise PatternError("(root)", f"pattern must be a JSON object or its text, not {type(source).__name__}")
    try:
        parsed = json.loads(text, parse_constant=reject_constant, parse_float=finite_float)
    except RecursionError:
        raise PatternError("(root)", "pattern is nested too deeply") from None
    except ValueError as exc:
        raise PatternError("(root)", f"pattern is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise PatternError("(root)", f"pattern must be a JSON object, not {json_type(parsed)}")
    return parsed


def _check_plain_json(root: dict[str, Any]) -> None:
    # Iterative so a deep or cyclic dict cannot exhaust the stack; the node budget ends cycles.
    if json_depth(root) > MAX_JSON_NESTING:
        raise PatternError("(root)", f"pattern is nested deeper than {MAX_JSON_NESTING} levels")
    stack: list[Any] = [root]
    seen = 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > _NODE_BUDGET:
            raise PatternError("(root)", "pattern is too large (or contains a cycle)")
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str):
                    raise PatternError("(root)", f"object keys must be strings, not {type(key).__name__}")
                stack.append(value)
        elif isinstance(node, list | tuple):
            stack.extend(node)
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise PatternError("(root)", f"{node} is not a JSON number")
        elif node is not None and not isinstance(node, str | int):
            raise PatternError("(root)", f"{type(node).__name__} is not a JSON value")


def json_type(value: Any) -> str:
    """How a JSON value is named in error messages: 'a string', 'an array', ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# --------------------------------------------------------------------------------------------------- numbers


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number_key(value: float) -> int | None:
    """EventBridge's comparable form of a number (Event Ruler's ComparableNumber), None outside +-5e9.

    The same double arithmetic as Ruler, so ties and six-decimal rounding land where EventBridge puts them.
    """
    if -_NUMBER_LIMIT <= value <= _NUMBER_LIMIT:
        return int(1e6 * (_NUMBER_LIMIT + value))
    return None


def _operand_key(value: Any, where: str, what: str) -> int:
    if not _is_number(value):
        raise PatternError(where, f"{what} must be a number, not {json_type(value)}")
    key = _number_key(value)
    if key is None:
        raise PatternError(where, f"{what} {value!r} is out of range; numbers must be between -5e9 and 5e9")
    return key


def _ordered(value: float) -> int:
    """Doubles as integers in the same order (for bisection over every double)."""
    bits = int(struct.unpack("<q", struct.pack("<d", value))[0])
    return bits if bits >= 0 else -(bits & 0x7FFF_FFFF_FFFF_FFFF)


def _unordered(ordered: int) -> float:
    bits = ordered if ordered >= 0 else -ordered | (1 << 63)
    (value,) = struct.unpack("<d", struct.pack("<Q", bits))
    return float(value)


def _key_or_limit(value: float) -> int:
    key = _number_key(value)
    assert key is not None  # bisection stays within [-5e9, 5e9]
    return key


def _first_at_least(key: int) -> float:
    """The smallest number in range whose comparable key is >= key (inf if none).

    The key is monotone in the value, so `key(v) >= key` is exactly `v >= _first_at_least(key)`: range tests
    become one float comparison per event with EventBridge's rounding preserved.
    """
    low, high = _ordered(-_NUMBER_LIMIT), _ordered(_NUMBER_LIMIT)
    if _key_or_limit(_NUMBER_LIMIT) < key:
        return math.inf
    while low < high:
        middle = (low + high) // 2
        if _key_or_limit(_unordered(middle)) >= key:
            high = middle
        else:
            low = middle + 1
    return _unordered(low)


def _last_at_most(key: int) -> float:
    """The largest number in range whose comparable key is <= key (-inf if none)."""
    low, high = _ordered(-_NUMBER_LIMIT), _ordered(_NUMBER_LIMIT)
    if _key_or_limit(-_NUMBER_LIMIT) > key:
        return -math.inf
    while low < high:
        middle = (low + high + 1) // 2
        if _key_or_limit(_unordered(middle)) <= key:
            low = middle
        else:
            high = middle - 1
    return _unordered(low)


# --------------------------------------------------------------------------------------------------- wildcard


class _Wildcard:
    """A `*` glob split once into literal pieces; matched without backtracking or regular expressions."""

    __slots__ = ("exact", "first", "last", "middle", "min_len")

    def __init__(self, pieces: list[str]) -> None:
        self.exact: str | None = pieces[0] if len(pieces) == 1 else None
        self.first = pieces[0]
        self.last = pieces[-1]
        self.middle = tuple(p for p in pieces[1:-1] if p)
        self.min_len = sum(len(p) for p in pieces)

    def match(self, text: str) -> bool:
        if self.exact is not None:
            return text == self.exact
        if len(text) < self.min_len or not text.startswith(self.first) or not text.endswith(self.last):
            return False
        pos = len(self.first)
        end = len(text) - len(self.last)
        # Leftmost placement of each piece is optimal when `*` is the only metacharacter.
        for piece in self.middle:
            found = text.find(piece, pos, end)
            if found < 0:
                return False
            pos = found + len(piece)
        return True


def _compile_wildcard(value: Any, where: str) -> _Wildcard:
    if not isinstance(value, str):
        raise PatternError(where, f"wildcard expects a string, not {json_type(value)}")
    pieces: list[str] = []
    current: list[str] = []
    stars = 0
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if ch == "*":
            if i + 1 < n and value[i + 1] == "*":
                raise PatternError(where, f"wildcard has consecutive wildcard characters at position {i}")
            stars += 1
            pieces.append("".join(current))
            current = []
        elif ch == "\\":
            # As in EventBridge: only `\*` (a literal star) and `\\` (a literal backslash) are escapes.
            if i + 1 < n and value[i + 1] in "*\\":
                current.append(value[i + 1])
                i += 1
            else:
                raise PatternError(where, f"wildcard has an invalid escape character at position {i}")
        else:
            current.append(ch)
        i += 1
    pieces.append("".join(current))
    if stars > MAX_WILDCARDS:
        raise PatternError(
            where, f"wildcard is too complex: {stars} wildcard characters, at most {MAX_WILDCARDS} are allowed"
        )
    return _Wildcard(pieces)


# --------------------------------------------------------------------------------------------------- cidr


def _compile_cidr(value: Any, where: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise PatternError(where, f'cidr expects a string such as "10.0.0.0/24", not {json_type(value)}')
    address, slash, bits = value.partition("/")
    if not slash or "/" in bits:
        raise PatternError(where, f"cidr {value!r} is malformed: exactly one '/' is required")
    if not bits.isascii() or not bits.isdigit():
        raise PatternError(where, f"cidr {value!r} is malformed: mask bits must be an integer")
    try:
        return ipaddress.ip_network(f"{address}/{int(bits)}", strict=False)
    except ValueError:
        raise PatternError(where, f"cidr {value!r} is not a valid IPv4 or IPv6 network") from None


class _CidrSet:
    __slots__ = ("v4", "v6")

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        v4: list[tuple[int, int]] = []
        v6: list[tuple[int, int]] = []
        for net in networks:
            (v4 if net.version == 4 else v6).append((int(net.network_address), int(net.netmask)))
        self.v4 = tuple(v4)
        self.v6 = tuple(v6)

    def contains(self, text: str) -> bool:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            return False
        number = int(address)
        return any(number & mask == network for network, mask in (self.v4 if address.version == 4 else self.v6))


# --------------------------------------------------------------------------------------------------- leaf tests

_Predicate = Callable[[Any], bool]


def _normalize(value: Any) -> Any:
    """Map subclasses (str enums, IntEnum, ...) onto the plain JSON type they stand for; others are opaque."""
    if isinstance(value, str):
        return str.__str__(value)  # the text itself; str() of a str-based Enum gives its name
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


class _Leaf:
    """The alternatives of one field (its array in the pattern), ORed, as a single test of one event value."""

    __slots__ = (
        "absent_ok",
        "any_value",
        "constants",
        "negations",
        "number_keys",
        "number_raw",
        "ranges",
        "string_tests",
        "strings",
    )

    def __init__(self) -> None:
        self.strings: frozenset[str] = frozenset()
        self.constants: frozenset[bool | None] = frozenset()  # true / false / null
        self.number_keys: frozenset[int] = frozenset()
        self.number_raw: frozenset[int | float] = frozenset()  # exact numbers outside +-5e9
        self.ranges: tuple[tuple[float, float], ...] = ()  # inclusive bounds (numeric)
        self.string_tests: tuple[Callable[[str], bool], ...] = ()
        self.negations: tuple[_Predicate, ...] = ()  # anything-but, which can match any type
        self.any_value = False  # exists: true
        self.absent_ok = False  # exists: false

    def test(self, value: Any) -> bool:
        kind = type(value)
        if kind is str:
            if value in self.strings:
                return True
            for string_test in self.string_tests:
                if string_test(value):
                    return True
        elif kind is int or kind is float:
            for low, high in self.ranges:
                if low <= value <= high:
                    return True
            if self.number_keys and -5e9 <= value <= 5e9:
                if int(1e6 * (5e9 + value)) in self.number_keys:  # _number_key, inlined on the hot path
                    return True
            elif value in self.number_raw:
                return True
        elif value is None or kind is bool:
            if value in self.constants:
                return True
        else:
            plain = _normalize(value)
            if type(plain) is not kind:
                return self.test(plain)
        # A plain loop, not any(): no generator per event on the hot path.
        for negation in self.negations:  # noqa: SIM110
            if negation(value):
                return True
        return False


def _string_arg(operator: str, value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise PatternError(where, f"{operator} expects a string, not {json_type(value)}")
    return value


def _string_or_ignore_case(operator: str, value: Any, where: str) -> tuple[str, bool]:
    """`prefix`/`suffix` take a string or {"equals-ignore-case": string}; returns (text, ignore_case)."""
    if isinstance(value, str):
        return value, False
    if isinstance(value, dict):
        if len(value) != 1 or "equals-ignore-case" not in value:
            raise PatternError(where, f'{operator} object must be {{"equals-ignore-case": "<string>"}}')
        inner = value["equals-ignore-case"]
        if not isinstance(inner, str):
            raise PatternError(where, f"{operator}/equals-ignore-case expects a string, not {json_type(inner)}")
        return inner, True
    raise PatternError(where, f"{operator} expects a string, not {json_type(value)}")


def _string_list(operator: str, value: Any, where: str, *, allow_empty_text: bool) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise PatternError(where, f"anything-but/{operator} list must not be empty")
    for item in values:
        if isinstance(item, dict):
            raise PatternError(where, f"anything-but/{operator} takes strings only, not a nested operator")
        if not isinstance(item, str):
            raise PatternError(where, f"anything-but/{operator} expects strings, not {json_type(item)}")
        if not item and not allow_empty_text:
            raise PatternError(where, f"anything-but/{operator} value must not be empty")
    return values


def _compile_anything_but(value: Any, where: str) -> _Predicate:
    if isinstance(value, dict):
        if len(value) != 1:
            raise PatternError(where, "anything-but object must have exactly one key")
        ((operator, arg),) = value.items()
        if operator not in _ANYTHING_BUT_OPERATORS:
            raise PatternError(
                where, f"unsupported anything-but operator {operator!r}; use {', '.join(_ANYTHING_BUT_OPERATORS)}"
            )
        if operator == "prefix":
            prefixes = tuple(_string_list("prefix", arg, where, allow_empty_text=False))
            return lambda v: not (type(v) is str and v.startswith(prefixes))
        if operator == "suffix":
            suffixes = tuple(_string_list("suffix", arg, where, allow_empty_text=False))
            return lambda v: not (type(v) is str and v.endswith(suffixes))
        if operator == "equals-ignore-case":
            folded = frozenset(s.lower() for s in _string_list(operator, arg, where, allow_empty_text=True))
            return lambda v: not (type(v) is str and v.lower() in folded)
        globs = tuple(_compile_wildcard(s, where) for s in _string_list(operator, arg, where, allow_empty_text=True))
        return lambda v: not (type(v) is str and any(g.match(v) for g in globs))

    values = value if isinstance(value, list) else [value]
    if not values:
        raise PatternError(where, "anything-but list must not be empty")
    if all(isinstance(v, str) for v in values):
        excluded = frozenset(values)
        return lambda v: not (type(v) is str and v in excluded)
    if all(_is_number(v) for v in values):
        keys = frozenset(_operand_key(v, where, "anything-but value") for v in values)
        return lambda v: not ((type(v) is int or type(v) is float) and _number_key(v) in keys)
    if isinstance(value, list):
        if any(not isinstance(v, str) and not _is_number(v) for v in values):
            raise PatternError(where, "anything-but list may hold only strings or only numbers (no null, booleans)")
        raise PatternError(where, "anything-but list must be all strings or all numbers, not a mix")
    raise PatternError(
        where,
        "anything-but expects a string, a number, a list of them, or an object with "
        f"prefix/suffix/equals-ignore-case/wildcard, not {json_type(value)}",
    )


def _compile_numeric(value: Any, where: str) -> tuple[float, float]:
    """Returns inclusive (low, high) bounds on the event value, already rounded the way EventBridge rounds."""
    shape = 'numeric expects an array like [">", 0, "<=", 5]'
    if not isinstance(value, list) or not value:
        raise PatternError(where, f"{shape}, not {json_type(value)}")
    operator = value[0]
    if not isinstance(operator, str) or operator not in _NUMERIC_OPERATORS:
        raise PatternError(where, f"numeric: unknown operator {operator!r}; use one of =, <, <=, >, >=")
    if len(value) < 2:
        raise PatternError(where, f"numeric: operator {operator!r} needs a number after it")
    key = _operand_key(value[1], where, f"numeric: the value of {operator!r}")
    if operator == "=":
        if len(value) != 2:
            raise PatternError(where, "numeric: '=' takes exactly one number")
        return _first_at_least(key), _last_at_most(key)
    if operator in ("<", "<="):
        if len(value) != 2:
            raise PatternError(where, f"numeric: {operator!r} must come last; write ranges as ['>', a, '<', b]")
        return -_NUMBER_LIMIT, _last_at_most(key - 1 if operator == "<" else key)
    low = _first_at_least(key + 1 if operator == ">" else key)
    if len(value) == 2:
        return low, _NUMBER_LIMIT
    if len(value) != 4:
        raise PatternError(where, f"{shape}: a range has exactly four members")
    upper = value[2]
    if not isinstance(upper, str) or upper not in ("<", "<="):
        raise PatternError(where, f"numeric: the upper bound operator must be '<' or '<=', not {upper!r}")
    top = _operand_key(value[3], where, f"numeric: the value of {upper!r}")
    if not value[1] < value[3]:
        raise PatternError(where, "numeric: the lower bound must be less than the upper bound")
    return low, _last_at_most(top - 1 if upper == "<" else top)


@dataclass
class _LeafParts:
    """One field's alternatives sorted by kind while a pattern compiles; _compile_leaf freezes them into a _Leaf."""

    leaf: _Leaf
    strings: set[str] = dataclasses.field(default_factory=set)
    constants: set[bool | None] = dataclasses.field(default_factory=set)
    number_keys: set[int] = dataclasses.field(default_factory=set)
    number_raw: set[int | float] = dataclasses.field(default_factory=set)
    ranges: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    prefixes: list[str] = dataclasses.field(default_factory=list)
    suffixes: list[str] = dataclasses.field(default_factory=list)
    folded_equals: set[str] = dataclasses.field(default_factory=set)
    folded_prefixes: list[str] = dataclasses.field(default_factory=list)
    folded_suffixes: list[str] = dataclasses.field(default_factory=list)
    globs: list[_Wildcard] = dataclasses.field(default_factory=list)
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = dataclasses.field(default_factory=list)
    negations: list[_Predicate] = dataclasses.field(default_factory=list)


def _compile_leaf(alternatives: list[Any], where: str) -> _Leaf:
    if not alternatives:
        raise PatternError(where, "empty arrays are not allowed; list at least one value")
    parts = _LeafParts(_Leaf())
    for item in alternatives:
        if isinstance(item, str):
            parts.strings.add(item)
        elif item is None or isinstance(item, bool):
            parts.constants.add(item)
        elif isinstance(item, int | float):
            if isinstance(item, float) and not math.isfinite(item):
                raise PatternError(where, f"{item} is not a JSON number")
            key = _number_key(item)
            if key is None:
                parts.number_raw.add(item)
            else:
                parts.number_keys.add(key)
        elif isinstance(item, dict):
            if len(item) != 1:
                problem = "is empty" if not item else f"has {len(item)} keys"
                raise PatternError(where, f"a match expression must have exactly one operator key; this one {problem}")
            ((operator, arg),) = item.items()
            _add_operator(parts, operator, arg, where)
        else:
            raise PatternError(
                where,
                f"a match value must be a string, number, true, false, null or operator object, not {json_type(item)}",
            )
    leaf = parts.leaf
    leaf.strings = frozenset(parts.strings)
    leaf.constants = frozenset(parts.constants)
    leaf.number_keys = frozenset(parts.number_keys)
    leaf.number_raw = frozenset(parts.number_raw)
    leaf.ranges = tuple(parts.ranges)
    leaf.string_tests = _string_tests(parts)
    leaf.negations = tuple(parts.negations)
    return leaf


def _add_operator(parts: _LeafParts, operator: str, arg: Any, where: str) -> None:
    if operator == "prefix":
        text, ignore_case = _string_or_ignore_case(operator, arg, where)
        (parts.folded_prefixes if ignore_case else parts.prefixes).append(text.lower() if ignore_case else text)
    elif operator == "suffix":
        text, ignore_case = _string_or_ignore_case(operator, arg, where)
        (parts.folded_suffixes if ignore_case else parts.suffixes).append(text.lower() if ignore_case else text)
    elif operator == "equals-ignore-case":
        parts.folded_equals.add(_string_arg(operator, arg, where).lower())
    elif operator == "wildcard":
        parts.globs.append(_compile_wildcard(arg, where))
    elif operator == "cidr":
        parts.networks.append(_compile_cidr(arg, where))
    elif operator == "numeric":
        parts.ranges.append(_compile_numeric(arg, where))
    elif operator == "exists":
        if not isinstance(arg, bool):
            raise PatternError(where, f"exists expects true or false, not {json_type(arg)}")
        if arg:
            parts.leaf.any_value = True
        else:
            parts.leaf.absent_ok = True
    elif operator == "anything-but":
        parts.negations.append(_compile_anything_but(arg, where))
    else:
        raise PatternError(where, f"unknown operator {operator!r}")


def _string_tests(parts: _LeafParts) -> tuple[Callable[[str], bool], ...]:
    string_tests: list[Callable[[str], bool]] = []
    if parts.prefixes:
        prefix_tuple = tuple(parts.prefixes)
        string_tests.append(lambda v: v.startswith(prefix_tuple))
    if parts.suffixes:
        suffix_tuple = tuple(parts.suffixes)
        string_tests.append(lambda v: v.endswith(suffix_tuple))
    if parts.folded_equals or parts.folded_prefixes or parts.folded_suffixes:
        equals_set = frozenset(parts.folded_equals)
        # startswith(()) is False, so empty groups cost nothing.
        folded_prefix_tuple = tuple(parts.folded_prefixes)
        folded_suffix_tuple = tuple(parts.folded_suffixes)

        def folded_test(v: str) -> bool:
            lowered = v.lower()
            return (
                lowered in equals_set
                or lowered.startswith(folded_prefix_tuple)
                or lowered.endswith(folded_suffix_tuple)
            )

        string_tests.append(folded_test)
    for glob in parts.globs:
        string_tests.append(glob.match)
    if parts.networks:
        string_tests.append(_CidrSet(parts.networks).contains)
    return tuple(string_tests)


# --------------------------------------------------------------------------------------------------- structure


def _true(value: Any) -> bool:
    return True


class _Field:
    """One field of the pattern: a dot-joined path from the event root and the test of its values."""

    __slots__ = ("absent_ok", "candidates", "depth", "key", "match", "path", "test")

    def __init__(self, segments: tuple[str, ...], leaf: _Leaf) -> None:
        self.path = ".".join(segments)
        self.depth = len(segments)
        self.key = segments[0]
        # candidates[i]: the event keys that can consume segments i.. (a key may itself contain dots), each with
        # the index after it. Precomputed so matching never builds strings.
        self.candidates = tuple(
            tuple((".".join(segments[i : j + 1]), j + 1) for j in range(i, len(segments))) for i in range(len(segments))
        )
        self.test: Callable[[Any], bool] = _true if leaf.any_value else leaf.test
        self.absent_ok = leaf.absent_ok
        self.match: Callable[[Any], bool] = self._match_top if self.depth == 1 else self._match_path

    def _match_top(self, event: Any) -> bool:
        if type(event) is not dict:
            return self._settle(self._walk(event, 0))
        value = event.get(self.key, _MISSING)
        if value is _MISSING:
            return self.absent_ok
        if type(value) in _SCALARS:
            return self.test(value)
        return self._settle(self._leaves(value))

    def _match_path(self, event: Any) -> bool:
        # Fast path: descend plain dicts while exactly one key continues the path; arrays, other mappings or
        # several routes (dotted keys) hand over to the general walk from that point.
        node = event
        index = 0
        depth = self.depth
        while index < depth:
            if type(node) is not dict:
                return self._settle(self._walk(node, index))
            child: Any = _MISSING
            after = 0
            for key, key_after in self.candidates[index]:
                value = node.get(key, _MISSING)
                if value is not _MISSING:
                    if child is not _MISSING:
                        return self._settle(self._walk(node, index))
                    child = value
                    after = key_after
            if child is _MISSING:
                return self.absent_ok
            node = child
            index = after
        if type(node) in _SCALARS:
            return self.test(node)
        return self._settle(self._leaves(node))

    def _settle(self, found: int) -> bool:
        return found == _MATCHED or (found == _ABSENT and self.absent_ok)

    def _walk(self, node: Any, index: int) -> int:
        """General walk (arrays, mappings other than dict, dotted event keys); recursion only per path step."""
        if index == self.depth:
            return self._leaves(node)
        shape = _shape(node)
        if shape == _OBJECT:
            result = _ABSENT
            for key, after in self.candidates[index]:
                child = node.get(key, _MISSING)
                if child is not _MISSING:
                    found = self._walk(child, after)
                    if found == _MATCHED:
                        return _MATCHED
                    result |= found
            return result
        if shape == _ARRAY:
            result = _ABSENT
            pending = list(node)  # an explicit stack: arrays within arrays do not deepen the recursion
            while pending:
                item = pending.pop()
                item_shape = _shape(item)
                if item_shape == _ARRAY:
                    pending.extend(item)
                elif item_shape == _OBJECT:
                    found = self._walk(item, index)
                    if found == _MATCHED:
                        return _MATCHED
                    result |= found
            return result
        return _ABSENT  # a value where the path goes on: nothing there

    def _leaves(self, node: Any) -> int:
        shape = _shape(node)
        if shape == _VALUE:
            return _MATCHED if self.test(node) else _SEEN
        if shape == _OBJECT:
            return _ABSENT  # an object is not a value: exists and friends look at leaves only
        result = _ABSENT
        pending = list(node)
        while pending:
            item = pending.pop()
            item_shape = _shape(item)
            if item_shape == _VALUE:
                if self.test(item):
                    return _MATCHED
                result = _SEEN
            elif item_shape == _ARRAY:
                pending.extend(item)
        return result


_SCALARS: Final = frozenset({str, int, float, bool, type(None)})
_VALUE, _OBJECT, _ARRAY = 0, 1, 2


def _shape(node: Any) -> int:
    kind = type(node)
    if kind in _SCALARS:
        return _VALUE
    if kind is dict:
        return _OBJECT
    if kind is list or kind is tuple:
        return _ARRAY
    if isinstance(node, Mapping):
        return _OBJECT
    if isinstance(node, list | tuple):
        return _ARRAY
    return _VALUE  # anything else is an opaque value


class _Node:
    """An object of the pattern: its fields AND, each `$or` needs one of its branches."""

    __slots__ = ("fields", "ors")

    def __init__(self, fields: tuple[_Field, ...], ors: tuple[tuple[_Node, ...], ...]) -> None:
        self.fields = fields
        self.ors = ors

    def matches(self, event: Any) -> bool:
        for field in self.fields:
            if not field.match(event):
                return False
        for branches in self.ors:
            for branch in branches:
                if branch.matches(event):
                    break
            else:
                return False
        return True


def _display(where: str, key: str) -> str:
    return key if where == "(root)" else f"{where}.{key}"


def _compile_object(
    obj: Any, prefix: tuple[str, ...], where: str, depth: int, in_or: bool, fields: list[_Field], ors: list[Any]
) -> None:
    """Adds the fields and `$or`s of a pattern object to the enclosing AND (nested objects flatten into it)."""
    if depth > MAX_PATTERN_DEPTH:
        raise PatternError(where, f"pattern is nested too deeply (more than {MAX_PATTERN_DEPTH} levels)")
    if not obj:
        raise PatternError(where, "empty objects are not allowed")
    for key, value in obj.items():
        if not isinstance(key, str):
            raise PatternError(where, f"object keys must be strings, not {type(key).__name__}")
        here = _display(where, key)
        if key == _OR:
            ors.append(_compile_or(value, prefix, here, depth))
            continue
        if in_or and key in _RESERVED_IN_OR:
            raise PatternError(here, f"{key!r} is a reserved operator name and cannot be a field name inside $or")
        segments = prefix + tuple(key.split("."))
        # "a.b" nests like {"a": {"b": ...}}, so each dot is a level.
        level = depth + key.count(".")
        if isinstance(value, dict):
            _compile_object(value, segments, here, level + 1, in_or, fields, ors)
        elif isinstance(value, list):
            if level > MAX_PATTERN_DEPTH:
                raise PatternError(here, f"pattern is nested too deeply (more than {MAX_PATTERN_DEPTH} levels)")
            fields.append(_Field(segments, _compile_leaf(value, here)))
        else:
            raise PatternError(here, f"must be an object or an array of alternatives, not {json_type(value)}")


def _compile_or(value: Any, prefix: tuple[str, ...], where: str, depth: int) -> tuple[_Node, ...]:
    if not isinstance(value, list):
        raise PatternError(where, f"$or expects an array of at least 2 objects, not {json_type(value)}")
    if len(value) < 2:
        raise PatternError(where, "$or needs at least 2 objects")
    branches: list[_Node] = []
    for i, branch in enumerate(value):
        branch_where = f"{where}[{i}]"
        if not isinstance(branch, dict):
            raise PatternError(branch_where, f"$or may contain only objects, not {json_type(branch)}")
        fields: list[_Field] = []
        ors: list[tuple[_Node, ...]] = []
        _compile_object(branch, prefix, branch_where, depth + 1, True, fields, ors)
        branches.append(_Node(tuple(fields), tuple(ors)))
    return tuple(branches)


# --------------------------------------------------------------------------------------------------- public


def _always(event: Mapping[str, Any]) -> bool:
    return True


class Matcher:
    """A compiled pattern. Build with compile_pattern(); matches() is safe to call concurrently."""

    __slots__ = ("_match", "pattern")

    def __init__(self, pattern: dict[str, Any], match: Callable[[Mapping[str, Any]], bool]) -> None:
        self.pattern = pattern
        self._match = match

    def matches(self, event: Mapping[str, Any]) -> bool:
        return self._match(event)

    def __repr__(self) -> str:
        try:
            return f"{type(self).__name__}({json.dumps(self.pattern, ensure_ascii=False)})"
        except AttributeError:  # a subclass that does not call __init__
            return f"{type(self).__name__}()"


def compile_pattern(source: str | dict[str, Any]) -> Matcher:
    """Validate a pattern (raising PatternError) and compile it into a Matcher.

    The top-level `{}` matches every event (an AND of nothing); an empty object anywhere else is invalid.
    """
    pattern = parse_pattern(source)
    if not pattern:
        return Matcher(pattern, _always)
    fields: list[_Field] = []
    ors: list[tuple[_Node, ...]] = []
    _compile_object(pattern, (), "(root)", 1, False, fields, ors)
    # Cheapest first: shallow fields before deep ones, `$or`s last; AND is order-independent.
    fields.sort(key=lambda f: f.depth)
    if len(fields) == 1 and not ors:
        return Matcher(pattern, fields[0].match)
    return Matcher(pattern, _Node(tuple(fields), tuple(ors)).matches)
