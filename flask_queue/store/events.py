"""The emitted events (``<table>_events``): stored once per id, read for the
Events page and for a duplicate emit, pruned after ``QUEUE_KEEP_EVENTS``."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import StorageError
from .core import Row, StoreCore, naive_utc
from .errors import storage_errors
from .inserts import Inserts
from .steps import Steps


@dataclass(frozen=True)
class EventRow:
    """An event as stored: its data as JSON text, and the jobs it touched."""

    id: str
    name: str
    data: str
    created_at: datetime
    #: The jobs it started (one per handler declared for it) and woke (waits it met).
    started: tuple[str, ...] = ()
    woke: tuple[str, ...] = ()
    #: How many waits it met (``woke`` lists at most ``WOKE_LISTED`` of them).
    woke_count: int = 0


def _text(value: Any) -> str:
    """An exact string column's value (UTF-8 bytes on MySQL, see schema)."""
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


#: The woken jobs an event's row lists by id; the count covers the rest.
WOKE_LISTED = 100


class Events:
    """Reads and writes of ``<table>_events``."""

    def __init__(self, core: StoreCore, steps: Steps, inserts: Inserts) -> None:
        self.core = core
        self.steps = steps
        self.inserts = inserts

    def emit(
        self,
        event: EventRow,
        rows: Sequence[Row],
        probes: list[str] | None,
        matches: Callable[[str | None], bool],
        met: str,
        conn: Connection | None,
    ) -> tuple[EventRow | None, list[str]]:
        """One transaction (ours, or the caller's ``conn``): INSERT the event,
        INSERT the jobs it starts (``rows``), and resolve the waits for it that
        ``matches`` (given a wait's ``match`` JSON) accepts, each recorded with
        ``met`` (``Steps.resolve``). Returns (the stored event, None) for an id
        stored already (then nothing was written), else (None, the woken jobs)."""
        woke: list[str] = []
        with storage_errors("emit an event"), self.core.begin(conn) as c:
            if not self.add(event, c):
                # A locking read: in the caller's REPEATABLE READ transaction a
                # plain one would read its snapshot, from before that event.
                existing = self.get(event.id, c, locking=True)
                if existing is None:
                    raise StorageError(
                        f"Could not emit event {event.id!r}: an event with this id was"
                        " stored and is gone again (pruned meanwhile); emit it again."
                    )
                return existing, []
            self.inserts.insert(rows, conn=c)
            # In job id order (``waiting``): concurrent emits lock job rows in one order.
            for wait in self.steps.waiting(event.name, probes, c):
                if matches(wait.match) and self.steps.resolve(wait, met, c):
                    woke.append(wait.job_id)
            if woke:
                self.woke(event, woke, c)
        return None, woke

    def _row(self, r: Any) -> EventRow:
        jobs = json.loads(r.jobs) if r.jobs else {}
        return EventRow(
            _text(r.id),
            _text(r.name),
            r.data,
            r.created_at.replace(tzinfo=timezone.utc),
            tuple(jobs.get("started", ())),
            tuple(jobs.get("woke", ())),
            int(jobs.get("woke_count", 0)),
        )

    @staticmethod
    def _jobs(started: list[str], woke: list[str]) -> str:
        return json.dumps(
            {"started": started, "woke": woke[:WOKE_LISTED], "woke_count": len(woke)},
            separators=(",", ":"),
        )

    def get(
        self, event_id: str, conn: Connection | None = None, *, locking: bool = False
    ) -> EventRow | None:
        """SELECT by primary key (``locking``: FOR SHARE, the row as committed)."""
        e = self.core.events
        stmt = sa.select(e).where(e.c.id == self.core.key(event_id))
        if locking:
            stmt = stmt.with_for_update(read=True)
        with storage_errors("read an event"):
            if conn is not None:
                row = conn.execute(stmt).first()
            else:
                with self.core.engine.connect() as c:
                    row = c.execute(stmt).first()
        return None if row is None else self._row(row)

    def add(self, event: EventRow, conn: Connection) -> bool:
        """INSERT the event in ``conn``'s transaction; False if an event with
        its id exists (then nothing was written: on PostgreSQL the INSERT ran in
        a SAVEPOINT, since a failed statement there aborts the transaction)."""
        row = {
            "id": self.core.key(event.id),
            "name": self.core.key(event.name),
            "data": event.data,
            "jobs": self._jobs(list(event.started), []),
            "created_at": naive_utc(event.created_at),
        }
        try:
            with self.core.begin(conn, nested=self.core.dialect.savepoint) as c:
                c.execute(sa.insert(self.core.events).values(row))
        except sa.exc.IntegrityError:
            return False
        return True

    def woke(self, event: EventRow, woke: list[str], conn: Connection) -> None:
        """UPDATE by primary key: the jobs the event woke, once it knows them."""
        e = self.core.events
        conn.execute(
            sa.update(e)
            .where(e.c.id == self.core.key(event.id))
            .values(jobs=self._jobs(list(event.started), woke))
        )

    def recent(self, limit: int, *, name: str | None = None) -> list[EventRow]:
        """SELECT on ``created_at`` (and ``name``): the newest events first."""
        e = self.core.events
        stmt = sa.select(e).order_by(e.c.created_at.desc(), e.c.id.desc()).limit(limit)
        if name is not None:
            stmt = stmt.where(e.c.name == self.core.key(name))
        with storage_errors("read the events"), self.core.engine.connect() as c:
            return [self._row(r) for r in c.execute(stmt)]

    def prune(self, before: datetime) -> int:
        """DELETE the events emitted before ``before`` (``QUEUE_KEEP_EVENTS``):
        an emit with one of their ids after that is a new event."""
        e = self.core.events
        with storage_errors("prune the events"), self.core.one_statement() as c:
            stmt = sa.delete(e).where(e.c.created_at < naive_utc(before))
            return int(c.execute(stmt).rowcount or 0)
