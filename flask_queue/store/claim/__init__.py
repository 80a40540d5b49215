"""The claim of due jobs: ``Claims`` (``base.py``) runs the limited queues'
claim (``limited.py``), then the free queues' claim of the store's database
(``returning.py`` for PostgreSQL and SQLite, ``mysql.py`` for InnoDB)."""

from __future__ import annotations

from .base import Claimed, Claims

__all__ = ["Claimed", "Claims"]
