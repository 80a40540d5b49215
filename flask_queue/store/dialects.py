"""What differs between the databases, chosen once per store (``Dialect.of``).

Every statement of the store is written once; where a database needs another
spelling, another kind of connection or another guard, the statement asks the
store's ``Dialect`` instead of comparing the dialect's name at each call. A
database other than these three gets the portable defaults of ``Dialect`` (the
``else`` arms of the branches these replace).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Engine


class Dialect:
    """The defaults; ``Postgres``, ``Sqlite`` and ``MySQL`` override what differs."""

    #: A write that is one statement runs in autocommit (``StoreCore.one_statement``).
    autocommit: ClassVar[bool] = False
    #: A failed statement aborts the whole transaction it is in, so one that may
    #: fail inside a caller's transaction (an INSERT of a taken custom id) runs
    #: in a SAVEPOINT (``StoreCore.begin``'s ``nested``).
    savepoint: ClassVar[bool] = False
    #: Inside a caller's transaction a plain read sees its snapshot (InnoDB's
    #: REPEATABLE READ), which may predate the row it looks for: such reads lock
    #: (FOR SHARE) to see the latest committed row.
    locking_read: ClassVar[bool] = True
    #: Idle workers can wait for a NOTIFY instead of polling.
    notifies: ClassVar[bool] = False
    #: The free claim is one UPDATE ... RETURNING over SKIP LOCKED CTEs
    #: (``claim/returning.py``); otherwise pick, lock, UPDATE, read back
    #: (``claim/mysql.py``).
    claims_in_one_statement: ClassVar[bool] = False
    #: The isolation level of the limited queues' claim transaction (None: the
    #: engine's own).
    claim_isolation: ClassVar[str | None] = None
    #: How a positional INSERT ... ON CONFLICT is spelled (PostgreSQL's and
    #: SQLite's are spelled alike).
    _insert: ClassVar[Any] = staticmethod(sqlite.insert)

    def __init__(self, engine: Engine) -> None:
        self.name: str = engine.dialect.name
        #: UPDATE ... RETURNING (PostgreSQL, SQLite 3.35+; not MySQL or MariaDB).
        self.returning = bool(engine.dialect.update_returning)
        #: An executemany's rowcount is the sum of its rows' (not PyMySQL's).
        self.sane_multi_rowcount = bool(engine.dialect.supports_sane_multi_rowcount)

    @staticmethod
    def of(engine: Engine) -> Dialect:
        """The ``Dialect`` of ``engine``'s database."""
        # SQLAlchemy names its dialect for ``mariadb+pymysql://`` URLs "mariadb":
        # the same server, the same statements.
        kinds: dict[str, type[Dialect]] = {
            "postgresql": Postgres,
            "sqlite": Sqlite,
            "mysql": MySQL,
            "mariadb": MySQL,
        }
        return kinds.get(engine.dialect.name, Dialect)(engine)

    def key(self, custom_id: str | None) -> Any:
        """A custom id as the custom id columns take it."""
        return custom_id

    def among(self, column: Any, values: Sequence[Any]) -> Any:
        """``column`` is one of ``values`` (none of them None)."""
        return column.in_(values)

    def runs_among(
        self, ids: Any, attempts: Any, pairs: Sequence[tuple[str, int]]
    ) -> sa.ColumnElement[bool]:
        """The rows of these runs (id, attempt) on the columns ``ids`` and
        ``attempts``. The ids are also given as a plain ``id IN (...)``: a
        row-constructor IN is not always served from the primary key (InnoDB
        may scan an index, locking rows that other claimers hold: deadlocks
        under eight claimers)."""
        return sa.and_(
            ids.in_([job_id for job_id, _ in pairs]), sa.tuple_(ids, attempts).in_(list(pairs))
        )

    def tail(self, text: Any, chars: int) -> Any:
        """The last ``chars`` characters of the column ``text``."""
        return sa.func.right(text, chars)

    def hour(self, minute: Any) -> Any:
        """The hour a DATETIME column's value is in (text on SQLite and MySQL)."""
        return sa.func.strftime("%Y-%m-%d %H:00:00", minute)

    def adding_upsert(
        self, table: sa.Table, values: list[dict[str, Any]], key: list[Any], added: list[str]
    ) -> Any:
        """INSERT ``values``; a row whose ``key`` is taken gets the ``added``
        columns added to its own, not replaced."""
        ins = self._insert(table).values(values)
        return ins.on_conflict_do_update(
            index_elements=key, set_={name: table.c[name] + ins.excluded[name] for name in added}
        )


