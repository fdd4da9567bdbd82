"""The publisher's health: what /metrics/publisher/health reports.

Checks, each {status, detail} with status healthy | degraded | unhealthy; the overall status is the worst one
(HTTP 200 for healthy or degraded, 503 for unhealthy):

    kafka      a broker answers a metadata request (unhealthy when none does)
    redis      PING answers (the Celery broker, dedup, breaker and stats live there: unhealthy when not)
    postgres   SELECT 1 answers (dead letters, rules, keys: unhealthy when not)
    breaker    the shared circuit breaker: closed healthy, half-open degraded, open unhealthy
    activity   tasks waiting in the broker while nothing was published for PUBLISHER_HEALTH_STALL_SECONDS
               (workers down or stuck): unhealthy; events counted as queued but nothing published: degraded
    error_rate failed / attempts over the stats window above PUBLISHER_HEALTH_ERROR_RATE: degraded
    dlq_rate   dead-lettered / finished deliveries over the window above PUBLISHER_HEALTH_DLQ_RATE: degraded
               (both rates need PUBLISHER_HEALTH_MIN_EVENTS deliveries in the window to judge)

Fast by construction: every probe runs in its own background thread with a bounded timeout and its result is
cached for PROBE_TTL seconds per process; a request waits at most REQUEST_BUDGET seconds for all of them
together, and reports a probe that did not answer in time as unhealthy (its thread finishes on its own).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import psycopg
import redis
from django.conf import settings

from config.redis import connect, get_redis
from events.timefmt import utc_iso_ms
from publisher import breaker, kafka_gateway, queue, stats

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"
_SEVERITY = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}

PROBE_TTL = 1.5  # seconds a probe result is reused by this process
PROBE_TIMEOUT = 1.0  # per network probe (connect + answer)
REQUEST_BUDGET = 1.3  # the longest a health request waits for its probes


@dataclass(frozen=True)
class Check:
    status: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"status": self.status, "detail": self.detail}


def _setting(name: str, default: float) -> float:
    return float(getattr(settings, name, default))


# ------------------------------------------------------------------------------------------------ probes


class _Probe:
    """One probe's cached result and at most one run in flight."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.key: Hashable = None
        self.result: Any = None
        self.at = 0.0
        self.running: tuple[Hashable, threading.Event] | None = None

    def start(self, key: Hashable, fn: Callable[[], Any]) -> threading.Event | None:
        """Start a run unless a fresh result exists (None) or one is running for the same key (its event)."""
        with self.lock:
            if self.key == key and self.at and time.monotonic() - self.at < PROBE_TTL:
                return None
            if self.running is not None and self.running[0] == key:
                return self.running[1]
            done = threading.Event()
            self.running = (key, done)

        def run() -> None:
            try:
                result: Any = fn()
            except Exception as exc:
                result = exc
            with self.lock:
                self.key, self.result, self.at = key, result, time.monotonic()
                if self.running is not None and self.running[1] is done:
                    self.running = None
            done.set()

        threading.Thread(target=run, name=f"health-{self.name}", daemon=True).start()
        return done

    def value(self, key: Hashable) -> tuple[bool, Any]:
        with self.lock:
            if self.key == key and self.at:
                return True, self.result
            return False, None


_probes: dict[str, _Probe] = {name: _Probe(name) for name in ("kafka", "redis", "postgres", "pipeline")}


def _kafka_metadata(host: str, port: int, timeout: float) -> tuple[int, int]:
    """A bare Metadata v1 request for no topics: returns (number of brokers, controller id)."""
    client_id = b"ingest-health"
    # header: api_key=3 (Metadata), api_version=1, correlation_id, client_id; body: topics = [] (none)
    request = struct.pack(">hhih", 3, 1, 7, len(client_id)) + client_id + struct.pack(">i", 0)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", _recv_exact(sock, 4))[0]
        if not 8 <= size <= 10_000_000:
            raise ValueError(f"unexpected response size {size}")
        body = _recv_exact(sock, size)
    correlation_id, broker_count = struct.unpack_from(">ii", body, 0)
    if correlation_id != 7:
        raise ValueError("not a Kafka metadata response")
    offset = 8
    for _ in range(broker_count):
        offset += 4  # node_id
        (host_len,) = struct.unpack_from(">h", body, offset)
        offset += 2 + host_len + 4  # host, port
        (rack_len,) = struct.unpack_from(">h", body, offset)
        offset += 2 + max(0, rack_len)
    (controller,) = struct.unpack_from(">i", body, offset)
    return broker_count, controller


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ConnectionError("connection closed by the broker")
        chunks += chunk
    return bytes(chunks)


