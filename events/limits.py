"""Event schema v1: the event types and every limit an event is held to, defined once.

The API's checks (events.schema), its OpenAPI description (ingestion.openapi), the protobuf encoder
(events.serialization) and the admin's forms import these; nowhere else restates them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final

EVENT_TYPES: Final = ("attempt", "session", "placement", "activity")
SCHEMA_VERSION: Final = 1  # the only version supported so far
MAX_EVENT_BYTES: Final = 32 * 1024  # whole event, as compact JSON
MAX_PROPERTIES_BYTES: Final = 8 * 1024  # activity ``properties``, as compact JSON
MAX_RESPONSE_BYTES: Final = 4 * 1024  # attempt ``response``, UTF-8
MAX_METADATA_KEYS: Final = 32
MAX_STRING_CHARS: Final = 128  # ids and short labels, counted in code points
MAX_FUTURE_SKEW: Final = timedelta(minutes=5)
MAX_INT: Final = 2**63 - 1  # counters go to int64 columns/fields downstream
MIN_INT: Final = -(2**63)
# What a protobuf topic can carry (events.serialization): properties go into google.protobuf.Struct, whose
# numbers are doubles and whose nesting consumers' parsers bound; metadata and score integers are int64.
MAX_EXACT_PROPERTY_INT: Final = 2**53
# protobuf parsers refuse messages nested more than 100 levels deep and each JSON object level costs 3 (map entry,
# Value, Struct), so deeper properties would encode fine but be undecodable by every consumer.
MAX_PROPERTIES_DEPTH: Final = 32  # containers, counting ``properties`` itself as 1
JSON_MAX_DEPTH: Final = 1024  # orjson.loads rejects deeper documents
