"""W3C Trace Context (https://www.w3.org/TR/trace-context-1/): the `traceparent` and `tracestate` an event request
carries, checked, and the compact form in which a publish task carries one per event.

This service forwards the caller's context unchanged (the spec's pass-through: it records no spans of its own,
so a parent-id of its own would name a span no tracing backend ever receives). Only two mutations are made, both
allowed by the spec: a traceparent of a higher version is downgraded to version 00, and a tracestate longer than
MAX_TRACESTATE characters loses whole entries (those over 128 characters first, then from the end). A missing
or invalid traceparent starts a new trace (the spec's restart: every field generated, tracestate dropped).

Pure Python, no Django: the web tier parses, the worker unpacks, the log formatter reads.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# The spec asks vendors to propagate at least 512 characters of tracestate; Kafka headers stay small with that.
MAX_TRACESTATE = 512
_MAX_MEMBERS = 32
_LONG_MEMBER = 128

_HEX = frozenset("0123456789abcdef")
_KEY = re.compile(r"[a-z0-9][a-z0-9_\-*/@]{0,255}\Z")
_VALUE = re.compile(r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]\Z")


@dataclass(frozen=True, slots=True)
class TraceContext:
    """One request's trace context: ids as lowercase hex, flags as two hex digits, tracestate ('' if none)."""

    trace_id: str
    parent_id: str
    flags: str = "00"
    tracestate: str = ""

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.parent_id}-{self.flags}"

    @property
    def sampled(self) -> bool:
        return bool(int(self.flags, 16) & 1)


def generate(*, sampled: bool = False) -> TraceContext:
    """A new trace (the spec's start/restart). Not sampled by default: this service records nothing itself."""
    while True:
        trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
        if trace_id.strip("0") and parent_id.strip("0"):
            return TraceContext(trace_id, parent_id, "01" if sampled else "00")


def _is_hex(text: str) -> bool:
    return _HEX.issuperset(text)


def parse_traceparent(value: str | None) -> TraceContext | None:
    """The context a `traceparent` value names, or None when it is missing or invalid (then the caller restarts the
    trace). Version 00 must be exactly `00-<32 hex>-<16 hex>-<2 hex>`, lowercase, ids not all zero; a higher version
    (not ff) is read by its first 55 characters as the spec says, and downgraded to 00 with only its sampled bit."""
    if not value:
        return None
    value = value.strip(" \t")  # optional whitespace around an HTTP field value is not part of it
    if len(value) < 55 or value[2] != "-" or not _is_hex(value[:2]) or value[:2] == "ff":
        return None
    version = value[:2]
    if version == "00" and len(value) != 55:
        return None
    if len(value) > 55 and value[55] != "-":
        return None
    trace_id, parent_id, flags = value[3:35], value[36:52], value[53:55]
    if value[35] != "-" or value[52] != "-" or not (_is_hex(trace_id) and _is_hex(parent_id) and _is_hex(flags)):
        return None
    if not trace_id.strip("0") or not parent_id.strip("0"):
        return None
    if version != "00":
        flags = "01" if int(flags, 16) & 1 else "00"
    return TraceContext(trace_id, parent_id, flags)


def parse_tracestate(value: str | None) -> str:
    """The tracestate to forward: '' when missing or invalid (an invalid one is dropped whole; it never affects the
    traceparent), else its list-members joined by ',' (optional whitespace and empty members left out), cut to
    MAX_TRACESTATE characters by dropping whole entries."""
    if not value:
        return ""
    members: list[str] = []
    keys: set[str] = set()
    for raw in value.split(","):
        member = raw.strip(" \t")
        if not member:
            continue
        key, sep, val = member.partition("=")
        if not sep or not _KEY.match(key) or not _VALUE.match(val) or key in keys:
            return ""
        keys.add(key)
        members.append(member)
    if len(members) > _MAX_MEMBERS:
        return ""
    return _truncated(members)


def _truncated(members: list[str]) -> str:
    joined = ",".join(members)
    if len(joined) <= MAX_TRACESTATE:
        return joined
    members = [m for m in members if len(m) <= _LONG_MEMBER]
    while members and len(",".join(members)) > MAX_TRACESTATE:
        members.pop()
    return ",".join(members)


def from_headers(traceparent: str | None, tracestate: str | None) -> tuple[TraceContext, bool]:
    """The context of a request with these header values, and whether it came from them (False: a new trace, the
    headers were missing or invalid). tracestate is looked at only when traceparent is valid, as the spec says."""
    context = parse_traceparent(traceparent)
    if context is None:
        return generate(), False
    state = parse_tracestate(tracestate)
    if state:
        context = TraceContext(context.trace_id, context.parent_id, context.flags, state)
    return context, True


def header_pairs(context: TraceContext) -> tuple[tuple[str, bytes], ...]:
    """The Kafka record headers of a context: traceparent, and tracestate when there is one."""
    if context.tracestate:
        return (("traceparent", context.traceparent.encode()), ("tracestate", context.tracestate.encode()))
    return (("traceparent", context.traceparent.encode()),)


# --- In a publish task: one context per event, as runs -------------------------------------------------------


def pack(contexts: Sequence[TraceContext]) -> list[list[Any]]:
    """Contexts of consecutive events as runs, `[count, traceparent]` or `[count, traceparent, tracestate]`: a group
    of requests is a few runs however many events each request has."""
    runs: list[list[Any]] = []
    last: TraceContext | None = None
    for context in contexts:
        if context is last or context == last:
            runs[-1][0] += 1
            continue
        run: list[Any] = [1, context.traceparent]
        if context.tracestate:
            run.append(context.tracestate)
        runs.append(run)
        last = context
    return runs


def unpack(runs: Any, count: int) -> list[TraceContext]:
    """The context of each of `count` events from pack()'s runs. Runs that are missing, malformed or too short (a
    task queued by an older release, a hand-made one) leave their events one new trace."""
    contexts: list[TraceContext] = []
    if isinstance(runs, list):
        for run in runs:
            if not (isinstance(run, list) and 2 <= len(run) <= 3 and isinstance(run[0], int) and run[0] > 0):
                break
            context = parse_traceparent(run[1]) if isinstance(run[1], str) else None
            if context is None:
                break
            if len(run) == 3 and isinstance(run[2], str):
                state = parse_tracestate(run[2])
                context = TraceContext(context.trace_id, context.parent_id, context.flags, state)
            contexts.extend([context] * min(run[0], count - len(contexts)))
    if len(contexts) < count:
        contexts.extend([generate()] * (count - len(contexts)))
    return contexts[:count]


def distinct(contexts: Sequence[TraceContext]) -> list[TraceContext]:
    """Each context once, in order of first appearance."""
    return list(dict.fromkeys(contexts))
