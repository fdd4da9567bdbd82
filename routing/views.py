"""POST /api/routing/test: the rule tester as JSON, for staff with a session (the admin's login).

Body: {"event": {...}, "rule_id": optional int, "pattern": optional object (or its JSON text)}.
Answer: 200 {"matched_rules": [names], "topics": [...], "stopped_by", "rules": [...], "event", "event_errors"},
400 {"error", "errors": [{"path", "message"}]} for a bad body or pattern (also for JSON nested deeper than
MAX_JSON_NESTING), 401 without a session, 403 for a user who is not staff or may not view routing rules (and for
a missing CSRF token), 413 for a body over MAX_BODY_BYTES; all in the API's error shape.
"""

from __future__ import annotations

from typing import Any, Final

from django.core.exceptions import ValidationError
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions
from rest_framework.authentication import SessionAuthentication
from rest_framework.parsers import BaseParser
from rest_framework.permissions import BasePermission, IsAdminUser
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from events.schema import BodyError, error_body, parse_json_body
from routing import services
from routing.models import RoutingRule
from routing.patterns import MAX_JSON_NESTING, PatternError, json_depth, parse_pattern

MAX_BODY_BYTES: Final = 256 * 1024
_FIELDS: Final = ("event", "rule_id", "pattern")


class StaffSessionAuthentication(SessionAuthentication):
    """The admin's session (CSRF enforced). Names a scheme so a request without a session gets 401, not 403."""

    def authenticate_header(self, request: Request) -> str:
        return 'Session realm="admin"'


class CanViewRoutingRules(BasePermission):
    message = "You need permission to view routing rules."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return bool(user.has_perm("routing.view_routingrule") or user.has_perm("routing.change_routingrule"))


class BodyTooLarge(exceptions.APIException):
    status_code = 413
    default_detail = f"request body is over {MAX_BODY_BYTES} bytes"


class BoundedJSONParser(BaseParser):
    """JSON read up to MAX_BODY_BYTES and parsed by orjson, which does not recurse in Python: a deeply nested
    body is a clear 400 (past 1024 levels) instead of json.loads' RecursionError, a 500. DRF may parse the body
    before the view runs (the session's CSRF check reads request.POST), hence the bound here."""

    media_type = "application/json"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        if stream is None:
            return None
        body = stream.read(MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            raise BodyTooLarge()
        try:
            return parse_json_body(body)
        except BodyError as exc:
            raise exceptions.ParseError(f"Malformed JSON: {exc.message}") from None


def _bad_request(path: str, message: str) -> Response:
    return Response(error_body(message, [{"path": path, "message": message}]), status=400)


@extend_schema(exclude=True)  # staff tool behind the admin session, not part of the producer API
class RoutingTestView(APIView):
    authentication_classes = [StaffSessionAuthentication]
    permission_classes = [IsAdminUser, CanViewRoutingRules]
    parser_classes = [BoundedJSONParser]
    renderer_classes = [JSONRenderer]
    throttle_classes: list[Any] = []

    def post(self, request: Request) -> Response:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > MAX_BODY_BYTES:
            raise BodyTooLarge()
        body = request.data
        if not isinstance(body, dict):
            return _bad_request("", 'request body must be a JSON object like {"event": {...}}')
        unknown = sorted(str(key) for key in body if key not in _FIELDS)
        if unknown:
            return _bad_request(unknown[0], f"unknown field; expected {', '.join(_FIELDS)}")
        event = body.get("event")
        if not isinstance(event, dict):
            return _bad_request("event", "required: a JSON object (the sample event)")
        if json_depth(event) > MAX_JSON_NESTING:
            return _bad_request("event", f"the sample event is nested deeper than {MAX_JSON_NESTING} levels")
        rule_id = body.get("rule_id")
        if rule_id is not None and (type(rule_id) is not int or rule_id < 1):
            return _bad_request("rule_id", "must be a rule id (a positive integer) or null")
        pattern = body.get("pattern")
        if isinstance(pattern, str):
            try:
                pattern = parse_pattern(pattern)
            except PatternError as exc:
                return _bad_request("pattern", f"Invalid pattern: {exc}")
        elif pattern is not None and not isinstance(pattern, dict):
            return _bad_request("pattern", "must be a JSON object (an EventBridge pattern), its JSON text, or null")
        try:
            result = services.test_routing(event=event, rule_id=rule_id, pattern=pattern)
        except ValidationError as exc:
            return _bad_request("pattern", " ".join(exc.messages))
        except RoutingRule.DoesNotExist:
            return _bad_request("rule_id", f"there is no routing rule with id {rule_id}")
        return Response(result.as_dict())
