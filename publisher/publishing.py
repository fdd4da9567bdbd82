"""Publishing a batch of accepted events: route, serialize once per format, send, wait for every ack, retry
only what failed, dead-letter what cannot be delivered, and defer (never drop) while Kafka is unwell.

The guarantee: each (event, destination topic) pair ends up acknowledged by Kafka or in the dead-letter
table, or is handed back to the caller as `PublishDeferred.pending` to try again later.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Any

import pybreaker
from django.conf import settings
from kafka.errors import InvalidTxnStateError, MessageSizeTooLargeError, ProducerFencedError

from events import tracecontext
from events.serialization import CONTENT_TYPES, SerializationError, encode_event, schema_name
from events.timefmt import utc_iso_ms
from events.tracecontext import TraceContext
from fastpaths import kafka_batches
from fastpaths.kafka_batches import HeaderBlocks
from publisher import breaker as breaker_module
from publisher import dead_letters, kafka_gateway, metrics, receipts, retry_budget, stats
from publisher.errors import (
    DATABASE_OUTAGE_ERRORS,
    CommitInDoubt,
    ProducerReset,
    TransactionAborted,
    error_class,
    is_outage,
    is_retryable,
    maybe_written,
)
from publisher.models import DeadLetter, RetryPolicy
from publisher.retry_budget import ACK_GRACE_SECONDS
from routing import metrics as routing_metrics
from routing.services import current_routing

logger = logging.getLogger(__name__)


Routes = dict[int, list[str]]


@dataclass(slots=True)
class Record:
    index: int
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    fmt: str
    attempts: int = 0
    error: BaseException | None = None
    # `headers` encoded (fastpaths.kafka_batches.HeaderBlocks) when that fast path is on; None once headers change.
    header_block: bytes | None = None
    position: tuple[int, int] | None = None  # (partition, offset) once acknowledged, for the event's receipt


@dataclass
class BatchResult:
    published: int = 0
    dead_lettered: int = 0
    unrouted: int = 0
    retries: int = 0
    deliveries: list[tuple[int, str]] = field(default_factory=list)


class PublishDeferred(Exception):
    """Some deliveries must wait (breaker open, or the dead-letter table unreachable). `pending` maps event
    index to the topics still owed; everything not listed is done (acknowledged or dead-lettered)."""

    def __init__(self, *, pending: Routes, delay: float, reason: str, in_doubt_since: float | None = None) -> None:
        super().__init__(f"{sum(map(len, pending.values()))} deliveries deferred: {reason}")
        self.pending = pending
        self.delay = delay
        self.reason = reason
        # Some deliveries failed in a way that may have written them (a lost acknowledgement): the retry must
        # look in Kafka for what was written since then before sending again.
        self.in_doubt_since = in_doubt_since


class _RoundFailed(Exception):
    """Raised inside the breaker call so that a round with retryable failures counts as one failure."""

    def __init__(self, failed: list[Record]) -> None:
        super().__init__(f"{len(failed)} deliveries failed")
        self.failed = failed


_policy_cache: tuple[float, RetryPolicy] | None = None
POLICY_CACHE_SECONDS = 2.0


def current_retry_policy() -> RetryPolicy:
    """The admin's retry policy, read at most every 2 s per process (a change applies to tasks after that).
    While Postgres is unreachable the last policy read (or the defaults) serves: publishing to Kafka must not
    wait for the database."""
    global _policy_cache
    now = time.monotonic()
    if _policy_cache is None or now - _policy_cache[0] > POLICY_CACHE_SECONDS:
        try:
            policy = RetryPolicy.get_solo()
        except DATABASE_OUTAGE_ERRORS:
            logger.warning("retry policy unreadable (database unreachable); using the last one known")
            policy = _policy_cache[1] if _policy_cache is not None else RetryPolicy()
        _policy_cache = (now, policy)
    return _policy_cache[1]


def plan_routes(events: Sequence[Mapping[str, Any]]) -> tuple[Routes, dict[str, str], int]:
    """Route every event with the current rules. Returns routes, topic formats, and the unrouted count."""
    snapshot = current_routing()
    routes: Routes = {}
    unrouted = 0
    matched: list[str] = []
    for index, event in enumerate(events):
        decision = snapshot.route(event)
        matched.extend(decision.matched_rules)
        if decision.topics:
            routes[index] = list(decision.topics)
        else:
            unrouted += 1
            routing_metrics.UNROUTED.labels(event_type=str(event.get("event_type", "unknown"))).inc()
    metrics.count_each(routing_metrics.RULE_MATCHES, "rule", matched)
    return routes, snapshot.topic_formats, unrouted


_encode_event_id = HeaderBlocks.encoder("event_id")


@dataclass(frozen=True)
class _TypedHeaders:
    """A record's headers around its event_id, and their encoding (the count of headers first)."""

    first: tuple[str, bytes]
    rest: tuple[tuple[str, bytes], ...]
    encoded_first: bytes
    encoded_rest: bytes

    @classmethod
    def make(
        cls,
        event_type: str,
        schema_version: str,
        fmt: str,
        shared_tail: tuple[tuple[str, bytes], ...],
        encoded_tail: bytes,
        trace_headers: int,
    ) -> _TypedHeaders:
        first = ("event_type", event_type.encode())
        typed = (
            ("schema_version", schema_version.encode()),
            ("content-type", CONTENT_TYPES[fmt].encode()),
            ("schema", schema_name(event_type, fmt).encode()),
        )
        count = 2 + trace_headers + len(typed) + len(shared_tail)  # first, event_id, trace, typed, tail
        return cls(
            first=first,
            rest=typed + shared_tail,
            encoded_first=HeaderBlocks.count(count) + HeaderBlocks.encode(*first),
            encoded_rest=b"".join(HeaderBlocks.encode(name, value) for name, value in typed) + encoded_tail,
        )


