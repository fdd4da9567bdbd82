"""The fast path kafka_batches writes Kafka records itself (record format v2) instead of through kafka-python's
per-byte builder; what it writes must be exactly what the client's own builder writes, or the client's builder
must be used. Off, the publisher hands send() the headers list and encodes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from kafka.record.default_records import DefaultRecordBatch
from kafka.record.memory_records import MemoryRecordsBuilder
from kafka.record.util import encode_varint

from events import tracecontext
from fastpaths import kafka_batches
from fastpaths.kafka_batches import encode_headers, varint
from publisher.publishing import build_records
from tests.fastpath_switch import on_off


def _kafka_varint(value: int) -> bytes:
    out = bytearray()
    encode_varint(value, out.append)
    return bytes(out)


def test_varints_are_kafkas_for_every_width_and_sign() -> None:
    values = [*range(-300, 20_000), 2**21 - 1, 2**21, 2**28, 2**35 + 7, -(2**31), 2**62]
    assert [varint(v) for v in values] == [_kafka_varint(v) for v in values]


def _built(records: list[tuple[bytes, bytes, list[tuple[str, bytes]]]], *, ours: bool) -> bytes:
    builder = MemoryRecordsBuilder(2, 0, 1 << 20)
    for key, value, headers in records:
        if ours:
            sample = kafka_batches.PlainRecord("t", key, value, headers, encode_headers(headers))
            assert kafka_batches._append_encoded(builder, 1_700_000_000_000, sample) is not None
        else:
            assert builder.append(1_700_000_000_000, key, value, headers) is not None
    builder.close()
    return bytes(builder.buffer())


def test_a_batch_written_by_us_is_the_clients_byte_for_byte_and_reads_back() -> None:
    records = [
        (b"user-1", b'{"a":1}', [("event_type", b"attempt"), ("event_id", b"e-1"), ("empty", b"")]),
        (b"k" * 200, b"v" * 70_000, [("\u0142\u00f3d\u017a", "\u00fc".encode())]),  # non-ASCII header name
        (b"user-2", b"", []),
    ]
    ours = _built(records, ours=True)
    assert ours == _built(records, ours=False)
    read = list(DefaultRecordBatch(bytearray(ours)))
    assert [(r.key, r.value, r.headers) for r in read] == [(k, v, h) for k, v, h in records]


def test_the_startup_check_holds_on_the_pinned_client() -> None:
    assert kafka_batches.encoder_matches_client() is True


def test_the_startup_check_catches_an_encoding_that_differs(monkeypatch: pytest.MonkeyPatch) -> None:
    def off_by_one(builder: Any, timestamp_ms: int, record: Any) -> int | None:
        return kafka_batches._append_with_client(builder, timestamp_ms, record) if timestamp_ms % 2 else None

    monkeypatch.setattr(kafka_batches, "_append_encoded", off_by_one)
    monkeypatch.setattr(kafka_batches, "_encoder_check", None)
    assert kafka_batches.encoder_matches_client() is False


@on_off("kafka_batches")
def test_the_publishers_records_carry_their_headers_encoded(fast_path_on: bool) -> None:
    events = [
        {"event_id": f"id-{n}", "event_type": kind, "user_id": f"u{n}", "schema_version": 1 + n % 2, "x": n}
        for n, kind in enumerate(["attempt", "session", "attempt", "placement"])
    ]
    routes = {0: ["a", "b"], 1: ["a"], 2: ["b"], 3: ["a"]}
    # Two requests' events in one task: with and without a tracestate (one header more or less per record).
    with_state, _ = tracecontext.from_headers("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "congo=t1")
    plain = tracecontext.generate()
    traces = [with_state, plain, with_state, plain]
    records, broken = build_records(
        events, routes, {"a": "json", "b": "json"}, source="test", accepted_at=1_700_000_000.5, traces=traces
    )
    assert not broken and len(records) == 5
    for record in records:
        if fast_path_on:
            assert record.header_block == encode_headers(record.headers)
        else:
            assert record.header_block is None  # send() takes the headers list
        headers = dict(record.headers)
        assert headers["event_id"] == f"id-{record.index}".encode()
        trace = traces[record.index]
        assert headers["traceparent"] == trace.traceparent.encode()
        assert headers.get("tracestate") == (trace.tracestate.encode() if trace.tracestate else None)


def test_the_header_blocks_api_writes_what_encode_headers_writes() -> None:
    headers = [("event_type", b"attempt"), ("event_id", b"e" * 300), ("source", b"")]
    blocks = kafka_batches.HeaderBlocks
    by_parts = blocks.count(3) + blocks.encode(*headers[0]) + blocks.encoder("event_id")(b"e" * 300)
    assert by_parts + blocks.encode(*headers[2]) == encode_headers(headers)
