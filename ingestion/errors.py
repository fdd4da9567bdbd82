"""The API's error shape, `{"error": message, "errors": [{"path", "message"}]}`, for every error under /api/.

One body builder (`events.schema.error_body`, shared with routing's rule tester) serves the views, DRF's
exception handler (`api_exception_handler`, set as REST_FRAMEWORK["EXCEPTION_HANDLER"]) and Django's error
handlers (`handler400`... in config.urls), which answer JSON for /api/ paths and keep Django's HTML pages for the
admin and everything else. The handlers also serve the event endpoints' short middleware chain (config.wsgi): both
resolve them from the same ROOT_URLCONF.
"""

from __future__ import annotations

from typing import Any

import orjson
from django.core.exceptions import DisallowedHost, RequestDataTooBig
from django.http import HttpRequest, HttpResponse
from django.views import defaults
from rest_framework.response import Response
from rest_framework.views import exception_handler

from events.schema import error_body

API_PREFIX = "/api/"
SERVER_ERROR = "Internal server error."


def json_error(status: int, message: str, errors: list[dict[str, str]] | None = None) -> HttpResponse:
    return HttpResponse(orjson.dumps(error_body(message, errors)), status=status, content_type="application/json")


def _is_api(request: HttpRequest) -> bool:
    return request.path_info.startswith(API_PREFIX)


def _field_errors(data: Any, path: str = "") -> list[dict[str, str]]:
    """A DRF ValidationError's nested detail as [{"path", "message"}], paths like events[3].quality."""
    if isinstance(data, dict):
        return [e for key, value in data.items() for e in _field_errors(value, f"{path}.{key}" if path else key)]
    if isinstance(data, list):
        if all(not isinstance(item, dict | list) for item in data):
            return [{"path": path, "message": str(item)} for item in data]
        return [e for index, item in enumerate(data) for e in _field_errors(item, f"{path}[{index}]")]
    return [{"path": path, "message": str(data)}]


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler (status, WWW-Authenticate, Retry-After), with the body in the API's error shape."""
    response = exception_handler(exc, context)
    if response is None:  # not an API exception: Django's handlers below answer it
        return None
    data = response.data
    if isinstance(data, dict) and set(data) == {"detail"}:
        response.data = error_body(str(data["detail"]))
    else:
        errors = _field_errors(data)
        response.data = error_body(errors[0]["message"] if len(errors) == 1 else "Invalid request.", errors)
    return response


# ----------------------------------------------------------------- Django's handlers (config.urls)


def handler400(request: HttpRequest, exception: Exception) -> HttpResponse:
    """Django's own refusals (SuspiciousOperation and BadRequest): a Host not in ALLOWED_HOSTS, a body over
    DATA_UPLOAD_MAX_MEMORY_SIZE, too many form fields..."""
    if not _is_api(request):
        return defaults.bad_request(request, exception)
    if isinstance(exception, RequestDataTooBig):
        return json_error(413, "Request body is too large.")
    if isinstance(exception, DisallowedHost):
        host = request.META.get("HTTP_HOST", "")
        return json_error(400, f"Host header {host!r} is not a name this server answers to.")
    return json_error(400, "Bad request.")  # other messages may name internals (paths, settings)


def handler403(request: HttpRequest, exception: Exception) -> HttpResponse:
    if not _is_api(request):
        return defaults.permission_denied(request, exception)
    return json_error(403, "Permission denied.")


def handler404(request: HttpRequest, exception: Exception) -> HttpResponse:
    if not _is_api(request):
        return defaults.page_not_found(request, exception)
    return json_error(404, f"There is no API endpoint at {request.path_info}.")


def handler500(request: HttpRequest) -> HttpResponse:
    """No detail: the exception and its traceback go to the log (django.request), never to the client."""
    if not _is_api(request):
        return defaults.server_error(request)
    return json_error(500, SERVER_ERROR)
