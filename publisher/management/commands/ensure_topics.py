from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from kafka.errors import KafkaError

from publisher import services
from publisher.kafka_gateway import ReplicationError


class Command(BaseCommand):
    help = (
        "Create the configured Kafka topics and dlq.events if missing (idempotent), replicated to min(3, live "
        "brokers) with min.insync.replicas 2 from 3 copies; prints what it created. Existing topics are never "
        "changed: one replicated less than new ones would be is reported and the command fails."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--partitions", type=int, default=settings.KAFKA_TOPIC_PARTITIONS)
        parser.add_argument(
            "--replication-factor",
            type=int,
            default=settings.KAFKA_TOPIC_REPLICATION_FACTOR,
            help="copies of each partition (default: KAFKA_TOPIC_REPLICATION_FACTOR, auto = min(3, live brokers))",
        )
        parser.add_argument(
            "--allow-under-replicated",
            action="store_true",
            help="report existing topics replicated less than new ones would be, but do not fail",
        )

    def handle(
        self,
        *args: Any,
        partitions: int,
        replication_factor: int | None,
        allow_under_replicated: bool,
        **options: Any,
    ) -> None:
        try:
            result = services.ensure_topics(partitions=partitions, replication_factor=replication_factor)
        except ReplicationError as exc:
            raise CommandError(f"cannot create topics: {exc}") from exc
        except KafkaError as exc:
            raise CommandError(f"could not reach Kafka at {','.join(settings.KAFKA_BROKERS)}: {exc!r}") from exc
        wanted = result.replication
        self.stdout.write(
            f"replication factor {wanted.factor} ({wanted.live_brokers} live broker"
            f"{'' if wanted.live_brokers == 1 else 's'}), "
            f"min.insync.replicas {wanted.min_insync_replicas}"
        )
        for name in result.created:
            self.stdout.write(f"created topic {name}")
        for name in result.existing:
            self.stdout.write(f"topic {name} already exists")
        if not result.under_replicated:
            return
        for topic in result.under_replicated:
            self.stderr.write(
                f"topic {topic.name} has replication factor {topic.replication_factor} and min.insync.replicas "
                f"{topic.min_insync_replicas}, less than the {wanted.factor} and {wanted.min_insync_replicas} of new "
                "topics: a broker failure can lose or refuse its acknowledged events"
            )
        advice = (
            "ensure_topics never changes an existing topic. Raise its replicas with kafka-reassign-partitions.sh "
            "and min.insync.replicas with kafka-configs.sh (or delete and re-create an empty topic); "
            "--allow-under-replicated accepts them as they are"
        )
        if allow_under_replicated:
            self.stderr.write(f"warning: {len(result.under_replicated)} under-replicated topic(s). {advice}")
            return
        raise CommandError(f"{len(result.under_replicated)} under-replicated topic(s). {advice}")
