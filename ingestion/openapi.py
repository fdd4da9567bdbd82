"""OpenAPI description of the event API (drf-spectacular). These serializers document the contract only;
requests are validated by events.schema, which is far cheaper than DRF serializers. The limits are imported from
events.limits, so the description cannot drift from the checks."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema_field,
)
from rest_framework import serializers

from events.limits import (
    MAX_FUTURE_SKEW,
    MAX_INT,
    MAX_METADATA_KEYS,
    MAX_PROPERTIES_BYTES,
    MAX_RESPONSE_BYTES,
    MAX_STRING_CHARS,
    MIN_INT,
    SCHEMA_VERSION,
)

# events.schema refuses control characters: none in names and ids, tab and line breaks only in free text.
NO_CONTROL = r"^[^\u0000-\u001f\u007f]*$"
TEXT_CONTROL_ALLOWED = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]*$"


def identifier(**options: Any) -> serializers.RegexField:
    """A name or id: 1 to MAX_STRING_CHARS characters, no control characters."""
    return serializers.RegexField(NO_CONTROL, min_length=1, max_length=MAX_STRING_CHARS, **options)


class ApiKeyScheme(OpenApiAuthenticationExtension):
    """`Authorization: Api-Key <key>` (ingestion.auth) as the schema's security scheme; registered on import."""

    target_class = "ingestion.auth.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Api-Key <key>`: a key made with `manage.py create_api_key`",
        }


@extend_schema_field(
    {
        "type": "object",
        "maxProperties": MAX_METADATA_KEYS,
        "propertyNames": {"pattern": NO_CONTROL},
        "additionalProperties": {
            "oneOf": [
                {"type": "string", "pattern": TEXT_CONTROL_ALLOWED},
                {"type": "integer", "minimum": MIN_INT, "maximum": MAX_INT},
                {"type": "number", "not": {"type": "integer"}},
                {"type": "boolean"},
            ]
        },
    }
)
class MetadataField(serializers.DictField):
    pass


class _Common(serializers.Serializer):
    event_id = serializers.UUIDField(
        required=False,
        allow_null=True,
        help_text="Generated when absent; a client-supplied id is the dedup key of non-attempts (global: a UUID).",
    )
    user_id = identifier(help_text="The Kafka message key.")
    occurred_at = serializers.DateTimeField(
        help_text=f"RFC 3339 with offset; at most {MAX_FUTURE_SKEW.seconds // 60} minutes in the future."
    )
    schema_version = serializers.IntegerField(
        required=False, allow_null=True, default=SCHEMA_VERSION, min_value=1, max_value=SCHEMA_VERSION
    )
    metadata = MetadataField(required=False, allow_null=True, help_text="Flat: string keys to string/number/bool.")


class AttemptEventSchema(_Common):
    event_type = serializers.ChoiceField(choices=["attempt"])
    client_attempt_id = identifier(
        help_text="With user_id, the dedup key: per learner, as clients number attempts.",
    )
    session_id = identifier()
    item_id = identifier()
    correct = serializers.BooleanField()
    quality = serializers.IntegerField(min_value=0, max_value=5)
    time_taken_ms = serializers.IntegerField(min_value=0, max_value=MAX_INT)
    response = serializers.RegexField(
        TEXT_CONTROL_ALLOWED, required=False, allow_null=True, allow_blank=True, max_length=MAX_RESPONSE_BYTES
    )


class SessionEventSchema(_Common):
    event_type = serializers.ChoiceField(choices=["session"])
    session_id = identifier()
    started_at = serializers.DateTimeField()
    ended_at = serializers.DateTimeField(required=False, allow_null=True, help_text=">= started_at")
    items_attempted = serializers.IntegerField(
        min_value=0, max_value=MAX_INT, required=False, allow_null=True, default=0
    )
    items_correct = serializers.IntegerField(
        min_value=0, max_value=MAX_INT, required=False, allow_null=True, default=0, help_text="<= items_attempted"
    )


