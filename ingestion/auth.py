"""`Authorization: Api-Key <key>` authentication for producers.

The hot path is one dictionary lookup: a key found valid is cached per process for INGEST_KEY_CACHE_SECONDS,
so a revoked or expired key stops working within that time. When its entry expires, one request of that key
looks it up again and the others in flight wait for that answer (up to RECHECK_WAIT) instead of each asking the
database. Failures cost more, but never the producers:
- a key not shaped like one (letters or digits, a dot, letters or digits, of the generator's lengths) is
  refused without a database query;
- a key found invalid goes to a separate, bounded negative cache: no flood of bogus keys can evict a good key,
  and one wrong key is looked up once per INGEST_KEY_CACHE_SECONDS, however often it is sent;
- every failure is counted per client address (config.client_address) in Redis, shared by all web processes;
  past INGEST_AUTH_FAILURES_PER_MINUTE within a minute the address gets 429 with Retry-After, and a key this
  process never saw valid is refused before the database is asked.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, NoReturn

from django.conf import settings
from django.utils import timezone
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request
from rest_framework_api_key.models import APIKey

from config.client_address import client_address, parse_address, rate_limit_key
from config.redis import get_redis
from ingestion import metrics

logger = logging.getLogger(__name__)

NEGATIVE_CACHE_SIZE = 10_000
FAILURE_WINDOW = 60  # seconds: INGEST_AUTH_FAILURES_PER_MINUTE
INVALID_KEY = "Invalid, revoked or expired API key."
RECHECK_WAIT = 1.0  # seconds a request waits for another's lookup of the same expired key

_generator = APIKey.objects.key_generator
KEY_FORMAT = re.compile(rf"[A-Za-z0-9]{{{_generator.prefix_length}}}\.[A-Za-z0-9]{{{_generator.secret_key_length}}}")
MALFORMED_KEY = (
    f"Malformed API key: expected {_generator.prefix_length} letters or digits, a dot, then "
    f"{_generator.secret_key_length} letters or digits."
)

_valid: dict[str, tuple[float, Client]] = {}  # only keys found valid: grows with real keys, never with bogus ones
_invalid: OrderedDict[str, float] = OrderedDict()  # bogus keys, oldest first, at most NEGATIVE_CACHE_SIZE
_lock = threading.Lock()

_LOOKED_UP_VALID = metrics.API_KEY_LOOKUPS.labels(result="valid")
_LOOKED_UP_INVALID = metrics.API_KEY_LOOKUPS.labels(result="invalid")


@dataclass(frozen=True)
class Client:
    """The producer behind a request: its key's id, name (the name travels as the `source` header) and prefix
    (the public, unique part of the key: it owns the receipts of the events it sent)."""

    key_id: str
    name: str
    prefix: str = ""
    is_authenticated: bool = True


class TooManyFailures(exceptions.Throttled):
    default_detail = "Too many failed authentications from this client address."


def _lookup(raw_key: str) -> Client | None:
    try:
        api_key = APIKey.objects.get_from_key(raw_key)
    except APIKey.DoesNotExist:
        return None
    if api_key.revoked or (api_key.expiry_date is not None and api_key.expiry_date < timezone.now()):
        return None
    return Client(key_id=str(api_key.pk), name=api_key.name, prefix=api_key.prefix)


def clear_key_cache() -> None:
    with _lock:
        _valid.clear()
        _invalid.clear()
        _rechecks.clear()


# ------------------------------------------------------------------------------- failures per address


def _failure_counter(request: Request) -> tuple[str, float]:
    """The Redis key counting this client's failures in the current window, and the seconds left of it."""
    meta = request.META
    ip = client_address(meta) or parse_address(str(meta.get("REMOTE_ADDR", "")))
    now = time.time()
    window = int(now // FAILURE_WINDOW)
    who = rate_limit_key(ip) if ip is not None else "unknown"
    return f"ingest:authfail:{who}:{window}", (window + 1) * FAILURE_WINDOW - now


def _refuse(request: Request, error: exceptions.APIException) -> NoReturn:
    """Count the failure for the client's address and raise `error`, or 429 once the address is over the limit."""
    limit = settings.INGEST_AUTH_FAILURES_PER_MINUTE
    if limit > 0:
        key, wait = _failure_counter(request)
        try:
            pipe = get_redis().pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, FAILURE_WINDOW + 1)
            failures = int(pipe.execute()[0])
        except Exception:
            # Redis down: the request is refused anyway; the limit must not turn a 401 into a 500.
            logger.warning("failed authentication not counted: Redis unreachable")
            failures = 0
        if failures > limit:
            raise TooManyFailures(wait=wait)
    raise error


