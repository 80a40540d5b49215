"""Every admin action and read, in one service that ``Queue``, ``flask queue``
and the dashboard all call: none of them reaches into the store itself.

Each function takes the app's ``QueueState`` first; names are the facade's.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, TypeVar

from .durations import Duration, to_timedelta
from .errors import ConfigError, InvalidOptionError, JobNotFoundError, JobTimeoutError, shown
from .job import WAIT_TIMEOUT, Event, Job, JobStatus
from .planning import check_custom_id, check_event_name
from .state import QueueState
from .store import HeldKey, Link, StepRecord, WaitRow
from .store.core import nameable
from .store.steps import occurrence_of

J = TypeVar("J", "Job[Any]", "Job[Any] | None")

# -- one job -----------------------------------------------------------------------


def get(state: QueueState, job_id: str) -> Job[Any] | None:
    return waitable(state, state.store.get(job_id))


def steps(state: QueueState, job: Job[Any]) -> list[StepRecord]:
    """The durable steps ``job``'s current occurrence recorded, oldest first."""
    return state.store.step_records.listed(job.id, occurrence_of(job.status.value, job.count))


def current_wait(state: QueueState, job: Job[Any]) -> WaitRow | None:
    """The ``wait_for_event`` a SCHEDULED job is waiting at, if any (the job page)."""
    if job.status is not JobStatus.SCHEDULED:
        return None
    return state.store.step_records.current_wait(job.id, job.count)


def links(state: QueueState, job: Job[Any]) -> tuple[list[Link], list[Link]]:
    """A job's parents and (the first 100 of) its children (the job page)."""
    return state.store.deps.parents(job.id), state.store.deps.children(job.id)


def events(state: QueueState, *, name: str | None = None, limit: int = 50) -> list[Event]:
    """The newest emitted events first (``queue.events``, the Events page)."""
    if name is not None:
        check_event_name(name)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
        raise InvalidOptionError(f"Invalid limit {shown(limit)}: use an int from 1 to 1000.")
    return [Event.from_row(r) for r in state.store.events.recent(limit, name=name)]


def get_event(state: QueueState, event_id: str) -> Event | None:
    """The stored event with this id (None: none, or pruned)."""
    row = state.store.events.get(check_custom_id(event_id))
    return None if row is None else Event.from_row(row)


def waitable(state: QueueState, job: J) -> J:
    """``job``, with ``job.wait()`` bound to this app's queue."""
    if job is not None:
        object.__setattr__(job, "_waiter", functools.partial(wait, state))
    return job


#: Statuses a job stays in once its run is over.
ENDED = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)
#: The first and the longest pause between two reads of a waited-for job.
WAIT_FIRST, WAIT_LONGEST = 0.02, 0.5


def wait(state: QueueState, job_id: str, timeout: Duration | None = WAIT_TIMEOUT) -> Job[Any]:
    """The job once COMPLETED, FAILED or CANCELLED (``queue.wait``).

    It reads the row by primary key, every 20 ms at first and then at most every
    half second (a wait costs one indexed read per pause, no lock, no listen).
    Raises ``JobTimeoutError`` when ``timeout`` passes first, and
    ``JobNotFoundError`` when there is no such job, or it is gone: a job whose
    handler returned None is deleted at its success unless QUEUE_KEEP_COMPLETED
    keeps it (return a value to keep it for QUEUE_KEEP_RESULTS)."""
    limit = to_timedelta(timeout, name="timeout").total_seconds() if timeout is not None else None
    give_up = None if limit is None else time.monotonic() + limit
    pause = WAIT_FIRST
    seen: Job[Any] | None = None
    while True:
        job = state.store.get(job_id)
        if job is None:
            if seen is None:
                raise JobNotFoundError(f"No job with id {job_id!r}.")
            raise JobNotFoundError(
                f"Job {job_id!r} is gone: it completed without a result and"
                " QUEUE_KEEP_COMPLETED is 0, or it was deleted."
            )
        if job.status in ENDED:
            return waitable(state, job)
        seen = job
        left = None if give_up is None else give_up - time.monotonic()
        if left is not None and left <= 0:
            raise JobTimeoutError(
                f"Job {job_id!r} is still {job.status.value} after {limit:g}s of waiting."
            )
        time.sleep(pause if left is None else min(pause, left))
        pause = min(pause * 2, WAIT_LONGEST)


def cancel(state: QueueState, job_id: str) -> Job[Any]:
    """A SCHEDULED job becomes CANCELLED; a RUNNING one is asked to stop and ends
    CANCELLED (its run sees it within one heartbeat, in any process)."""
    return state.store.admin.cancel(job_id)


def get_by_custom_id(state: QueueState, custom_id: str) -> Job[Any] | None:
    return waitable(state, state.store.get_by_custom_id(custom_id))


def find(state: QueueState, key: str) -> Job[Any] | None:
    """The job whose id, else custom id, is exactly ``key``."""
    return state.store.find(key)


def require(state: QueueState, job_id: str) -> Job[Any]:
    job = get(state, job_id)
    if job is None:
        raise JobNotFoundError(f"No job with id {job_id!r}.")
    return job


