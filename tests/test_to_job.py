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
