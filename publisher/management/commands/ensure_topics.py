from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from kafka.errors import KafkaError

from publisher import services


class Command(BaseCommand):
    help = "Create the configured Kafka topics and dlq.events if missing (idempotent); prints what it created."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--partitions", type=int, default=settings.KAFKA_TOPIC_PARTITIONS)
        parser.add_argument("--replication-factor", type=int, default=settings.KAFKA_TOPIC_REPLICATION_FACTOR)

    def handle(self, *args: Any, partitions: int, replication_factor: int, **options: Any) -> None:
        try:
            result = services.ensure_topics(partitions=partitions, replication_factor=replication_factor)
        except KafkaError as exc:
            raise CommandError(f"could not reach Kafka at {','.join(settings.KAFKA_BROKERS)}: {exc!r}") from exc
        for name in result.created:
            self.stdout.write(f"created topic {name}")
        for name in result.existing:
            self.stdout.write(f"topic {name} already exists")