def build_records(
    events: Sequence[Mapping[str, Any]],
    routes: Routes,
    formats: Mapping[str, str],
    *,
    source: str,
    accepted_at: float,
    traces: Sequence[TraceContext] | None = None,
) -> tuple[list[Record], list[Record]]:
    """Serialize each event once per format it is needed in. Returns (records, unencodable records). `traces`:
    each event's W3C trace context, its records' traceparent/tracestate headers (one new trace for all if None)."""
    if traces is None:
        traces = [tracecontext.generate()] * len(events)
    trace_blocks: dict[TraceContext, tuple[tuple[tuple[str, bytes], ...], bytes]] = {}
    ingested_at = utc_iso_ms(accepted_at).encode()
    source_header = source.encode()
    # Eight or nine headers per record; all but event_id depend only on (event_type, schema_version, format), on
    # the event's request (traceparent, tracestate) or on the batch, so they are made — and encoded as Kafka
    # writes them — once per batch or request.
    shared_tail = (("ingested_at", ingested_at), ("source", source_header))
    encoded_tail = b"".join(HeaderBlocks.encode(name, value) for name, value in shared_tail)
    encode_blocks = kafka_batches.enabled()  # else send() takes the headers list
    typed_headers: dict[tuple[str, str, str, int], _TypedHeaders] = {}
    records: list[Record] = []
    broken: list[Record] = []
    for index, topics in routes.items():
        event = events[index]
        encoded: dict[str, bytes | SerializationError] = {}
        key = str(event["user_id"]).encode()
        event_type = str(event["event_type"])
        event_id = str(event["event_id"]).encode()
        encoded_id = _encode_event_id(event_id) if encode_blocks else b""
        schema_version = str(event.get("schema_version", 1))
        trace = traces[index]
        trace_block = trace_blocks.get(trace)
        if trace_block is None:
            pairs = tracecontext.header_pairs(trace)
            trace_block = trace_blocks[trace] = (pairs, b"".join(HeaderBlocks.encode(n, v) for n, v in pairs))
        trace_headers, encoded_trace = trace_block
        for topic in topics:
            fmt = formats.get(topic, "json")
            if fmt not in encoded:
                try:
                    encoded[fmt] = encode_event(event, fmt)
                except SerializationError as exc:
                    encoded[fmt] = exc
            value = encoded[fmt]
            typed_key = (event_type, schema_version, fmt, len(trace_headers))
            typed = typed_headers.get(typed_key)
            if typed is None:
                typed = typed_headers[typed_key] = _TypedHeaders.make(
                    event_type, schema_version, fmt, shared_tail, encoded_tail, len(trace_headers)
                )
            headers = [typed.first, ("event_id", event_id), *trace_headers, *typed.rest]
            if isinstance(value, SerializationError):
                broken.append(Record(index, topic, key, b"", headers, fmt, attempts=1, error=value))
            else:
                block = (
                    b"".join((typed.encoded_first, encoded_id, encoded_trace, typed.encoded_rest))
                    if encode_blocks
                    else None
                )

                records.append(Record(index, topic, key, value, headers, fmt, header_block=block))
    return records, broken