def _over_limit(request: Request) -> float | None:
    """Seconds until this client may try again when its address is over the limit, else None."""
    limit = settings.INGEST_AUTH_FAILURES_PER_MINUTE
    if limit <= 0:
        return None
    key, wait = _failure_counter(request)
    try:
        failures = int(get_redis().get(key) or 0)
    except Exception:
        logger.warning("failed-authentication limit not checked: Redis unreachable")
        return None
    return wait if failures >= limit else None


def _check(request: Request, raw_key: str, *, known: bool) -> Client:
    """A key that is not freshly cached as valid: shape, negative cache, the address's limit, then the database."""
    if not KEY_FORMAT.fullmatch(raw_key):
        _refuse(request, exceptions.AuthenticationFailed(MALFORMED_KEY))
    now = time.monotonic()
    refused_until = _invalid.get(raw_key)
    if refused_until is not None and refused_until > now:
        _refuse(request, exceptions.AuthenticationFailed(INVALID_KEY))
    if not known:  # a key this process saw valid is re-checked whatever its address did (revocation)
        wait = _over_limit(request)
        if wait is not None:
            raise TooManyFailures(wait=wait)
    client = _lookup(raw_key)
    expires = now + settings.INGEST_KEY_CACHE_SECONDS
    with _lock:
        if client is None:
            _valid.pop(raw_key, None)
            _invalid[raw_key] = expires
            _invalid.move_to_end(raw_key)
            while len(_invalid) > NEGATIVE_CACHE_SIZE:
                _invalid.popitem(last=False)
        else:
            _invalid.pop(raw_key, None)
            _valid[raw_key] = (expires, client)
    if client is None:
        _LOOKED_UP_INVALID.inc()
        _refuse(request, exceptions.AuthenticationFailed(INVALID_KEY))
    _LOOKED_UP_VALID.inc()
    return client


def _fresh_client(raw_key: str) -> Client | None:
    """The client of a key this process holds as valid and not yet due for a recheck, else None."""
    hit = _valid.get(raw_key)
    if hit is not None and hit[0] > time.monotonic():
        return hit[1]
    return None


_rechecks: dict[str, threading.Lock] = {}  # one per key once seen valid: bounded by the real keys


def _recheck(request: Request, raw_key: str) -> Client:
    """A valid key's cache entry expired: one request looks it up again while the others of that key wait for
    its answer, instead of every request in flight asking the database at once (and each thread opening a
    connection of its own)."""
    with _lock:
        gate = _rechecks.setdefault(raw_key, threading.Lock())
    # A lookup that hangs (the database unreachable) holds the others back only so long; then each asks itself.
    gated = gate.acquire(timeout=RECHECK_WAIT)
    try:
        client = _fresh_client(raw_key)
        if client is not None:
            return client  # looked up by another request meanwhile
        return _check(request, raw_key, known=True)
    finally:
        if gated:
            gate.release()


class ApiKeyAuthentication(BaseAuthentication):
    keyword = "Api-Key"

    def authenticate(self, request: Request) -> tuple[Client, str] | None:
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if not header:
            _refuse(
                request,
                exceptions.NotAuthenticated("Missing Authorization header: use 'Authorization: Api-Key <key>'."),
            )
        scheme, _, raw_key = header.partition(" ")
        raw_key = raw_key.strip()
        if scheme != self.keyword or not raw_key:
            _refuse(
                request,
                exceptions.AuthenticationFailed("Malformed Authorization header: use 'Authorization: Api-Key <key>'."),
            )
        client = _fresh_client(raw_key)
        if client is not None:
            return client, raw_key
        if raw_key not in _valid:
            return _check(request, raw_key, known=False), raw_key
        return _recheck(request, raw_key), raw_key

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


def cached_client(authorization: str) -> Client | None:
    """The client of an `Authorization: Api-Key <key>` header when this process holds the key as valid and fresh,
    else None (anything else, a lookup included, is ApiKeyAuthentication's to answer). For the direct path of
    single events (ingestion.views.answer_event_directly)."""
    scheme, _, raw_key = authorization.partition(" ")
    if scheme != ApiKeyAuthentication.keyword:
        return None
    return _fresh_client(raw_key.strip())


def client_of(request: Any) -> Client:
    user = request.user
    assert isinstance(user, Client)
    return user