def _split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    return host.strip("[]") or "localhost", int(port or 9092)


def probe_kafka(brokers: tuple[str, ...], protocol: str) -> Check:
    deadline = time.monotonic() + PROBE_TIMEOUT
    if protocol != "PLAINTEXT":
        return _probe_kafka_client(deadline)
    errors: list[str] = []
    for address in brokers:
        remaining = deadline - time.monotonic()
        if remaining <= 0.05:
            break
        started = time.monotonic()
        try:
            host, port = _split_host_port(address)
            count, controller = _kafka_metadata(host, port, remaining)
        except Exception as exc:
            errors.append(f"{address}: {exc.__class__.__name__}: {exc}")
            continue
        took = (time.monotonic() - started) * 1000
        return Check(
            HEALTHY, f"{address} answered metadata in {took:.0f} ms ({count} broker(s), controller {controller})"
        )
    return Check(UNHEALTHY, "no broker answered: " + ("; ".join(errors) or f"timeout after {PROBE_TIMEOUT:.1f} s"))


def _probe_kafka_client(deadline: float) -> Check:
    """SSL/SASL brokers need the real client handshake: a short-lived admin client listing topics."""
    timeout_ms = max(200, int((deadline - time.monotonic()) * 1000))
    topics = kafka_gateway.list_topics(request_timeout_ms=timeout_ms, api_version_auto_timeout_ms=timeout_ms)
    return Check(HEALTHY, f"brokers answered ({len(topics)} topics)")


_redis_clients: dict[str, redis.Redis] = {}


def probe_redis(url: str) -> Check:
    client = _redis_clients.get(url)
    if client is None:
        client = connect(url, socket_connect_timeout=PROBE_TIMEOUT, socket_timeout=PROBE_TIMEOUT)
        _redis_clients[url] = client
    started = time.monotonic()
    client.ping()
    return Check(HEALTHY, f"PING answered in {(time.monotonic() - started) * 1000:.0f} ms")


def probe_postgres(params: tuple[tuple[str, Any], ...]) -> Check:
    started = time.monotonic()
    # libpq's connect_timeout has a 2 s floor; the request budget bounds what a caller waits anyway.
    with psycopg.connect(**dict(params), connect_timeout=2, autocommit=True) as conn:
        conn.execute("SET statement_timeout = 1000")
        conn.execute("SELECT 1")
    return Check(HEALTHY, f"SELECT 1 answered in {(time.monotonic() - started) * 1000:.0f} ms")


def _postgres_params() -> tuple[tuple[str, Any], ...]:
    db = settings.DATABASES["default"]
    params = {
        "dbname": db.get("NAME"),
        "user": db.get("USER") or None,
        "password": db.get("PASSWORD") or None,
        "host": db.get("HOST") or None,
        "port": db.get("PORT") or None,
    }
    return tuple(sorted((k, v) for k, v in params.items() if v not in (None, "")))


def probe_pipeline(queue_name: str) -> dict[str, Any]:
    """The publisher's own state: stats, breaker, queued events and tasks waiting in the broker."""
    return {
        "stats": stats.snapshot(),
        "breaker": breaker.current_state(),
        "queue_depth": queue.depth(fresh=True),
        "waiting_tasks": int(get_redis().llen(queue_name)),
    }


# ------------------------------------------------------------------------------------------------ checks


