"""WSGI entry point: `config.wsgi:application`.

The two event endpoints skip Django's middleware stack (sessions, CSRF, cookie authentication, messages,
history, clickjacking): they authenticate by API key in DRF, keep no session and serve no HTML forms, and the
stack cost about 100 µs of CPU per request — a tenth of a single event's whole web cost. They keep
SecurityMiddleware (HTTPS redirect, HSTS, nosniff) and CommonMiddleware's ALLOWED_HOSTS check. Every other path
(admin, dashboard, /metrics, health) goes through the full stack in settings.MIDDLEWARE.
"""

import os
from collections.abc import Callable, Iterable
from typing import Any

from django.core.handlers.exception import convert_exception_to_response
from django.core.handlers.wsgi import WSGIHandler
from django.core.wsgi import get_wsgi_application
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.middleware.security import SecurityMiddleware

from config.heap import settle_after_startup

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


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


def _application() -> Dispatcher:
    full = get_wsgi_application()  # sets Django up
    from ingestion.middleware import ingest_paths

    return Dispatcher(full, EventEndpointHandler(), ingest_paths())


application = _application()
# config.heap: the start-up heap is done. The default young threshold is kept here: a request's garbage cycles
# hold its parsed body, and waiting for 20,000 allocations let them pile up (+26 MiB peak under batches).
settle_after_startup(young_threshold=None)