def delete(state: QueueState, job_id: str) -> bool:
    """Delete a job; False when there was none. Its BLOCKED children are
    cancelled first: a parent that is gone would count as completed."""
    if nameable(job_id):
        why = f"Cancelled: its parent job {job_id} was deleted."
        state.store.deps.cancel_children([job_id], why)
    return state.store.delete(job_id)


def retry(state: QueueState, job_id: str) -> Job[Any]:
    """Put a FAILED job back to SCHEDULED, due now."""
    return state.store.retry(job_id)


def run_now(state: QueueState, job_id: str) -> Job[Any]:
    """Make a SCHEDULED or FAILED job due now; the next produce runs it."""
    return state.store.run_now(job_id)


# -- many jobs -----------------------------------------------------------------------


def jobs(
    state: QueueState,
    *,
    status: JobStatus | str | None = None,
    queue: str | None = None,
    limit: int | None = None,
    payloads: bool = True,
) -> Iterator[Job[Any]]:
    """``Queue.jobs``: every matching job, read a keyset page at a time."""
    found = state.store.iter_jobs(status=status_name(status), queue=queue, light=not payloads)
    return found if limit is None else itertools.islice(found, limit)


def page(
    state: QueueState,
    *,
    status: str,
    queue: str | None,
    limit: int,
    after: tuple[datetime, str] | None,
    newest_first: bool,
) -> list[Job[Any]]:
    """One keyset page of a list, without payloads (the dashboard's lists)."""
    return state.store.jobs(
        status=status,
        queue=queue,
        limit=limit,
        after=after,
        newest_first=newest_first,
        light=True,
    )


def search(state: QueueState, prefix: str, limit: int) -> list[Job[Any]]:
    """Jobs whose id or custom id starts with ``prefix``, at most ``limit`` of each."""
    return state.store.search(prefix, limit)


def retry_failed(state: QueueState, queue: str | None = None) -> int:
    """Every FAILED job (of ``queue``) back to SCHEDULED, due now; how many."""
    return state.store.retry_failed(queue)


def delete_failed(state: QueueState, queue: str | None = None) -> int:
    """Delete every FAILED job (of ``queue``); how many."""
    state.store.deps.cancel_children_of_failed(queue)
    return state.store.delete_failed(queue)


def rotate_keys(state: QueueState, *, batch: int = 500) -> int:
    """Encrypt every stored payload with the newest of ``QUEUE_ENCRYPTION_KEYS``."""
    if state.store.cipher is None:
        raise ConfigError(
            "Set QUEUE_ENCRYPTION_KEYS (a list of Fernet keys, newest first) to"
            " encrypt payloads; there is nothing to rotate to."
        )
    return state.store.reseal_payloads(batch)


# -- queues --------------------------------------------------------------------------


def pause(state: QueueState, name: str) -> None:
    """Stop claiming queue ``name``'s jobs in every process, from their next claim."""
    state.store.set_paused(state.queue.known(name), True)


def resume(state: QueueState, name: str) -> None:
    state.store.set_paused(state.queue.known(name), False)


def queue_settings(state: QueueState) -> dict[str, dict[str, Any]]:
    """Each queue's stored pause state and limits (queues with neither are absent)."""
    return state.store.queue_settings()


# -- counts ------------------------------------------------------------------------


def counts(state: QueueState) -> dict[tuple[str, str], int]:
    """Exact jobs per (status, queue), over the whole table (``flask queue stats``)."""
    return state.store.counts()


def counts_capped(
    state: QueueState, cap: int, keys: Sequence[tuple[str | None, str | None]], *, due: bool = False
) -> list[int]:
    """Jobs per (status, queue) key, each counted up to ``cap`` + 1, in one round trip."""
    return state.store.counts_capped(cap, keys, due=due)


def count_capped(
    state: QueueState, cap: int, *, status: str | None = None, queue: str | None = None
) -> int:
    return state.store.count_capped(cap, status=status, queue=queue)


def held_keys(state: QueueState, cap: int) -> list[HeldKey]:
    """Keys at their limit in limited queues, with the due jobs each holds back."""
    return state.store.held_keys(cap)


def recent_failures(state: QueueState, limit: int) -> list[tuple[str, str | None]]:
    """(queue, error line) of the latest ``limit`` FAILED jobs."""
    return state.store.recent_failures(limit)


def run_stats(
    state: QueueState, since: datetime, *, by_hour: bool = False
) -> list[tuple[datetime, int, int]]:
    """(start, succeeded, failed) per minute (or hour) since ``since``."""
    return state.store.run_stats(since, by_hour=by_hour)


def status_name(status: JobStatus | str | None) -> str | None:
    """The stored name of ``status`` (the enum, or its name in any case)."""
    if status is None:
        return None
    if isinstance(status, JobStatus):
        return status.value
    try:
        return JobStatus[str(status).upper()].value
    except KeyError:
        raise InvalidOptionError(
            f"Unknown status {shown(status)}: use one of {', '.join(s.value for s in JobStatus)}."
        ) from None
