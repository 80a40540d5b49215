"""One exception hierarchy for everything flask_queue refuses or fails at.

Every class's docstring is its default message, so ``raise UnknownQueueError()``
already says something useful; most call sites add the bad value.
"""

from __future__ import annotations


class QueueError(Exception):
    """flask_queue could not do what was asked."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(QueueError):
    """flask_queue is misconfigured for this app."""


class UnknownQueueError(QueueError):
    """No handler is registered under this queue name."""


class InvalidPayloadError(QueueError):
    """The payload does not survive a JSON round trip."""


class InvalidDurationError(QueueError):
    """The duration is not a timedelta, a number of seconds, or an ms-style string."""


class InvalidScheduleError(QueueError):
    """The schedule (cron expression, timezone, interval or times) is invalid."""


class InvalidRetryError(QueueError):
    """The retry policy is neither a non-negative int nor a list of durations."""


class InvalidOptionError(QueueError):
    """The enqueue options contradict each other or have the wrong type."""


class JobNotFoundError(QueueError):
    """No job with this id exists."""


class InvalidStatusError(QueueError):
    """The job is not in a status that allows this action."""


class StorageError(QueueError):
    """The database refused or failed a flask_queue statement."""

    #: True when the database was away (down, restarting, unreachable, out of
    #: connections, locked) rather than answering and refusing the statement (a
    #: missing table, a permission, a constraint): only the first kind passes by
    #: itself, so only it is worth retrying.
    transient: bool = False


class UnreadablePayloadError(QueueError, ValueError):
    """A stored payload cannot be read with the configured QUEUE_ENCRYPTION_KEYS."""
