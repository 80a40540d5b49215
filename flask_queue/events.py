"""Events: ``queue.emit(name, data)`` stores an event, starts a job per handler
declared for it (``@queue.handler(..., events=[...])``) and wakes the jobs
waiting for it (``job.wait_for_event``), all in one transaction: ours, or the
caller's with ``session=`` (then the event and its jobs commit with the
caller's rows, or not at all).

A wait matches an event of its name whose data contains the wait's ``match``
(a dict subset: every key of ``match`` is in the data with an equal value;
a dict value is itself a subset). Only events emitted after the wait began
meet it. An emit does not read every wait for its event name: each wait is
filed under a hash of one (key, value) pair of its ``match`` (its probe), and
an emit reads the waits filed under one of its data's pairs, or under none.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from . import signals
from .enqueue import _key, _planned, dispatch_after_commit
from .job import Event, new_id
from .planning import check_custom_id, check_event_name, encode_payload
from .store import EventRow

__all__ = ["Event", "contains", "data_probes", "emit_event", "wait_probe"]

if TYPE_CHECKING:
    from .state import QueueState

#: Data with more top-level keys than this reads every wait for its event name.
PROBES_LIMIT = 200


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def probe_of(key: str, value: Any) -> str:
    """The hash a wait is filed under for one (key, value) pair of its match."""
    return hashlib.sha256(_canonical([key, value]).encode("utf-8")).hexdigest()


def wait_probe(match: dict[str, Any] | None) -> str | None:
    """The probe of a wait's ``match``: its first key (in order) whose value is
    not a dict (a dict value matches a superset, which no hash can find); None
    if it has none (every emit of the event name reads that wait)."""
    for key in sorted(match or {}):
        value = match[key]  # type: ignore[index]
        if not isinstance(value, dict):
            return probe_of(key, value)
    return None


def data_probes(data: Any) -> list[str] | None:
    """The probes an emit of ``data`` reads waits under (None: read them all)."""
    if not isinstance(data, dict):
        return []
    if len(data) > PROBES_LIMIT:
        return None
    return [probe_of(k, v) for k, v in data.items() if not isinstance(v, dict)]


def contains(data: Any, match: dict[str, Any]) -> bool:
    """Whether ``data`` has every (key, value) of ``match``; values compare as
    JSON (1 is not 1.0 nor True), a dict value as a subset again."""
    if not isinstance(data, dict):
        return False
    for key, want in match.items():
        if key not in data:
            return False
        have = data[key]
        if isinstance(want, dict):
            if not contains(have, want):
                return False
        elif _canonical(have) != _canonical(want):
            return False
    return True


def emit_event(
    state: QueueState, event: str, data: Any, *, id: str | None = None, session: Any = None
) -> Event:
    """``Queue.emit`` for the app of ``state`` (see there)."""
    name = check_event_name(event)
    event_id = check_custom_id(id) if id is not None else new_id()
    text = encode_payload(data, state.config.max_payload)
    store, registry = state.store, state.queue
    handlers = [h for h in registry.handlers.values() if name in h.events]
    # Every job's row planned (and its key checked) before any write.
    rows = [
        store.new_row(
            payload=text, key=_key(state, h.name, {}, data), **_planned(state, h.name, {})
        )
        for h in handlers
    ]
    now = registry.clock()
    record = EventRow(event_id, name, text, now, tuple(r["id"] for r in rows))
    met = Event(event_id, name, data, now).to_json()

    def matches(match: str | None) -> bool:
        return match is None or contains(data, json.loads(match))

    conn = session.connection() if session is not None else None
    existing, woke = store.events.emit(record, rows, data_probes(data), matches, met, conn)
    if existing is not None:
        return Event.from_row(existing)  # a duplicate: nothing more happens
    stored = Event(event_id, name, data, now, record.started, tuple(woke), len(woke))
    if signals.job_enqueued.receivers:
        for row in rows:
            signals.send(signals.job_enqueued, state.app, job=store.to_job(row, payload=data))
    signals.send(signals.event_emitted, state.app, event=stored)
    dispatch_after_commit(state, [*record.started, *woke], session)
    return stored
