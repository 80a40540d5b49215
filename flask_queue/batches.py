"""Batches: ``with queue.batch(on_complete="report") as batch: batch.enqueue(...)``
enqueues the members, then, when the block ends, one callback job per callback
queue: BLOCKED with every member as its parent (``store/deps.py``). It is freed
exactly once, when every member has finished (``on_complete``) or completed
(``on_success``; a member that fails or is cancelled cancels it), with the
batch's id and counts as its payload::

    {"batch": "06h...", "total": 3, "completed": 2, "failed": 1, "cancelled": 0}

A member whose row is gone counts as completed: a job whose handler returned
None is deleted at its success.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .enqueue import _planned, enqueue, enqueue_many, free_after_commit
from .errors import InvalidOptionError, InvalidStatusError
from .job import Job, new_id
from .planning import AnySession
from .store import NEEDS_COMPLETED, NEEDS_ENDED
from .store.core import BLOCKED

if TYPE_CHECKING:
    from .state import QueueState


class Batch:
    """The members of one batch, and its callbacks once the block ends."""

    def __init__(
        self,
        state: QueueState,
        on_complete: str | None,
        on_success: str | None,
        session: AnySession | None,
    ) -> None:
        if on_complete is None and on_success is None:
            raise InvalidOptionError(
                "queue.batch() needs on_complete= or on_success=: the queue whose job runs"
                " once every member has finished (or completed)."
            )
        self.state = state
        self.callbacks = [(n, NEEDS_ENDED) for n in (on_complete,) if n is not None]
        self.callbacks += [(n, NEEDS_COMPLETED) for n in (on_success,) if n is not None]
        for name, _ in self.callbacks:
            _planned(state, name, {})  # an unknown queue is refused before any member
        self.session = session
        #: The batch's id: its callbacks' payload names it.
        self.id = new_id()
        #: The members enqueued so far.
        self.jobs: list[Job[Any]] = []
        #: The callback jobs, once the block has ended.
        self.callback_jobs: list[Job[Any]] = []
        self._closed = False

    def _options(self, options: dict[str, Any]) -> dict[str, Any]:
        if self._closed:
            raise InvalidStatusError(f"Batch {self.id} has ended: enqueue its members inside it.")
        if "session" in options:
            raise InvalidOptionError(
                "batch.enqueue() takes no session=: pass it to queue.batch(session=...)."
            )
        return {**options, "session": self.session}

    def enqueue(self, name: str, payload: Any, **options: Any) -> Job[Any]:
        """``queue.enqueue``, as a member of this batch."""
        job = enqueue(self.state, name, payload, **self._options(options))
        self.jobs.append(job)
        return job

    def enqueue_many(self, name: str, payloads: Iterable[Any], **options: Any) -> list[Job[Any]]:
        """``queue.enqueue_many``, as members of this batch."""
        jobs = enqueue_many(self.state, name, payloads, **self._options(options))
        self.jobs.extend(jobs)
        return jobs

    def close(self) -> list[Job[Any]]:
        """Enqueue the callbacks (BLOCKED until the members are done)."""
        if self._closed:
            return self.callback_jobs
        self._closed = True
        store = self.state.store
        conn = self.session.connection() if self.session is not None else None
        members = [j.id for j in self.jobs]
        # With no member, nothing will count: the counts are written now.
        empty = {"total": 0, "completed": 0, "failed": 0, "cancelled": 0}
        first = {"batch": self.id, **({} if members else empty)}
        text = json.dumps(first, separators=(",", ":"))
        for name, needs in self.callbacks:
            row = store.new_row(payload=text, **_planned(self.state, name, {}))
            row["status"] = BLOCKED
            store.deps.add([row], members, needs=needs, batch=self.id, conn=conn)
            self.callback_jobs.append(store.to_job(row, payload=first))
        free_after_commit(self.state, [j.id for j in self.callback_jobs], self.session)
        return self.callback_jobs

    def __enter__(self) -> Batch:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # A block that raised enqueues no callback: its members stay as they
        # are (with session=, the caller's rollback takes them back too).
        if kind is None:
            self.close()
