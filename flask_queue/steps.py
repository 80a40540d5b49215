"""Durable steps: a handler made of steps whose results are remembered, so a
retry or the run after a sleep skips what already happened.

A run replays the handler from its top. ``job.step(name, fn)`` returns the
stored result of a step that completed in an earlier run of the job (one read
of the job's records per run, at its first step), and runs ``fn`` and records
its result otherwise. ``job.sleep(name, duration)`` records its wake time and
ends the run (``Suspended``): the runner writes the job back SCHEDULED at that
time with its errors as they were, holding no thread, connection or lease
meanwhile, which is what an http invoke on a serverless host needs. The next
run replays up to the sleep, finds it over, and goes on.

Records belong to one occurrence of the job (its ``count``): a repeating job's
next slot, or a completed job run again, starts with none, and the purge of
finished jobs removes the records of every job or occurrence that is gone.

Why a step's name, not its position, is its key: code between steps may
change between releases (a step added at the top must not shift every stored
result onto the wrong step). Code between steps must be deterministic: it
runs again at every replay, and a branch that goes another way on replay
meets steps that have no records and runs them.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from .durations import to_timedelta
from .errors import InvalidOptionError, InvalidResultError, InvalidStepError, shown
from .events import wait_probe
from .job import Event
from .planning import check_event_name, encode_payload, encode_result
from .store import StepRecord, StepTaken, WaitRow

if TYPE_CHECKING:
    from .control import RunControl
    from .store import JobStore

#: A step's name is stored exactly (like a custom id), up to this many characters.
NAME_LIMIT = 255
STEP = "step"
SLEEP = "sleep"
WAIT = "wait"
#: ``job.wait_for_event``'s timeout unless it names one.
WAIT_TIMEOUT = "7d"


class Suspended(BaseException):
    """The run ends here and the job runs again at ``wake`` (``job.sleep``).

    A BaseException, like ``asyncio.CancelledError``, so that a handler's own
    ``except Exception`` around a sleep does not swallow the pause."""

    def __init__(self, wake: datetime, name: str, *, waits: bool = False) -> None:
        super().__init__(wake, name)
        self.wake = wake
        self.name = name
        #: At a ``wait_for_event`` (an emit may wake it before ``wake``).
        self.waits = waits


class RunSteps:
    """One run's steps: the job's records, read once, and the names this run
    used (each may be used once)."""

    def __init__(
        self,
        store: JobStore,
        job_id: str,
        occurrence: int,
        attempt: int,
        clock: Callable[[], datetime],
        max_bytes: int | None,
        control: RunControl,
    ) -> None:
        self.store = store
        self.job_id = job_id
        self.occurrence = occurrence
        self.attempt = attempt
        self.clock = clock
        self.max_bytes = max_bytes
        self.control = control
        self._records: dict[str, StepRecord] | None = None
        self._used: set[str] = set()
        self._parents: dict[str, Any] | None = None

    def _read(self) -> dict[str, StepRecord]:
        if self._records is None:
            self._records = self.store.step_records.read(self.job_id, self.occurrence)
        return self._records

    def _claim_name(self, name: Any, what: str) -> str:
        if not isinstance(name, str) or not name or len(name) > NAME_LIMIT:
            raise InvalidStepError(
                f"job.{what}() got the name {shown(name)}: a step's name is a non-empty str"
                f" of at most {NAME_LIMIT} characters, unique within the handler."
            )
        if name in self._used:
            raise InvalidStepError(
                f"job.{what}({name!r}): the name {name!r} is used twice in this run of job"
                f" {self.job_id}. Each step needs a name of its own (in a loop, put the"
                " item in it: f'charge-{item_id}')."
            )
        self._used.add(name)
        return name

    def _recorded(self, name: str, kind: str) -> StepRecord | None:
        found = self._read().get(name)
        if found is not None and found.kind != kind:
            raise InvalidStepError(
                f"job.{kind}({name!r}): an earlier run of job {self.job_id} recorded"
                f" {name!r} as a {found.kind}. Rename one of them."
            )
        return found

    def _store(self, record: StepRecord, session: Any) -> StepRecord:
        """Write ``record``; the one another run wrote first, if it did."""
        try:
            self.store.step_records.record(self.job_id, self.occurrence, record, session=session)
        except StepTaken:
            self._records = None
            return self._read().get(record.name, record)
        assert self._records is not None
        self._records[record.name] = record
        return record

    def step(
        self,
        name: Any,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        session: Any,
    ) -> Any:
        name = self._claim_name(name, STEP)
        if not callable(fn):
            raise InvalidStepError(f"job.step({name!r}, ...) got {shown(fn)}, not a function.")
        found = self._recorded(name, STEP)
        if found is None:
            self.control.check()  # a cancelled or timed-out run starts no new step
            started = time.perf_counter()
            value = fn(*args, **kwargs)
            if inspect.isawaitable(value):
                if inspect.iscoroutine(value):
                    value.close()
                raise InvalidStepError(
                    f"job.step({name!r}, ...) got an async function: steps run sync"
                    " functions; await the coroutine in the handler and pass its"
                    " work to job.step as a sync function."
                )
            try:
                text = encode_result(value, self.max_bytes)
            except InvalidResultError as exc:
                if session is not None:
                    session.rollback()
                raise InvalidStepError(
                    f"job.step({name!r}) of job {self.job_id}: {exc}".replace(
                        "The handler returned", "the step returned"
                    )
                ) from None
            ms = round((time.perf_counter() - started) * 1000)
            record = StepRecord(name, STEP, text, self.attempt, self.clock(), ms)
            found = self._store(record, session)
        return None if found.result is None else json.loads(found.result)

    def sleep_until(self, name: Any, when: Any, what: str = "sleep_until") -> None:
        name = self._claim_name(name, what)
        if not isinstance(when, datetime) or when.utcoffset() is None:
            raise InvalidOptionError(
                f"job.{what}({name!r}, ...) got {shown(when)}: pass a timezone-aware"
                " datetime (datetime.now(timezone.utc) + timedelta(days=1))."
            )
        found = self._recorded(name, SLEEP)
        if found is None:
            text = json.dumps(when.isoformat())
            record = StepRecord(name, SLEEP, text, self.attempt, self.clock(), None)
            found = self._store(record, None)
        wake = datetime.fromisoformat(json.loads(found.result or "null"))
        if wake > self.clock():
            raise Suspended(wake, name)

    def sleep(self, name: Any, duration: Any) -> None:
        # The wake time is fixed by the first run that reaches the sleep:
        # ``sleep_until`` reads it back on a replay, whatever ``when`` says.
        delay: timedelta = to_timedelta(duration, name=f"job.sleep({name!r}) duration")
        self.sleep_until(name, self.clock() + delay, what="sleep")

    def wait_for_event(self, name: Any, event: Any, match: Any, timeout: Any) -> Event | None:
        name = self._claim_name(name, "wait_for_event")
        found = self._recorded(name, WAIT)
        if found is None:
            what = f"job.wait_for_event({name!r}, ...)"
            event = check_event_name(event)
            if match is not None and not isinstance(match, dict):
                raise InvalidOptionError(
                    f"{what} got match={shown(match)}: pass a dict the event's data must"
                    " contain, e.g. match={'booking_id': 7}, or None for any event."
                )
            text = encode_payload(match) if match else None
            limit: timedelta = to_timedelta(timeout, name=f"{what} timeout")
            now = self.clock()
            wait = WaitRow(
                self.job_id, self.occurrence, name, event, text, self.attempt, now + limit, now
            )
            deadline = self.store.step_records.wait(wait, wait_probe(match))
            if deadline is not None and deadline > self.clock():
                raise Suspended(deadline, name, waits=True)
            # The deadline passed: the wait ends without an event, unless an
            # emit resolved it first (then its record holds the event).
            if deadline is not None and self.store.step_records.time_out(wait, self.attempt):
                return None
            self._records = None
            found = self._read().get(name)
            if found is None:  # pragma: no cover - the purge took a live job's wait
                return None
        return None if found.result is None else Event.from_json(found.result)

    def parent_results(self) -> dict[str, Any]:
        if self._parents is None:
            self._parents = self.store.deps.results(self.job_id)
        return self._parents
