"""The event API. Thin: read the body within its limit, parse, validate, hand to ingestion.services."""

from __future__ import annotations

import io
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import exceptions, status
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.logging import trace_scope
from events import tracecontext
from events.schema import (
    BatchValidation,
    BodyError,
    error_body,
    parse_json_body,
    validate_batch,
    validate_event,
    validate_ndjson_batch,
)
from ingestion import bodies, metrics, services
from ingestion.auth import ApiKeyAuthentication, Client, cached_client, client_of
from ingestion.openapi import (
    BATCH_EXAMPLE,
    CONTENT_ENCODING,
    EVENT_EXAMPLES,
    TOO_LARGE,
    UNSUPPORTED,
    BatchRejectedSchema,
    BatchRequestSchema,
    BatchResponseSchema,
    ErrorSchema,
    EventRequestSchema,
    NDJSONBatchSchema,
    ReceiptSchema,
    SingleResponseSchema,
)
from ingestion.throttling import ApiKeyRateThrottle, refusal

logger = logging.getLogger(__name__)

ALLOWED_CHARSETS = {"utf-8", "utf8"}
JSON = "application/json"
NDJSON = "application/x-ndjson"


class RawJSONParser(BaseParser):
    """Declares application/json for DRF and the schema; the views read and parse the bytes themselves (orjson,
    size-limited), so DRF's slower JSON parsing never runs."""

    media_type = "application/json"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        return None


class RawNDJSONParser(RawJSONParser):
    """Declares application/x-ndjson (one event per line) for the batch endpoint; read like RawJSONParser's."""

    media_type = NDJSON


class ORJSONRenderer(JSONRenderer):
    """The same JSON as DRF's renderer for our answers (compact UTF-8), written by orjson: a batch answer lists
    every event, and the stdlib encoder spent more on it than validating the batch did."""

    def render(self, data: Any, accepted_media_type: str | None = None, renderer_context: Any = None) -> bytes:
        if data is None:
            return b""
        try:
            return orjson.dumps(data)
        except TypeError:  # something orjson does not know: DRF's encoder knows more types
            return super().render(data, accepted_media_type, renderer_context)


class JSONFirstNegotiation(DefaultContentNegotiation):
    """Producers send no Accept header, or */*, or application/json: answer JSON without parsing media ranges
    (DRF's negotiation was a visible share of a single event's web CPU). Anything else (a browser) negotiates as
    usual."""

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> Any:
        accept = request.META.get("HTTP_ACCEPT")
        plain = not format_suffix and not request.META.get("QUERY_STRING")  # no ?format= override
        if plain and (not accept or accept in ("*/*", "application/json")):
            first = next(iter(renderers))
            return first, first.media_type
        return super().select_renderer(request, renderers, format_suffix)


def _log_admitted(outcome: services.Outcome) -> None:
    """One debug line per admitted request (with its trace, see config.logging); off at the default level: the
    event endpoints log nothing per request unless asked to."""
    logger.debug(
        "events admitted",
        extra={"event": "events_admitted", "accepted": outcome.accepted, "duplicates": outcome.duplicates},
    )