# Record batch header + per-record framing, generously; compression is not counted (conservative).
_RECORD_OVERHEAD = 128


def _record_size(record: Record) -> int:
    if record.header_block is not None:
        return _RECORD_OVERHEAD + len(record.key) + len(record.value) + len(record.header_block)
    return _RECORD_OVERHEAD + len(record.key) + len(record.value) + sum(len(k) + len(v) + 8 for k, v in record.headers)


def await_acks(sent: Sequence[tuple[Record, Any]], *, timeout: float, count: bool = True) -> None:
    """Wait for every delivery within one shared deadline; a failure lands in `record.error` (never lost in a
    callback), a success is counted (unless `count` is False: a transaction's records count once committed)."""
    errors = kafka_gateway.delivery_errors([delivery for _, delivery in sent], timeout=timeout + ACK_GRACE_SECONDS)
    acked: list[str] = []
    positions = receipts.enabled()
    for (record, delivery), error in zip(sent, errors, strict=True):
        record.error = error
        if error is None:
            acked.append(record.topic)
            if positions:
                record.position = kafka_gateway.delivery_position(delivery)
    if count:
        metrics.count_each(metrics.PUBLISHED, "topic", acked)


def _send_round(records: list[Record], timeout: float) -> list[Record]:
    """Send every record, then wait for every acknowledgement (with KAFKA_TRANSACTIONS, all in one transaction,
    committed only if every record was acknowledged). Returns the records that failed permanently; raises
    _RoundFailed when any failed in a retryable way (so the breaker counts the round as a failure)."""
    for record in records:
        record.attempts += 1
        record.error = None
    transactional = kafka_gateway.transactions_on()
    # One transaction at a time per process (threads share the producer), on the producer the round began with.
    with kafka_gateway.transaction_lock if transactional else contextlib.nullcontext():
        try:
            producer = kafka_gateway.transactional_producer() if transactional else kafka_gateway.get_producer()
        except Exception as exc:
            # No producer (broker unreachable, bad credentials, untrusted certificate): every record failed.
            if not is_retryable(exc):
                raise
            for record in records:
                record.error = exc
            _count_failures(records)
            raise _RoundFailed(list(records)) from exc
        if transactional:
            _transaction_round(producer, records, timeout)
        else:
            _plain_round(producer, records, timeout)
    _count_failures(records)
    permanent = [r for r in records if r.error is not None and not is_retryable(r.error)]
    retryable = [r for r in records if r.error is not None and is_retryable(r.error)]
    if retryable:
        raise _RoundFailed(retryable + permanent)
    return permanent


def _send_and_flush(producer: Any, records: list[Record], *, flush_timeout: float) -> list[tuple[Record, Any]]:
    """Queue every record the size check lets through and flush; the (record, delivery) pairs queued. What the
    size check or the client refused has its error set."""
    limits = kafka_gateway.max_message_bytes({r.topic for r in records})
    sendable: list[Record] = []
    sizes: list[int] = []
    for record in records:
        size = _record_size(record)
        limit = limits.get(record.topic)
        if limit is not None and size > limit:
            record.error = MessageSizeTooLargeError(
                f"record of about {size} bytes is over max.message.bytes={limit} of {record.topic}"
            )
            continue
        sendable.append(record)
        sizes.append(size)
    futures: list[tuple[Record, Any]] = []
    sender = kafka_gateway.BatchSender(producer, topic_limits=limits)
    for record, delivery in zip(sendable, sender.send_many(sendable, sizes=sizes), strict=True):
        if isinstance(delivery, BaseException):
            record.error = delivery  # the client could not even queue it
        else:
            futures.append((record, delivery))
    if futures:
        # The task waits for every ack anyway: send now rather than after linger_ms.
        with contextlib.suppress(Exception):  # a timeout or failure shows on each future below
            producer.flush(timeout=flush_timeout)
    return futures


