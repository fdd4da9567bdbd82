from __future__ import annotations

import sys
import time
from typing import Any

import orjson
from django.core.management.base import BaseCommand, CommandError
from kafka import KafkaConsumer, TopicPartition

from events.serialization import SerializationError, decode_value
from publisher import kafka_gateway


class Command(BaseCommand):
    help = (
        "Print records of a Kafka topic decoded (JSON or protobuf, by their content-type and schema headers) "
        "with key, headers, partition and offset; one JSON object per line. Handy for watching dlq.events."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("topic")
        parser.add_argument("--from-beginning", action="store_true", help="start at the oldest record")
        parser.add_argument("--max", type=int, default=0, help="stop after N records (0: no limit)")
        parser.add_argument("--timeout", type=float, default=0, help="stop after N idle seconds (0: never)")

    def handle(self, *args: Any, topic: str, from_beginning: bool, max: int, timeout: float, **options: Any) -> None:
        consumer = KafkaConsumer(**kafka_gateway.connection_config(), enable_auto_commit=False)
        try:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                raise CommandError(f"topic {topic!r} does not exist")
            assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
            consumer.assign(assigned)
            if from_beginning:
                consumer.seek_to_beginning(*assigned)
            else:
                consumer.seek_to_end(*assigned)
            printed = 0
            idle_since = time.monotonic()
            while not max or printed < max:
                batches = consumer.poll(timeout_ms=500)
                if not batches:
                    if timeout and time.monotonic() - idle_since > timeout:
                        break
                    continue
                idle_since = time.monotonic()
                for records in batches.values():
                    for record in records:
                        self.stdout.write(orjson.dumps(describe(record)).decode())
                        printed += 1
                        if max and printed >= max:
                            break
                    if max and printed >= max:
                        break
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass
        finally:
            consumer.close()


def describe(record: Any) -> dict[str, Any]:
    headers = {name: value.decode(errors="replace") for name, value in (record.headers or [])}
    out: dict[str, Any] = {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key": record.key.decode(errors="replace") if record.key is not None else None,
        "headers": headers,
    }
    try:
        out["value"] = decode_value(
            record.value, content_type=headers.get("content-type", "application/json"), schema=headers.get("schema", "")
        )
    except SerializationError as exc:
        out["value_error"] = str(exc)
        out["value_raw"] = record.value.decode(errors="replace")
    return out
