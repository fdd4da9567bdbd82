"""The events the service carries, shared by the apps: v1 event types and their limits (`events.limits`), the
schema checks (`events.schema`), and their wire formats, JSON and protobuf (`events.serialization`, with the
bindings generated from `events/proto/` in `events.generated`).

A plain Python package, not a Django app: it has no models, and imports no app. `ingestion`, `routing` and
`publisher` all import it, which is what lets them stay out of each other (tests/unit/test_boundaries.py).
"""