def _plain_round(producer: Any, records: list[Record], timeout: float) -> None:
    futures = _send_and_flush(producer, records, flush_timeout=timeout + ACK_GRACE_SECONDS)
    await_acks(futures, timeout=0.0 if futures else timeout)
    if futures and all(record.error is not None and is_outage(record.error) for record, _ in futures):
        # Not one acknowledgement. kafka-python's producer does not always recover from a broker restart (its
        # partitions can stay muted), so the next round starts with a fresh one.
        logger.warning("no record of the round was acknowledged; replacing the kafka producer")
        kafka_gateway.reset_producer()
    elif kafka_gateway.producer_is_broken():
        # Every record in flight failed with the one that broke it; those are not their own errors.
        logger.warning("kafka producer entered a fatal state; replacing it")
        kafka_gateway.reset_producer()
        kafka_gateway.forget_topic_limits()
        for record, _ in futures:
            if record.error is not None:
                record.error = ProducerReset(f"producer replaced after: {record.error!r}")


def _transaction_round(producer: Any, records: list[Record], timeout: float) -> None:
    """One round as one transaction: committed when every record sent was acknowledged, else aborted, and then
    every record of it fails (those acknowledged with TransactionAborted, sent again next round). Records the size
    check refused were never part of it. The round keeps within publisher.retry_budget.round_seconds()."""
    ends_by = time.monotonic() + retry_budget.round_seconds()
    try:
        producer.begin_transaction()
    except Exception as exc:  # the producer is in an error state (fenced, fatal): nothing was sent
        logger.warning("cannot begin a kafka transaction (%r); replacing the producer", exc)
        kafka_gateway.replace_transactional_producer(settle=False)
        for record in records:
            record.error = TransactionAborted(f"no transaction could begin: {exc!r}")
        return
    end_reserve = kafka_gateway.TRANSACTION_END_SECONDS
    futures = _send_and_flush(producer, records, flush_timeout=max(0.1, ends_by - time.monotonic() - end_reserve))
    await_acks(futures, timeout=0.0, count=False)
    sent = [record for record, _ in futures]
    # Deliveries refused for good (too large) go to the dead-letter queue whatever happens to the transaction;
    # anything else that failed must take the whole round with it.
    commit = (
        bool(sent)
        and all(record.error is None for record in sent)
        and not any(record.error is not None and is_retryable(record.error) for record in records)
    )
    error = kafka_gateway.end_transaction(producer, commit=commit, timeout=max(end_reserve, ends_by - time.monotonic()))
    if commit and error is None:
        metrics.count_each(metrics.PUBLISHED, "topic", [record.topic for record in sent])
        return
    if error is not None:
        what = "commit" if commit else "abort"
        logger.warning("kafka transaction %s failed (%r); replacing the producer", what, error)
        kafka_gateway.replace_transactional_producer(settle=commit)
    elif sent and all(r.error is not None and is_outage(r.error) for r in sent):
        # Not one acknowledgement: as in _plain_round, the next round starts with a fresh producer.
        logger.warning("no record of the round was acknowledged; replacing the kafka producer")
        kafka_gateway.replace_transactional_producer(settle=False)
    if commit:
        # A commit the coordinator refused left nothing; one without an answer may have committed.
        refused = isinstance(error, (ProducerFencedError, InvalidTxnStateError))
        for record in sent:
            record.error = TransactionAborted(f"commit refused: {error!r}") if refused else CommitInDoubt(repr(error))
        return
    # Never asked to commit, the transaction can only end aborted, whatever the abort's answer was.
    first = next((r.error for r in records if r.error is not None), None)
    for record in sent:
        if record.error is None:
            record.error = TransactionAborted(f"aborted with its round after: {first!r}")


