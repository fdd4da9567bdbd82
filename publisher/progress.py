"""What a publish task already delivered, kept in Redis under its task id, so a redelivered task (its worker
was killed after Kafka acknowledged but before the task was acknowledged) does not send those again, and a
task that keeps killing its worker is recognised and dead-lettered instead of looping forever."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from django.conf import settings

from config.redis import get_redis, writes

logger = logging.getLogger(__name__)

_TTL = 24 * 3600


@dataclass(frozen=True)
class Started:
    runs: int  # deliveries of this task so far, this one included
    done: set[tuple[int, str]]  # (index, topic) pairs Kafka acknowledged in earlier runs
    first_started: float | None  # when the first run started (wall clock)
    complete: bool  # an earlier run finished the task: this is a redelivery after its worker died


class TaskProgress:
    def __init__(self, task_id: str | None) -> None:
        self.task_id = task_id
        self._done_key = f"publisher:task-done:{task_id}"
        self._runs_key = f"publisher:task-runs:{task_id}"
        self._started_key = f"publisher:task-started:{task_id}"
        self._complete_key = f"publisher:task-complete:{task_id}"

    def start(self) -> Started:
        """Count this delivery of the task and say what earlier runs did. What a dead run sent after its last record
        of progress is only in Kafka, written after the first start: a redelivered task looks there
        (publishing.publish_events, `in_doubt_since`)."""
        if not self.task_id:
            return Started(1, set(), None, complete=False)
        try:
            pipe = get_redis().pipeline(transaction=False)
            pipe.exists(self._complete_key)
            pipe.incr(self._runs_key)
            pipe.expire(self._runs_key, _TTL)
            pipe.smembers(self._done_key)
            pipe.set(self._started_key, repr(time.time()), nx=True, ex=_TTL)
            pipe.get(self._started_key)
            complete, runs, _, members, _, started = pipe.execute()
        except Exception:
            logger.warning("task progress unavailable (Redis); delivering the whole task")
            return Started(1, set(), None, complete=False)
        done: set[tuple[int, str]] = set()
        for member in members:
            index, _, topic = member.decode().partition(":")
            done.add((int(index), topic))
        return Started(int(runs), done, float(started) if started else None, complete=bool(complete))

    def delivered(self, pairs: list[tuple[int, str]]) -> None:
        if not self.task_id or not pairs:
            return
        try:
            pipe = get_redis().pipeline(transaction=False)
            pipe.sadd(self._done_key, *(f"{index}:{topic}" for index, topic in pairs))
            pipe.expire(self._done_key, _TTL)
            pipe.execute()
        except Exception:
            # Only costs a duplicate if this task is redelivered; never worth failing the task for.
            logger.warning("could not record task progress")

    def ended_cleanly(self) -> None:
        """This run ended by raising a retry (e.g. Postgres down), not by crashing: it doesn't count toward poison."""
        if not self.task_id:
            return
        try:
            get_redis().decr(self._runs_key)
        except Exception:
            logger.warning("could not record a clean task exit")

    def finish(self, *, complete: bool) -> None:
        """The task ended: forget its progress. `complete`: everything is delivered or dead-lettered, and a
        redelivery of this very message (its worker died before the broker heard it was done) must do nothing; the
        mark outlives the visibility timeout. Not complete: the remainder went on as a retry, which starts afresh
        under the same id. Joins the task's deferred writes; if lost, the keys expire with their TTL."""
        if not self.task_id:
            return
        with writes() as pipe:
            # The mark before the cleanup, should these ever be applied in part.
            if complete:
                pipe.set(self._complete_key, b"1", ex=int(settings.CELERY_VISIBILITY_TIMEOUT) + 60)
            pipe.delete(self._done_key, self._runs_key, self._started_key)
