"""Which publish failures are worth retrying and which go straight to the dead-letter queue."""

from __future__ import annotations

import ssl

from django.db import InterfaceError, OperationalError
from kafka import errors as kafka_errors

from events.serialization import SerializationError


class ProducerReset(kafka_errors.KafkaError):
    """The producer had to be replaced mid-round; the records it was carrying are sent again."""

    retriable = True


class TransactionAborted(kafka_errors.KafkaError):
    """The record was acknowledged, but the round's transaction was aborted (another record of the round failed,
    or the broker refused the commit): it is not in Kafka for read_committed consumers, and is sent again."""

    retriable = True


class CommitInDoubt(kafka_errors.KafkaError):
    """The round's commit got no clear answer: its records may be committed. Kafka is read before resending."""

    retriable = True


# The record itself is wrong, or we may never write there: retrying cannot help.
def _kafka_errors(*names: str) -> tuple[type[BaseException], ...]:
    """Error classes by name; kafka-python renames a few between releases, and a missing one must not crash."""
    return tuple(getattr(kafka_errors, name) for name in names if hasattr(kafka_errors, name))


PERMANENT_ERRORS: tuple[type[BaseException], ...] = _kafka_errors(
    "MessageSizeTooLargeError",
    "RecordListTooLargeError",
    "InvalidTopicError",
    "TopicAuthorizationFailedError",
    "ClusterAuthorizationFailedError",
    "InvalidRecordError",
    "CorruptRecordError",
) + (SerializationError,)

# The broker or the path to it is unwell: wait and retry (and let the breaker open during an outage).
# Authentication and TLS failures are here on purpose: a wrong password is fixed by an operator, and the
# events must wait for that, not flood the dead-letter queue.
RETRYABLE_ERRORS: tuple[type[BaseException], ...] = _kafka_errors(
    "BrokerNotAvailableError",
    "NoBrokersAvailable",
    "KafkaConnectionError",
    "RequestTimedOutError",
    "KafkaTimeoutError",
    "NotEnoughReplicasError",
    "NotEnoughReplicasAfterAppendError",
    "LeaderNotAvailableError",
    "NotLeaderForPartitionError",
    "NetworkExceptionError",
    "SaslAuthenticationFailedError",
    "AuthenticationFailedError",
    "KafkaUnavailableError",
) + (ssl.SSLError, ConnectionError, TimeoutError, OSError)


# Errors that say "no broker to talk to" rather than "this topic has a problem".
OUTAGE_ERRORS: tuple[type[BaseException], ...] = _kafka_errors(
    "NoBrokersAvailable",
    "KafkaConnectionError",
    "KafkaTimeoutError",
    "RequestTimedOutError",
    "NetworkExceptionError",
    "BrokerNotAvailableError",
    "SaslAuthenticationFailedError",
    "AuthenticationFailedError",
    "KafkaUnavailableError",
) + (ssl.SSLError, ConnectionError, TimeoutError, ProducerReset, CommitInDoubt)


def is_outage(exc: BaseException) -> bool:
    return isinstance(exc, OUTAGE_ERRORS)


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, PERMANENT_ERRORS):
        return False
    if isinstance(exc, RETRYABLE_ERRORS):
        return True
    # Anything else the client marks as transient is retried; the rest is permanent.
    return bool(getattr(exc, "retriable", False))


# The broker answered and did not write: sending again cannot duplicate.
NOT_WRITTEN_ERRORS: tuple[type[BaseException], ...] = _kafka_errors(
    "NotEnoughReplicasError",
    "LeaderNotAvailableError",
    "NotLeaderForPartitionError",
    "BrokerNotAvailableError",
    "NoBrokersAvailable",
    "SaslAuthenticationFailedError",
    "AuthenticationFailedError",
) + (TransactionAborted,)


def maybe_written(exc: BaseException) -> bool:
    """A retryable failure after which the record may be in Kafka all the same (a timeout, a connection lost
    after sending, NotEnoughReplicasAfterAppend): look before sending it again."""
    return is_retryable(exc) and not isinstance(exc, NOT_WRITTEN_ERRORS)


def error_class(exc: BaseException) -> str:
    return type(exc).__name__


# A database that cannot be reached (connection refused or lost, timeouts): worth waiting for. Every other
# database error (data it refuses, a constraint) fails the same way every time and must not be retried forever.
DATABASE_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (OperationalError, InterfaceError)


def is_database_outage(exc: BaseException) -> bool:
    return isinstance(exc, DATABASE_OUTAGE_ERRORS)
