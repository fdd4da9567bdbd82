"""Structured logs: one JSON object per line and per record, for log shippers (Loki, Elasticsearch, journald).

Every record carries ts (UTC, ISO 8601), level, logger, message, pid and, inside a Celery task, task_id and
task_name; the `extra={...}` fields the code passes (event, topic, count, ...) become top-level keys; an
exception adds exc_type and exc_info (the traceback, newlines escaped so the record stays on one line).
Values JSON cannot hold are written as their str().

Selected in settings.LOGGING with {"()": "config.logging.JsonFormatter"}.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import orjson
from celery import current_task

from events.timefmt import utc_iso_ms

# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime", "taskName", "color_message"}
)
_RESERVED = frozenset({"ts", "level", "logger", "message", "pid", "exc_type", "exc_info", "stack_info"})


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
