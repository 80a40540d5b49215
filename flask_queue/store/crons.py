"""The declared crons' rows: one live row per declared cron, found by its
custom id (``CRON_ID_PREFIX`` + the cron's name)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from ..scheduling import ScheduleType
from .core import RUNNING, Row, StoreCore, text_of
from .errors import storage_errors

log = logging.getLogger("flask_queue")


#: A declared cron's row holds the custom id CRON_ID_PREFIX + its name.
CRON_ID_PREFIX = "flask_queue.cron:"


class Crons:
    """Keeps the table's cron rows in step with the crons the code declares."""

    def __init__(self, core: StoreCore) -> None:
        self.core = core

    def sync_crons(
        self,
        declared: dict[str, tuple[str, str]],
        row_for: Callable[[str], Row],
        *,
        prune: bool,
    ) -> dict[str, int]:
        """SELECT the live cron rows on (schedule_type); per declared cron that
        differs, an INSERT (arbitrated by the unique live_custom_id) or an UPDATE
        by primary key; with ``prune``, one DELETE by primary key of the others.

        Makes the table hold one live row per declared cron.

        ``declared`` maps a cron's name to (expression, timezone); ``row_for(name)``
        builds the row to insert if it is missing (or whose run_at to take if it
        changed). The unique live custom id is the guard: two producers syncing
        at once both try the INSERT and one of them loses on the key, harmlessly.
        ``prune`` also deletes the rows of crons no longer declared: only
        ``flask queue sync-crons`` does that, at deploy, so a producer of an
        older release never deletes a newer release's crons mid-rollout.

        One cron that cannot be synced (a row the database refuses, a schedule
        this release cannot compute) is logged, counted as ``failed`` and
        skipped: the others, and the claim that follows, go on.
        """
        t = self.core.table
        stats = {"created": 0, "updated": 0, "removed": 0, "failed": 0}
        with storage_errors("read declared crons"), self.core.engine.connect() as c:
            rows = [
                (text_of(r.live_custom_id), r)
                for r in c.execute(
                    sa.select(t.c.id, t.c.live_custom_id, t.c.schedule, t.c.tz, t.c.status).where(
                        t.c.schedule_type == ScheduleType.CRON.value,
                        t.c.live_custom_id.is_not(None),
                    )
                )
            ]
            existing = {
                cid[len(CRON_ID_PREFIX) :]: r for cid, r in rows if cid.startswith(CRON_ID_PREFIX)
            }
        for name, (expr, tz) in declared.items():
            current = existing.get(name)
            try:
                if current is None:
                    try:
                        with self.core.engine.begin() as c:
                            c.execute(sa.insert(t).values(**self.core.sealed(row_for(name))))
                        stats["created"] += 1
                    except sa.exc.IntegrityError:
                        pass  # another producer created it first
                elif (current.schedule, current.tz) != (expr, tz) and current.status != RUNNING:
                    # A RUNNING occurrence is left alone: its finish plans the
                    # next time from the expression it holds, and the next sync
                    # after that moves the row to the new schedule's next time.
                    # (Writing the new expression on the running row lost the
                    # change: its finish planned from the old one, and no later
                    # sync saw a difference.)
                    values: dict[str, Any] = {"schedule": expr, "tz": tz}
                    values["run_at"] = values["occurrence_at"] = row_for(name)["run_at"]
                    with self.core.engine.begin() as c:
                        c.execute(
                            sa.update(t)
                            .where(t.c.id == current.id)
                            .values(updated_at=self.core.now(), **values)
                        )
                    stats["updated"] += 1
            except Exception:
                stats["failed"] += 1
                log.exception("flask_queue: could not sync declared cron %r; skipped", name)
        gone = [r.id for name, r in existing.items() if name not in declared]
        if prune and gone:
            with storage_errors("remove undeclared crons"), self.core.engine.begin() as c:
                stats["removed"] = c.execute(sa.delete(t).where(t.c.id.in_(gone))).rowcount
        return stats
