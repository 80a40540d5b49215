"""The job as handlers, callers and the dashboard see it."""

from __future__ import annotations

import base64
import enum
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

# Re-exported: ScheduleType lives with the schedule maths it names (scheduling.py),
# so job.py imports scheduling and never the other way round.
from .errors import InvalidStatusError
from .scheduling import Schedule, ScheduleType

T = TypeVar("T")

#: How long ``queue.wait`` and ``job.wait`` wait unless told.
WAIT_TIMEOUT = "30s"

# RFC 4648 base32 -> Crockford's alphabet, lower case: no i, l, o, u to misread.
_TO_CROCKFORD = str.maketrans(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", "0123456789abcdefghjkmnpqrstvwxyz"
)


def new_id() -> str:
    """A 26-character, time-ordered, collision-resistant id.

    48 bits of milliseconds then 80 random bits (the ULID layout), in base32:
    ids sort by creation time, which keeps inserts at the right edge of the
    primary-key index and gives keyset pagination a stable order, and two ids
    collide only with ~2^-80 odds.
    """
    raw = (time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10)
    # 128 bits -> 26 base32 digits (the last 2 bits are zero padding).
    return base64.b32encode(raw).decode()[:26].translate(_TO_CROCKFORD)


class JobStatus(str, enum.Enum):
    SCHEDULED = "SCHEDULED"
    RUNNING = "RUNNING"
    FAILED = "FAILED"
    COMPLETED = "COMPLETED"
    #: Cancelled by ``queue.cancel``: kept like FAILED, and retryable.
    CANCELLED = "CANCELLED"
    #: Enqueued with ``after=``: waits for its parents to complete, then is due.
    BLOCKED = "BLOCKED"

    def __str__(self) -> str:
        return self.value


class Progress(tuple):  # type: ignore[type-arg]
    """``(fraction, message)`` of a job's last reported progress (``()`` before
    any), and, in the job its handler got, the call that reports it:
    ``job.progress(0.5, "half way")``. Written with the run's next heartbeat,
    not once per call; raises ``JobCancelled`` (or ``JobTimeoutError``) once the
    run must stop, like ``job.check()``."""

    _control: Any = None

    def __new__(
        cls, values: tuple[float, str | None] | tuple[()] = (), control: Any = None
    ) -> Progress:
        made = super().__new__(cls, values)
        made._control = control
        return made

    def __call__(self, fraction: float, message: str | None = None) -> None:
        if self._control is None:
            raise InvalidStatusError("job.progress() works inside the job's handler only.")
        self._control.report(fraction, message)

    @property
    def fraction(self) -> float | None:
        return self[0] if self else None

    @property
    def message(self) -> str | None:
        return self[1] if self else None