class Postgres(Dialect):
    # Switching to autocommit is free here: no BEGIN/COMMIT round trips, about
    # 0.1 ms off every enqueue, start and finish.
    autocommit = True
    savepoint = True
    notifies = True
    claims_in_one_statement = True
    _insert = staticmethod(postgresql.insert)

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        if engine.dialect.driver == "psycopg" and not sa.event.contains(
            engine, "checkout", _unprepared
        ):
            sa.event.listen(engine, "checkout", _unprepared)

    def hour(self, minute: Any) -> Any:
        return sa.func.date_trunc("hour", minute)

    # One array parameter, not an IN list: the statement's text is the same
    # whatever the number of values, so SQLAlchemy compiles it once and
    # psycopg converts it once (its query split of a new 200-placeholder
    # text is most of the Python side of a limited claim's take). For
    # primary keys only: arrays of keys made the rated claim slower (see
    # ``predicates.key_among``).
    def among(self, column: Any, values: Sequence[Any]) -> Any:
        return column == sa.any_(_array(column, values))

    # Arrays for the same reason: the start mark, the finish and the lease
    # extension of a batch named each run twice in IN lists (300 placeholders
    # for 100 runs), a new text per batch size that psycopg split again on
    # every call (a tenth of a draining worker's samples).
    def runs_among(
        self, ids: Any, attempts: Any, pairs: Sequence[tuple[str, int]]
    ) -> sa.ColumnElement[bool]:
        job_ids = [job_id for job_id, _ in pairs]
        numbers = [attempt for _, attempt in pairs]
        if all(map(_PLAIN.fullmatch, job_ids)):
            # Generated ids (always, in practice): each array as one text
            # parameter, '{a,b,c}', cast by the server; psycopg's list dumper
            # was a twentieth of a draining worker's time on the GIL.
            id_array = _literal(ids, ",".join(job_ids))
            attempt_array = _literal(attempts, ",".join(map(str, numbers)))
        else:
            id_array, attempt_array = _array(ids, job_ids), _array(attempts, numbers)
        zipped = sa.select(sa.func.unnest(id_array), sa.func.unnest(attempt_array))
        return sa.and_(ids == sa.any_(id_array), sa.tuple_(ids, attempts).in_(zipped))


#: psycopg 3's own ``prepare_threshold``: a connection that still has it was not
#: given one by the app (``connect_args``), which then keeps its choice.
PSYCOPG_DEFAULT_THRESHOLD = 5


def _unprepared(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """No server-side prepared statements on the engine's psycopg connections.

    psycopg 3 prepares a statement once it ran 5 times on a connection, and
    the claim and finish statements do. Through a transaction pooler
    (PgBouncer's transaction mode: Supabase's and Neon's pooled URLs) the next
    transaction lands on another server connection: "prepared statement
    "_pg3_0" already exists" or "does not exist", and every claim fails. A
    pooler cannot be told from the server by the client, so preparing is off
    on every connection of the engine (the app's own statements too) unless
    the app chose a threshold itself: a connection whose threshold is not
    psycopg's default is left as it is. Once per pooled connection."""
    if record.info.get("flask_queue_unprepared"):
        return
    record.info["flask_queue_unprepared"] = True
    if getattr(dbapi_connection, "prepare_threshold", None) == PSYCOPG_DEFAULT_THRESHOLD:
        dbapi_connection.prepare_threshold = None


def _array(column: Any, values: Sequence[Any]) -> Any:
    return sa.bindparam(None, list(values), type_=postgresql.ARRAY(column.type))


#: What may go in an array literal unquoted: a generated job id's alphabet
#: (``job.new_id``), digits. Anything else takes ``_array``.
_PLAIN = re.compile(r"[0-9A-Za-z]+")


def _literal(column: Any, joined: str) -> Any:
    """An array of ``column``'s type from ``joined`` (plain values, commas between)."""
    text = sa.bindparam(None, "{" + joined + "}", type_=sa.Text)
    return sa.cast(text, postgresql.ARRAY(column.type))


class Sqlite(Dialect):
    # One writer at a time, and a reader sees the latest commit.
    locking_read = False
    claims_in_one_statement = True

    def tail(self, text: Any, chars: int) -> Any:
        return sa.func.substr(text, -chars)


class MySQL(Dialect):
    """MySQL and MariaDB (InnoDB)."""

    # Under InnoDB's default REPEATABLE READ a locking read also locks the gaps
    # it scans: claimers that insert index entries into each other's ranges
    # deadlock. A claim needs only the row locks.
    claim_isolation = "READ COMMITTED"

    def key(self, custom_id: str | None) -> Any:
        # UTF-8 bytes for the VARBINARY column: it compares byte for byte (see schema).
        return custom_id.encode("utf-8") if custom_id is not None else None

    def hour(self, minute: Any) -> Any:
        return sa.func.date_format(minute, "%Y-%m-%d %H:00:00")

    def adding_upsert(
        self, table: sa.Table, values: list[dict[str, Any]], key: list[Any], added: list[str]
    ) -> Any:
        ins = mysql.insert(table).values(values)
        return ins.on_duplicate_key_update(
            {name: table.c[name] + ins.inserted[name] for name in added}
        )
