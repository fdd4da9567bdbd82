"""W3C Trace Context parsing (events.tracecontext) against the spec's rules, and the runs a publish task carries."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from config.logging import JsonFormatter, trace_scope
from events import tracecontext
from events.tracecontext import TraceContext, from_headers, pack, parse_traceparent, parse_tracestate, unpack

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_version_00_traceparent_is_kept_as_it_is() -> None:
    context = parse_traceparent(VALID)
    assert context == TraceContext("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01")
    assert context.traceparent == VALID
    assert context.sampled
    # Flags this service does not know are forwarded unchanged (pass-through), as is optional whitespace around.
    assert parse_traceparent(" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09\t").flags == "09"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        VALID.upper(),  # hex must be lowercase
        VALID[:-1],  # too short
        VALID + "-00",  # version 00 is exactly 55 characters
        VALID + "0",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # all-zero parent id
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",  # not hex
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",  # flags not hex
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # bad delimiter
        "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff is forbidden
        "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version not hex
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",  # a higher version's flags end at a dash
        f"{VALID},{VALID}",  # two traceparent fields joined by the server
    ],
)
def test_an_invalid_traceparent_is_refused(value: str | None) -> None:
    assert parse_traceparent(value) is None


def test_a_higher_version_is_read_by_its_first_fields_and_downgraded_to_00() -> None:
    context = parse_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-what-the-future-adds")
    assert context is not None
    # Only the sampled bit survives (the spec: other flags are unknown to version 00 and set to zero).
    assert context.traceparent == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert parse_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02").flags == "00"  # type: ignore[union-attr]


def test_missing_or_invalid_headers_start_a_new_valid_trace_without_tracestate() -> None:
    for traceparent in (None, "00-bogus", VALID.upper()):
        context, received = from_headers(traceparent, "congo=t61rcWkgMzE")
        assert not received
        assert parse_traceparent(context.traceparent) == context  # valid by the same rules
        assert context.tracestate == "" and context.flags == "00"
    first, _ = from_headers(None, None)
    second, _ = from_headers(None, None)
    assert first.trace_id != second.trace_id and first.parent_id != second.parent_id


def test_tracestate_is_kept_when_valid_and_dropped_whole_when_not() -> None:
    context, received = from_headers(VALID, "rojo=00f067aa0ba902b7 , ,congo=t61rcWkgMzE")
    assert received and context.tracestate == "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    assert parse_tracestate("tenant@vendor=a b") == "tenant@vendor=a b"
    for invalid in (
        "Rojo=1",
        "rojo",
        "rojo=1,rojo=2",
        "rojo=a,b",
        "rojo=x\x01",
        ",".join(f"k{i}=v" for i in range(33)),
    ):
        assert parse_tracestate(invalid) == ""
        # A bad tracestate never costs the traceparent.
        context, received = from_headers(VALID, invalid)
        assert received and context.traceparent == VALID and context.tracestate == ""


def test_a_long_tracestate_loses_whole_entries_long_ones_first() -> None:
    long_member = "big=" + "x" * 200
    members = [f"k{i}=" + "v" * 40 for i in range(12)]  # 12 * 44 characters + commas: over 512
    state = parse_tracestate(",".join([members[0], long_member, *members[1:]]))
    assert len(state) <= tracecontext.MAX_TRACESTATE
    assert "big=" not in state
    kept = state.split(",")
    assert kept == members[: len(kept)]  # then from the end
    assert len(kept) == 11


def test_runs_give_each_event_its_requests_context() -> None:
    a, _ = from_headers(VALID, "congo=1")
    b = tracecontext.generate()
    contexts = [a, a, a, b, a]
    runs = pack(contexts)
    assert runs == [[3, VALID, "congo=1"], [1, b.traceparent], [1, VALID, "congo=1"]]
    assert unpack(orjson.loads(orjson.dumps(runs)), 5) == contexts


def test_a_task_without_runs_or_with_broken_ones_gets_one_new_trace_for_the_rest() -> None:
    old = unpack(None, 3)
    assert len(set(old)) == 1 and parse_traceparent(old[0].traceparent) == old[0]
    a = parse_traceparent(VALID)
    partial = unpack([[1, VALID], [2, "nonsense"]], 3)
    assert partial[0] == a and partial[1] == partial[2] != a
    assert unpack([[5, VALID]], 2) == [a, a]  # never more contexts than events


def _formatted(record_extra: dict[str, object] | None = None) -> dict[str, object]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("test.tracecontext")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("hello", extra=record_extra)
    finally:
        log.removeHandler(handler)
    return dict(orjson.loads(stream.getvalue()))


def test_log_lines_name_the_trace_they_are_made_in() -> None:
    a = parse_traceparent(VALID)
    assert a is not None
    b = tracecontext.generate()
    assert "trace_id" not in _formatted()
    with trace_scope(a):
        line = _formatted()
        assert (line["trace_id"], line["span_id"]) == (a.trace_id, a.parent_id)
        with trace_scope([a, b, a]):
            line = _formatted()
            assert line["trace_ids"] == [a.trace_id, b.trace_id] and "trace_id" not in line
            # A line about one event names that event's trace itself.
            assert _formatted({"trace_id": b.trace_id})["trace_id"] == b.trace_id
    assert "trace_id" not in _formatted()
