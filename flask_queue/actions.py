"""Every admin action and read, in one service that ``Queue``, ``flask queue``
and the dashboard all call: none of them reaches into the store itself.

Each function takes the app's ``QueueState`` first; names are the facade's.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from .errors import ConfigError, InvalidOptionError, JobNotFoundError, shown
from .job import Job, JobStatus
from .state import QueueState

# -- one job -----------------------------------------------------------------------


def get(state: QueueState, job_id: str) -> Job[Any] | None:
    return state.store.get(job_id)


def get_by_custom_id(state: QueueState, custom_id: str) -> Job[Any] | None:
    return state.store.get_by_custom_id(custom_id)


def find(state: QueueState, key: str) -> Job[Any] | None:
    """The job whose id, else custom id, is exactly ``key``."""
    return state.store.find(key)


def require(state: QueueState, job_id: str) -> Job[Any]:
    job = get(state, job_id)
    if job is None:
        raise JobNotFoundError(f"No job with id {job_id!r}.")
    return job


def delete(state: QueueState, job_id: str) -> bool:
    """Delete a job; False when there was none."""
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
