"""A key no job can hold (NUL, a lone surrogate) is answered as "no such job" by
every look-up and admin action, on every database, instead of a driver error
(PostgreSQL refuses NUL in a parameter; no driver encodes a lone surrogate)."""

from __future__ import annotations

import pytest
from flask import Flask

from flask_queue import JobNotFoundError, Queue
from tests.conftest import all_databases, row_snapshot

KEYS = ["a\x00b", "\ud800", "id-\udfff-tail"]


@all_databases
@pytest.mark.parametrize("key", KEYS)
def test_keys_no_job_can_hold_find_nothing(app: Flask, queue: Queue, key: str) -> None:
    queue.enqueue("echo", 1, delay="1h", id="real")
    before = row_snapshot(app)
    assert queue.get(key) is None
    assert queue.get_by_custom_id(key) is None
    store = app.extensions["queue"].store
    assert store.find(key) is None
    assert store.search(key, 5) == []
    assert queue.delete(key) is False
    for action in (queue.retry, queue.run_now):
        with pytest.raises(JobNotFoundError, match="No job with id"):
            action(key)
    assert row_snapshot(app) == before