def _count_failures(records: Sequence[Record]) -> None:
    """Every failed delivery attempt of a round, whether the client, the broker or our size check refused it."""
    for record in records:
        if record.error is not None:
            metrics.FAILED.labels(topic=record.topic, error_class=error_class(record.error)).inc()


# Record timestamps come from the producing worker's clock; workers on other hosts may be this far behind.
CLOCK_MARGIN_SECONDS = 5.0


def owed_records(
    events: Sequence[Mapping[str, Any]],
    records: list[Record],
    *,
    since: float,
    on_delivered: Callable[[list[tuple[int, str]]], None] | None,
) -> list[Record]:
    """The records still owed: those whose outcome is unknown are looked up in Kafka first, and what some earlier
    attempt wrote (its acknowledgement lost) is counted as delivered instead of being sent again. If Kafka cannot
    be read, every record is still owed (at least once)."""
    doubtful = [r for r in records if r.error is None or maybe_written(r.error)]
    if not doubtful:
        return records
    found = kafka_gateway.find_written(
        topics={r.topic for r in doubtful},
        since=since - CLOCK_MARGIN_SECONDS,
        event_ids={str(events[r.index]["event_id"]) for r in doubtful},
    )
    written = [r for r in doubtful if (str(events[r.index]["event_id"]), r.topic) in found] if found else []
    logger.info(
        "looked in Kafka for %d deliveries of unknown outcome: %s",
        len(doubtful),
        "unreadable" if found is None else f"{len(written)} already there",
        extra={"event": "publish_in_doubt", "count": len(doubtful), "found": len(written)},
    )
    if not written:
        return records
    logger.warning(
        "%d deliveries already in Kafka (an earlier attempt's acknowledgement was lost); not sending them again",
        len(written),
        extra={"event": "publish_already_written", "count": len(written)},
    )
    if on_delivered is not None:
        on_delivered([(r.index, r.topic) for r in written])
    written_ids = {id(r) for r in written}
    return [r for r in records if id(r) not in written_ids]


def _pending_of(records: Sequence[Record]) -> Routes:
    pending: Routes = {}
    for record in records:
        pending.setdefault(record.index, []).append(record.topic)
    return pending


@dataclass
class _PublishRun:
    """One publish_events call's state: what is owed, what was delivered, what goes to the dead-letter table."""

    events: Sequence[Mapping[str, Any]]
    source: str
    accepted_at: float
    on_delivered: Callable[[list[tuple[int, str]]], None] | None
    doubt_since: float
    result: BatchResult = field(default_factory=BatchResult)
    records: list[Record] = field(default_factory=list)
    to_dead_letter: list[tuple[Record, str]] = field(default_factory=list)
    deferred: list[Record] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    routed: Set[int] = frozenset()  # events with destinations (before `skip`)
    unrouted: list[int] = field(default_factory=list)
    delivered: list[tuple[int, str, tuple[int, int] | None]] = field(default_factory=list)
    settled: bool = False  # every delivery ended acknowledged, dead-lettered or deferred

    def owed(self, records: list[Record], *, since: float) -> list[Record]:
        return owed_records(self.events, records, since=since, on_delivered=self.on_delivered)

    def acknowledged(self, done: list[Record]) -> None:
        self.result.published += len(done)
        acked = [(record.index, record.topic) for record in done]
        self.result.deliveries.extend(acked)
        self.delivered.extend((record.index, record.topic, record.position) for record in done)
        latency = max(0.0, time.time() - self.accepted_at)
        metrics.observe_many(metrics.PUBLISH_LATENCY, latency, len(done))
        self.latencies.extend([latency] * len(done))
        if self.on_delivered is not None and acked:
            # Remember at once what Kafka has: a worker dying from here on leaves a redelivered task that skips it.
            self.on_delivered(acked)


