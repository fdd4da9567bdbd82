"""Structured logs: one JSON object per line and per record, for log shippers (Loki, Elasticsearch, journald).

Every record carries ts (UTC, ISO 8601), level, logger, message, pid and, inside a Celery task, task_id and
task_name; inside an event request, or a publish task, its W3C trace context (`trace_scope`): trace_id and span_id
(the traceparent's parent-id: this service forwards the caller's context and makes no spans of its own), or, in a
task whose events came from several requests, trace_ids (each trace id once); the `extra={...}` fields the code
passes (event, topic, count, ...) become top-level keys; an exception adds exc_type and exc_info (the traceback,
newlines escaped so the record stays on one line). Values JSON cannot hold are written as their str().

Selected in settings.LOGGING with {"()": "config.logging.JsonFormatter"}.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import orjson
from celery import current_task

from events.timefmt import utc_iso_ms
from events.tracecontext import TraceContext

# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime", "taskName", "color_message"}
)
_RESERVED = frozenset({"ts", "level", "logger", "message", "pid", "exc_type", "exc_info", "stack_info"})

_trace: ContextVar[tuple[TraceContext, ...]] = ContextVar("log_trace", default=())


@contextmanager
def trace_scope(contexts: TraceContext | Sequence[TraceContext]) -> Iterator[None]:
    """Log records made inside carry these trace contexts (a request's one; a task's, each distinct one once).
    A record's own `extra` trace_id/span_id win (a line about one event of a task)."""
    if isinstance(contexts, TraceContext):
        value: tuple[TraceContext, ...] = (contexts,)
    else:
        value = tuple(dict.fromkeys(contexts))
    token = _trace.set(value)
    try:
        yield
    finally:
        _trace.reset(token)


def _add_trace(entry: dict[str, Any]) -> None:
    contexts = _trace.get()
    if len(contexts) == 1:
        entry["trace_id"] = contexts[0].trace_id
        entry["span_id"] = contexts[0].parent_id
    elif contexts:
        entry["trace_ids"] = list(dict.fromkeys(c.trace_id for c in contexts))


def _current_task() -> tuple[str, str] | None:
    task = current_task
    if not task:
        return None
    task_id = getattr(getattr(task, "request", None), "id", None)
    return (str(task_id), str(task.name)) if task_id else None


class JsonFormatter(logging.Formatter):
    """logging.Formatter that writes one compact JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": utc_iso_ms(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        task = _current_task()
        if task is not None:
            entry["task_id"], entry["task_name"] = task
        _add_trace(entry)
        for key, value in record.__dict__.items():
            if key in _STANDARD or key.startswith("_"):
                continue
            entry[f"extra_{key}" if key in _RESERVED else key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["exc_type"] = record.exc_info[0].__name__
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        try:
            return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except (TypeError, orjson.JSONEncodeError):  # e.g. an int beyond 64 bits: fall back to the slow path
            return json.dumps(entry, default=str, ensure_ascii=False)
