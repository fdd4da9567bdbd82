"""Typed access to the environment. Every setting goes through here so a bad value fails at startup with a
message naming the variable and what it accepts, instead of surfacing later as an obscure runtime error."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured
from dotenv import dotenv_values

_MISSING = object()
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class EnvError(ImproperlyConfigured):
    pass


ENV_FILE_VARIABLE = "INGEST_ENV_FILE"
DEFAULT_ENV_FILE = Path(__file__).resolve().parent.parent / ".env"


def load_env_file() -> Path | None:
    """Read the local `.env` (the checkout's, written by `make`; INGEST_ENV_FILE names another, empty: none) into
    os.environ, so `python manage.py ...` works in a checkout without exporting anything. A variable already set
    in the environment wins: a deployment's real environment is never overridden by a stray file. Values are
    taken literally (no ${VAR} expansion). Returns the file read, if any."""
    configured = os.environ.get(ENV_FILE_VARIABLE)
    if configured is not None and not configured.strip():
        return None
    path = Path(configured) if configured else DEFAULT_ENV_FILE
    if not path.is_file():
        if configured:  # named on purpose: silently running without it would hide the mistake
            raise EnvError(f"{ENV_FILE_VARIABLE}={configured!r} is not a file")
        return None
    for name, value in dotenv_values(path, interpolate=False).items():
        if value is not None:
            os.environ.setdefault(name, value)
    return path


def install_env_error_hook() -> None:
    """A missing or malformed variable is an operator's mistake, not a bug: whichever entry point meets it
    (manage.py, `celery -A config`, `python -m config.serve`) prints one line naming it and exits with status 1,
    instead of a traceback through Django's or Celery's start-up code."""
    previous = sys.excepthook
    if getattr(previous, "env_error_hook", False):
        return

    def hook(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
        if isinstance(error, EnvError):
            sys.stderr.write(f"{Path(sys.argv[0]).name or 'python'}: {error}\n")
        else:
            previous(kind, error, traceback)

    hook.env_error_hook = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def _raw(name: str, default: object) -> str | None:
    value = os.environ.get(name)
    if value is None:
        if default is _MISSING:
            raise EnvError(f"{name} is required but not set (export it, or for a local run put it in .env)")
        return None
    return value


def env_str(name: str, default: str | object = _MISSING) -> str:
    value = _raw(name, default)
    return str(default) if value is None else value


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name, default)
    if value is None:
        return default
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise EnvError(f"{name}={value!r} is not a boolean: use true/false, 1/0, yes/no or on/off")


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    value = _raw(name, default)
    if value is None:
        return default
    try:
        number = int(value.strip())
    except ValueError:
        raise EnvError(f"{name}={value!r} is not an integer") from None
    if minimum is not None and number < minimum:
        raise EnvError(f"{name}={value!r} is too small: it must be an integer >= {minimum}")
    if maximum is not None and number > maximum:
        raise EnvError(f"{name}={value!r} is too large: it must be an integer <= {maximum}")
    return number


def env_int_or_auto(name: str, *, minimum: int | None = None, maximum: int | None = None) -> int | None:
    """An integer, or `auto` (also when unset): None, the code decides."""
    value = _raw(name, "auto")
    if value is None or value.strip().lower() == "auto":
        return None
    try:
        return env_int(name, 0, minimum=minimum, maximum=maximum)
    except EnvError as error:
        raise EnvError(f"{error}, or auto") from None


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    value = _raw(name, default)
    if value is None:
        return default
    try:
        number = float(value.strip())
    except ValueError:
        raise EnvError(f"{name}={value!r} is not a number") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise EnvError(f"{name}={value!r} is not a finite number")
    if minimum is not None and number < minimum:
        raise EnvError(f"{name}={value!r} is too small: it must be >= {minimum}")
    return number


def _seconds(text: str) -> float | None:
    match = _DURATION.match(text)
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)] if match else None


def env_duration(name: str, default: str, *, maximum: str | None = None) -> float:
    """A duration such as `10ms`, `10s`, `1.5s`, `2m` (bare numbers are seconds); returned in seconds."""
    value = _raw(name, default)
    text = default if value is None else value
    seconds = _seconds(text)
    if seconds is None:
        raise EnvError(f"{name}={text!r} is not a duration: use a number with a unit, e.g. 250ms, 10s, 2m")
    if maximum is not None and seconds > (_seconds(maximum) or 0.0):
        raise EnvError(f"{name}={text!r} is too long: it must be at most {maximum}")
    return seconds


def env_choice(name: str, default: str, choices: Sequence[str]) -> str:
    value = _raw(name, default)
    text = (default if value is None else value).strip().lower()
    if text not in choices:
        raise EnvError(f"{name}={text!r} is not valid: expected one of {', '.join(choices)}")
    return text


_RATE_PERIODS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600, "d": 86400, "day": 86400}


def parse_rate(rate: str) -> tuple[int, int]:
    """'100/s' -> (100, 1): a count per period in seconds. Raises ValueError naming the accepted form."""
    count, _, period = rate.partition("/")
    if not count.strip().isdigit() or period.strip() not in _RATE_PERIODS:
        raise ValueError(f"rate {rate!r} must look like 100/s, 6000/min or 100000/hour")
    return int(count), _RATE_PERIODS[period.strip()]


def env_rate(name: str, default: str) -> str:
    """A rate such as `2000/s` or `6000/min`, checked now, kept as text (DRF-style)."""
    text = env_str(name, default)
    try:
        parse_rate(text)
    except ValueError:
        raise EnvError(f"{name}={text!r} is not valid: use requests per period, e.g. 2000/s or 6000/min") from None
    return text


def env_list(name: str, default: str) -> list[str]:
    value = _raw(name, default)
    text = default if value is None else value
    return [item.strip() for item in text.split(",") if item.strip()]


def env_addresses(name: str, default: str, *, default_port: int) -> list[tuple[str, int]]:
    """A comma list of `host:port` (the port may be left out), e.g. Sentinel addresses."""
    addresses = []
    for item in env_list(name, default):
        host, colon, port = item.rpartition(":")
        if not colon:
            host, port = item, str(default_port)
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise EnvError(f"{name}: {item!r} is not valid: expected host:port, e.g. 127.0.0.1:{default_port}")
        addresses.append((host, int(port)))
    return addresses


def sentinel_broker_url(redis_url: str, sentinels: Sequence[tuple[str, int]]) -> str | None:
    """kombu's Sentinel transport URL for these Sentinels with REDIS_URL's database and password (kombu splits
    the list at `;`), or None without Sentinels."""
    if not sentinels:
        return None
    parts = urlsplit(redis_url)
    auth = f"{parts.username or ''}:{parts.password}@" if parts.password else ""
    path = parts.path if parts.path.strip("/") else "/0"
    return ";".join(f"sentinel://{auth}{host}:{port}{path}" for host, port in sentinels)
