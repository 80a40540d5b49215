"""Per-queue settings (``<table>_queues``): pause state set by an operator, and
the limits the code declares."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from ..errors import StorageError
from .core import StoreCore
from .errors import storage_errors

#: A queue's declared limits as stored: (concurrency, (rate, window) or None, fair).
DeclaredLimits = tuple[int | None, tuple[int, timedelta] | None, bool]


class QueueSettings:
    """The queue table's reads and writes."""

    def __init__(self, core: StoreCore, on_limits_changed: Callable[[], None]) -> None:
        self.core = core
        #: Called when stored limits changed: the next claim looks at them.
        self.on_limits_changed = on_limits_changed

    def queue_settings(self) -> dict[str, dict[str, Any]]:
        """SELECT the whole queue table (a row per queue with settings): every
        stored queue row, by name: paused, concurrency, rate."""
        q = self.core.queues
        with storage_errors("read queue settings"), self.core.engine.connect() as c:
            rows = c.execute(sa.select(q).order_by(q.c.name)).all()
        return {
            r.name: {
                "paused": bool(r.paused),
                "concurrency": r.concurrency,
                "rate": (r.rate_limit, timedelta(milliseconds=r.rate_window_ms))
                if r.rate_limit is not None and r.rate_window_ms is not None
                else None,
                "fair": bool(r.fair),
            }
            for r in rows
        }

    def set_paused(self, name: str, paused: bool) -> None:
        """``_write_queue``: pause or resume queue ``name``; every claim in every
        process sees it."""
        self._write_queue(name, {"paused": paused}, action="pause a queue")

    def sync_limits(
        self,
        declared: dict[str, DeclaredLimits],
        *,
        prune: bool = False,
    ) -> int:
        """``queue_settings``, then ``_write_queue`` per queue that differs: store
        the limits the code declares, per queue it has a handler for:
        ``{name: (concurrency, (rate, window) or None, fair)}``. A queue this release
        does not know is left alone (another release may); pause state and the
        rate log are never touched. A limit this release does not declare is
        cleared only with ``prune`` (``flask queue sync-crons``, at deploy).
        Writes only what differs; returns how many."""
        stored = self.queue_settings()
        changed = 0
        for name, (concurrency, rate, fair) in declared.items():
            have = stored.get(name)
            want = {"concurrency": concurrency, "rate": rate, "fair": fair}
            if concurrency is None and rate is None and not fair and (have is None or not prune):
                # Only the deploy-time sync clears a limit: during a rolling
                # deploy the release that still declares it would write it back
                # at its next produce, and between the two writes the queue
                # would run unlimited.
                continue
            if have is not None and {k: have[k] for k in want} == want:
                continue
            values = {
                "concurrency": concurrency,
                "rate_limit": rate[0] if rate else None,
                "rate_window_ms": int(rate[1].total_seconds() * 1000) if rate else None,
                "fair": fair or None,
            }
            self._write_queue(name, values, action="store queue limits")
            changed += 1
        if changed:
            self.on_limits_changed()  # look at the new limits at the next claim
        return changed

    def _write_queue(self, name: str, values: dict[str, Any], *, action: str) -> None:
        """SELECT, then UPDATE or INSERT, by the queue table's primary key (name),
        in one transaction (once more if a concurrent INSERT won)."""
        q = self.core.queues
        now = self.core.now()
        for attempt in range(2):
            try:
                with storage_errors(action), self.core.engine.begin() as c:
                    found = c.execute(sa.select(q.c.name).where(q.c.name == name)).first()
                    if found is not None:
                        c.execute(
                            sa.update(q).where(q.c.name == name).values(updated_at=now, **values)
                        )
                    else:
                        c.execute(sa.insert(q).values(name=name, updated_at=now, **values))
                return
            except StorageError as exc:
                # Two processes inserted the same queue's row at once: the
                # second time round the row is there and gets an UPDATE.
                if attempt or not isinstance(exc.__cause__, sa.exc.IntegrityError):
                    raise