@dataclass(frozen=True)
class Job(Generic[T]):
    """One row of the job table, with the payload decoded.

    ``Job[T]`` is what a handler receives; ``T`` is the payload type that
    ``handle.enqueue(...)`` is checked against.
    """

    id: str
    queue: str
    payload: T
    run_at: datetime
    status: JobStatus
    custom_id: str | None = None
    reason: str | None = None
    #: The last error in one line (``"ValueError: bad card"``); None after a success.
    error: str | None = None
    #: The latest attempts, oldest first (see ``history.Attempt``); None before any.
    history: list[dict[str, Any]] | None = None
    count: int = 0
    schedule_type: ScheduleType | None = None
    schedule: str | None = None
    count_limit: int | None = None
    tz: str | None = None
    occurrence_at: datetime | None = None
    attempt: int = 0
    errors: int = 0
    priority: int = 0
    retry: list[float] | None = None
    lease_until: datetime | None = None
    started_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    #: What the handler returned (JSON), for a COMPLETED job; None otherwise.
    result: Any = None
    #: The run's last ``job.progress(fraction, message)`` as of its last beat:
    #: ``(fraction, message)``, or ``()`` before any. Inside the handler it is
    #: also what the handler calls to report.
    progress: Progress = field(default_factory=lambda: Progress())
    #: When a cancel was asked for (a RUNNING job ends CANCELLED at its next beat).
    cancelled_at: datetime | None = None
    #: "DELETE" when a delete of the running job removes the row at the run's end.
    cancel_action: str | None = None
    #: The job's own run timeout (None: the handler's ``timeout=``, or none).
    timeout: timedelta | None = None
    #: ``unique_for``: until then an enqueue of its custom id returns this job.
    unique_until: datetime | None = None
    #: The key a limited queue's limits hold per (``enqueue(key=)`` or the
    #: handler's ``key=`` function of the payload); None: the queue's keyless group.
    key: str | None = None
    #: The W3C trace context the enqueue ran in (JSON of ``traceparent`` and
    #: ``tracestate``), when tracing is on and a span was current: each run's
    #: span links to it (tracing.py).
    trace_context: str | None = None

    def _twin(self, id: str, payload: Any, key: str | None) -> Job[Any]:
        """This job with another id, payload and key: ``enqueue_many``'s jobs
        differ in nothing else. A tenth of ``dataclasses.replace``'s cost, which runs
        ``__init__`` over every field again (a fifth of a batch's own work)."""
        twin: Job[Any] = object.__new__(Job)
        fields = twin.__dict__
        fields.update(self.__dict__)
        fields["id"] = id
        fields["payload"] = payload
        fields["key"] = key
        return twin

    # -- inside a handler: the run's control (control.py) -----------------------------

    @property
    def cancelled(self) -> bool:
        """True once the run was asked to stop: cancelled (seen within one
        heartbeat, from any process), or past its timeout."""
        control = self.__dict__.get("_control")
        return control is not None and control.stopping

    def check(self) -> None:
        """Raise ``JobCancelled`` (or ``JobTimeoutError``) if the run must stop:
        call it between units of work in a long sync handler."""
        self._run_control("check").check()

    def _run_control(self, what: str) -> Any:
        control = self.__dict__.get("_control")
        if control is None:
            raise InvalidStatusError(
                f"job.{what}() works inside the job's handler only (job {self.id})."
            )
        return control

    def _steps(self, what: str) -> Any:
        """The run's ``RunSteps``, made at its first use (the runner leaves the
        means to make them: most handlers use none)."""
        fields = self.__dict__
        steps = fields.get("_steps_made")
        if steps is None:
            make = fields.get("_make_steps")
            if make is None:
                raise InvalidStatusError(
                    f"job.{what}() works inside the job's handler only (job {self.id})."
                )
            steps = fields["_steps_made"] = make()
        return steps

    # -- inside a handler: durable steps (steps.py) ------------------------------------

    def step(self, name: str, fn: Any, *args: Any, session: Any = None, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` once per job: its JSON result is stored under
        ``name``, and every later run of the job (a retry, the run after a
        sleep) returns the stored result without calling ``fn``. With
        ``session=db.session``, ``fn``'s writes in that session and the step's
        record commit together: a step that only writes to this database happens
        exactly once. Raises ``InvalidStepError`` for a name used twice in a run
        or a result that is not JSON."""
        return self._steps("step").step(name, fn, args, kwargs, session)

    def sleep(self, name: str, duration: Any) -> None:
        """End this run and run the job again after ``duration`` ("1d", seconds,
        a timedelta), its steps kept; the next run replays the handler and goes
        on after the sleep. Holds no thread, connection or lease meanwhile."""
        self._steps("sleep").sleep(name, duration)

    def sleep_until(self, name: str, when: datetime) -> None:
        """``sleep`` until ``when`` (a timezone-aware datetime); a time passed
        already goes straight on."""
        self._steps("sleep_until").sleep_until(name, when)

    @property
    def parent_results(self) -> dict[str, Any]:
        """{parent id: result} of a job enqueued with ``after=`` (read once per
        run; a parent that returned None, or whose row was purged before its
        last sibling finished, maps to None). Inside the handler only."""
        return self._steps("parent_results").parent_results()  # type: ignore[no-any-return]

    def wait_for_event(
        self, name: str, event: str, match: dict[str, Any] | None = None, timeout: Any = "7d"
    ) -> Any:
        """End this run until an event named ``event`` whose data contains
        ``match`` (a dict subset) is emitted, or ``timeout`` passes; the next run
        replays the handler and this returns the ``Event`` (None after the
        timeout). Only events emitted after the wait began meet it. Holds no
        thread, connection or lease meanwhile."""
        return self._steps("wait_for_event").wait_for_event(name, event, match, timeout)

    def wait(self, timeout: Any = WAIT_TIMEOUT) -> Job[Any]:
        """``queue.wait(self.id, timeout=...)``: the job once COMPLETED, FAILED or
        CANCELLED. For the ``Job`` that ``enqueue`` or ``queue.get`` returned."""
        waiter = self.__dict__.get("_waiter")
        if waiter is None:
            raise InvalidStatusError(
                f"Job {self.id} was not returned by enqueue or queue.get: use queue.wait(id)."
            )
        return waiter(self.id, timeout)  # type: ignore[no-any-return]

    @property
    def is_repeating(self) -> bool:
        return self.schedule_type is not None

    @property
    def interval(self) -> timedelta | None:
        """An ``every`` job's interval (stored as whole milliseconds); else None."""
        if self.schedule_type is not ScheduleType.EVERY or self.schedule is None:
            return None
        return Schedule.of(self).interval

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view, for the CLI and API responses."""
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if key.startswith("_"):
                continue  # the run's control and waiter: not the job's data
            if isinstance(value, Progress):
                value = list(value) or None
            elif isinstance(value, timedelta):
                value = value.total_seconds()
            elif isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, enum.Enum):
                value = value.value
            out[key] = value
        return out


__all__ = ["Event", "Job", "JobStatus", "ScheduleType", "new_id"]


@dataclass(frozen=True)
class Event:
    """An emitted event: what ``queue.emit`` returns and what
    ``job.wait_for_event`` gives the handler. ``started`` and ``woke`` are the
    jobs it enqueued and the waiting jobs it met (empty where not known: in a
    handler's wait); a stored event lists at most 100 woken jobs, and
    ``woke_count`` counts them all."""

    id: str
    name: str
    data: Any
    created_at: datetime
    started: tuple[str, ...] = ()
    woke: tuple[str, ...] = ()
    woke_count: int = 0

    def to_json(self) -> str:
        """The record a wait keeps of the event that met it."""
        return json.dumps(
            {
                "id": self.id,
                "name": self.name,
                "data": self.data,
                "created_at": self.created_at.isoformat(),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Event:
        d = json.loads(text)
        return cls(d["id"], d["name"], d["data"], datetime.fromisoformat(d["created_at"]))

    @classmethod
    def from_row(cls, row: Any) -> Event:
        """From the store's ``EventRow`` (its data as JSON text)."""
        data = json.loads(row.data)
        return cls(row.id, row.name, data, row.created_at, row.started, row.woke, row.woke_count)
