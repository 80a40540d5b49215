"""Through a real PgBouncer in transaction mode (issue 21, item 1), with the app's
default engine options: the worker, the thread executor under 8 threads, the
http invoke under gunicorn and the dashboard. ``.ci/pgbouncer.sh`` starts it and
prints the URL for ``QUEUE_TEST_PGBOUNCER_URL``.

Each runs far more than 5 times the same statement on a client connection
(psycopg 3 prepares a statement at its 5th run), while PgBouncer hands every
transaction whatever server connection is free: with preparing on, the worker
exited after a few hundred jobs on ``DuplicatePreparedStatement``."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from flask_queue import Job, Queue
from flask_queue.signing import produce_token
from flask_queue.worker import work
from tests.conftest import POSTGRES_URL, AppFactory
from tests.servers import REPO, free_port

POOLED = os.environ.get("QUEUE_TEST_PGBOUNCER_URL")
GUNICORN = [sys.executable, "-m", "gunicorn", "-w", "2"]

pytestmark = [
    pytest.mark.skipif(not (POOLED and POSTGRES_URL), reason="needs QUEUE_TEST_PGBOUNCER_URL"),
    pytest.mark.parametrize("db_url", ["postgresql"], indirect=True),
]


def counted(queue: Queue) -> list[int]:
    ran: list[int] = []

    @queue.handler("count")
    def count(job: Job[int]) -> None:
        ran.append(job.payload)

    return ran


def test_the_worker_drains_through_the_pooler(make_app: AppFactory, db_url: str) -> None:
    queue = Queue()
    ran = counted(queue)
    app = make_app(queue, url=POOLED, QUEUE_EXECUTOR="worker")
    with app.app_context():
        queue.enqueue_many("count", list(range(1500)))
        done = work(queue, concurrency=4, interval=0.05, max_jobs=1500, report=lambda _: None)
        assert done == 1500 and sorted(ran) == list(range(1500))
        assert list(queue.jobs()) == []


def test_the_thread_executor_under_8_threads(make_app: AppFactory, db_url: str) -> None:
    queue = Queue()
    ran = counted(queue)
    app = make_app(queue, url=POOLED, QUEUE_EXECUTOR="thread", QUEUE_THREADS=8)
    errors: list[BaseException] = []

    def enqueuer(n: int) -> None:
        try:
            with app.app_context():
                for i in range(60):
                    queue.enqueue("count", n * 100 + i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=enqueuer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    give_up = time.monotonic() + 60
    with app.app_context():
        while len(ran) < 480 and time.monotonic() < give_up:
            queue.produce()
            time.sleep(0.05)
        app.extensions["queue"].executor.shutdown(wait=True)
        assert sorted(ran) == sorted(n * 100 + i for n in range(8) for i in range(60))


def test_the_dashboard_through_the_pooler(make_app: AppFactory, db_url: str) -> None:
    queue = Queue()
    counted(queue)
    app = make_app(queue, url=POOLED, QUEUE_EXECUTOR="worker")
    app.debug = True  # the dashboard is open
    client = app.test_client()
    with app.app_context():
        job = queue.enqueue("count", 1, delay="1h")
        queue.emit("pooled", {"n": 1})
    for _ in range(12):  # past the 5 runs after which psycopg would prepare
        for path in (
            "/_queue/",
            "/_queue/jobs/scheduled",
            f"/_queue/job/{job.id}",
            "/_queue/events",
        ):
            assert client.get(path).status_code == 200, path


def test_listen_auto_through_the_pooler_polls_and_says_why(
    make_app: AppFactory, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue = Queue()
    ran = counted(queue)
    app = make_app(queue, url=POOLED, QUEUE_EXECUTOR="worker", QUEUE_LISTEN="auto")
    caplog.set_level(logging.INFO, logger="flask_queue")
    with app.app_context():
        threading.Timer(0.5, lambda: _in(app, queue.enqueue, "count", 7)).start()
        work(queue, concurrency=1, interval=0.2, max_jobs=1, report=lambda _: None)
    assert ran == [7]
    assert any("LISTEN hears no NOTIFY" in r.message for r in caplog.records)


def test_a_listen_url_of_its_own_keeps_the_wake_ups(
    make_app: AppFactory, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue = Queue()
    ran = counted(queue)
    app = make_app(queue, url=POOLED, QUEUE_EXECUTOR="worker", QUEUE_LISTEN_URL=POSTGRES_URL)
    caplog.set_level(logging.INFO, logger="flask_queue")
    started: list[float] = []
    with app.app_context():

        def later() -> None:
            started.append(time.monotonic())
            _in(app, queue.enqueue, "count", 8)

        threading.Timer(3.0, later).start()  # after the worker's LISTEN check
        # A 30 s poll: only the NOTIFY can start the job in time.
        work(queue, concurrency=1, interval=30, max_jobs=1, report=lambda _: None)
    assert ran == [8] and time.monotonic() - started[0] < 10
    assert not any("LISTEN hears no NOTIFY" in r.message for r in caplog.records)


def test_the_http_invoke_under_gunicorn_through_the_pooler(
    make_app: AppFactory, db_url: str, tmp_path: Path
) -> None:
    table = f"pool_{uuid.uuid4().hex[:8]}"
    secret = "pool-" + uuid.uuid4().hex
    log = tmp_path / "runs.log"
    queue = Queue()

    @queue.handler("chaos")
    def chaos(job: Job[int]) -> None: ...

    app = make_app(queue, url=POOLED, QUEUE_EXECUTOR="worker", QUEUE_TABLE_NAME=table)
    with app.app_context():
        ids = [j.id for j in queue.enqueue_many("chaos", list(range(300)), delay="1s")]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ)
    env.update(
        CHAOS_DB_URL=str(POOLED),
        CHAOS_SECRET=secret,
        CHAOS_BASE_URL=base,
        CHAOS_TABLE=table,
        CHAOS_LOG=str(log),
        CHAOS_SLEEP="0",
        PYTHONPATH=str(REPO),
    )
    app.config["SECRET_KEY"] = secret
    server = subprocess.Popen(
        [*GUNICORN, "-b", f"127.0.0.1:{port}", "tests.chaos_app:create_app()"],
        env=env,
        cwd=str(REPO),
        stdout=(tmp_path / "gunicorn.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        import urllib.request

        token = produce_token(secret)
        give_up = time.monotonic() + 90
        left = len(ids)
        time.sleep(1.5)
        while left and time.monotonic() < give_up:
            request = urllib.request.Request(
                base + "/_queue/produce", headers={"Authorization": f"Bearer {token}"}
            )
            try:
                with urllib.request.urlopen(request, timeout=20) as response:
                    response.read()
            except OSError:
                time.sleep(0.2)  # gunicorn still booting
            with app.app_context():
                left = sum(1 for _ in queue.jobs())
        gunicorn = (tmp_path / "gunicorn.log").read_text(errors="replace")
        assert left == 0, gunicorn[-3000:]
        assert "PreparedStatement" not in gunicorn
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)
    done = [line.split()[2] for line in log.read_text().splitlines() if line.startswith("done")]
    assert sorted(set(done)) == sorted(ids)


def _in(app: Any, fn: Any, *args: Any) -> Any:
    with app.app_context():
        return fn(*args)


def test_preparing_is_off_unless_the_app_chose(make_app: AppFactory, db_url: str) -> None:
    chose = make_app(
        Queue(),
        url=POOLED,
        SQLALCHEMY_ENGINE_OPTIONS={"connect_args": {"prepare_threshold": 2}},
    )
    default = make_app(Queue(), url=POOLED)
    for app, expected in ((default, None), (chose, 2)):
        with app.app_context():
            store = app.extensions["queue"].store
            store.dialect  # noqa: B018 - the dialect, chosen at first use, installs the guard
            with store.engine.connect() as c:
                c.execute(sa.text("SELECT 1"))
                assert c.connection.driver_connection.prepare_threshold == expected
