"""``flask db init/migrate/upgrade`` (Flask-Migrate) autogenerates the job table."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import MYSQL_URL, POSTGRES_URL, all_databases
from tests.servers import REPO, isolated_database


@all_databases
def test_flask_db_migrate_creates_job_table_and_indexes(db_url: str, tmp_path: Path) -> None:
    with isolated_database(db_url, tmp_path) as url:
        env = dict(os.environ)
        env.update(
            {
                "FLASK_APP": "example_app",
                "EXAMPLE_SQLALCHEMY_DATABASE_URI": url,
                "EXAMPLE_CREATE_TABLES": "false",
                "EXAMPLE_QUEUE_SCHEDULER": "false",
                "PYTHONPATH": str(REPO),
            }
        )
        migrations = tmp_path / "migrations"
        flask = [sys.executable, "-m", "flask"]
        for args in (
            ["db", "init", "-d", str(migrations)],
            ["db", "migrate", "-d", str(migrations), "-m", "initial"],
            ["db", "upgrade", "-d", str(migrations)],
        ):
            result = subprocess.run(
                flask + args, env=env, cwd=str(tmp_path), capture_output=True, text=True
            )
            assert result.returncode == 0, result.stderr
        (version,) = (migrations / "versions").glob("*.py")
        script = version.read_text()
        assert "op.create_table('queue_job'" in script
        assert "op.create_table('queue_job_queues'" in script
        assert "op.create_table('queue_job_stats'" in script
        for part in ("steps", "waits", "events"):  # durable steps and events
            assert f"op.create_table('queue_job_{part}'" in script
        engine = sa.create_engine(url)
        try:
            inspector = sa.inspect(engine)
            columns = {c["name"] for c in inspector.get_columns("queue_job")}
            assert {
                "id",
                "custom_id",
                "live_custom_id",
                "queue",
                "payload",
                "run_at",
                "status",
                "reason",
                "count",
                "schedule_type",
                "schedule",
                "count_limit",
                "tz",
                "occurrence_at",
                "attempt",
                "errors",
                "error",
                "history",
                "priority",
                "retry",
                "lease_until",
                "started_at",
                "created_at",
                "updated_at",
            } <= columns
            indexes = {i["name"]: i["column_names"] for i in inspector.get_indexes("queue_job")}
            assert indexes["ix_queue_job_status_run_at"] == ["status", "run_at"]
            # The claim walks (status, priority DESC, run_at) in order.
            assert indexes["ix_queue_job_claim"] == ["status", "priority", "run_at"]
            assert indexes["ix_queue_job_status_lease_until"] == ["status", "lease_until"]
            assert indexes["ix_queue_job_queue_status_run_at"] == ["queue", "status", "run_at"]
            uniques = inspector.get_unique_constraints("queue_job")
            unique_cols = [u["column_names"] for u in uniques] + [
                i["column_names"] for i in inspector.get_indexes("queue_job") if i.get("unique")
            ]
            assert ["live_custom_id"] in unique_cols
            assert indexes["ix_queue_job_custom_id"] == ["custom_id"]
            # A second migrate finds nothing to change: the model and table agree.
            again = subprocess.run(
                [*flask, "db", "migrate", "-d", str(migrations), "-m", "noop"],
                env=env,
                cwd=str(tmp_path),
                capture_output=True,
                text=True,
            )
            assert "No changes in schema detected" in again.stdout + again.stderr
        finally:
            engine.dispose()


def _flask(args: list[str], url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.update(
        {
            "FLASK_APP": "example_app",
            "EXAMPLE_SQLALCHEMY_DATABASE_URI": url,
            "EXAMPLE_CREATE_TABLES": "false",
            "EXAMPLE_QUEUE_SCHEDULER": "false",
            "EXAMPLE_QUEUE_EXECUTOR": "inline",
            "PYTHONPATH": str(REPO),
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "flask", *args],
        env=env,
        cwd=str(cwd),
        capture_output=True,
        text=True,
    )


@pytest.mark.skipif(not (POSTGRES_URL and MYSQL_URL), reason="needs PostgreSQL and MariaDB")
@pytest.mark.parametrize("source", ["sqlite", "postgresql", "mysql"])
def test_a_migration_made_on_one_database_applies_on_the_others(
    source: str, tmp_path: Path
) -> None:
    """Users autogenerate on their laptop's SQLite and deploy to PostgreSQL or
    MariaDB (or the other way round): the script of every table the extension
    declares must apply on each, and the app must run on the result."""
    urls = {"sqlite": "sqlite://", "postgresql": POSTGRES_URL, "mysql": MYSQL_URL}
    migrations = tmp_path / "migrations"
    with contextlib.ExitStack() as stack:
        made = {
            k: stack.enter_context(isolated_database(str(u), tmp_path)) for k, u in urls.items()
        }
        for args in (
            ["db", "init", "-d", str(migrations)],
            ["db", "migrate", "-d", str(migrations)],
        ):
            result = _flask(args, made[source], tmp_path)
            assert result.returncode == 0, result.stderr
        for target, url in made.items():
            if target == source:
                continue
            upgraded = _flask(["db", "upgrade", "-d", str(migrations)], url, tmp_path)
            assert upgraded.returncode == 0, (source, target, upgraded.stderr[-2000:])
            engine = sa.create_engine(url)
            try:
                tables = set(sa.inspect(engine).get_table_names())
            finally:
                engine.dispose()
            declared = {"queue_job", *(f"queue_job_{p}" for p in PARTS)}
            assert declared <= tables, (source, target, declared - tables)
            # The app runs on it: a job enqueued and run, an event emitted.
            ran = _flask(["queue", "enqueue", "record", '{"n": 1}'], url, tmp_path)
            assert ran.returncode == 0, (source, target, ran.stderr[-2000:])
            emitted = _flask(
                ["queue", "emit", "booking.confirmed", '{"booking": 1}'], url, tmp_path
            )
            assert emitted.returncode == 0, (source, target, emitted.stderr[-2000:])
            assert "started 1 job(s)" in emitted.stdout


#: The tables beside the job table, by suffix.
PARTS = ("queues", "stats", "starts", "steps", "waits", "events", "deps")
