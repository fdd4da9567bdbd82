"""Compressed bodies (Content-Encoding gzip, deflate, zstd) and NDJSON batches, over real HTTP to the web tier,
through a real Celery worker to Kafka. More bad encodings are in tests/data/bad_inputs.jsonl (test_abuse)."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import requests
import zstandard

from config.redis import get_redis
from tests import factories
from tests.conftest import KafkaReader, WebServer, WorkerProcess
from tests.integration.test_abuse import _web_rss

pytestmark = pytest.mark.django_db(transaction=True)
LIMIT = 5 * 1024 * 1024  # INGEST_MAX_BODY_BYTES' default, which the test server runs with
NDJSON = "application/x-ndjson"
ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "zstd": zstandard.ZstdCompressor().compress,
}


def send(
    server: WebServer, path: str, body: bytes | Iterator[bytes], key: str, *, encoding: str = "", ctype: str = ""
) -> requests.Response:
    headers = {"Authorization": f"Api-Key {key}", "Content-Type": ctype or "application/json"}
    if encoding:
        headers["Content-Encoding"] = encoding
    return requests.post(f"{server.url}{path}", data=body, headers=headers, timeout=60)


def _published(reader: KafkaReader, ids: set[str]) -> list[str]:
    records = reader.read(expected=len(ids), timeout=30)
    return sorted(r.headers["event_id"].decode() for r in records if r.headers["event_id"].decode() in ids)


@pytest.mark.parametrize("encoding", ENCODERS)
def test_compressed_single_event_and_batch_reach_kafka(
    default_routing: None,
    celery_worker: WorkerProcess,
    web_server: WebServer,
    api_key: str,
    kafka_reader: Any,
    encoding: str,
) -> None:
    reader: KafkaReader = kafka_reader("user.activities")
    compress = ENCODERS[encoding]
    single = send(
        web_server, "/api/v1/events", compress(orjson.dumps(factories.activity())), api_key, encoding=encoding
    )
    batch_body = compress(orjson.dumps({"events": [factories.activity() for _ in range(3)]}))
    batch = send(web_server, "/api/v1/events/batch", batch_body, api_key, encoding=encoding)

    assert single.status_code == 202, single.text
    assert batch.status_code == 202, batch.text
    assert batch.json()["accepted"] == 3
    ids = {single.json()["event_id"]} | {r["event_id"] for r in batch.json()["results"]}
    assert _published(reader, ids) == sorted(ids)


def test_gzip_body_sent_chunked_is_decoded(web_server: WebServer, api_key: str) -> None:
    compressed = gzip.compress(orjson.dumps(factories.activity()))
    chunks = iter([compressed[:7], compressed[7:]])  # no Content-Length: Transfer-Encoding: chunked
    response = send(web_server, "/api/v1/events", chunks, api_key, encoding="gzip")
    assert response.status_code == 202, response.text


def test_ndjson_batch_rejects_the_bad_line_by_index_and_publishes_the_rest(
    default_routing: None, celery_worker: WorkerProcess, web_server: WebServer, api_key: str, kafka_reader: Any
) -> None:
    reader: KafkaReader = kafka_reader("user.activities")
    lines = [
        orjson.dumps(factories.activity()),
        b"",  # blank lines are skipped, not counted
        b'{"event_type": "activity", "user_id": ',  # not JSON: events[1]
        orjson.dumps(factories.activity(quality=1)),  # not an activity field: events[2]
        orjson.dumps(factories.activity()),
    ]
    response = send(web_server, "/api/v1/events/batch", b"\n".join(lines) + b"\n", api_key, ctype=NDJSON)

    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (2, 0, 2)
    assert [r["status"] for r in body["results"]] == ["accepted", "rejected", "rejected", "accepted"]
    assert body["results"][1]["errors"] == [
        {"path": "events[1]", "message": "line 3 is not valid JSON: unexpected end of data at column 39"}
    ]
    assert body["results"][2]["errors"][0]["path"] == "events[2].quality"
    accepted = {r["event_id"] for r in body["results"] if r["status"] == "accepted"}
    assert _published(reader, accepted) == sorted(accepted)


def test_gzip_ndjson_batch_is_accepted(web_server: WebServer, api_key: str) -> None:
    body = gzip.compress(b"\r\n".join(orjson.dumps(factories.activity()) for _ in range(5)))
    response = send(web_server, "/api/v1/events/batch", body, api_key, encoding="gzip", ctype=NDJSON)
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == 5


def test_ndjson_batch_over_the_batch_limit_is_rejected_whole(web_server: WebServer, api_key: str) -> None:
    body = b"\n".join(orjson.dumps(factories.activity()) for _ in range(1001))
    response = send(web_server, "/api/v1/events/batch", body, api_key, ctype=NDJSON)
    assert response.status_code == 400
    assert response.json()["errors"] == [{"path": "events", "message": "must contain at most 1000 events (got 1001)"}]


def test_ndjson_is_for_batches_only(web_server: WebServer, api_key: str) -> None:
    response = send(web_server, "/api/v1/events", orjson.dumps(factories.activity()), api_key, ctype=NDJSON)
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """1 GiB of zeros as one gzip stream of about 1 MiB, compressed a MiB at a time."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1024 * 1024)
    parts = [compressor.compress(zeros) for _ in range(1024)]
    parts.append(compressor.flush())
    return b"".join(parts)


