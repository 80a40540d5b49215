"""A ``mariadb+pymysql://`` URL (SQLAlchemy's MariaDB dialect, named "mariadb")
gets the same store as ``mysql+pymysql://``: the InnoDB claim, its index hint,
its upserts and its rate log."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from flask_queue import Job, Queue
from flask_queue.store.dialects import Dialect, MySQL
from tests.conftest import MYSQL_URL, AppFactory, Clock


@pytest.mark.skipif(not MYSQL_URL, reason="QUEUE_TEST_MYSQL_URL is not set")
def test_a_mariadb_url_runs_jobs_like_a_mysql_one(make_app: AppFactory, clock: Clock) -> None:
    assert MYSQL_URL is not None
    url = sa.engine.make_url(MYSQL_URL).set(drivername="mariadb+pymysql")
    engine = sa.create_engine(url)
    try:
        assert engine.dialect.name == "mariadb"
        assert type(Dialect.of(engine)) is MySQL
    finally:
        engine.dispose()

    queue = Queue(clock=clock)
    ran: list[Any] = []

    @queue.handler("limited", rate="100/s", concurrency=2)
    def limited(job: Job[Any]) -> None:
        ran.append(job.payload)

    @queue.handler("free")
    def free(job: Job[Any]) -> None:
        ran.append(job.payload)

    app = make_app(queue, url=url.render_as_string(hide_password=False))
    with app.app_context():
        # Due later, so the claim below (not the inline dispatch) runs them.
        queue.enqueue("limited", 1, id="one", delay="1s")
        queue.enqueue("limited", 1, id="one", delay="1s")  # kept: the unique insert
        queue.enqueue_many("free", [2, 3], delay="1s")
        queue.enqueue("limited", 4, delay="1s")
        clock.advance(2)
        produced = queue.produce()
        assert produced.claimed == 4, produced
        assert sorted(ran) == [1, 2, 3, 4]
        assert queue.queue_settings()["limited"]["concurrency"] == 2
