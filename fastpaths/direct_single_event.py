"""Fast path `direct_single_event`: a plain single-event POST answered straight from the WSGI environ, without
Django's request and handler or DRF's view.

Replaces: `POST /api/v1/events` served by Django's handler and DRF's APIView (EventView) — through
django_lean_handler's short chain when that is on, else through the full stack.
Why: for one event per request, Django's handler and DRF's dispatch (request objects, middleware calls,
authentication and throttle classes, content negotiation, response finalizing) cost as much web CPU as the
event's own work (docs/performance.md, "Single events: web CPU"). `answer` (ingestion.views'
answer_event_directly) does the event's own work and answers only the plain case — a 202, or a 503 when the
service cannot take work; everything else (a key to look up, a bad body, 401, 413, 415, 429) goes on to the
handler it wraps, with the body put back, so every error stays DRF's. What Django's middleware would add to
these answers is added here: the checks of the lean chain (a Host in ALLOWED_HOSTS; no HTTPS redirect due)
decide whether the request may be answered directly at all, and SecurityMiddleware's headers for a JSON answer
(nosniff, Referrer-Policy, Cross-Origin-Opener-Policy, and HSTS on HTTPS) are worked out at start-up by
SecurityMiddleware itself, once per scheme. The tests compare its answers with the handler's, header by header.

Upstream change that would let it go: none in sight; a Django view cannot skip the handler's per-request work.
It would go if the event endpoint moved to a server of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.exception import response_for_exception
from django.core.handlers.wsgi import WSGIRequest
from django.http import HttpResponse
from django.middleware.security import SecurityMiddleware

import fastpaths

NAME = "direct_single_event"
# It writes by hand what Django's middleware and DRF's view add to an answer: verified on these versions.
VERIFIED = {"Django": "5.2.20", "djangorestframework": "3.18.3"}
_KNOWN_HOSTS = 64  # Host headers remembered as allowed (a service is reached under a few names)


class Answer(Protocol):
    status: str
    headers: list[tuple[str, str]]
    body: bytes


def enabled() -> bool:
    return fastpaths.gate(NAME, VERIFIED)


def _security_headers(environ: dict[str, Any]) -> list[tuple[str, str]]:
    """What SecurityMiddleware adds to a JSON answer of a request like this one."""
    response = HttpResponse(b"", content_type="application/json")
    SecurityMiddleware(lambda request: response).process_response(WSGIRequest(environ), response)
    return [(name, value) for name, value in response.items() if name.lower() != "content-type"]


class DirectSingleEvent:
    def __init__(self, handler: Callable[..., Iterable[bytes]], *, path: str, answer: Callable[..., Any]) -> None:
        self.handler = handler
        self.path = path
        self.answer = answer
        self.hosts: set[str] = set()
        self.extra: dict[str, list[tuple[str, str]]] = {}  # wsgi.url_scheme -> SecurityMiddleware's headers

    def _direct(self, environ: dict[str, Any]) -> bool:
        """The request may be answered directly: a POST to the path, from an allowed Host, and HTTPS is as the
        settings want it (else the handler redirects or refuses)."""
        if environ.get("PATH_INFO") != self.path or environ.get("REQUEST_METHOD") != "POST":
            return False
        if settings.SECURE_PROXY_SSL_HEADER or settings.USE_X_FORWARDED_HOST:
            return False  # the scheme or host come from a proxy's header: left to Django's request
        scheme = environ.get("wsgi.url_scheme", "http")
        if settings.SECURE_SSL_REDIRECT and scheme != "https":
            return False
        host = environ.get("HTTP_HOST", "")
        if host not in self.hosts:
            try:
                WSGIRequest(environ).get_host()
            except DisallowedHost:
                return False  # the handler answers 400
            if len(self.hosts) < _KNOWN_HOSTS:
                self.hosts.add(host)
        if scheme not in self.extra:
            self.extra[scheme] = _security_headers(environ)
        return True

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not self._direct(environ):
            return self.handler(environ, start_response)
        try:
            answer = self.answer(environ)
        except Exception as exc:  # what Django's handler does with it: logged, then handler500's JSON answer
            response = response_for_exception(WSGIRequest(environ), exc)
            start_response(f"{response.status_code} {response.reason_phrase}", list(response.items()))
            return [response.content]
        if answer is None:
            return self.handler(environ, start_response)
        headers = [*answer.headers, ("Content-Length", str(len(answer.body))), *self.extra[environ["wsgi.url_scheme"]]]
        start_response(answer.status, headers)
        return [answer.body]


def application(
    handler: Callable[..., Iterable[bytes]], *, path: str, answer: Callable[..., Any]
) -> Callable[..., Iterable[bytes]]:
    """`handler` with plain POSTs to `path` answered by `answer` first when this fast path is on; else `handler`."""
    if not enabled():
        return handler
    return DirectSingleEvent(handler, path=path, answer=answer)