def publish_events(
    *,
    events: Sequence[Mapping[str, Any]],
    source: str,
    accepted_at: float,
    routes: Mapping[int, Sequence[str]] | None = None,
    skip: Set[tuple[int, str]] = frozenset(),
    on_delivered: Callable[[list[tuple[int, str]]], None] | None = None,
    in_doubt_since: float | None = None,
    traces: Sequence[TraceContext] | None = None,
) -> BatchResult:
    """Deliver a batch. With `routes` (a deferred task coming back), only those deliveries are attempted and
    routing is not evaluated again, so destinations that already succeeded are never sent twice. `skip` lists
    (index, topic) pairs already delivered by an earlier run of the same task; `on_delivered` is told, after
    each round, the pairs Kafka acknowledged in it. Retrying stops at
    PUBLISHER_RETRY_DEADLINE after the start, whatever the policy says (publisher.retry_budget).

    A delivery whose outcome is unknown (an earlier run died after sending; a timeout or a lost connection) may
    be in Kafka already: before it is sent again or dead-lettered, Kafka is read for it (written since
    `in_doubt_since`, or since this run started), and what is found there counts as delivered. `traces`: each
    event's W3C trace context, put on its records (build_records)."""
    started = time.monotonic()
    run = _PublishRun(
        events=events,
        source=source,
        accepted_at=accepted_at,
        on_delivered=on_delivered,
        doubt_since=time.time() if in_doubt_since is None else in_doubt_since,
    )
    planned, formats = _planned_deliveries(run, routes=routes, skip=skip)
    if not planned:
        run.settled = True
        _note_receipts(run)
        return run.result
    run.records, unencodable = build_records(
        events, planned, formats, source=source, accepted_at=accepted_at, traces=traces
    )

    run.to_dead_letter = [(r, DeadLetter.Reason.PERMANENT_ERROR) for r in unencodable]
    pending = run.records
    if in_doubt_since is not None:
        pending = run.owed(run.records, since=in_doubt_since)
    try:
        _publish_rounds(run, pending, retry_deadline=started + retry_budget.deadline_seconds())
        run.settled = True
        _settle(run)
        return run.result
    finally:
        _note_receipts(run)
        # One pipelined Redis round trip per task, whatever the outcome (a deferred task's acks count too).
        stats.record_batch(
            published_by_topic=Counter(topic for _, topic in run.result.deliveries),
            failed=sum(r.attempts for r in run.records) - run.result.published,
            retried=run.result.retries,
            dead_lettered=run.result.dead_lettered,
            latencies_s=run.latencies,
        )


def _planned_deliveries(
    run: _PublishRun, *, routes: Mapping[int, Sequence[str]] | None, skip: Set[tuple[int, str]]
) -> tuple[Routes, dict[str, str]]:
    """The (event, topic) pairs to deliver: routed now, or the routes a deferred task carries, minus `skip`."""
    if routes is None:
        planned, formats, run.result.unrouted = plan_routes(run.events)
        if run.result.unrouted:
            run.unrouted = [i for i in range(len(run.events)) if i not in planned]
    else:
        planned = {int(i): list(topics) for i, topics in routes.items()}
        formats = current_routing().topic_formats
    run.routed = frozenset(planned)
    if skip:
        planned = {i: [t for t in topics if (i, t) not in skip] for i, topics in planned.items()}
        planned = {i: topics for i, topics in planned.items() if topics}
    return planned, formats


def _note_receipts(run: _PublishRun) -> None:
    """The events' receipts: where each acknowledged delivery is, and which events are done (publisher.receipts).
    Dead letters write their own (dead_letters.record). A run that did not settle says only what Kafka has."""
    if not receipts.enabled():
        return
    finished: Set[int] = frozenset()
    if run.settled:
        failed = {r.index for r in run.deferred} | {r.index for r, _ in run.to_dead_letter}
        finished = run.routed - failed
    try:
        receipts.note_deliveries(
            events=run.events, delivered=run.delivered, finished=finished, unrouted=run.unrouted if run.settled else ()
        )
    except Exception:  # a receipt is a view: it must never cost the task (its writes are lost, logged)
        logger.exception("receipts of %d events not noted", len(run.events))