class RequestError(Exception):
    def __init__(self, status_code: int, message: str, *, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.errors = errors or []


def _error(status_code: int, message: str, errors: list[dict[str, str]] | None = None, **headers: str) -> Response:
    response = Response(error_body(message, errors), status=status_code)
    for name, value in headers.items():
        response[name.replace("_", "-")] = value
    return response


def _media_type(request: HttpRequest | Request, accepted: tuple[str, ...]) -> str:
    content_type = request.META.get("CONTENT_TYPE", "")
    media_type, _, params = content_type.partition(";")
    media_type = media_type.strip().lower()
    if media_type not in accepted:
        raise RequestError(415, f"Content-Type must be {' or '.join(accepted)} (got {content_type or 'none'!r}).")
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ALLOWED_CHARSETS:
            raise RequestError(415, f"Unsupported charset {value.strip()!r}: the body must be UTF-8 JSON.")
    return media_type


def _read_body(request: HttpRequest | Request, accepted: tuple[str, ...] = (JSON,)) -> tuple[str, bytes]:
    """The media type and the decoded body, each limit checked (ingestion.bodies). DRF's Request passes META,
    read() and body on to Django's (documented: "all the other standard attributes and methods are also
    available"), so either may be given."""
    media_type = _media_type(request, accepted)
    coding = bodies.content_coding(header=request.META.get("HTTP_CONTENT_ENCODING"))
    limit = settings.INGEST_MAX_BODY_BYTES
    body = bodies.read_body(meta=request.META, read=request.read, limit=limit)
    if body and coding:
        body = bodies.decode(body=body, coding=coding, limit=limit)
    if not body:
        raise RequestError(400, "The request body is empty: send a JSON object.")
    return media_type, body


def _parse_json(body: bytes) -> Any:
    try:
        return parse_json_body(body)
    except BodyError as exc:
        raise RequestError(400, f"Malformed JSON: {exc.message}") from None


def _read_json(request: HttpRequest | Request) -> Any:
    return _parse_json(_read_body(request)[1])


def _read_batch(request: Request) -> BatchValidation:
    """A JSON or NDJSON batch, validated. Backpressure is checked once the body is read (within its limits) and
    before it is parsed: under overload most batches are refused, and a refusal must cost the web tier little."""
    media_type, body = _read_body(request, (JSON, NDJSON))
    services.check_backpressure()
    if media_type == NDJSON:
        return validate_ndjson_batch(body, max_batch=settings.INGEST_MAX_BATCH)
    return validate_batch(_parse_json(body), max_batch=settings.INGEST_MAX_BATCH)


_durations: dict[tuple[str, int], Any] = {}


def _duration(endpoint: str, status_code: int) -> Any:
    """REQUEST_DURATION's series for an endpoint and status, looked up once per process (few statuses occur)."""
    series = _durations.get((endpoint, status_code))
    if series is None:
        series = _durations[(endpoint, status_code)] = metrics.REQUEST_DURATION.labels(
            endpoint=endpoint, status=str(status_code)
        )
    return series


_allow: dict[type[APIView], str] = {}


def _allowed_methods(view_class: type[APIView]) -> str:
    """The Allow header of a view: its methods never change, DRF works them out again for every request."""
    if view_class not in _allow:
        _allow[view_class] = ", ".join(m.upper() for m in view_class.http_method_names if hasattr(view_class, m))
    return _allow[view_class]


class _IngestView(APIView):
    authentication_classes = [ApiKeyAuthentication]
    permission_classes: list[Any] = []
    throttle_classes = [ApiKeyRateThrottle]
    parser_classes = [RawJSONParser]
    renderer_classes = [ORJSONRenderer]  # JSON only, also for a browser: no answer under /api/ is HTML
    content_negotiation_class = JSONFirstNegotiation
    endpoint = ""
    # Not `trace`: DRF takes any attribute named like an HTTP method for its handler (TRACE would be allowed).
    trace_context: tracecontext.TraceContext

    @property
    def default_response_headers(self) -> dict[str, str]:
        headers = {"Allow": _allowed_methods(type(self))}
        if len(self.renderer_classes) > 1:
            headers["Vary"] = "Accept"
        return headers

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        # The request's W3C trace context: the caller's when valid, else a new trace. Its events carry it to
        # Kafka, its log lines and its task's name it, and the answer's `traceresponse` says which it was.
        self.trace_context, _ = tracecontext.from_headers(
            request.META.get("HTTP_TRACEPARENT"), request.META.get("HTTP_TRACESTATE")
        )
        with trace_scope(self.trace_context):
            response = super().dispatch(request, *args, **kwargs)
        response["traceresponse"] = self.trace_context.traceparent
        _duration(self.endpoint, response.status_code).observe(time.perf_counter() - started)
        return response

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        # A method the endpoint never takes is 405 for anyone, before the API key is looked at (Allow is public).
        method = request.method or ""
        if method.lower() not in self.http_method_names or not hasattr(self, method.lower()):
            raise exceptions.MethodNotAllowed(method)
        super().initial(request, *args, **kwargs)

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, bodies.BodyRejected):
            exc = RequestError(exc.status_code, exc.message)
        if isinstance(exc, RequestError):
            metrics.EVENTS_REJECTED.labels(reason=f"http_{exc.status_code}").inc()
            return _error(exc.status_code, exc.message, exc.errors)
        if isinstance(exc, services.ServiceUnavailable):
            return _error(503, exc.message, Retry_After=str(exc.retry_after))
        response = super().handle_exception(exc)
        if response.status_code == 429:
            metrics.EVENTS_REJECTED.labels(reason="rate_limited").inc()
        if response.status_code in (401, 403):
            response.status_code = 401
            metrics.EVENTS_REJECTED.labels(reason="unauthorized").inc()
        return response


