"""Enqueue: plan the row, encode the payload, insert, signal, and dispatch a due
job now, or after the caller's commit when it shares the caller's session."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from . import signals, tracing
from .actions import waitable
from .errors import InvalidOptionError, shown
from .job import Job, new_id
from .planning import (
    ENQUEUE_OPTIONS,
    MANY_OPTIONS,
    PLAN_OPTIONS,
    AnySession,
    EnqueueOptions,
    check_custom_id,
    check_key,
    check_options,
    encode_payload,
    plan,
)
from .state import QueueState
from .store import naive_utc
from .store.core import BLOCKED, nameable

if TYPE_CHECKING:
    from sqlalchemy.orm import Session
    from typing_extensions import Unpack


def enqueue(
    state: QueueState, name: str, payload: Any, **options: Unpack[EnqueueOptions]
) -> Job[Any]:
    """``Queue.enqueue`` for the app of ``state`` (see there)."""
    check_options(options, ENQUEUE_OPTIONS, "enqueue")
    store = state.store
    id, override = options.get("id"), options.get("override", False)
    session = options.get("session")
    if id is not None:
        check_custom_id(id)
    if override and id is None:
        raise InvalidOptionError("override=True needs id=: it replaces the job with that id.")
    for option in ("debounce", "unique_for"):
        if options.get(option) is not None and id is None:
            raise InvalidOptionError(f"{option}= needs id=: the window is per custom id.")
        if options.get(option) is not None and override:
            raise InvalidOptionError(f"{option}= and override=True both given: pass one.")
    parents = _parents(options) if options.get("after") is not None else None
    fields = _planned(state, name, options)
    text = encode_payload(payload, state.config.max_payload)
    key = _key(state, name, options, payload)
    row = store.new_row(custom_id=id, payload=text, key=key, **fields)
    conn = session.connection() if session is not None else None
    if parents is not None:
        return _enqueue_blocked(state, row, payload, parents, session, conn)
    due = row["run_at"] <= naive_utc(state.queue.clock())
    if id is not None:
        debounce = options.get("debounce") is not None
        job, created = store.insert_unique(
            row, override=override or debounce, conn=conn, debounce=debounce
        )
    elif due and conn is None and state.executor.notifies:
        # Idle workers are told in the INSERT's own statement: one round
        # trip instead of two (a third of an enqueue->start on PostgreSQL).
        store.insert([row], notify=True)
        job = store.to_job(row, payload=payload)
        signals.send(signals.job_enqueued, state.app, job=job)
        return waitable(state, job)
    else:
        store.insert([row], conn=conn)
        job, created = store.to_job(row, payload=payload), True
    if created:
        signals.send(signals.job_enqueued, state.app, job=job)
    if created and due:
        dispatch_after_commit(state, [job.id], session)
    return waitable(state, job)


#: Parents one job may wait for.
MAX_PARENTS = 100


def _parents(options: EnqueueOptions) -> list[tuple[str, bool]]:
    """``after=``'s parents as (id, whether a Job was passed), checked."""
    after = options.get("after")
    for other in ("id", "cron", "every", "debounce", "unique_for"):
        if options.get(other) is not None:
            raise InvalidOptionError(
                f"after= and {other}= both given: a job with parents runs once, when they"
                " have completed, and takes no custom id or window (yet)."
            )
    if isinstance(after, (str, Job)) or not isinstance(after, (list, tuple)):
        raise InvalidOptionError(
            f"Invalid after {shown(after)}: pass a list of jobs (what enqueue returned) or"
            " job ids, e.g. after=[charge, ship]."
        )
    if not 1 <= len(after) <= MAX_PARENTS:
        raise InvalidOptionError(
            f"after= lists {len(after)} jobs: a job waits for 1 to {MAX_PARENTS} parents"
            " (for more, use queue.batch(on_success=...))."
        )
    parents: list[tuple[str, bool]] = []
    for parent in after:
        if isinstance(parent, Job):
            parents.append((parent.id, True))
        elif isinstance(parent, str) and parent and nameable(parent):
            parents.append((parent, False))
        else:
            raise InvalidOptionError(
                f"Invalid parent {shown(parent)} in after=: pass a Job or a job id (str)."
            )
    return parents


def _enqueue_blocked(
    state: QueueState,
    row: dict[str, Any],
    payload: Any,
    parents: list[tuple[str, bool]],
    session: AnySession | None,
    conn: Any,
) -> Job[Any]:
    """INSERT a job BLOCKED with its parents, then free it at once if they are
    done (after the commit, with ``session=``). An id that names no job is
    refused; a Job that is gone has completed (a job whose handler returned
    None is deleted at its success)."""
    store = state.store
    found = store.deps.statuses([p for p, _ in parents], conn)
    unknown = [p for p, held in parents if not held and p not in found]
    if unknown:
        raise InvalidOptionError(
            f"after= names no job {unknown[0]!r}: pass the Job that enqueue returned (a job"
            " whose handler returned None is deleted at its success, and a Job held says"
            " it existed), or the id of a job that exists."
        )
    row["status"] = BLOCKED
    store.deps.add([row], [p for p, _ in parents], conn=conn)
    job = store.to_job(row, payload=payload)
    signals.send(signals.job_enqueued, state.app, job=job)
    free_after_commit(state, [job.id], session)
    return waitable(state, store.get(job.id) if session is None else job)  # type: ignore[arg-type]


