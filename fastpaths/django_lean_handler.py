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

The lean handler also does less per request than Django's WSGIHandler.__call__ (docs/performance.md, "Single
events: web CPU"):
- it resolves the two paths to their views once, at start-up, instead of walking the URL patterns per request;
- it sends `request_started` / `request_finished` only in a thread that holds an open database connection (one
  opened by `connection_created` in that thread and not yet closed). Django's own receivers of those signals
  (`close_old_connections`, `reset_queries`) do nothing without one, and the event endpoints only touch the
  database when an API key is not in the key cache (ingestion.auth): a connection that opens is then closed or
  kept by Django's rules (CONN_MAX_AGE), as under the full handler, and its thread gets the signals for as long
  as it holds one. The other receivers of `request_finished`, Django's `reset_urlconf` and `close_caches`, have
  nothing to do for these views without one either: the URLconf is the default one and they use no Django
  cache;
- it answers a plain HttpResponse as a one-item list of bytes, which the server writes in one call, instead of
  the response object the server iterates (granian's iterator path cost more than the rest of the view). The
  response is closed first when the signals are due; otherwise its only closer is the request's, which closes
  uploaded files, and the event views take none.

Upstream change that would let it go: per-URL middleware in Django (a view opting out of the global stack,
cf. the long-standing "middleware per URL pattern" requests), or a public way to build a handler from a
middleware list; request signals that cost nothing without a receiver needing them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from django.core import signals
from django.core.handlers.exception import convert_exception_to_response
from django.core.handlers.wsgi import WSGIHandler, get_script_name
from django.db import connections
from django.db.backends.signals import connection_created
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.middleware.security import SecurityMiddleware
from django.urls import ResolverMatch, resolve, set_script_prefix

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


class _Thread(threading.local):
    holds_connection = False  # a database connection opened in this thread may still be open


_thread = _Thread()


def _opened(**kwargs: Any) -> None:
    _thread.holds_connection = True


connection_created.connect(_opened, dispatch_uid="fastpaths.django_lean_handler")


def _still_open() -> bool:
    return any(conn.connection is not None for conn in connections.all(initialized_only=True))


class EventEndpointHandler(WSGIHandler):
    """Django's WSGI handler (exception handling and the error handlers of config.urls, the request signals when
    the thread holds a database connection, response closing) with SecurityMiddleware and the Host check and
    Content-Length of CommonMiddleware as its only middleware, for the paths given."""

    def __init__(self, paths: Iterable[str] = ()) -> None:
        super().__init__()
        self.matches: dict[str, ResolverMatch] = {path: resolve(path) for path in paths}

    def resolve_request(self, request: HttpRequest) -> ResolverMatch:
        match = self.matches.get(request.path_info)
        if match is None or hasattr(request, "urlconf"):
            return super().resolve_request(request)
        request.resolver_match = match
        return match

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        set_script_prefix(get_script_name(environ))
        signalled = _thread.holds_connection
        if signalled:
            signals.request_started.send(sender=self.__class__, environ=environ)
        request = self.request_class(environ)
        response = self.get_response(request)
        response._handler_class = self.__class__  # type: ignore[attr-defined]  # what close() signals as
        headers = [*response.items(), *(("Set-Cookie", c.output(header="")) for c in response.cookies.values())]
        if not isinstance(response, HttpResponse) or getattr(response, "file_to_stream", None) is not None:
            start_response(f"{response.status_code} {response.reason_phrase}", headers)
            return response  # streamed as Django does; the server closes it
        body = response.content
        if signalled or _thread.holds_connection:
            response.close()  # request_finished: Django closes or keeps the connection by its rules
            _thread.holds_connection = _still_open()
        start_response(f"{response.status_code} {response.reason_phrase}", headers)
        return [body]

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
    return Dispatcher(full, EventEndpointHandler(event_paths), event_paths)