class EventView(_IngestView):
    endpoint = "event"

    @extend_schema(
        operation_id="ingest_event",
        summary="Ingest one event",
        request=EventRequestSchema,
        parameters=[CONTENT_ENCODING],
        responses={
            202: SingleResponseSchema,
            400: ErrorSchema,
            401: ErrorSchema,
            413: TOO_LARGE,
            415: UNSUPPORTED,
            429: ErrorSchema,
            503: ErrorSchema,
        },
        examples=EVENT_EXAMPLES,
    )
    def post(self, request: Request) -> HttpResponse:
        client = client_of(request)
        with services.admission_expected(source=client.name, owner=client.prefix):
            return self._accept(request)

    def _accept(self, request: Request) -> HttpResponse:
        raw = _read_json(request)
        services.check_backpressure()
        result = validate_event(raw)
        if isinstance(result, list):
            metrics.EVENTS_REJECTED.labels(reason="invalid").inc()
            raise RequestError(400, "Invalid event.", errors=[e.as_dict() for e in result])
        body = _accept_one(result, client=client_of(request), trace=self.trace_context)
        # The bytes ORJSONRenderer would write (JSON is the only renderer, and negotiation has passed), without
        # DRF's render step for a body of two strings; DRF takes a plain HttpResponse from a view as it is.
        return HttpResponse(body, status=status.HTTP_202_ACCEPTED, content_type=JSON)


def _accept_one(event: Any, *, client: Client, trace: tracecontext.TraceContext) -> bytes:
    """Accept one validated event; the 202's body."""
    outcome = services.accept_events(events=[(0, event)], source=client.name, trace=trace, owner=client.prefix)
    _log_admitted(outcome)
    event_id, state = outcome.statuses[0]
    return orjson.dumps({"event_id": event_id, "status": state})


@dataclass(frozen=True)
class DirectAnswer:
    """An answer of answer_event_directly: EventView's, for the same request, but for the headers middleware adds."""

    status: str
    headers: list[tuple[str, str]]
    body: bytes


# Exact Content-Type strings only, a narrow twin of _media_type's parsing (the authority): a type it misses is
# not refused here, only handed to the view.
_PLAIN_JSON = frozenset({JSON, "application/json; charset=utf-8", "application/json;charset=utf-8"})


def answer_event_directly(environ: dict[str, Any]) -> DirectAnswer | None:
    """EventView's answer to a plain single-event POST, given its WSGI environ, without Django's request and DRF's
    view machinery (for fastpaths.direct_single_event), or None when the request is anything but plain: the
    caller then serves it through EventView, with the body put back in `wsgi.input` if it was read.

    Plain is what producers send nearly always: JSON with a Content-Length and no Content-Encoding, from an API
    key this process holds as valid (ingestion.auth's cache), a valid event, within the key's rate limit. Those
    are answered here: 202, or 503 when the service cannot take work. Every other answer (400, 401, 413, 415,
    429, a key to look up) is EventView's, so its checks and messages stay in one place; the rate limit is asked
    last, so a request handed over is never counted twice (a refused window stays refused)."""
    started = time.perf_counter()
    if environ.get("CONTENT_TYPE") not in _PLAIN_JSON or "HTTP_CONTENT_ENCODING" in environ:
        return None
    client = cached_client(environ.get("HTTP_AUTHORIZATION", ""))
    length = bodies.declared_length(environ, at_most=settings.INGEST_MAX_BODY_BYTES)
    if client is None or not length:
        return None
    trace, _ = tracecontext.from_headers(environ.get("HTTP_TRACEPARENT"), environ.get("HTTP_TRACESTATE"))
    with trace_scope(trace), services.admission_expected(source=client.name, owner=client.prefix):
        body = environ["wsgi.input"].read(length)
        try:
            event = validate_event(parse_json_body(body))
        except BodyError:
            event = []
        if isinstance(event, list) or refusal(client) is not None:
            environ["wsgi.input"] = io.BytesIO(body)  # EventView reads it again and answers 400 or 429
            return None
        headers = [("Content-Type", JSON), ("Allow", _allowed_methods(EventView)), ("traceresponse", trace.traceparent)]
        try:
            services.check_backpressure()
            answer = DirectAnswer("202 Accepted", headers, _accept_one(event, client=client, trace=trace))
        except services.ServiceUnavailable as exc:
            refused = orjson.dumps(error_body(exc.message))
            answer = DirectAnswer("503 Service Unavailable", [*headers, ("Retry-After", str(exc.retry_after))], refused)
    _duration(EventView.endpoint, int(answer.status[:3])).observe(time.perf_counter() - started)
    return answer


