"""Waking idle workers (PostgreSQL): the table's channel, NOTIFY, and the
listening connection a worker waits on between polls."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa

from .core import StoreCore
from .errors import storage_errors

log = logging.getLogger("flask_queue")


def channel_of(table: sa.Table) -> str:
    """The LISTEN/NOTIFY channel of the job table ``table`` (63 bytes at most,
    as PostgreSQL identifiers are)."""
    return f"flask_queue_{table.name}"[:63]


class Listener:
    """A dedicated PostgreSQL connection LISTENing on a job table's channel.

    Works with psycopg 3.2+ (``Connection.notifies(timeout=)``) and psycopg2
    (``select`` on the socket, then ``poll``). ``wait`` returns early when
    notified; a connection that dies raises ``StorageError`` (transient), after
    which the worker closes it and polls until it can listen again.
    """

    def __init__(self, conn: Any, kind: str) -> None:
        self.conn = conn
        self.kind = kind

    @classmethod
    def open(cls, conn: Any, channel: str) -> Listener | None:
        listen = 'LISTEN "' + channel.replace('"', '""') + '"'
        module = type(conn).__module__.split(".")[0]
        # psycopg 3.1's notifies() takes no timeout (its __kwdefaults__ is None).
        takes_timeout = "timeout" in (getattr(conn.notifies, "__kwdefaults__", None) or {})
        if module == "psycopg" and takes_timeout:
            conn.autocommit = True
            conn.execute(listen)
            return cls(conn, "psycopg")
        if module == "psycopg2":
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(listen)
            return cls(conn, "psycopg2")
        return None  # another driver, or psycopg before 3.2: poll

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; True if a notification came."""
        with storage_errors("wait for new jobs"):
            if self.kind == "psycopg":
                if not any(True for _ in self.conn.notifies(timeout=timeout, stop_after=1)):
                    return False
                # One wake-up for a burst: the rest of what arrived meanwhile
                # would only make the worker poll for jobs it already claimed.
                for _ in self.conn.notifies(timeout=0):
                    pass
                return True
            import select

            if self.conn.notifies:  # arrived with an earlier poll
                self.conn.notifies.clear()
                return True
            if not select.select([self.conn], [], [], timeout)[0]:
                return False
            self.conn.poll()
            notified = bool(self.conn.notifies)
            self.conn.notifies.clear()
            return notified

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            log.debug("flask_queue: closing the listening connection failed", exc_info=True)


class Notifier:
    """NOTIFY and LISTEN on the job table's channel (``Dialect.notifies``)."""

    def __init__(self, core: StoreCore) -> None:
        self.core = core
        self.channel = channel_of(core.table)

    def hears(self, listener: Listener, timeout: float) -> bool:
        """Whether a NOTIFY sent through the app's engine reaches ``listener``
        within ``timeout`` s: not through a transaction pooler, which lends the
        LISTEN a server connection for one statement and never forwards what
        arrives there afterwards."""
        self.notify()
        return listener.wait(timeout)

    def notify(self) -> None:
        """SELECT pg_notify(channel), in autocommit (PostgreSQL; no statement
        elsewhere, where workers poll): tell idle workers that a job is due now.
        Called after the enqueue committed, so a worker woken by it finds the job."""
        if not self.core.dialect.notifies:
            return
        with storage_errors("notify workers"), self.core.one_statement() as c:
            c.execute(sa.select(sa.func.pg_notify(self.channel, "")))

    def listener(self, url: str | None = None) -> Listener | None:
        """LISTEN on a connection of its own, taken out of the pool: for a worker
        to wait on between polls; None where the database or driver cannot.
        ``url``: on a connection to that database instead (a direct one, when
        the app's engine goes through a transaction pooler)."""
        if not self.core.dialect.notifies:
            return None
        with storage_errors("listen for new jobs"):
            if url is not None:
                # One connection for the worker's life, outside any pool.
                engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
                raw = engine.raw_connection()
            else:
                raw = self.core.engine.raw_connection()
            conn = raw.driver_connection
            # Detached: the listening connection is the worker's for its whole
            # life, not a pool slot that other code could be handed mid-LISTEN.
            raw.detach()
            try:
                listener = Listener.open(conn, self.channel)
            except BaseException:
                raw.close()
                raise
        if listener is None:
            raw.close()
        return listener
