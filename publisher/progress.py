"""What a publish task already delivered, kept in Redis under its task id, so a redelivered task (its worker
was killed after Kafka acknowledged but before the task was acknowledged) does not send those again, and a
task that keeps killing its worker is recognised and dead-lettered instead of looping forever."""

from __future__ import annotations

import logging
import time

from config.redis import get_redis, writes

logger = logging.getLogger(__name__)

_TTL = 24 * 3600


class TaskProgress:
    def __init__(self, task_id: str | None) -> None:
        self.task_id = task_id
        self._done_key = f"publisher:task-done:{task_id}"
        self._runs_key = f"publisher:task-runs:{task_id}"
        self._started_key = f"publisher:task-started:{task_id}"

    def start(self) -> tuple[int, set[tuple[int, str]], float | None]:
        """Count this delivery of the task; return (deliveries so far including this one, done pairs, when the
        first delivery started). What a dead run sent after its last record of progress is only in Kafka, written
        after that first start: a redelivered task looks there (publishing.publish_events, `in_doubt_since`)."""
        if not self.task_id:
            return 1, set(), None
        try:
            pipe = get_redis().pipeline(transaction=False)
            pipe.incr(self._runs_key)
            pipe.expire(self._runs_key, _TTL)
            pipe.smembers(self._done_key)
            pipe.set(self._started_key, repr(time.time()), nx=True, ex=_TTL)
            pipe.get(self._started_key)
            runs, _, members, _, started = pipe.execute()
        except Exception:
            logger.warning("task progress unavailable (Redis); delivering the whole task")
            return 1, set(), None
        done: set[tuple[int, str]] = set()
        for member in members:
            index, _, topic = member.decode().partition(":")
            done.add((int(index), topic))
        return int(runs), done, float(started) if started else None

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

    def finish(self) -> None:
        """The task ended (done, or handed its remainder to a retry with new numbering): forget it. Joins the
        task's deferred writes; if lost, the keys expire with their TTL."""
        if not self.task_id:
            return
        with writes() as pipe:
            pipe.delete(self._done_key, self._runs_key, self._started_key)
