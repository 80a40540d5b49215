"""The tables, now declared in :mod:`flask_queue.store.schema`.

Kept so that ``from flask_queue.models import job_table`` (an app's own code, a
migration's ``env.py``) goes on working: a re-export, nothing of its own.
"""

from __future__ import annotations

from .store.schema import (
    DEFAULT_TABLE_NAME,
    job_table,
    queue_table,
    starts_table,
    stats_table,
)

__all__ = ["DEFAULT_TABLE_NAME", "job_table", "queue_table", "starts_table", "stats_table"]
