"""Dependencies (``<table>_deps``): jobs enqueued with ``after=`` and batch
callbacks wait BLOCKED until their parents are done, then are freed (due) or
cancelled.

Freeing is decided from the parents' rows as they are, not from an event at
each parent's finish: a pass (``resolve``, at every housekeeping and at the
enqueue itself) reads the BLOCKED jobs' parents and frees those whose parents
are all done. A parent's row that is gone counts as COMPLETED: a job whose
handler returned None is deleted at its success, while a failed or cancelled
job is kept (and an operator's delete of a parent cancels its children first,
``cancel_children``). So no finish statement on the run path pays for
dependencies, and nothing is lost when a parent finishes while its child is
being enqueued: the next pass sees it.

Each child is freed by one guarded UPDATE (``WHERE status = 'BLOCKED'``): of
two passes at once (two hosts), one frees it, and a batch's callback starts
exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .core import BLOCKED, CANCELLED, COMPLETED, FAILED, RUNNING, SCHEDULED, Row, StoreCore
from .errors import storage_errors
from .inserts import Inserts
from .predicates import released_id

#: What frees a child: every parent COMPLETED, or every parent ended.
NEEDS_COMPLETED, NEEDS_ENDED = "completed", "ended"
PENDING = (SCHEDULED, RUNNING, BLOCKED)
BAD = (FAILED, CANCELLED)
#: BLOCKED jobs one pass looks at (the oldest first by run time).
RESOLVE_LIMIT = 500
#: Passes one ``resolve`` makes at most: a cancelled child cancels its own
#: children in the next pass.
RESOLVE_PASSES = 5


@dataclass(frozen=True)
class Link:
    """A parent or child of a job, with its status (None: its row is gone)."""

    id: str
    status: str | None


@dataclass
class Resolved:
    """What a ``resolve`` did: the children freed (now SCHEDULED) and cancelled."""

    freed: list[str]
    cancelled: list[str]


class Deps:
    """Reads and writes of ``<table>_deps``, and the BLOCKED jobs' fate."""

    def __init__(self, core: StoreCore, inserts: Inserts) -> None:
        self.core = core
        self.inserts = inserts

    def statuses(self, ids: Sequence[str], conn: Connection | None = None) -> dict[str, str]:
        """SELECT by primary key: the status of each of these jobs that exists."""
        t = self.core.table
        stmt = sa.select(t.c.id, t.c.status).where(t.c.id.in_(list(ids)))
        with storage_errors("read the parent jobs"):
            if conn is not None:
                return {i: s for i, s in conn.execute(stmt)}
            with self.core.engine.connect() as c:
                return {i: s for i, s in c.execute(stmt)}

    def add(
        self,
        rows: Sequence[Row],
        parents: Sequence[str],
        *,
        needs: str = NEEDS_COMPLETED,
        batch: str | None = None,
        conn: Connection | None = None,
    ) -> None:
        """INSERT the children (``rows``, BLOCKED) and a dependency row per
        (child, parent), in one transaction: ours, or the caller's ``conn``."""
        links = [
            {"child_id": r["id"], "parent_id": p, "needs": needs, "batch": batch, "result": None}
            for r in rows
            for p in dict.fromkeys(parents)
        ]
        with storage_errors("enqueue a job with parents"), self.core.begin(conn) as c:
            self.inserts.insert(rows, conn=c)
            if links:
                c.execute(sa.insert(self.core.deps), links)

    def parents(self, child_id: str) -> list[Link]:
        """The parents of a job, with their statuses (the job page)."""
        d = self.core.deps
        return self._links(d.c.parent_id, d.c.child_id == child_id, "read the job's parents")

    def children(self, parent_id: str, limit: int = 100) -> list[Link]:
        """The children of a job, with their statuses (the job page)."""
        d = self.core.deps
        where = d.c.parent_id == parent_id
        return self._links(d.c.child_id, where, "read the job's children", limit)

    def _links(self, other: Any, where: Any, action: str, limit: int | None = None) -> list[Link]:
        """SELECT ``other`` end of the links matching ``where``, with its job's status."""
        t, d = self.core.table, self.core.deps
        stmt = (
            sa.select(other, t.c.status)
            .select_from(d.outerjoin(t, t.c.id == other))
            .where(where)
            .order_by(other)
            .limit(limit)
        )
        with storage_errors(action), self.core.engine.connect() as c:
            return [Link(i, s) for i, s in c.execute(stmt)]

    def results(self, child_id: str) -> dict[str, Any]:
        """{parent id: result} of a freed child (``job.parent_results``)."""
        d = self.core.deps
        stmt = sa.select(d.c.parent_id, d.c.result).where(d.c.child_id == child_id)
        with storage_errors("read the parents' results"), self.core.engine.connect() as c:
            return {i: (json.loads(r) if r is not None else None) for i, r in c.execute(stmt)}

    # -- freeing and cancelling ------------------------------------------------------

    def resolve(self, ids: Sequence[str] | None = None) -> Resolved:
        """Free the BLOCKED jobs (of ``ids``, if given) whose parents are done,
        and cancel those a failed or cancelled parent holds back; again for
        their own children, up to ``RESOLVE_PASSES`` passes."""
        done = Resolved([], [])
        for _ in range(RESOLVE_PASSES):
            freed, cancelled = self._pass(ids)
            done.freed += freed
            done.cancelled += cancelled
            if not cancelled:
                break
            ids = None  # the cancelled jobs' own children are anywhere
        return done

    def _pass(self, ids: Sequence[str] | None) -> tuple[list[str], list[str]]:
        t, d = self.core.table, self.core.deps
        blocked = sa.select(t.c.id).where(t.c.status == BLOCKED)
        if ids is not None:
            blocked = blocked.where(t.c.id.in_(list(ids)))
        blocked = blocked.order_by(t.c.run_at).limit(RESOLVE_LIMIT)
        with storage_errors("read the blocked jobs"), self.core.engine.connect() as c:
            children = list(c.execute(blocked).scalars())
            if not children:
                return [], []
            rows = c.execute(
                sa.select(d.c.child_id, d.c.parent_id, d.c.needs, d.c.batch, t.c.status, t.c.result)
                .select_from(d.outerjoin(t, t.c.id == d.c.parent_id))
                .where(d.c.child_id.in_(children))
                .order_by(d.c.child_id, d.c.parent_id)
            ).all()
        by_child: dict[str, list[Any]] = {}
        for r in rows:
            by_child.setdefault(r.child_id, []).append(r)
        freed, cancelled = [], []
        for child in children:
            links = by_child.get(child, [])
            statuses = [COMPLETED if r.status is None else r.status for r in links]
            if any(s in PENDING for s in statuses):
                continue
            needs = links[0].needs if links else NEEDS_COMPLETED
            bad = [r for r, s in zip(links, statuses, strict=True) if s in BAD]
            if needs == NEEDS_COMPLETED and bad:
                reason = f"Cancelled: its parent job {bad[0].parent_id} ended {bad[0].status}."
                if self._cancel(child, reason):
                    cancelled.append(child)
            elif self._free(child, links, statuses):
                freed.append(child)
        return freed, cancelled

    def _free(self, child: str, links: list[Any], statuses: list[str]) -> bool:
        """One transaction: the child BLOCKED -> SCHEDULED (a batch callback's
        payload written with the batch's counts), its parents' results copied."""
        t, d = self.core.table, self.core.deps
        values: dict[str, Any] = {"status": SCHEDULED, "updated_at": self.core.now()}
        batch = links[0].batch if links else None
        if batch is not None:
            counts = {s.lower(): statuses.count(s) for s in (COMPLETED, FAILED, CANCELLED)}
            payload = {"batch": batch, "total": len(links), **counts}
            text = json.dumps(payload, separators=(",", ":"))
            values["payload"] = self.core.sealed({"payload": text})["payload"]
        with storage_errors("free a blocked job"), self.core.engine.begin() as c:
            stmt = sa.update(t).where(t.c.id == child, t.c.status == BLOCKED).values(values)
            if c.execute(stmt).rowcount != 1:
                return False  # another pass freed or cancelled it
            copies = [
                {"b_child": child, "b_parent": r.parent_id, "b_result": r.result}
                for r in links
                if r.result is not None
            ]
            if copies:
                c.execute(
                    sa.update(d)
                    .where(
                        d.c.child_id == sa.bindparam("b_child"),
                        d.c.parent_id == sa.bindparam("b_parent"),
                    )
                    .values(result=sa.bindparam("b_result")),
                    copies,
                )
        return True

    def _cancelled(self, reason: str) -> dict[str, Any]:
        """The values of a BLOCKED job cancelled for ``reason`` (it gives up its id)."""
        now = self.core.now()
        return {
            "status": CANCELLED,
            "reason": reason,
            "error": reason[:255],
            "live_custom_id": released_id(self.core.table, now),
            "updated_at": now,
        }

    def _cancel(self, child: str, reason: str) -> bool:
        t = self.core.table
        stmt = (
            sa.update(t)
            .where(t.c.id == child, t.c.status == BLOCKED)
            .values(self._cancelled(reason))
        )
        with storage_errors("cancel a blocked job"), self.core.one_statement() as c:
            return bool(c.execute(stmt).rowcount == 1)

    def cancel_children(self, parent_ids: Sequence[str], why: str) -> int:
        """Cancel the BLOCKED children of these jobs, about to be deleted (a
        parent that is gone would otherwise count as COMPLETED)."""
        d, t = self.core.deps, self.core.table
        if not parent_ids:
            return 0
        # Only the children that need their parents COMPLETED: a batch's
        # on_complete callback counts a deleted member as completed.
        children = sa.select(d.c.child_id).where(
            d.c.parent_id.in_(list(parent_ids)), d.c.needs == NEEDS_COMPLETED
        )
        stmt = (
            sa.update(t)
            .where(t.c.status == BLOCKED, t.c.id.in_(children))
            .values(self._cancelled(why))
        )
        with storage_errors("cancel the children"), self.core.one_statement() as c:
            return int(c.execute(stmt).rowcount or 0)

    def cancel_children_of_failed(self, queue: str | None = None) -> int:
        """``cancel_children`` of every FAILED job (of ``queue``): before the
        bulk delete of failed jobs. One SELECT of the children, then UPDATEs."""
        d, t = self.core.deps, self.core.table
        stmt = (
            sa.select(d.c.parent_id)
            .select_from(d.join(t, t.c.id == d.c.parent_id))
            .where(t.c.status == FAILED, d.c.needs == NEEDS_COMPLETED)
            .distinct()
        )
        if queue is not None:
            stmt = stmt.where(t.c.queue == queue)
        with storage_errors("read the failed parents"), self.core.engine.connect() as c:
            parents = list(c.execute(stmt).scalars())
        cancelled = 0
        for i in range(0, len(parents), RESOLVE_LIMIT):
            chunk = parents[i : i + RESOLVE_LIMIT]
            cancelled += self.cancel_children(
                chunk, "Cancelled: its parent job failed and was deleted."
            )
        return cancelled

    def prune(self) -> int:
        """DELETE the dependency rows whose child is gone."""
        d, t = self.core.deps, self.core.table
        gone = ~sa.exists().where(t.c.id == d.c.child_id)
        with storage_errors("prune the dependencies"), self.core.one_statement() as c:
            return int(c.execute(sa.delete(d).where(gone)).rowcount or 0)