def test_a_gzip_bomb_is_413_without_inflating_it(web_server: WebServer, api_key: str, gzip_bomb: bytes) -> None:
    assert len(gzip_bomb) < 2 * 1024 * 1024
    queued_before = get_redis().llen("publish")
    before = _web_rss(web_server)
    for path in ("/api/v1/events", "/api/v1/events/batch"):
        response = send(web_server, path, gzip_bomb, api_key, encoding="gzip")
        assert response.status_code == 413, response.text[:300]
        assert response.json() == {"error": f"Decompressed body is over the limit of {LIMIT} bytes."}
    growth_mib = (_web_rss(web_server) - before) / 1024
    assert growth_mib < 64, f"web tier grew {growth_mib:.0f} MiB on a 1 GiB bomb"
    assert get_redis().llen("publish") == queued_before
    ok = send(web_server, "/api/v1/events", gzip.compress(orjson.dumps(factories.activity())), api_key, encoding="gzip")
    assert ok.status_code == 202


@pytest.mark.parametrize("encoding", ENCODERS)
def test_decompressed_size_at_the_limit_is_read_and_one_byte_over_is_413(
    web_server: WebServer, api_key: str, encoding: str
) -> None:
    at_limit = b" " * (LIMIT - 2) + b"{}"  # read and parsed: an empty batch, so 400 naming `events`
    response = send(web_server, "/api/v1/events/batch", ENCODERS[encoding](at_limit), api_key, encoding=encoding)
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["path"] == "events"
    over = ENCODERS[encoding](b" " + at_limit)
    response = send(web_server, "/api/v1/events/batch", over, api_key, encoding=encoding)
    assert response.status_code == 413
    assert "Decompressed body is over the limit" in response.json()["error"]


def test_compressed_size_at_the_limit_is_read_and_one_byte_over_is_413(web_server: WebServer, api_key: str) -> None:
    at_limit = b"\x1f\x8b" + b"\x00" * (LIMIT - 2)  # a gzip header, then nothing valid: read, then found corrupt
    response = send(web_server, "/api/v1/events/batch", at_limit, api_key, encoding="gzip")
    assert response.status_code == 400
    assert response.json()["error"].startswith("Corrupt gzip body: ")
    response = send(web_server, "/api/v1/events/batch", at_limit + b"\x00", api_key, encoding="gzip")
    assert response.status_code == 413
    assert response.json()["error"] == f"Body of {LIMIT + 1} bytes is over the limit of {LIMIT} bytes."


@pytest.mark.parametrize("encoding", ENCODERS)
def test_corrupt_data_is_400_naming_the_problem(web_server: WebServer, api_key: str, encoding: str) -> None:
    truncated = ENCODERS[encoding](orjson.dumps(factories.activity()))[:-6]
    response = send(web_server, "/api/v1/events", truncated, api_key, encoding=encoding)
    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error"] == f"Corrupt {encoding} body: it ends before the compressed stream does."


def test_unknown_encoding_is_415_naming_it(web_server: WebServer, api_key: str) -> None:
    response = send(web_server, "/api/v1/events", orjson.dumps(factories.activity()), api_key, encoding="br")
    assert response.status_code == 415
    assert response.json() == {"error": "Unsupported Content-Encoding 'br': send one of gzip, deflate, zstd, or none."}