class PlacementEventSchema(_Common):
    event_type = serializers.ChoiceField(choices=["placement"])
    placement_id = identifier()
    completed = serializers.BooleanField()
    score = serializers.FloatField(required=False, allow_null=True)
    level = identifier(required=False, allow_null=True)


class ActivityEventSchema(_Common):
    event_type = serializers.ChoiceField(choices=["activity"])
    activity_type = identifier()
    properties = serializers.DictField(
        child=serializers.JSONField(),
        required=False,
        allow_null=True,
        help_text=f"<= {MAX_PROPERTIES_BYTES // 1024} KiB as JSON",
    )


EventRequestSchema = PolymorphicProxySerializer(
    component_name="Event",
    serializers={
        "attempt": AttemptEventSchema,
        "session": SessionEventSchema,
        "placement": PlacementEventSchema,
        "activity": ActivityEventSchema,
    },
    resource_type_field_name="event_type",
)


class BatchRequestSchema(serializers.Serializer):
    events = serializers.ListField(child=EventRequestSchema, min_length=1, help_text="At most INGEST_MAX_BATCH.")


# application/x-ndjson: the same events, one JSON object per line (blank lines ignored). OpenAPI 3.0 has no
# type for a sequence of lines, so it is described as the array of events the lines carry (require_request_bodies
# adds minItems).
NDJSONBatchSchema = PolymorphicProxySerializer(
    component_name="Event",
    serializers=EventRequestSchema.serializers,
    resource_type_field_name="event_type",
    many=True,
)
NDJSON_MEDIA_TYPE = "application/x-ndjson"

CODINGS = ("gzip", "deflate", "zstd")
CONTENT_ENCODING = OpenApiParameter(
    "Content-Encoding",
    str,
    OpenApiParameter.HEADER,
    required=False,
    enum=[*CODINGS, "identity"],
    description=(
        "The body may be compressed: gzip, deflate (zlib or raw) or zstd. INGEST_MAX_BODY_BYTES limits the "
        "compressed body and the decompressed one (413); another coding is 415, corrupt data 400."
    ),
)


class FieldErrorSchema(serializers.Serializer):
    path = serializers.CharField(help_text="Field path, e.g. events[3].quality")
    message = serializers.CharField()


class SingleResponseSchema(serializers.Serializer):
    event_id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=["accepted", "duplicate"])


class BatchResultSchema(serializers.Serializer):
    index = serializers.IntegerField()
    event_id = serializers.UUIDField(allow_null=True)
    status = serializers.ChoiceField(choices=["accepted", "duplicate", "rejected"])
    errors = FieldErrorSchema(many=True)  # type: ignore[assignment]  # shadows Serializer.errors, on purpose


class BatchResponseSchema(serializers.Serializer):
    accepted = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    rejected = serializers.IntegerField()
    results = BatchResultSchema(many=True)


class ReceiptDeliverySchema(serializers.Serializer):
    topic = serializers.CharField()
    partition = serializers.IntegerField(min_value=0)
    offset = serializers.IntegerField(min_value=0)


class ReceiptDeadLetterSchema(serializers.Serializer):
    dead_letter_id = serializers.IntegerField(help_text="The dead letter's id, for the operators")
    topic = serializers.CharField(help_text="The destination that refused the event")
    reason = serializers.ChoiceField(choices=["retries_exhausted", "permanent_error", "poison_task"])


class ReceiptSchema(serializers.Serializer):
    event_id = serializers.UUIDField()
    status = serializers.ChoiceField(
        choices=["queued", "published", "dead_lettered", "duplicate", "unrouted"],
        help_text="queued: accepted, not yet in Kafka (or being retried); published: every destination "
        "acknowledged; dead_lettered: at least one destination refused it (see dead_letters); duplicate: not "
        "published itself, see duplicate_of; unrouted: no routing rule matched, it went nowhere",
    )
    duplicate_of = serializers.UUIDField(required=False, help_text="Only for duplicate: the original event")
    deliveries = ReceiptDeliverySchema(many=True, help_text="Acknowledged by Kafka, with where the record is")
    dead_letters = ReceiptDeadLetterSchema(many=True)


