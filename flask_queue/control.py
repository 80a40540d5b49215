"""What a running handler and the process around it share: the run's progress
to write, and the request to stop it (a cancel, or its timeout).

The handler reports through ``job.progress`` and asks through ``job.cancelled``
and ``job.check()``; the heartbeat writes the progress with the run's next lease
extension (one UPDATE per beat for every run, however often a handler reports)
and reads back whether the job was cancelled, from any process. Python cannot
stop a thread from outside, so a sync handler is *asked*: it stops at its next
``check``/``progress``. An ``async`` handler's task is cancelled outright.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from .errors import InvalidOptionError, JobCancelled, JobTimeoutError, shown

#: Characters of a progress message kept (it shares the row with the lease).
PROGRESS_MESSAGE = 200

#: Why a run was asked to stop (``RunControl.why``).
CANCEL = "cancelled"
TIMED_OUT = "timed out"


def progress_text(fraction: Any, message: Any) -> str:
    """The stored JSON of ``job.progress(fraction, message)``, or a clear error."""
    try:
        finite = isinstance(fraction, (int, float)) and math.isfinite(fraction)
    except OverflowError:  # an int too large for a float
        finite = False
    if isinstance(fraction, bool) or not finite or not 0 <= fraction <= 1:
        raise InvalidOptionError(f"Invalid progress {shown(fraction)}: use a number from 0 to 1.")
    if message is not None and not isinstance(message, str):
        raise InvalidOptionError(f"Invalid progress message {shown(message)}: use a str or None.")
    text = message[:PROGRESS_MESSAGE] if message is not None else None
    return json.dumps([float(fraction), text])


class RunControl:
    """One run's shared state between its handler, the heartbeat and its runner."""

    def __init__(self, job_id: str, attempt: int, timeout: float | None = None) -> None:
        self.job_id = job_id
        self.attempt = attempt
        #: ``time.monotonic()`` past which the run has timed out (None: never).
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.timeout = timeout
        #: Why the run was asked to stop: CANCEL or TIMED_OUT (None: it was not).
        #: A plain field, not a threading.Event: one control per run, and
        #: nothing waits on it.
        self.why: str | None = None
        self._lock = threading.Lock()
        self._progress: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        #: Writes the timed-out attempt's outcome (set by the runner); once it
        #: has run, the handler's own outcome, whenever it comes, is discarded.
        self.on_timeout: Callable[[], None] | None = None
        self._outcome_taken = False

    # -- the handler's side -----------------------------------------------------------

    def report(self, fraction: Any, message: Any) -> None:
        text = progress_text(fraction, message)
        with self._lock:
            self._progress = text
        self.check()

    @property
    def stopping(self) -> bool:
        return self.why is not None

    def check(self) -> None:
        """Raise ``JobCancelled`` or ``JobTimeoutError`` once the run must stop."""
        if self.why is None:
            return
        if self.why == TIMED_OUT:
            raise JobTimeoutError(f"Job {self.job_id} ran past its timeout of {self.timeout:g}s.")
        raise JobCancelled(f"Job {self.job_id} was cancelled.")

    # -- the heartbeat's side ---------------------------------------------------------

    def take_progress(self) -> str | None:
        """The progress reported since the last beat (None: nothing new)."""
        with self._lock:
            text, self._progress = self._progress, None
        return text

    def stop(self, why: str) -> bool:
        """Ask the run to stop; False when it was asked already."""
        with self._lock:
            if self.why is not None:
                return False
            self.why = why
            loop, task = self._loop, self._task
        if loop is not None and task is not None:
            # The task runs on the handler's own loop, in another thread.
            loop.call_soon_threadsafe(task.cancel)
        return True

    @property
    def outcome_taken(self) -> bool:
        return self._outcome_taken

    def take_outcome(self) -> bool:
        """Whether the caller writes the run's outcome: the first to ask, of the
        runner (the handler returned) and the timeout, does; the other's is
        discarded, so a run never gets two outcomes."""
        with self._lock:
            taken, self._outcome_taken = self._outcome_taken, True
        return not taken

    def timed_out(self) -> None:
        """Record the timed-out attempt's outcome now (the heartbeat calls it,
        having taken the outcome: ``take_outcome``)."""
        if self.on_timeout is not None:
            self.on_timeout()

    def overdue(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    # -- the runner's side ------------------------------------------------------------

    def run_async(self, coroutine: Any) -> Any:
        """``asyncio.run`` of an async handler whose task a stop cancels."""

        async def main() -> Any:
            task = asyncio.ensure_future(coroutine)
            with self._lock:
                self._loop, self._task = asyncio.get_running_loop(), task
                stopped = self.why is not None
            if stopped:
                task.cancel()
            try:
                return await task
            finally:
                with self._lock:
                    self._loop = self._task = None

        return asyncio.run(main())
