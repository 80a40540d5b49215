"""Enqueue: plan the row, encode the payload, insert, signal, and dispatch a due
job now, or after the caller's commit when it shares the caller's session."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import signals
from .actions import waitable
from .durations import Duration
from .errors import InvalidOptionError
from .job import Job, new_id
from .planning import RetryPolicy, check_custom_id, encode_payload, plan
from .registry import AnySession
from .state import QueueState
from .store import naive_utc

if TYPE_CHECKING:
    from sqlalchemy.orm import Session


def enqueue(
    state: QueueState,
    name: str,
    payload: Any,
    *,
    delay: Duration | None = None,
    run_at: datetime | None = None,
    id: str | None = None,
    override: bool = False,
    cron: str | None = None,
    tz: str | None = None,
    every: Duration | None = None,
    times: int | None = None,
    retry: RetryPolicy | None = None,
    priority: int | None = None,
    timeout: Duration | None = None,
    debounce: Duration | None = None,
    max_wait: Duration | None = None,
    unique_for: Duration | None = None,
    session: AnySession | None = None,
) -> Job[Any]:
    """``Queue.enqueue`` for the app of ``state`` (see there)."""
    registry, store = state.queue, state.store
    if id is not None:
        check_custom_id(id)
    if override and id is None:
        raise InvalidOptionError("override=True needs id=: it replaces the job with that id.")
    for option, value in (("debounce", debounce), ("unique_for", unique_for)):
        if value is not None and id is None:
            raise InvalidOptionError(f"{option}= needs id=: the window is per custom id.")
        if value is not None and override:
            raise InvalidOptionError(f"{option}= and override=True both given: pass one.")
    fields = plan(
        registry.handlers,
        registry.clock(),
        name,
        delay=delay,
        run_at=run_at,
        cron=cron,
        tz=tz,
        every=every,
        times=times,
        retry=retry,
        priority=registry.priority_of(name, priority),
        timeout=timeout,
        debounce=debounce,
        max_wait=max_wait,
        unique_for=unique_for,
    )
    text = encode_payload(payload, state.config.max_payload)
    row = store.new_row(custom_id=id, payload=text, **fields)
    conn = session.connection() if session is not None else None
    due = row["run_at"] <= naive_utc(registry.clock())
    if id is not None:
        job, created = store.insert_unique(
            row,
            override=override or debounce is not None,
            conn=conn,
            debounce=debounce is not None,
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


def enqueue_many(
    state: QueueState,
    name: str,
    payloads: Iterable[Any],
    *,
    delay: Duration | None = None,
    run_at: datetime | None = None,
    cron: str | None = None,
    tz: str | None = None,
    every: Duration | None = None,
    times: int | None = None,
    retry: RetryPolicy | None = None,
    priority: int | None = None,
    timeout: Duration | None = None,
    session: AnySession | None = None,
) -> list[Job[Any]]:
    """``Queue.enqueue_many`` for the app of ``state`` (see there)."""
    registry, store = state.queue, state.store
    items = list(payloads)
    fields = plan(
        registry.handlers,
        registry.clock(),
        name,
        delay=delay,
        run_at=run_at,
        cron=cron,
        tz=tz,
        every=every,
        times=times,
        retry=retry,
        priority=registry.priority_of(name, priority),
        timeout=timeout,
    )
    # Every payload checked before any write.
    encoded = [encode_payload(p, state.config.max_payload) for p in items]
    # One row and one Job built in full, then copied per payload: the rows
    # differ only in id and payload, and building each from scratch was a
    # fifth of the cost of a batch.
    template = store.new_row(payload=None, **fields)
    rows = [{**template, "id": new_id(), "payload": text} for text in encoded]
    conn = session.connection() if session is not None else None
    store.insert(rows, conn=conn)
    model = store.to_job(template, payload=None)
    jobs = [model._twin(r["id"], p) for r, p in zip(rows, items, strict=True)]
    if signals.job_enqueued.receivers:
        for job in jobs:
            signals.send(signals.job_enqueued, state.app, job=job)
    if jobs and jobs[0].run_at <= registry.clock():
        dispatch_after_commit(state, [j.id for j in jobs], session)
    return jobs


def dispatch_after_commit(
    state: QueueState, job_ids: list[str], session: AnySession | None
) -> None:
    """Dispatch now, or after ``session`` commits (nothing when it rolls back)."""
    if not job_ids:
        return
    if session is None:
        _dispatch(state, job_ids)
        return
    real = session() if callable(session) else session  # scoped_session -> Session
    pending = real.info.setdefault("flask_queue_pending", [])
    pending.extend((state, job_id) for job_id in job_ids)
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
    by_state: dict[int, tuple[QueueState, list[str]]] = {}
    for state, job_id in session.info.pop("flask_queue_pending", []):
        by_state.setdefault(id(state), (state, []))[1].append(job_id)
    for state, job_ids in by_state.values():
        _dispatch(state, job_ids)


def _drop_pending(session: Session) -> None:
    session.info.pop("flask_queue_pending", None)
