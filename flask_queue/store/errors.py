"""Driver errors at the storage boundary: wrapped once into ``StorageError``,
told apart (an outage passes by itself, a refusal needs someone to act), and
deadlocks tried again where the work is safe to repeat."""

from __future__ import annotations

import random
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import sqlalchemy as sa

from ..errors import StorageError

T = TypeVar("T")

#: InnoDB may report a deadlock between concurrent claimers even with SKIP LOCKED.
DEADLOCK_RETRIES = 5

#: The drivers' words for a table or column that is not there (SQLite, PostgreSQL,
#: MySQL/MariaDB): a schema an upgrade has not migrated yet.
_MISSING_SCHEMA = re.compile(
    r"no such (table|column)|(relation|column) .* does not exist|doesn't exist|Unknown column"
)

#: MySQL/MariaDB errors that pass by themselves: can't connect (2002, 2003), server
#: gone or connection lost (2006, 2013, 2055), too many connections (1040), lock
#: wait timeout (1205), deadlock (1213), server shutting down (1053).
_MYSQL_OUTAGE_CODES = frozenset({2002, 2003, 2006, 2013, 2055, 1040, 1053, 1205, 1213})


def driver_words(exc: BaseException) -> tuple[str, str]:
    """The driver's own error behind ``exc``: its class name and the first line
    of its message (300 characters at most), never the bound parameters."""
    orig = getattr(exc, "orig", None) or exc
    return type(orig).__name__, (str(orig).strip().splitlines() or [""])[0][:300]


@contextmanager
def storage_errors(action: str) -> Iterator[None]:
    """Wrap driver errors once, at the storage boundary, into StorageError.

    The message carries the driver's own words but never the statement's bound
    parameters (payloads hold secrets, and these messages end up in logs): the
    chained SQLAlchemy error is told to hide them too, so a logged traceback
    does not print them either.
    """
    try:
        yield
    except Exception as exc:
        if not isinstance(exc, sa.exc.SQLAlchemyError) and not is_dbapi_error(exc):
            raise
        if isinstance(exc, sa.exc.StatementError):
            exc.hide_parameters = True
        kind, first_line = driver_words(exc)
        message = f"Could not {action}: {kind}: {first_line}"
        if _MISSING_SCHEMA.search(first_line):
            message += (
                " (the table or a column is missing: create it with db.create_all(), or"
                " run `flask db migrate` and `flask db upgrade` after upgrading flask_queue)"
            )
        error = StorageError(message)
        error.transient = is_outage(exc)
        raise error from exc


def is_dbapi_error(exc: BaseException) -> bool:
    """A driver's own (PEP 249) error that SQLAlchemy let through unwrapped: it
    does so when setting a connection's isolation level as it checks one out of
    the pool, which is where a connection that died in an outage is found."""
    for cls in type(exc).__mro__:
        if cls.__name__ == "Error":
            driver = sys.modules.get(cls.__module__.split(".")[0])
            if getattr(driver, "apilevel", None) == "2.0":
                return True
    return False


def is_outage(exc: Exception) -> bool:
    """Whether a storage error says the database is away (down, restarting,
    unreachable, out of connections, busy) rather than that it answered and
    refused the statement (a missing table, a permission, a constraint).

    Only the first kind passes by itself, so only it is worth waiting out: the
    second needs someone to act (run the migrations), and a loop that retried
    it forever would hide it behind one warning.
    """
    cause = exc
    code = getattr(getattr(cause, "orig", cause), "args", (None,))[:1]  # MySQL: (code, message)
    if code and isinstance(code[0], int):
        # MySQL/MariaDB put schema and permission errors (1054 unknown column,
        # 1142 access denied) in OperationalError too: their codes decide.
        return code[0] in _MYSQL_OUTAGE_CODES
    if not isinstance(cause, sa.exc.SQLAlchemyError):  # a driver's own, unwrapped
        kinds = {c.__name__ for c in type(cause).__mro__}
        return bool(kinds & {"OperationalError", "InterfaceError"}) and (
            getattr(cause, "sqlite_errorname", None) != "SQLITE_ERROR"
        )
    if isinstance(cause, sa.exc.DBAPIError) and cause.connection_invalidated:
        return True  # the dialect recognised a dropped connection, whatever its class
    if isinstance(cause, (sa.exc.TimeoutError, sa.exc.DisconnectionError)):
        return True  # the pool's own: no connection free in time, or a dead one
    if not isinstance(cause, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        return False
    # SQLite raises OperationalError for SQL it refuses too ("no such table",
    # syntax): those carry the generic SQLITE_ERROR code; a locked or
    # unopenable file carries a code of its own.
    return getattr(cause.orig, "sqlite_errorname", None) != "SQLITE_ERROR"


def is_deadlock(exc: sa.exc.DBAPIError) -> bool:
    args = getattr(exc.orig, "args", ())
    # MySQL/MariaDB: 1213 deadlock, 1205 lock wait timeout. PostgreSQL: 40P01.
    return bool(args and args[0] in (1213, 1205)) or getattr(exc.orig, "sqlstate", None) == "40P01"


def retry_on_deadlock(run: Callable[[], T], *, pause: tuple[float, float] = (0.005, 0.02)) -> T:
    """``run()``, run again when the database picked it as a deadlock victim
    (or its lock wait timed out), up to ``DEADLOCK_RETRIES`` runs in all, each
    after a longer random pause: for a transaction, or one statement, that is
    safe to repeat. The deadlock may come raw or wrapped by ``storage_errors``."""
    for attempt in range(DEADLOCK_RETRIES - 1):
        try:
            return run()
        except (sa.exc.DBAPIError, StorageError) as exc:
            cause = exc.__cause__ if isinstance(exc, StorageError) else exc
            if not (isinstance(cause, sa.exc.DBAPIError) and is_deadlock(cause)):
                raise
        time.sleep(random.uniform(*pause) * (attempt + 1))
    return run()
