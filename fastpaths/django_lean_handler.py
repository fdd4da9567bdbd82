"""Fast path `django_lean_handler`: the two event endpoints served by a Django handler with a short middleware
chain.

Replaces: Django's WSGI handler with settings.MIDDLEWARE for every path (`get_wsgi_application()`, which is what
config/wsgi.py serves alone when this fast path is off).
Why: the event endpoints authenticate by API key in DRF, keep no session and serve no HTML forms, and the full
stack (sessions, CSRF, cookie authentication, messages, history, clickjacking, django-prometheus) was a sizeable
share of a single event's whole web cost (docs/performance.md, second round). They keep SecurityMiddleware (HTTPS
redirect, HSTS, nosniff) and CommonMiddleware's ALLOWED_HOSTS check and Content-Length. Every other path
(admin, dashboard, /metrics, health) goes through the full stack. The handler's chain is built through
Django's non-public `BaseHandler` attributes (`_middleware_chain`, `_view_middleware`,
`_template_response_middleware`, `_exception_middleware`, `_get_response`), as `load_middleware` builds them.

Upstream change that would let it go: per-URL middleware in Django (a view opting out of the global stack,
cf. the long-standing "middleware per URL pattern" requests), or a public way to build a handler from a
middleware list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from django.core.handlers.exception import convert_exception_to_response
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.middleware.security import SecurityMiddleware

import fastpaths

NAME = "django_lean_handler"
VERIFIED = {"Django": "5.2.20"}


def enabled() -> bool:
    return fastpaths.gate(NAME, VERIFIED)


def _common(get_response: Callable[[HttpRequest], Any]) -> Any:
    """What CommonMiddleware does for these requests: refuse a Host header not in ALLOWED_HOSTS (DisallowedHost,
    answered 400 by config.urls' handler400), and give the answer a Content-Length (or a server may chunk it)."""

    def handle(request: HttpRequest) -> HttpResponseBase:
        request.get_host()
        response = get_response(request)
        if isinstance(response, HttpResponse) and not response.has_header("Content-Length"):
            response.headers["Content-Length"] = str(len(response.content))
        return response

    return handle


class EventEndpointHandler(WSGIHandler):
    """Django's WSGI handler (request signals, URL resolution, exception handling and the error handlers of
    config.urls, response closing) with SecurityMiddleware and the Host check and Content-Length of
    CommonMiddleware as its only middleware."""

    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware: list[Any] = []
        self._template_response_middleware: list[Any] = []
        self._exception_middleware: list[Any] = []
        # What BaseHandler.load_middleware builds for a short list (django-stubs omit the private names).
        view = convert_exception_to_response(self._get_response)  # type: ignore[attr-defined]
        secured = convert_exception_to_response(SecurityMiddleware(view))  # type: ignore[arg-type]
        self._middleware_chain = convert_exception_to_response(_common(secured))


class Dispatcher:
    def __init__(self, full: WSGIHandler, events: WSGIHandler, event_paths: Iterable[str]) -> None:
        self.full = full
        self.events = events
        self.event_paths = frozenset(event_paths)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        handler = self.events if environ.get("PATH_INFO") in self.event_paths else self.full
        return handler(environ, start_response)


def application(full: WSGIHandler, event_paths: Iterable[str]) -> Any:
    """The WSGI application: a Dispatcher sending `event_paths` to the lean handler when on, `full` alone off."""
    if not enabled():
        return full
    return Dispatcher(full, EventEndpointHandler(), event_paths)
