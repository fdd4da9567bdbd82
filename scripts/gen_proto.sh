#!/usr/bin/env bash
# Regenerate the Python bindings for the published event schema.
#
# -I points at the .proto's own folder so the module is registered as "events.proto" and imports nothing by
# package path (a generated "ingestion.v1" import would clash with the Django app named `ingestion`). Only the
# well-known types are imported, from google.protobuf. protoc's output is deterministic, so running this twice
# gives identical files; tests/unit/test_serialization.py fails when the checked-in files are stale.
#
# Usage: scripts/gen_proto.sh   (PYTHON overrides the interpreter; it needs grpcio-tools installed)
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"

"$PYTHON" -m grpc_tools.protoc \
    -Ievents/proto/ingestion/v1 \
    --python_out=events/generated \
    --pyi_out=events/generated \
    events/proto/ingestion/v1/events.proto