def _run_probes(now: float) -> dict[str, tuple[bool, Any]]:
    queue_name = str(getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", "publish"))
    brokers = tuple(settings.KAFKA_BROKERS)
    protocol = str(settings.KAFKA_SECURITY_PROTOCOL)
    pg = _postgres_params()
    plans: dict[str, tuple[Hashable, Callable[[], Any]]] = {
        "kafka": ((brokers, protocol), lambda: probe_kafka(brokers, protocol)),
        "redis": (settings.REDIS_URL, lambda: probe_redis(settings.REDIS_URL)),
        "postgres": (pg, lambda: probe_postgres(pg)),
        "pipeline": ((queue_name, settings.REDIS_URL, stats.totals_key()), lambda: probe_pipeline(queue_name)),
    }
    events = [_probes[name].start(key, fn) for name, (key, fn) in plans.items()]
    deadline = now + REQUEST_BUDGET
    for event in events:
        if event is not None:
            event.wait(max(0.0, deadline - time.monotonic()))
    return {name: _probes[name].value(key) for name, (key, _) in plans.items()}


def _network_check(name: str, outcome: tuple[bool, Any]) -> Check:
    done, result = outcome
    if not done:
        return Check(UNHEALTHY, f"no answer within {REQUEST_BUDGET:.1f} s")
    if isinstance(result, Exception):
        return Check(UNHEALTHY, f"{result.__class__.__name__}: {result}"[:300])
    assert isinstance(result, Check)
    return result


def _rate_check(name: str, value: float | None, threshold: float, deliveries: int, minimum: int) -> Check:
    if value is None or deliveries < minimum:
        return Check(HEALTHY, f"too few deliveries in the window to judge ({deliveries} < {minimum})")
    text = f"{name} {value:.2%} over {deliveries} deliveries (threshold {threshold:.2%})"
    return Check(DEGRADED if value > threshold else HEALTHY, text)


def _pipeline_checks(outcome: tuple[bool, Any], now: float) -> dict[str, Check]:
    done, result = outcome
    if not done or isinstance(result, Exception):
        why = f"{result.__class__.__name__}: {result}"[:300] if done else f"no answer within {REQUEST_BUDGET:.1f} s"
        unreadable = Check(UNHEALTHY, f"publisher state unreadable ({why})")
        return {"breaker": unreadable, "activity": unreadable, "error_rate": unreadable, "dlq_rate": unreadable}
    snap: dict[str, Any] = result["stats"]
    recent: dict[str, Any] = snap["recent"]
    checks: dict[str, Check] = {}

    state = str(result["breaker"])
    checks["breaker"] = {
        "closed": Check(HEALTHY, "closed"),
        "half-open": Check(DEGRADED, "half-open: probing Kafka after failures"),
        "open": Check(UNHEALTHY, "open: publishing is deferred until Kafka recovers"),
    }.get(state, Check(DEGRADED, f"state unknown ({state})"))

    stall = _setting("PUBLISHER_HEALTH_STALL_SECONDS", 60)
    last = snap.get("last_publish_ts")
    age = None if last is None else max(0.0, now - float(last))
    since = "never" if age is None else f"{age:.0f} s ago"
    waiting, depth = int(result["waiting_tasks"]), int(result["queue_depth"])
    quiet = age is None or age > stall
    if waiting > 0 and quiet:
        checks["activity"] = Check(
            UNHEALTHY if age is not None else DEGRADED,
            f"{waiting} task(s) waiting in the broker and last publish {since}: are the workers running?",
        )
    elif depth > 0 and quiet:
        checks["activity"] = Check(DEGRADED, f"{depth} event(s) counted as queued, last publish {since}")
    elif depth > 0 or waiting > 0:
        checks["activity"] = Check(HEALTHY, f"publishing: last publish {since}, {depth} event(s) queued")
    else:
        checks["activity"] = Check(HEALTHY, f"idle: nothing queued, last publish {since}")

    minimum = int(_setting("PUBLISHER_HEALTH_MIN_EVENTS", 20))
    published, failed, dlq = int(recent["published"]), int(recent["failed"]), int(recent["dlq"])
    checks["error_rate"] = _rate_check(
        "error rate",
        recent.get("error_rate"),
        _setting("PUBLISHER_HEALTH_ERROR_RATE", 0.05),
        published + failed,
        minimum,
    )
    checks["dlq_rate"] = _rate_check(
        "dead-letter rate",
        recent.get("dlq_rate"),
        _setting("PUBLISHER_HEALTH_DLQ_RATE", 0.01),
        published + dlq,
        minimum,
    )
    return checks


def evaluate() -> dict[str, Any]:
    """The health report: {"status", "checks": {name: {status, detail}}, "generated_at", "duration_ms"}."""
    started = time.monotonic()
    now = time.time()
    outcomes = _run_probes(started)
    checks: dict[str, Check] = {
        "kafka": _network_check("kafka", outcomes["kafka"]),
        "redis": _network_check("redis", outcomes["redis"]),
        "postgres": _network_check("postgres", outcomes["postgres"]),
        **_pipeline_checks(outcomes["pipeline"], now),
    }
    overall = max((c.status for c in checks.values()), key=_SEVERITY.__getitem__)
    return {
        "status": overall,
        "checks": {name: check.as_dict() for name, check in checks.items()},
        "generated_at": utc_iso_ms(),
        "duration_ms": round((time.monotonic() - started) * 1000, 1),
    }


def statuses_only(report: dict[str, Any]) -> dict[str, Any]:
    """The report without the details (broker addresses, host names, users, raw errors): for anyone."""
    checks = {name: {"status": check["status"]} for name, check in report["checks"].items()}
    return report | {"checks": checks}
