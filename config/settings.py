"""Django settings. Everything that varies between machines comes from the environment through config.env,
so a bad value stops startup with the variable's name (docs/configuration.md)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import dj_database_url
from csp.constants import NONE, SELF, UNSAFE_INLINE

import fastpaths
from config.env import (
    EnvError,
    env_addresses,
    env_bool,
    env_choice,
    env_duration,
    env_float,
    env_int,
    env_int_or_auto,
    env_list,
    env_rate,
    env_str,
    sentinel_broker_url,
)
from fastpaths import kombu_redis_transport

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = env_str("SECRET_KEY")
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "http://127.0.0.1:8083,http://localhost:8083")

# ---------------------------------------------------------------- HTTPS (behind a TLS-terminating proxy)
# Off by default: `make run` serves plain http://127.0.0.1:8083, where Secure cookies would never come back.
# The proxy must set (overwrite) X-Forwarded-Proto, or a client could claim https itself.
BEHIND_TLS_PROXY = env_bool("BEHIND_TLS_PROXY", False)
if BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", BEHIND_TLS_PROXY)
# Prometheus and liveness probes reach the web tier directly, in plain HTTP, not through the proxy.
SECURE_REDIRECT_EXEMPT = [r"^metrics(/|$)"]
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", BEHIND_TLS_PROXY)
# HSTS binds browsers to https for this long: opt in once https works (then raise it to a year).
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_prometheus",
    "csp",
    "rest_framework",
    "rest_framework_api_key",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "solo",
    "simple_history",
    "ingestion",
    "routing",
    "publisher",
]

MIDDLEWARE = [
    "ingestion.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "simple_history.middleware.HistoryRequestMiddleware",
    "ingestion.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = env_str("DATABASE_URL", "postgres://ingest:ingest@127.0.0.1:5433/ingest")
try:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
except ValueError as exc:
    raise EnvError(f"DATABASE_URL is not a valid database URL: {exc}") from None
if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
    raise EnvError("DATABASE_URL must be a postgres:// URL (PostgreSQL is the only supported database)")
DATABASES["default"]["ENGINE"] = "django_prometheus.db.backends.postgresql"
DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = 5

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6380/0")
if not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    raise EnvError(f"REDIS_URL={REDIS_URL!r} is not valid: expected redis://host:port/db")

# Redis behind Sentinel: the primary's address comes from the Sentinels (asked again on every new connection, so a
# failover is followed without a restart); REDIS_URL then gives only the database number and password.
REDIS_SENTINELS = env_addresses("REDIS_SENTINELS", "", default_port=26379)
REDIS_SENTINEL_MASTER = env_str("REDIS_SENTINEL_MASTER", "ingest")
if REDIS_SENTINELS and not REDIS_URL.startswith("redis://"):
    raise EnvError(f"REDIS_URL={REDIS_URL!r} is not valid with REDIS_SENTINELS: expected redis://[:password@]host/db")
# Admission waits (Redis WAIT) for this many replicas to hold an accepted task before answering 202.
INGEST_REDIS_MIN_REPLICAS = env_int("INGEST_REDIS_MIN_REPLICAS", 0, minimum=0, maximum=10)
INGEST_REDIS_REPLICA_WAIT = env_duration("INGEST_REDIS_REPLICA_WAIT", "500ms", maximum="10s")

CACHES: dict[str, dict[str, Any]] = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "ingest",
        "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2}
        | ({"pool_class": "config.redis.SentinelMasterPool"} if REDIS_SENTINELS else {}),
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / ".data" / "static"
# Serve static files straight from the apps when collectstatic has not run (tests, a fresh checkout).
WHITENOISE_USE_FINDERS = True
# The admin and the API docs are served by the web server itself (no CDN, no separate web server needed).
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Content-Security-Policy on every page of the full middleware stack (admin, dashboard, API docs; the event
# endpoints skip it with fastpaths/django_lean_handler.py): scripts only from this origin's files, so injected
# markup cannot run script. Inline styles stay allowed: Django 5.2's admin (changelist without actions), the
# Swagger UI page and our admin templates use them, and a style cannot run code.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF, UNSAFE_INLINE],
        "img-src": [SELF, "data:"],  # the admin's and Swagger UI's icons are data: URIs in their CSS
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}

# ---------------------------------------------------------------- Kafka
KAFKA_BROKERS = env_list("KAFKA_BROKERS", "localhost:9092")
KAFKA_TOPIC_ATTEMPTS = env_str("KAFKA_TOPIC_ATTEMPTS", "user.attempts")
KAFKA_TOPIC_SESSIONS = env_str("KAFKA_TOPIC_SESSIONS", "user.sessions")
KAFKA_TOPIC_PLACEMENTS = env_str("KAFKA_TOPIC_PLACEMENTS", "user.placements")
KAFKA_TOPIC_ACTIVITIES = env_str("KAFKA_TOPIC_ACTIVITIES", "user.activities")
KAFKA_TOPIC_ML_TRAINING = env_str("KAFKA_TOPIC_ML_TRAINING", "ml.training_events")
KAFKA_TOPIC_DLQ = "dlq.events"
KAFKA_TOPIC_PARTITIONS = env_int("KAFKA_TOPIC_PARTITIONS", 3, minimum=1)
# None (auto): ensure_topics replicates to min(3, live brokers), with min.insync.replicas 2 from 3 copies.
KAFKA_TOPIC_REPLICATION_FACTOR = env_int_or_auto("KAFKA_TOPIC_REPLICATION_FACTOR", minimum=1)
KAFKA_PRODUCER_TIMEOUT = env_duration("KAFKA_PRODUCER_TIMEOUT", "10s")
KAFKA_PRODUCER_RETRIES = env_int("KAFKA_PRODUCER_RETRIES", 3, minimum=0, maximum=100)
KAFKA_PRODUCER_BATCH_SIZE = env_int("KAFKA_PRODUCER_BATCH_SIZE", 100, minimum=1)
KAFKA_PRODUCER_BATCH_TIMEOUT = env_duration("KAFKA_PRODUCER_BATCH_TIMEOUT", "10ms")
# Each publish round one Kafka transaction (exactly once for read_committed consumers; docs/architecture.md).
KAFKA_TRANSACTIONS = env_bool("KAFKA_TRANSACTIONS", False)
# Transactional ids are <prefix>.<worker name>.<pool slot>: deployments sharing a cluster need different prefixes.
KAFKA_TRANSACTIONAL_ID_PREFIX = env_str("KAFKA_TRANSACTIONAL_ID_PREFIX", "event-ingestion")
if not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", KAFKA_TRANSACTIONAL_ID_PREFIX):
    raise EnvError(
        f"KAFKA_TRANSACTIONAL_ID_PREFIX={KAFKA_TRANSACTIONAL_ID_PREFIX!r} is not valid: "
        "1 to 100 letters, digits, '.', '_' or '-'"
    )
KAFKA_COMPRESSION_TYPE = env_choice("KAFKA_COMPRESSION_TYPE", "snappy", ("none", "gzip", "snappy", "lz4", "zstd"))
KAFKA_SECURITY_PROTOCOL = env_choice(
    "KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", ("plaintext", "ssl", "sasl_plaintext", "sasl_ssl")
).upper()
KAFKA_SASL_MECHANISM = env_choice("KAFKA_SASL_MECHANISM", "PLAIN", ("plain", "scram-sha-256", "scram-sha-512")).upper()
KAFKA_SASL_USERNAME = env_str("KAFKA_SASL_USERNAME", "")
KAFKA_SASL_PASSWORD = env_str("KAFKA_SASL_PASSWORD", "")
KAFKA_SSL_CAFILE = env_str("KAFKA_SSL_CAFILE", "")
KAFKA_SSL_CERTFILE = env_str("KAFKA_SSL_CERTFILE", "")
KAFKA_SSL_KEYFILE = env_str("KAFKA_SSL_KEYFILE", "")
if KAFKA_SECURITY_PROTOCOL.startswith("SASL") and not (KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD):
    raise EnvError(
        "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD are required with "
        f"KAFKA_SECURITY_PROTOCOL={KAFKA_SECURITY_PROTOCOL}"
    )
for _name in ("KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE"):
    if globals()[_name] and not Path(globals()[_name]).is_file():
        raise EnvError(f"{_name}={globals()[_name]!r} is not a readable file")

# ---------------------------------------------------------------- Ingestion API
INGEST_MAX_BATCH = env_int("INGEST_MAX_BATCH", 1000, minimum=1, maximum=100_000)
INGEST_MAX_BODY_BYTES = env_int("INGEST_MAX_BODY_BYTES", 5 * 1024 * 1024, minimum=1024)
# Django's limit on request.body and form data, Django's default: it guards the admin's forms. The event
# endpoints read their bodies from the stream against INGEST_MAX_BODY_BYTES instead (ingestion.views).
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
INGEST_MAX_QUEUE_DEPTH = env_int("INGEST_MAX_QUEUE_DEPTH", 1_000_000, minimum=1)
# Queued work waiting longer than this (the oldest task no worker has taken yet) gets new events 503; 0: no limit.
INGEST_MAX_QUEUE_DELAY = env_duration("INGEST_MAX_QUEUE_DELAY", "250ms")
# How often the queued-events counter is checked against the tasks the broker holds (publisher.queue); 0: never.
INGEST_QUEUE_RECONCILE_INTERVAL = env_duration("INGEST_QUEUE_RECONCILE_INTERVAL", "30s")
INGEST_DEDUP_TTL = env_duration("INGEST_DEDUP_TTL", "24h")
# Receipts (GET /api/v1/events/<id>): what became of each accepted event, kept for INGEST_DEDUP_TTL.
INGEST_RECEIPTS = env_bool("INGEST_RECEIPTS", True)
INGEST_RATE_LIMIT = env_rate("INGEST_RATE_LIMIT", "2000/s")
INGEST_GROUP_WAIT = env_duration("INGEST_GROUP_WAIT", "10ms")
INGEST_BACKLOG_GROUP_TASKS = env_int("INGEST_BACKLOG_GROUP_TASKS", 1, minimum=0)
# Every request waits this long while the workers are behind: keep it far below any client timeout.
INGEST_BACKLOG_GROUP_WAIT = env_duration("INGEST_BACKLOG_GROUP_WAIT", "20ms", maximum="1s")
INGEST_RETRY_AFTER_SECONDS = env_int("INGEST_RETRY_AFTER_SECONDS", 1, minimum=1)
# Single-event requests worked on at once per web process (0: no limit); the others wait for one at most
# INGEST_WEB_MAX_WAIT, and while waits stay long they are refused at once (ingestion.shedding).
INGEST_WEB_ACTIVE_REQUESTS = env_int("INGEST_WEB_ACTIVE_REQUESTS", 32, minimum=0, maximum=1024)
# The same for batches, which cost the web tier ~100 times more each: fewer at once keep their latency short.
INGEST_WEB_ACTIVE_BATCHES = env_int("INGEST_WEB_ACTIVE_BATCHES", 4, minimum=0, maximum=1024)
INGEST_WEB_MAX_WAIT = env_duration("INGEST_WEB_MAX_WAIT", "200ms", maximum="10s")
# A revoked or expired key keeps working this long in a process that has it cached.
INGEST_KEY_CACHE_SECONDS = env_duration("INGEST_KEY_CACHE_SECONDS", "5s", maximum="1h")
# Failed authentications per client address and minute before it gets 429 (0: no limit).
INGEST_AUTH_FAILURES_PER_MINUTE = env_int("INGEST_AUTH_FAILURES_PER_MINUTE", 100, minimum=0)
# Reverse proxies in front of the web server, each appending the address it saw to X-Forwarded-For: the client
# is the NUM_PROXIES-th address from the right. 0: the client is REMOTE_ADDR, X-Forwarded-For is ignored.
NUM_PROXIES = env_int("NUM_PROXIES", 0, minimum=0, maximum=10)
# Fast paths switched on (fastpaths/): `all`, `none` or a comma list of names; an unknown name fails here.
# Each also checks the installed library versions and falls back to the public path on a mismatch.
INGEST_FAST_PATHS = sorted(fastpaths.switched_on())

# ---------------------------------------------------------------- Celery
# Normally the same Redis; a deployment may give Celery its own instance. Behind Sentinel the default is kombu's
# Sentinel transport on the same Sentinels, master name and database.
_APP_BROKER_URL = sentinel_broker_url(REDIS_URL, REDIS_SENTINELS) or REDIS_URL
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", _APP_BROKER_URL)
# WAIT on the app's Redis says nothing about another broker's replicas.
if INGEST_REDIS_MIN_REPLICAS and CELERY_BROKER_URL != _APP_BROKER_URL:
    raise EnvError(
        "INGEST_REDIS_MIN_REPLICAS needs Celery's broker to be REDIS_URL's Redis: leave CELERY_BROKER_URL unset"
    )
# Fast path kombu_redis_transport (fastpaths/): kombu's Redis transport minus three per-task costs and with
# orphaned messages put back; off, or for other schemes, kombu's own transport.
_FAST_TRANSPORT = kombu_redis_transport.transport_for(CELERY_BROKER_URL)
if _FAST_TRANSPORT is not None:
    CELERY_BROKER_TRANSPORT = _FAST_TRANSPORT
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]  # never pickle: a task message must not be able to run code
# Task bodies (a batch of events) compressed: a queued event takes much less Redis memory, and the worker's
# main process, which reads every message and copies it into kombu's unacked hash, handles far fewer bytes.
CELERY_TASK_COMPRESSION = "zstd"
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
# acks_late + reject_on_worker_lost: a task is removed from Redis only after it finished, so a worker killed
# mid-batch leaves its task to be redelivered (publishing is idempotent per destination).
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = env_int("CELERY_WORKER_PREFETCH_MULTIPLIER", 4, minimum=1)
CELERY_WORKER_CONCURRENCY = env_int("CELERY_WORKER_CONCURRENCY", 2, minimum=1)
CELERY_TASK_DEFAULT_QUEUE = "publish"
CELERY_TASK_ROUTES = {"publisher.*": {"queue": "publish"}}
# Tasks declared outside an app's tasks.py (which autodiscovery finds): the replay jobs' slices.
CELERY_IMPORTS = ("publisher.replay.jobs", "publisher.replay.topics")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Longer than any task's whole run (in-task retries: about (retries + 1) x KAFKA_PRODUCER_TIMEOUT) and any
# countdown (breaker reset, <= 30 s by default), or Redis would hand an unacknowledged task to a second worker
# while the first still holds it; short enough that a task of a worker killed outright is redelivered soon.
CELERY_VISIBILITY_TIMEOUT = env_int("CELERY_VISIBILITY_TIMEOUT", 300, minimum=60)
CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
}
if CELERY_BROKER_URL.startswith("sentinel://"):
    CELERY_BROKER_TRANSPORT_OPTIONS |= {
        "master_name": REDIS_SENTINEL_MASTER,
        "sentinel_kwargs": {"socket_connect_timeout": 1, "socket_timeout": 1},
    }
# In-task retrying stops here (publisher/retry_budget.py): well under the visibility timeout, or a second worker
# would run a task the first is still retrying.
PUBLISHER_RETRY_DEADLINE = env_duration(
    "PUBLISHER_RETRY_DEADLINE", f"{CELERY_VISIBILITY_TIMEOUT / 4}s", maximum=f"{CELERY_VISIBILITY_TIMEOUT / 2}s"
)

# ---------------------------------------------------------------- DRF
REST_FRAMEWORK: dict[str, Any] = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
    "NUM_PROXIES": NUM_PROXIES,  # the same rule for DRF's own client addresses
    "EXCEPTION_HANDLER": "ingestion.errors.api_exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Event ingestion API",
    "DESCRIPTION": "Learning events (attempts, sessions, placements, activities) in, Kafka out.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "ingestion.openapi.require_request_bodies",
    ],
}

LOG_LEVEL = env_choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")).upper()
LOG_FORMAT = env_choice("LOG_FORMAT", "json", ("json", "text"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "config.logging.JsonFormatter"},
        "text": {"format": "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"kafka": {"level": "WARNING"}},
}

# ---------------------------------------------------------------- Metrics and health
PROMETHEUS_MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")  # chosen in config/__init__.py
METRICS_ACCESS = env_str("METRICS_ACCESS", "loopback")  # comma-separated: loopback, token, staff, open
_metrics_modes = {m.strip().lower() for m in METRICS_ACCESS.split(",") if m.strip()}
if not _metrics_modes or not _metrics_modes <= {"loopback", "token", "staff", "open"}:
    raise EnvError(f"METRICS_ACCESS={METRICS_ACCESS!r} is not valid: expected loopback, token, staff or open")
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
if "token" in _metrics_modes and not METRICS_TOKEN:
    raise EnvError("METRICS_TOKEN is required with METRICS_ACCESS=token")
if METRICS_TOKEN and not all("!" <= c <= "~" for c in METRICS_TOKEN):
    raise EnvError("METRICS_TOKEN must be printable ASCII without spaces: it travels in an HTTP header")
PUBLISHER_HEALTH_DLQ_RATE = env_float("PUBLISHER_HEALTH_DLQ_RATE", 0.01, minimum=0)
PUBLISHER_HEALTH_MIN_EVENTS = env_int("PUBLISHER_HEALTH_MIN_EVENTS", 20, minimum=1)
PUBLISHER_HEALTH_STALL_SECONDS = env_duration("PUBLISHER_HEALTH_STALL_SECONDS", "60s")
PUBLISHER_STATS_WINDOW = env_duration("PUBLISHER_STATS_WINDOW", "5m")
PUBLISHER_STATS_EMA_ALPHA = env_float("PUBLISHER_STATS_EMA_ALPHA", 0.1, minimum=0.001)

# Topics saved in the admin must exist on the cluster; routing asks the publisher (it knows Kafka).
ROUTING_TOPIC_EXISTS_CHECK = "publisher.services.topic_exists"

# Publisher knobs not covered by the retry-policy singleton.
PUBLISHER_BREAKER_FAIL_MAX = env_int("PUBLISHER_BREAKER_FAIL_MAX", 5, minimum=1)
PUBLISHER_BREAKER_RESET_TIMEOUT = env_duration("PUBLISHER_BREAKER_RESET_TIMEOUT", "30s")
PUBLISHER_POISON_MAX_DELIVERIES = env_int("PUBLISHER_POISON_MAX_DELIVERIES", 3, minimum=1)
PUBLISHER_DLQ_FLOOD_PER_MINUTE = env_int("PUBLISHER_DLQ_FLOOD_PER_MINUTE", 1000, minimum=0)
PUBLISHER_HEALTH_ERROR_RATE = env_float("PUBLISHER_HEALTH_ERROR_RATE", 0.05, minimum=0)
