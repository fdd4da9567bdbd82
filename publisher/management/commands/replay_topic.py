"""Replay a Kafka topic's records of a time window, re-routed through the current rules or copied to a topic.

    python manage.py replay_topic --source user.attempts --since 7d [--until 1d] \
        (--through-rules | --to ml.training_events) --rate 200 [--background] [--user alice]
    python manage.py replay_topic --resume 12 [--background]

Runs in the foreground (Ctrl-C stops between chunks; the job can be resumed) unless --background hands it to
the workers. Either way the job and its progress are in the admin (Publisher -> Topic replay jobs).
"""

from __future__ import annotations

import signal
import time
from datetime import datetime
from types import FrameType
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from publisher import replay
from publisher.models import TopicReplayJob
from publisher.replay import topics


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(text)
    return value


class Command(BaseCommand):
    help = "Replay a topic's records of a time window through the current rules (--through-rules) or to a topic."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--source", default="", help="the topic to read")
        parser.add_argument("--since", default="", help="records at or after: 7d, 12h, 2026-11-01, ISO datetime")
        parser.add_argument("--until", default="", help="records before (same forms; default: now)")
        parser.add_argument("--through-rules", action="store_true", help="route each event with the current rules")
        parser.add_argument("--to", default="", help="copy each record to this topic")
        parser.add_argument(
            "--rate", type=_positive_float, default=None, help="events per second (default: the admin's replay rate)"
        )
        parser.add_argument("--resume", type=int, default=None, help="resume this cancelled or failed job")
        parser.add_argument("--background", action="store_true", help="queue the job for the workers and return")
        parser.add_argument("--user", default="", help="record this admin user as who started it")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            job = self._resume(options) if options["resume"] is not None else self._start(options)
        except replay.ReplayError as exc:
            raise CommandError(str(exc)) from None
        if options["background"]:
            self.stdout.write(f"Topic replay #{job.pk} queued for the workers; follow it in the admin.")
            return
        self._run(job)

    def _start(self, options: dict[str, Any]) -> TopicReplayJob:
        if not options["source"]:
            raise CommandError("--source is required (the topic to read)")
        if not options["since"]:
            raise CommandError("--since is required (e.g. 7d, 12h, 2026-11-01T00:00:00Z)")
        if options["through_rules"] and options["to"]:
            raise CommandError("use either --through-rules or --to TOPIC, not both")
        if not options["through_rules"] and not options["to"]:
            raise CommandError("say where the events go: --through-rules or --to TOPIC")
        now = timezone.now()
        since = self._moment(options["since"], "--since", now)
        until = self._moment(options["until"], "--until", now) if options["until"] else now
        user = None
        if options["user"]:
            try:
                user = get_user_model().objects.get_by_natural_key(options["user"])
            except get_user_model().DoesNotExist:
                raise CommandError(f"no user {options['user']!r}") from None
        return topics.start_topic_replay(
            source_topic=options["source"],
            since=since,
            until=until,
            through_rules=options["through_rules"],
            target_topic=options["to"],
            rate=options["rate"] or replay.settings_singleton().replay_rate,
            actor=replay.Actor.command("manage.py replay_topic", user=user),
            queue=options["background"],
        )

    def _resume(self, options: dict[str, Any]) -> TopicReplayJob:
        if not TopicReplayJob.objects.filter(pk=options["resume"]).exists():
            raise CommandError(f"no topic replay job #{options['resume']}")
        return topics.resume_topic_replay(job_id=options["resume"], queue=options["background"])

    @staticmethod
    def _moment(text: str, name: str, now: datetime) -> datetime:
        try:
            return replay.parse_since(text, now=now)
        except ValueError as exc:
            raise CommandError(f"{name}: {exc}") from None

    def _run(self, job: TopicReplayJob) -> None:
        """Run the job's slices here until it is done, cancelled (admin or Ctrl-C) or failed."""
        interrupted: list[int] = []

        def on_signal(signum: int, frame: FrameType | None) -> None:
            interrupted.append(signum)
            self.stderr.write("Stopping after this chunk (the job can be resumed with --resume) ...")

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        self.stdout.write(f"Topic replay #{job.pk}: {job.describe()}")
        token: str | None = job.run_token
        try:
            while token:
                outcome = topics.run_topic_slice(
                    job_id=job.pk, token=token, budget_seconds=5.0, should_stop=lambda: bool(interrupted)
                )
                token = outcome.next_token
                job.refresh_from_db()
                self._progress(job)
                if token and outcome.countdown:
                    time.sleep(outcome.countdown)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        message = f"Topic replay #{job.pk} {job.status}: {self._counts(job)}."
        if job.status == TopicReplayJob.Status.FINISHED:
            self.stdout.write(self.style.SUCCESS(message))
        else:
            raise CommandError(message + (f" {job.error}" if job.error else ""))

    def _progress(self, job: TopicReplayJob) -> None:
        self.stdout.write(f"  ... {job.read} / {job.total} read ({job.percent}%), {self._counts(job)}")

    @staticmethod
    def _counts(job: TopicReplayJob) -> str:
        return (
            f"{job.replayed} replayed, {job.duplicates} duplicates, {job.unrouted} unrouted, "
            f"{job.out_of_window} outside the window, {job.failed} failed"
        )
