"""Testing an app that uses flask_queue: jobs run when the test says so, a
handler's error fails the test, and the queue's clock is the test's.

With pytest (this module is a pytest plugin, registered by the package), ask
for ``queue_tester`` in a test of an app whose ``app`` fixture you provide::

    def test_booking_sends_a_reminder(app, client, queue_tester):
        client.post("/bookings", data={"guest": "Ada"})
        assert [j.payload for j in queue_tester.enqueued("bookingReminder")] == [1]
        queue_tester.advance("10s")        # runs what became due; re-raises its errors
        assert reminder_was_sent()

Without pytest: ``with QueueTester(app) as tester: ...``.

While a tester is active, nothing runs by itself: enqueue stores jobs and
dispatches nothing, the in-process scheduler is not consulted, and
``drain()`` / ``advance()`` run every due job in this thread (the inline path,
with the same claim, retries and outcomes as in production). The first handler
error of a drain is raised again once the drain is over (the job itself is
recorded as usual: retrying, or FAILED); ``drain(raise_errors=False)`` keeps
going silently.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import datetime, timezone
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .durations import Duration, to_timedelta
from .executors import InlineExecutor
from .job import Job, JobStatus
from .signals import job_failed

if TYPE_CHECKING:
    from flask import Flask

    from .state import QueueState

#: Drains stop after this many rounds of claims (a handler that enqueues a due
#: job forever would otherwise never let the test end).
MAX_ROUNDS = 1000


class _Held(InlineExecutor):
    """The app's executor while a tester is active: it dispatches nothing and
    a produce through it claims nothing (the in-process scheduler's ticks only
    keep house), so a job waits for ``drain``, which runs the inline path."""

    name = "testing"
    runs_jobs = False

    def dispatch(self, job_id: str) -> None:
        return None

    def dispatch_many(self, job_ids: list[str]) -> None:
        return None


class QueueTester:
    """Runs an app's jobs on demand, on a clock of its own (see the module)."""

    def __init__(self, app: Flask, *, now: datetime | None = None) -> None:
        self.app = app
        self.state: QueueState = app.extensions["queue"]
        self.queue = self.state.queue
        #: The queue's time while the tester is active (aware UTC); ``advance`` moves it.
        self.now = now or datetime.now(timezone.utc)
        self._saved: tuple[Any, Any] | None = None

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> QueueTester:
        if self._saved is None:
            self._saved = (self.queue.clock, self.state.executor)
            self.queue.clock = lambda: self.now
            self.state.executor = _Held(self.state)
            self._runner = InlineExecutor(self.state)
        return self

    def stop(self) -> None:
        if self._saved is not None:
            self.queue.clock, self.state.executor = self._saved
            self._saved = None

    def __enter__(self) -> QueueTester:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what tests call ------------------------------------------------------------

    def drain(self, *, raise_errors: bool = True) -> int:
        """Run every due job (and those that become due meanwhile, such as a
        retry with no delay or a job a handler enqueued) in this thread; how
        many runs there were. The first handler error is raised again after."""
        errors: list[BaseException] = []

        def failed(sender: Any, error: BaseException | None = None, **extra: Any) -> None:
            if error is not None:
                errors.append(error)

        runs = 0
        with self.app.app_context(), job_failed.connected_to(failed, self.app):
            for _ in range(MAX_ROUNDS):
                claimed = self.queue.produce(executor=self._runner).claimed
                runs += claimed
                if not claimed:
                    break
        if errors and raise_errors:
            raise errors[0]
        return runs

    def advance(self, duration: Duration, *, raise_errors: bool = True) -> int:
        """Move the queue's clock by ``duration`` ("1h", seconds, a timedelta)
        and ``drain``: what became due runs."""
        self.now += to_timedelta(duration, name="advance")
        return self.drain(raise_errors=raise_errors)

    def enqueued(self, name: str | None = None) -> list[Job[Any]]:
        """The jobs waiting to run (SCHEDULED or BLOCKED), of queue ``name`` if
        given, soonest first."""
        with self.app.app_context():
            waiting = [
                job
                for status in (JobStatus.SCHEDULED, JobStatus.BLOCKED)
                for job in self.queue.jobs(status=status, queue=name)
            ]
        return sorted(waiting, key=lambda j: (j.run_at, j.id))


def _fixture() -> Any:
    import pytest

    @pytest.fixture
    def queue_tester(request: pytest.FixtureRequest) -> Iterator[QueueTester]:
        """A ``QueueTester`` of the test's ``app`` fixture (define one)."""
        app = request.getfixturevalue("app")
        with QueueTester(app) as tester:
            yield tester

    return queue_tester


# A pytest plugin when pytest is there (the package registers it); a plain
# module otherwise.
with contextlib.suppress(ImportError):
    queue_tester = _fixture()


__all__ = ["QueueTester", "queue_tester"]
