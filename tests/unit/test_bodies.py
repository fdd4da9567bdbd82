"""Decoding compressed request bodies (ingestion.bodies) and NDJSON batches (events.schema), as pure logic. The
same paths are exercised over HTTP in tests/integration/test_encoded_bodies.py."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable

import orjson
import pytest
import zstandard

from events.schema import validate_ndjson_batch
from ingestion.bodies import BodyRejected, content_coding, decode
from tests import factories

PAYLOAD = orjson.dumps({"events": [factories.activity() for _ in range(50)]})
LIMIT = 64 * 1024


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "raw deflate": _raw_deflate,
    "zstd": zstandard.ZstdCompressor().compress,
}


def _coding(name: str) -> str:
    return "deflate" if name == "raw deflate" else name


@pytest.mark.parametrize("name", ENCODERS)
def test_each_coding_round_trips(name: str) -> None:
    assert decode(body=ENCODERS[name](PAYLOAD), coding=_coding(name), limit=LIMIT) == PAYLOAD


@pytest.mark.parametrize("name", ENCODERS)
def test_decoded_size_exactly_at_the_limit_passes_and_one_byte_over_is_413(name: str) -> None:
    at_limit = b" " * (LIMIT - 2) + b"{}"
    assert decode(body=ENCODERS[name](at_limit), coding=_coding(name), limit=LIMIT) == at_limit
    with pytest.raises(BodyRejected) as over:
        decode(body=ENCODERS[name](b" " + at_limit), coding=_coding(name), limit=LIMIT)
    assert over.value.status_code == 413
    assert "Decompressed body is over the limit of 65536 bytes" in over.value.message


@pytest.mark.parametrize("name", ENCODERS)
def test_truncated_and_garbled_data_is_400_naming_the_coding(name: str) -> None:
    encoded = ENCODERS[name](PAYLOAD)
    for broken in (encoded[: len(encoded) // 2], b"\x00not compressed at all" + encoded):
        with pytest.raises(BodyRejected) as rejected:
            decode(body=broken, coding=_coding(name), limit=LIMIT)
        assert rejected.value.status_code == 400
        assert rejected.value.message.startswith(f"Corrupt {_coding(name)} body: ")


def test_gzip_members_are_concatenated_and_trailing_garbage_is_400() -> None:
    assert decode(body=gzip.compress(b"ab") + gzip.compress(b"cd"), coding="gzip", limit=LIMIT) == b"abcd"
    with pytest.raises(BodyRejected) as rejected:
        decode(body=gzip.compress(b"ab") + b"junk", coding="gzip", limit=LIMIT)
    assert rejected.value.status_code == 400


def test_zstd_frame_asking_for_a_huge_window_is_400() -> None:
    params = zstandard.ZstdCompressionParameters(window_log=27, write_content_size=False)
    big_window = zstandard.ZstdCompressor(compression_params=params).compress(b"x" * (17 * 1024 * 1024))
    with pytest.raises(BodyRejected) as rejected:
        decode(body=big_window, coding="zstd", limit=32 * 1024 * 1024)
    assert rejected.value.status_code == 400
    assert "zstd" in rejected.value.message


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("identity", None), ("GZIP", "gzip"), (" deflate ", "deflate"), ("zstd", "zstd")],
)
def test_content_coding_names(header: str | None, expected: str | None) -> None:
    assert content_coding(header=header) == expected


@pytest.mark.parametrize(
    ("header", "named"),
    [("br", "'br'"), ("compress", "'compress'"), ("gzip, identity", "lists several"), ("", "is empty")],
)
def test_unknown_listed_or_empty_codings_are_415_naming_them(header: str, named: str) -> None:
    with pytest.raises(BodyRejected) as rejected:
        content_coding(header=header)
    assert rejected.value.status_code == 415
    assert named in rejected.value.message


def test_ndjson_batch_rejects_a_bad_line_by_index_and_ignores_blank_lines() -> None:
    good = orjson.dumps(factories.activity())
    body = b"\n".join([good, b"", b"  \r", b'{"event_type": "activity",', good + b"\r", b""])
    checked = validate_ndjson_batch(body, max_batch=10)
    assert not checked.body_errors
    assert [index for index, _ in checked.valid] == [0, 2]
    [(index, event_id, errors)] = checked.invalid
    assert (index, event_id) == (1, None)
    assert errors[0].path == "events[1]"
    assert errors[0].message.startswith("line 4 is not valid JSON")


def test_ndjson_batch_counts_events_against_the_batch_limit() -> None:
    line = orjson.dumps(factories.activity())
    assert not validate_ndjson_batch(b"\n".join([line] * 3), max_batch=3).body_errors
    [error] = validate_ndjson_batch(b"\n".join([line] * 4) + b"\n\n", max_batch=3).body_errors
    assert (error.path, error.message) == ("events", "must contain at most 3 events (got 4)")
    [empty] = validate_ndjson_batch(b"\n \n", max_batch=3).body_errors
    assert "at least 1 event" in empty.message


def test_ndjson_line_errors_use_json_batch_paths() -> None:
    body = orjson.dumps(factories.attempt(quality=9)) + b"\n" + orjson.dumps(factories.attempt())
    checked = validate_ndjson_batch(body, max_batch=10)
    assert checked.invalid[0][2][0].path == "events[0].quality"
    assert [index for index, _ in checked.valid] == [1]
