"""The store builds ``Job`` objects without ``Job.__init__`` (``StoreCore.to_job``,
for speed): every field must still be set, to the same values ``__init__`` would
give, on every database."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import sqlalchemy as sa

from flask_queue import Job, JobStatus, Queue
from tests.conftest import AppFactory, all_databases


@all_databases
def test_a_stored_job_has_every_field_and_equals_its_init_twin(
    make_app: AppFactory, queue: Queue
) -> None:
    app = make_app(queue)
    with app.app_context():
        queue.enqueue(
            "echo", {"a": [1, 2]}, id="twin", delay="1h", retry=["1s"], timeout="30s", key="k"
        )
        job = queue.get_by_custom_id("twin")
    assert job is not None
    names = {f.name for f in dataclasses.fields(Job)}
    assert names <= set(job.__dict__), names - set(job.__dict__)
    twin = Job(**{name: getattr(job, name) for name in names})
    assert twin == job
    assert job.status is JobStatus.SCHEDULED
    assert job.run_at.tzinfo is not None and job.created_at is not None
    assert job.created_at.tzinfo is not None
    assert job.timeout is not None and job.timeout.total_seconds() == 30
    assert job.retry == [1.0] and job.key == "k" and job.payload == {"a": [1, 2]}
    assert dataclasses.replace(job, payload=None).payload is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.payload = 1  # type: ignore[misc]


def test_an_unknown_status_is_named(make_app: AppFactory, queue: Queue) -> None:
    app = make_app(queue)
    with app.app_context():
        job = queue.enqueue("echo", None, delay="1h")
        store: Any = app.extensions["queue"].store
        with store.engine.begin() as c:
            row = c.execute(sa.select(store.table)).one()._asdict()
        row["status"] = "WEIRD"
        with pytest.raises(ValueError, match="'WEIRD' is not a valid JobStatus"):
            store.to_job(row)
        assert queue.get(job.id) is not None


@all_databases
def test_runs_among_names_exactly_these_runs_whatever_their_ids(
    make_app: AppFactory, queue: Queue
) -> None:
    """The batch predicate of starts, finishes and beats (``Dialect.runs_among``):
    PostgreSQL passes generated ids as one array literal, and any other id as a
    bound array; both must select exactly the (id, attempt) pairs given."""
    app = make_app(queue)
    with app.app_context():
        store: Any = app.extensions["queue"].store
        t = store.table
        ids = ["06abcxyz", "plain2", 'we,ird"{}', "x y"]
        rows = [
            store.new_row(
                id=i, queue="echo", payload="null", run_at=store.now(), status="RUNNING", attempt=2
            )
            for i in ids
        ]
        store.insert(rows)

        def chosen(pairs: list[tuple[str, int]]) -> set[str]:
            where = store.core.dialect.runs_among(t.c.id, t.c.attempt, pairs)
            with store.engine.connect() as c:
                return set(c.scalars(sa.select(t.c.id).where(where)))

        assert chosen([("06abcxyz", 2), ("plain2", 2)]) == {"06abcxyz", "plain2"}
        assert chosen([("06abcxyz", 2), ("plain2", 1)]) == {"06abcxyz"}  # the attempt guards
        assert chosen([('we,ird"{}', 2), ("x y", 2), ("plain2", 2)]) == {
            'we,ird"{}',
            "x y",
            "plain2",
        }
        assert chosen([("we", 2), ("ird", 2)]) == set()
