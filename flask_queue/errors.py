"""One exception hierarchy for everything flask_queue refuses or fails at.

Every class's docstring is its default message, so ``raise UnknownQueueError()``
already says something useful; most call sites add the bad value.
"""

from __future__ import annotations

import reprlib

import click


def shown(value: object, limit: int = 120) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters.

    Never raises, so that refusing a bad value cannot fail in its own message:
    ``repr`` of an int over CPython's conversion limit (4,300 digits) raises
    ValueError, and of a deeply nested list RecursionError.
    """
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        text = _FALLBACK.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _int_text(number: int) -> str:
    """An int as its first digits and its length, computed without ``str(number)``."""
    magnitude = abs(number)
    # Digits from the bit length, off by at most one either way.
    digits = max(1, int(magnitude.bit_length() * 0.30102999566398120))
    if digits > 100_000:
        # Exact digits and leading digits cost quadratic time in the length.
        return f"<int of about {digits:,} digits>"
    if 10 ** (digits - 1) > magnitude:
        digits -= 1
    elif 10**digits <= magnitude:
        digits += 1
    lead = magnitude // 10 ** max(0, digits - 20)
    return f"{'-' if number < 0 else ''}{lead}...({digits} digits)"


class _Fallback(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        try:
            return super().repr_int(x, level)
        except ValueError:
            return _int_text(x)


_FALLBACK = _Fallback()
_FALLBACK.maxlevel = 4
_FALLBACK.maxstring = _FALLBACK.maxother = 60


class QueueError(Exception):
    """flask_queue could not do what was asked."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


# Also a click.ClickException: "flask queue ..." runs the app factory, and so
# init_app, before any flask_queue command exists that could catch what it
# raises (Flask's loader shows anything else as a traceback). click prints a
# ClickException as one "Error: ..." line and exits 1, as the README promises.
class ConfigError(QueueError, click.ClickException):
    """flask_queue is misconfigured for this app."""


class UnknownQueueError(QueueError):
    """No handler is registered under this queue name."""


class InvalidPayloadError(QueueError):
    """The payload does not survive a JSON round trip."""


class InvalidDurationError(QueueError):
    """The duration is not a timedelta, a number of seconds, or an ms-style string."""

    #: Why, as the end of a sentence that names the value ("must be positive"),
    #: for callers that name the option their own way (the CLI's ``--delay``).
    reason: str = ""


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


class InvalidResultError(QueueError):
    """The handler's return value is not JSON, or larger than QUEUE_MAX_PAYLOAD."""


class JobTimeoutError(QueueError, TimeoutError):
    """The job did not finish in time (a run past its timeout, or a wait that ran out)."""


class JobCancelled(QueueError):
    """The job was cancelled: its handler should stop (raised by job.check())."""


class InvalidStepError(QueueError):
    """The step is invalid: its name is used twice in one run, or it returned
    a value that is not JSON (or larger than QUEUE_MAX_PAYLOAD)."""
