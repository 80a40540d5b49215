"""Reading jobs: by id, by custom id, and keyset pages of lists."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..job import Job
from .core import StoreCore, naive_utc, nameable
from .errors import storage_errors
from .predicates import reason_tail


class Reads:
    """The job table's reads of whole jobs (or list rows)."""

    def __init__(self, core: StoreCore) -> None:
        self.core = core

    def get(self, job_id: str) -> Job[Any] | None:
        """SELECT by primary key: the job ``job_id``, or None."""
        if not nameable(job_id):
            return None
        t = self.core.table
        with storage_errors("read a job"), self.core.engine.connect() as c:
            row = c.execute(sa.select(t).where(t.c.id == job_id)).first()
        return self.core.to_job(row) if row else None

    def get_by_custom_id(self, custom_id: str) -> Job[Any] | None:
        """``_by_custom_id``: the live job holding ``custom_id``, else the latest
        finished record of it."""
        if not nameable(custom_id):
            return None
        with storage_errors("read a job"), self.core.engine.connect() as c:
            row = self._by_custom_id(c, custom_id)
        return self.core.to_job(row) if row else None

    def _by_custom_id(self, c: Connection, custom_id: str) -> Any:
        """SELECT on the unique live_custom_id, then (none live) the newest on
        (custom_id): the row of ``custom_id``'s live job, else of its latest record."""
        t = self.core.table
        key = self.core.key(custom_id)
        return (
            c.execute(sa.select(t).where(t.c.live_custom_id == key)).first()
            or c.execute(
                sa.select(t)
                .where(t.c.custom_id == key)
                .order_by(t.c.created_at.desc(), t.c.id.desc())
                .limit(1)
            ).first()
        )

    def jobs(
        self,
        *,
        status: str | None = None,
        queue: str | None = None,
        limit: int = 100,
        after: tuple[datetime, str] | None = None,
        newest_first: bool = False,
        light: bool = False,
    ) -> list[Job[Any]]:
        """SELECT a keyset page on (status, run_at) or (queue, status, run_at):
        jobs ordered by (run_at, id), after the key ``after``.

        No OFFSET: a page costs the same at row 10 and at row 1,000,000, on the
        (status, run_at) and (queue, status, run_at) indexes. ``light`` (lists)
        reads no payload (the jobs have ``payload`` None) and only the end of
        ``reason``, where a traceback's last line (the exception) is: a page
        of fifty costs the same with 50-byte payloads or 1 MB ones.
        """
        t = self.core.table
        stmt = sa.select(*self._light_columns()) if light else sa.select(t)
        if status is not None:
            stmt = stmt.where(t.c.status == status)
        if queue is not None:
            stmt = stmt.where(t.c.queue == queue)
        if after is not None:
            run_at, last_id = naive_utc(after[0]), after[1]
            # Spelled with a plain range on run_at first so every database can
            # start the index scan at the key instead of filtering from the top.
            if newest_first:
                key = sa.and_(t.c.run_at <= run_at, sa.or_(t.c.run_at < run_at, t.c.id < last_id))
            else:
                key = sa.and_(t.c.run_at >= run_at, sa.or_(t.c.run_at > run_at, t.c.id > last_id))
            stmt = stmt.where(key)
        order = (t.c.run_at.desc(), t.c.id.desc()) if newest_first else (t.c.run_at, t.c.id)
        stmt = stmt.order_by(*order).limit(limit)
        with storage_errors("list jobs"), self.core.engine.connect() as c:
            if light:
                return [self.core.to_job(r, payload=None) for r in c.execute(stmt)]
            return [self.core.to_job(r) for r in c.execute(stmt)]

    def _light_columns(self) -> list[Any]:
        """What a list reads: no payload, no history, no traceback."""
        t = self.core.table
        skipped = {"payload", "history", "result"}
        return [
            sa.literal(None).label(c.name)
            if c.name in skipped
            else reason_tail(t, self.core.dialect).label("reason")
            if c.name == "reason"
            else c
            for c in t.c
        ]

    def iter_jobs(
        self,
        *,
        status: str | None = None,
        queue: str | None = None,
        page: int = 500,
        light: bool = False,
    ) -> Iterator[Job[Any]]:
        """``jobs``, page after page: every matching job in (run_at, id) order,
        read a keyset page at a time."""
        after: tuple[datetime, str] | None = None
        while True:
            rows = self.jobs(status=status, queue=queue, limit=page, after=after, light=light)
            yield from rows
            if len(rows) < page:
                return
            after = (rows[-1].run_at, rows[-1].id)

    def find(self, key: str) -> Job[Any] | None:
        """SELECT by primary key, then ``_by_custom_id``: the job whose id or
        custom id is exactly ``key``."""
        if not nameable(key):
            return None
        t = self.core.table
        with storage_errors("find a job"), self.core.engine.connect() as c:
            row = c.execute(sa.select(t).where(t.c.id == key)).first() or self._by_custom_id(c, key)
        return self.core.to_job(row) if row else None

    def search(self, prefix: str, limit: int = 20) -> list[Job[Any]]:
        """``search_statements``: jobs whose id or custom id starts with
        ``prefix``, at most ``limit`` of each, ids first, as lists read them (no
        payload). Nothing for a prefix no id can begin (``nameable``)."""
        found: dict[str, Job[Any]] = {}
        with storage_errors("search jobs"), self.core.engine.connect() as c:
            for stmt in self.search_statements(prefix, limit):
                for row in c.execute(stmt):
                    found.setdefault(row.id, self.core.to_job(row, payload=None))
        return list(found.values())

    def search_statements(self, prefix: str, limit: int) -> list[Any]:
        """Ranges on the primary key and on (custom_id), each served by its
        index on every database (no LIKE: PostgreSQL serves a LIKE prefix from
        a btree only under the C collation or text_pattern_ops): the id's, when
        ``prefix`` can begin one, then the custom id's."""
        if not prefix or not nameable(prefix):
            return []
        t = self.core.table
        stmts = []
        key = prefix.lower()  # ids are lower case; one pasted in upper case still finds
        # An id is 26 of Crockford's base32 digits (job.new_id), which every
        # collation orders alike: the range from the prefix to the prefix padded
        # with "z" is exact. A prefix with any other character begins no id.
        if len(key) <= 26 and set(key) <= set("0123456789abcdefghjkmnpqrstvwxyz"):
            top = key + "z" * (26 - len(key))
            stmts.append(
                sa.select(*self._light_columns())
                .where(t.c.id >= key, t.c.id <= top)
                .order_by(t.c.id)
                .limit(limit)
            )
        low: Any = self.core.key(prefix)
        if isinstance(low, bytes):
            # VARBINARY (MySQL): UTF-8 bytes, which never hold 0xFF: an exact range.
            match = sa.and_(t.c.custom_id >= low, t.c.custom_id < low + b"\xff")
        else:
            # Below the prefix followed by the last code point: exact in SQLite's
            # and PostgreSQL's C order. A linguistic collation may order other
            # ids inside the range, so the first characters are compared too.
            match = sa.and_(
                t.c.custom_id >= prefix,
                t.c.custom_id < prefix + "\U0010ffff",
                sa.func.substr(t.c.custom_id, 1, len(prefix)) == prefix,
            )
        stmts.append(
            sa.select(*self._light_columns()).where(match).order_by(t.c.custom_id).limit(limit)
        )
        return stmts
