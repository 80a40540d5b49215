"""A job's attempt history: the last few runs, kept on its row.

Each entry is a small dict (JSON on the row): ``n`` the attempt number, ``at``
when it started (ISO 8601, UTC), ``ms`` how long it ran, ``outcome`` and
``error`` (the error's one line, or None). The runner appends one with each
outcome it writes row by row, so a history costs no statement of its own; it is
bounded, so a job that fails every minute for a year keeps a small row.
"""

from __future__ import annotations

import traceback
from datetime import datetime
from typing import Any

#: Attempts a job keeps (the newest); older ones drop off.
HISTORY_SIZE = 20
#: Characters of an error's line kept (the ``error`` column's width).
ERROR_LINE = 255
#: The longest log line about one job or outage. A handler's exception message
#: can run to kilobytes, once per failure; the full text is on the job's row.
LOG_LINE = 300

SUCCEEDED = "succeeded"
FAILED = "failed"
#: The invoke endpoint refused the delivery (a 4xx or a redirect): nothing ran.
REFUSED = "refused"
#: This release has no handler for the job's queue: nothing ran.
NO_HANDLER = "no handler"
#: The run was cancelled (queue.cancel, or a delete of the running job).
CANCELLED = "cancelled"
#: The run ended at a ``job.sleep``: the job runs again at its wake time.
SLEPT = "slept"
#: The run ended at a ``job.wait_for_event``: an emit or the timeout wakes it.
WAITING = "waiting"


def line(text: str) -> str:
    """The first non-blank line of ``text``, cut to ``ERROR_LINE`` characters."""
    for part in text.strip().splitlines():
        if part.strip():
            return part.strip()[:ERROR_LINE]
    return ""


def clipped(text: str, limit: int) -> str:
    """``text`` on one line (each run of whitespace one space), cut to ``limit``
    characters with an ellipsis: a log collector files each line on its own."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: max(limit - 1, 0)] + "…"


def error_line(exc: BaseException) -> str:
    """``ValueError: bad card``: the exception's type, as a traceback's last line
    names it (module included for non-builtins), and its message's first line."""
    return line(traceback.format_exception_only(exc)[-1])


def entry(
    attempt: int, at: datetime, seconds: float | None, outcome: str, error: str | None
) -> dict[str, Any]:
    return {
        "n": attempt,
        "at": at.isoformat(),
        "ms": None if seconds is None else round(seconds * 1000),
        "outcome": outcome,
        "error": error,
    }


def appended(history: list[dict[str, Any]] | None, item: dict[str, Any]) -> list[dict[str, Any]]:
    """``history`` with ``item`` at the end, bounded to ``HISTORY_SIZE``."""
    return [*(history or [])[-(HISTORY_SIZE - 1) :], item]