def free_after_commit(state: QueueState, job_ids: list[str], session: AnySession | None) -> None:
    """Free these BLOCKED jobs whose parents are done, and dispatch those due:
    now, or after ``session`` commits (``dispatch_after_commit``'s hook)."""
    _after_commit(state, job_ids, session, free=True)


def _free(state: QueueState, job_ids: list[str]) -> None:
    freed = state.store.deps.resolve(job_ids).freed
    if freed:
        _dispatch(state, freed)


def enqueue_many(
    state: QueueState, name: str, payloads: Iterable[Any], **options: Unpack[EnqueueOptions]
) -> list[Job[Any]]:
    """``Queue.enqueue_many`` for the app of ``state`` (see there)."""
    check_options(options, MANY_OPTIONS, "enqueue_many")
    store = state.store
    session = options.get("session")
    items = list(payloads)
    fields = _planned(state, name, options)
    # Every payload (and its key) checked before any write.
    encoded = [encode_payload(p, state.config.max_payload) for p in items]
    keys = _keys(state, name, options, items)
    # One row and one Job built in full, then copied per payload: the rows
    # differ only in id, payload and key, and building each from scratch was
    # a fifth of the cost of a batch.
    template = store.new_row(payload=None, **fields)
    rows = [
        {**template, "id": new_id(), "payload": text, "key": store.key(key)}
        for text, key in zip(encoded, keys, strict=True)
    ]
    conn = session.connection() if session is not None else None
    store.insert(rows, conn=conn)
    model = store.to_job(template, payload=None)
    jobs = [model._twin(r["id"], p, key) for r, p, key in zip(rows, items, keys, strict=True)]
    if signals.job_enqueued.receivers:
        for job in jobs:
            signals.send(signals.job_enqueued, state.app, job=job)
    if jobs and jobs[0].run_at <= state.queue.clock():
        dispatch_after_commit(state, [j.id for j in jobs], session)
    return jobs


def _key(state: QueueState, name: str, options: EnqueueOptions, payload: Any) -> str | None:
    """The job's key: ``key=``, else the handler's key function of the payload."""
    (key,) = _keys(state, name, options, [payload])
    return key


def _keys(
    state: QueueState, name: str, options: EnqueueOptions, payloads: list[Any]
) -> list[str | None]:
    """Each payload's key: ``key=`` (checked once), else the handler's key
    function of each payload, else None."""
    key = options.get("key")
    if key is not None:
        return [check_key(key)] * len(payloads)
    handler = state.queue.handlers.get(name)
    if handler is None or handler.key is None:
        return [None] * len(payloads)
    return [handler.key_of(p) for p in payloads]


def _planned(state: QueueState, name: str, options: EnqueueOptions) -> dict[str, Any]:
    """The row fields ``planning.plan`` makes of the options (the handler's
    priority when the job names none)."""
    registry = state.queue
    planned: dict[str, Any] = {k: v for k, v in options.items() if k in PLAN_OPTIONS}
    priority = registry.priority_of(name, options.get("priority"))
    fields = plan(registry.handlers, registry.clock(), name, priority=priority, **planned)
    if state.config.tracing:
        fields["trace_context"] = tracing.carrier()
    return fields


def dispatch_after_commit(
    state: QueueState, job_ids: list[str], session: AnySession | None
) -> None:
    """Dispatch now, or after ``session`` commits (nothing when it rolls back)."""
    _after_commit(state, job_ids, session, free=False)


def _after_commit(
    state: QueueState, job_ids: list[str], session: AnySession | None, *, free: bool
) -> None:
    """Dispatch (or with ``free``, free then dispatch) these jobs now, or once
    ``session`` commits; a rollback drops them."""
    if not job_ids:
        return
    if session is None:
        (_free if free else _dispatch)(state, job_ids)
        return
    real = session() if callable(session) else session  # scoped_session -> Session
    pending = real.info.setdefault("flask_queue_pending", [])
    pending.extend((state, job_id, free) for job_id in job_ids)
    if not real.info.get("flask_queue_hooked"):
        from sqlalchemy import event

        event.listen(real, "after_commit", _dispatch_pending)
        event.listen(real, "after_rollback", _drop_pending)
        real.info["flask_queue_hooked"] = True


def _dispatch(state: QueueState, job_ids: list[str]) -> None:
    if len(job_ids) == 1:
        state.executor.dispatch(job_ids[0])
    else:
        state.executor.dispatch_many(job_ids)


def _dispatch_pending(session: Session) -> None:
    by_state: dict[tuple[int, bool], tuple[QueueState, list[str]]] = {}
    for state, job_id, free in session.info.pop("flask_queue_pending", []):
        by_state.setdefault((id(state), free), (state, []))[1].append(job_id)
    for (_, free), (state, job_ids) in by_state.items():
        (_free if free else _dispatch)(state, job_ids)


def _drop_pending(session: Session) -> None:
    session.info.pop("flask_queue_pending", None)
