"""Replay pending dead letters matching filters, paced so live traffic keeps its headroom.

    python manage.py replay_dead_letters --topic user.attempts --error-class KafkaTimeoutError \
        --since 7d --limit 10000 --rate 200 [--reroute] [--dry-run] [--user alice]
"""

from __future__ import annotations

import time
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from publisher import replay
from publisher.models import DeadLetter


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


class Command(BaseCommand):
    help = "Replay pending dead letters matching the filters, at --rate events per second."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--topic", default="", help="original topic (exact)")
        parser.add_argument("--reason", default="", choices=["", *DeadLetter.Reason.values], help="dead-letter reason")
        parser.add_argument("--error-class", default="", help="error class name (exact), e.g. KafkaTimeoutError")
        parser.add_argument("--event-type", default="", help="attempt, session, placement or activity")
        parser.add_argument("--since", default="", help="dead-lettered at or after: 7d, 12h, 2026-11-01, ISO datetime")
        parser.add_argument("--until", default="", help="dead-lettered before (same forms as --since)")
        parser.add_argument("--limit", type=int, default=None, help="replay at most N entries")
        parser.add_argument(
            "--rate", type=_positive_float, default=None, help="events per second (default: the admin's setting)"
        )
        parser.add_argument("--reroute", action="store_true", help="publish where the current rules route the event")
        parser.add_argument("--dry-run", action="store_true", help="only say what would be replayed")
        parser.add_argument("--user", default="", help="record this admin user as the actor (admin history)")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            filters = replay.ReplayFilters(
                topic=options["topic"],
                reason=options["reason"],
                error_class=options["error_class"],
                event_type=options["event_type"],
                since=replay.parse_since(options["since"]) if options["since"] else None,
                until=replay.parse_since(options["until"]) if options["until"] else None,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        limit = options["limit"]
        if limit is not None and limit < 1:
            raise CommandError("--limit must be at least 1")
        rate = options["rate"] or replay.settings_singleton().replay_rate

        if options["dry_run"]:
            preview = replay.preview(filters=filters, limit=limit)
            self.stdout.write(
                f"Dry run: would replay {preview['total']} of {preview['matching']} pending dead letters "
                f"matching {filters.describe()} at {rate:g}/s "
                f"(about {preview['total'] / rate:.0f} s){' re-routed' if options['reroute'] else ''}."
            )
            for name, n in preview["by_topic"]:
                self.stdout.write(f"  topic {name}: {n}")
            for name, n in preview["by_error_class"]:
                self.stdout.write(f"  error class {name or '-'}: {n}")
            if preview["sample_ids"]:
                self.stdout.write("  first ids: " + ", ".join(map(str, preview["sample_ids"])))
            return

        user = None
        if options["user"]:
            try:
                user = get_user_model().objects.get_by_natural_key(options["user"])
            except get_user_model().DoesNotExist:
                raise CommandError(f"no user {options['user']!r}") from None
        actor = replay.Actor.command("manage.py replay_dead_letters", user=user)
        started = time.monotonic()
        last_report = [started]

        def on_chunk(chunk: replay.ReplaySummary, cursor: int) -> None:
            totals.extend(chunk.outcomes)
            now = time.monotonic()
            if options["verbosity"] >= 2 or now - last_report[0] >= 5:
                last_report[0] = now
                self.stdout.write(f"  ... {totals.describe()} ({now - started:.0f} s)")

        totals = replay.ReplaySummary()
        try:
            replay.replay_by_filter(
                filters=filters, actor=actor, rate=rate, limit=limit, reroute=options["reroute"], on_chunk=on_chunk
            )
        except replay.KafkaUnavailable as exc:
            raise CommandError(f"{exc} So far: {totals.describe()}.") from None
        self.stdout.write(
            self.style.SUCCESS(f"Replayed by filter ({filters.describe()}): {totals.describe()}")
            + f" in {time.monotonic() - started:.1f} s."
        )