class BatchView(_IngestView):
    endpoint = "batch"
    parser_classes = [RawJSONParser, RawNDJSONParser]

    @extend_schema(
        operation_id="ingest_batch",
        summary="Ingest a batch of events",
        request={JSON: BatchRequestSchema, NDJSON: NDJSONBatchSchema},
        parameters=[CONTENT_ENCODING],
        responses={
            202: BatchResponseSchema,
            400: OpenApiResponse(BatchRejectedSchema, description="No event accepted, or the body itself is invalid"),
            401: ErrorSchema,
            413: TOO_LARGE,
            415: UNSUPPORTED,
            429: ErrorSchema,
            503: ErrorSchema,
        },
        examples=[OpenApiExample("mixed batch", value=BATCH_EXAMPLE, request_only=True)],
    )
    def post(self, request: Request) -> Response:
        client = client_of(request)
        with services.admission_expected(source=client.name, owner=client.prefix):
            return self._accept(request)

    def _accept(self, request: Request) -> Response:
        checked = _read_batch(request)
        if checked.body_errors:
            metrics.EVENTS_REJECTED.labels(reason="invalid").inc()
            raise RequestError(400, "Invalid batch.", errors=[e.as_dict() for e in checked.body_errors])
        client = client_of(request)
        outcome = services.accept_events(
            events=checked.valid, source=client.name, trace=self.trace_context, owner=client.prefix
        )
        _log_admitted(outcome)
        results: list[dict[str, Any]] = [{} for _ in range(len(checked.valid) + len(checked.invalid))]
        for index, (event_id, state) in outcome.statuses.items():
            results[index] = {"index": index, "event_id": event_id, "status": state, "errors": []}
        for index, client_event_id, errors in checked.invalid:
            results[index] = {
                "index": index,
                "event_id": client_event_id,
                "status": services.REJECTED,
                "errors": [e.as_dict() for e in errors],
            }
        if checked.invalid:
            metrics.EVENTS_REJECTED.labels(reason="invalid").inc(len(checked.invalid))
        body = {
            "accepted": outcome.accepted,
            "duplicates": outcome.duplicates,
            "rejected": len(checked.invalid),
            "results": results,
        }
        ok = outcome.accepted + outcome.duplicates > 0
        return Response(body, status=status.HTTP_202_ACCEPTED if ok else status.HTTP_400_BAD_REQUEST)


UNKNOWN_EVENT = (
    "No such event for this API key: unknown, sent with another key, or older than its receipt (INGEST_DEDUP_TTL)."
)


class ReceiptView(_IngestView):
    endpoint = "receipt"

    @extend_schema(
        operation_id="event_receipt",
        parameters=[
            OpenApiParameter(
                "event_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="The id the POST answered"
            )
        ],
        summary="What became of an event",
        description="The receipt of an event this API key sent (or was answered duplicate of), kept for "
        "INGEST_DEDUP_TTL after it was accepted. 404 for another key's event, exactly as for an unknown one.",
        responses={
            200: ReceiptSchema,
            400: ErrorSchema,
            401: ErrorSchema,
            404: ErrorSchema,
            429: ErrorSchema,
            503: ErrorSchema,
        },
    )
    def get(self, request: Request, event_id: str) -> Response:
        try:
            canonical = str(uuid.UUID(event_id))
        except ValueError:
            return _error(400, f"event_id {event_id[:100]!r} is not a UUID.")
        receipt = services.event_receipt(event_id=canonical, owner=client_of(request).prefix)
        if receipt is None:
            return _error(404, UNKNOWN_EVENT)
        return Response(receipt)