def _publish_rounds(run: _PublishRun, pending: list[Record], *, retry_deadline: float) -> None:
    """Send, wait for the acks, retry what failed with the policy's delays until done, out of retries or out of
    time; what is left ends in `run.deferred` or `run.to_dead_letter`."""
    policy = current_retry_policy()
    timeout = float(settings.KAFKA_PRODUCER_TIMEOUT)
    round_number = 0
    while pending:
        round_number += 1
        try:
            permanent = breaker_module.guarded(_send_round, pending, timeout)
            failed_retryable: list[Record] = []
        except pybreaker.CircuitBreakerError:
            # Open: Kafka is known to be down. Keep the work for later; don't hammer it, don't flood the DLQ.
            run.deferred = pending
            return
        except _RoundFailed as failure:
            permanent = [r for r in failure.failed if r.error is not None and not is_retryable(r.error)]
            failed_retryable = [r for r in failure.failed if r.error is not None and is_retryable(r.error)]
        run.to_dead_letter.extend((r, DeadLetter.Reason.PERMANENT_ERROR) for r in permanent)
        run.acknowledged([r for r in pending if r.error is None])
        if not failed_retryable:
            return
        delay = policy.delay_seconds(round_number)
        out_of_time = time.monotonic() + delay + retry_budget.round_seconds() > retry_deadline
        if round_number > policy.max_retries or out_of_time:
            _give_up_retrying(run, failed_retryable)
            return
        metrics.RETRIED.inc(len(failed_retryable))
        run.result.retries += len(failed_retryable)
        first_error = failed_retryable[0].error
        logger.info(
            "retrying %d deliveries after %r",
            len(failed_retryable),
            first_error,
            extra={
                "event": "publish_retry",
                "round": round_number,
                "error_class": error_class(first_error) if first_error is not None else "",
            },
        )
        time.sleep(delay)
        pending = run.owed(failed_retryable, since=run.doubt_since)


def _give_up_retrying(run: _PublishRun, failed: list[Record]) -> None:
    """Out of retries or time: an outage keeps the work (deferred), a fault of this data dead-letters it."""
    if run.result.published == 0 and all(is_outage(r.error) for r in failed if r.error is not None):
        # Nothing got through, round after round, for lack of a reachable broker: Kafka is down, not this
        # data. Open the breaker for everyone and keep the work instead of dead-lettering an outage.
        if breaker_module.current_state() == "closed":
            breaker_module.force_open()
        run.deferred = failed
    elif breaker_module.current_state() != "closed":
        run.deferred = failed
    else:
        # A dead letter of what Kafka has after all would be published twice by its replay.
        exhausted = run.owed(failed, since=run.doubt_since)
        run.to_dead_letter.extend((r, DeadLetter.Reason.RETRIES_EXHAUSTED) for r in exhausted)


def _settle(run: _PublishRun) -> None:
    """Store the dead letters, then hand back what must wait (raising PublishDeferred)."""
    deferred = run.deferred
    if run.to_dead_letter:
        try:
            dead_letters.record(events=run.events, failures=run.to_dead_letter, source=run.source)
        except DATABASE_OUTAGE_ERRORS as exc:
            # Postgres is down: nothing may be dropped, so these deliveries go back to the queue with the rest.
            # (What it refuses as data is quarantined by dead_letters.record; only outages wait.)
            logger.warning("dead-letter table unreachable; deferring %d deliveries", len(run.to_dead_letter))
            deferred = deferred + [r for r, _ in run.to_dead_letter]
            metrics.DEFERRED.inc(len(deferred))
            raise PublishDeferred(
                pending=_pending_of(deferred), delay=2.0, reason=f"database: {exc}", in_doubt_since=run.doubt_since
            ) from exc
        run.result.dead_lettered += len(run.to_dead_letter)
    if deferred:
        metrics.DEFERRED.inc(len(deferred))
        breaker = breaker_module.get_breaker()
        delay = float(breaker.reset_timeout) if breaker_module.current_state() == "open" else 1.0
        raise PublishDeferred(
            pending=_pending_of(deferred), delay=delay, reason="circuit breaker open", in_doubt_since=run.doubt_since
        )