STRICT_COMPONENTS = (
    "AttemptEventSchema",
    "SessionEventSchema",
    "PlacementEventSchema",
    "ActivityEventSchema",
    "BatchRequestSchema",
)


def require_request_bodies(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: POST bodies are required, and unknown fields are rejected (the
    schema says so, so clients and generated SDKs know)."""
    for path in result.get("paths", {}).values():
        for operation in path.values():
            if isinstance(operation, dict) and "requestBody" in operation:
                operation["requestBody"]["required"] = True
    for path in result.get("paths", {}).values():
        ndjson = path.get("post", {}).get("requestBody", {}).get("content", {}).get(NDJSON_MEDIA_TYPE)
        if ndjson:
            ndjson["schema"]["minItems"] = 1
            ndjson["schema"]["description"] = "One event per line (shown as the array of the lines' events)"
    schemas = result.get("components", {}).get("schemas", {})
    for name in STRICT_COMPONENTS:
        if name in schemas:
            schemas[name]["additionalProperties"] = False
    return result


class ErrorSchema(serializers.Serializer):
    error = serializers.CharField()
    errors = FieldErrorSchema(many=True, required=False)  # type: ignore[assignment]


TOO_LARGE = OpenApiResponse(ErrorSchema, description="Body over INGEST_MAX_BODY_BYTES, as sent or once decompressed")
UNSUPPORTED = OpenApiResponse(ErrorSchema, description="Content-Type or Content-Encoding not supported")


_NOW = "2026-01-15T10:15:00Z"
ATTEMPT_EXAMPLE = {
    "event_type": "attempt",
    "user_id": "learner-42",
    "occurred_at": _NOW,
    "client_attempt_id": "a-9f1c",
    "session_id": "s-17",
    "item_id": "item-3",
    "correct": True,
    "quality": 4,
    "time_taken_ms": 5300,
}
SESSION_EXAMPLE = {
    "event_type": "session",
    "user_id": "learner-42",
    "occurred_at": _NOW,
    "session_id": "s-17",
    "started_at": "2026-01-15T10:00:00Z",
    "ended_at": _NOW,
    "items_attempted": 12,
    "items_correct": 9,
}
PLACEMENT_EXAMPLE = {
    "event_type": "placement",
    "user_id": "learner-42",
    "occurred_at": _NOW,
    "placement_id": "p-1",
    "completed": True,
    "score": 0.82,
    "level": "B1",
}
ACTIVITY_EXAMPLE = {
    "event_type": "activity",
    "event_id": "0b8e6f5e-3f4a-4d1e-9c0a-6f3b1d2e4c5a",
    "user_id": "learner-42",
    "occurred_at": _NOW,
    "activity_type": "video_watched",
    "properties": {"video_id": "v-7", "seconds": 312},
}
EVENT_EXAMPLES = [
    OpenApiExample(name, value=value, request_only=True)
    for name, value in (
        ("attempt", ATTEMPT_EXAMPLE),
        ("session", SESSION_EXAMPLE),
        ("placement", PLACEMENT_EXAMPLE),
        ("activity", ACTIVITY_EXAMPLE),
    )
] + [
    OpenApiExample(
        "accepted", value={"event_id": ACTIVITY_EXAMPLE["event_id"], "status": "accepted"}, response_only=True
    )
]
BATCH_EXAMPLE = {"events": [ATTEMPT_EXAMPLE, SESSION_EXAMPLE, PLACEMENT_EXAMPLE, ACTIVITY_EXAMPLE]}


BatchRejectedSchema = PolymorphicProxySerializer(
    component_name="BatchRejected",
    serializers=[BatchResponseSchema, ErrorSchema],
    resource_type_field_name=None,
)
