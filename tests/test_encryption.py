"""Payloads encrypted at rest (issue 11): QUEUE_ENCRYPTION_KEYS, rotate-keys."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_queue import ConfigError, JobStatus, Queue
from tests.conftest import AppFactory, Clock, Recorder, all_databases

pytest.importorskip("cryptography")
from cryptography.fernet import Fernet

OLD, NEW, OTHER = (Fernet.generate_key().decode() for _ in range(3))
SECRET = "s3cret-marker-4242"


def _raw(app: Flask) -> list[str]:
    """Every value of every row of the job table, as text, straight from the database."""
    store = app.extensions["queue"].store
    with store.engine.connect() as c:
        rows = c.execute(sa.select(store.table)).all()
    return [
        v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        for row in rows
        for v in row
    ]


def _payload_column(app: Flask) -> list[str]:
    store = app.extensions["queue"].store
    with store.engine.connect() as c:
        return list(c.execute(sa.select(store.table.c.payload)).scalars())


@all_databases
def test_no_payload_reaches_the_database_in_plain_text(
    make_app: AppFactory, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    @queue.cron("0 3 * * *", name="nightly-report")
    def nightly(job: Any) -> None:
        pass

    app = make_app(queue, QUEUE_ENCRYPTION_KEYS=[NEW, OLD], QUEUE_KEEP_COMPLETED="1h")
    with app.app_context():
        queue.enqueue("echo", {"card": SECRET}, delay="1s")
        queue.enqueue_many("echo", [f"{SECRET}-{i}" for i in range(3)], delay="1s")
        queue.enqueue("echo", f"{SECRET}-id", id="invoice-7", delay="1s")
        queue.enqueue("echo", f"{SECRET}-override", id="invoice-7", override=True, delay="1s")
        recorder.fail_next = 1
        queue.enqueue("flaky", f"{SECRET}-repeat", every="1m", delay="1s", retry=[])
        queue.sync_crons()
        assert not any(SECRET in v for v in _raw(app))
        assert all(p.startswith("gAAAAA") for p in _payload_column(app))
        clock.advance(1)
        queue.produce()  # handlers get the payloads back; a failed copy is written
        assert sorted(map(str, recorder.payloads("echo"))) == sorted(
            [str({"card": SECRET})] + [f"{SECRET}-{i}" for i in range(3)] + [f"{SECRET}-override"]
        )
        assert recorder.payloads("flaky") == [f"{SECRET}-repeat"]
        (copy,) = queue.jobs(status="FAILED")
        assert copy.payload == f"{SECRET}-repeat"
        assert not any(SECRET in v for v in _raw(app))
        # Those who may see the dashboard see the payload; the page is decrypted.
        app.debug = True
        page = app.test_client().get(f"/_queue/job/{copy.id}").get_data(as_text=True)
        assert f"{SECRET}-repeat" in page


@all_databases
def test_rotation_reads_old_keys_and_rotate_keys_rewrites_to_the_newest(
    make_app: AppFactory, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    plain = make_app(queue)  # written before encryption was turned on
    table = plain.config["QUEUE_TABLE_NAME"]
    with plain.app_context():
        queue.enqueue_many("echo", ["plain-one", "plain-two"], delay="1s")
    old = make_app(queue, QUEUE_TABLE_NAME=table, QUEUE_ENCRYPTION_KEYS=OLD)
    with old.app_context():
        queue.enqueue_many("echo", ["o1", "o2", "o3"], delay="1s")
    both = make_app(queue, QUEUE_TABLE_NAME=table, QUEUE_ENCRYPTION_KEYS=f"{NEW},{OLD}")
    with both.app_context():
        assert sorted(j.payload for j in queue.jobs()) == [
            "o1",
            "o2",
            "o3",
            "plain-one",
            "plain-two",
        ]
        runner = both.test_cli_runner()
        result = runner.invoke(args=["queue", "rotate-keys", "--batch", "2"])
        assert result.exit_code == 0, result.output
        assert "5 payload(s)" in result.output
        again = runner.invoke(args=["queue", "rotate-keys"])
        assert "0 payload(s)" in again.output
    assert not any(p in v for v in _raw(both) for p in ("plain-one", "plain-two"))
    newest = make_app(queue, QUEUE_TABLE_NAME=table, QUEUE_ENCRYPTION_KEYS=[NEW])
    with newest.app_context():
        clock.advance(1)
        queue.produce()
    assert sorted(recorder.payloads("echo")) == ["o1", "o2", "o3", "plain-one", "plain-two"]


@all_databases
def test_a_payload_no_key_opens_fails_its_job_visibly(
    make_app: AppFactory, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    writer = make_app(queue, QUEUE_ENCRYPTION_KEYS=[OLD])
    table = writer.config["QUEUE_TABLE_NAME"]
    with writer.app_context():
        job = queue.enqueue("echo", "x", delay="1s", retry=0)
    stranger = make_app(queue, QUEUE_TABLE_NAME=table, QUEUE_ENCRYPTION_KEYS=[OTHER])
    with stranger.app_context():
        clock.advance(1)
        queue.produce()
    assert recorder.calls == []
    with writer.app_context():
        failed = queue.get(job.id)
    assert failed is not None and failed.status is JobStatus.FAILED
    assert "QUEUE_ENCRYPTION_KEYS" in (failed.reason or "")
    unset = make_app(queue, QUEUE_TABLE_NAME=table)
    with unset.app_context(), pytest.raises(ValueError, match="is not set"):
        queue.get(job.id)
    # rotate-keys meets a payload no listed key opens: one line, non-zero exit.
    with stranger.app_context():
        result = stranger.test_cli_runner().invoke(args=["queue", "rotate-keys"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.output.startswith("Error:") and "QUEUE_ENCRYPTION_KEYS" in result.output
    unset.debug = True
    page = unset.test_client().get(f"/_queue/job/{job.id}")
    assert page.status_code == 409
    assert "QUEUE_ENCRYPTION_KEYS is not set" in page.get_data(as_text=True)


@pytest.mark.parametrize(
    ("keys", "position"),
    [([NEW, "not-a-key"], 1), ("short", 0), ([b"\x00" * 44], 0)],
)
def test_a_bad_key_is_refused_at_init_without_echoing_it(
    make_app: AppFactory, queue: Queue, keys: Any, position: int
) -> None:
    with pytest.raises(ConfigError, match=rf"QUEUE_ENCRYPTION_KEYS\[{position}\]") as info:
        make_app(queue, QUEUE_ENCRYPTION_KEYS=keys)
    assert "not-a-key" not in str(info.value) and "short" not in str(info.value)


def test_rotate_keys_without_keys_says_what_to_set(app: Flask, runner: Any) -> None:
    result = runner.invoke(args=["queue", "rotate-keys"])
    assert result.exit_code != 0
    assert "Set QUEUE_ENCRYPTION_KEYS" in result.output


@all_databases
def test_the_dashboard_shows_no_payload_to_a_visitor_it_refuses(
    make_app: AppFactory, queue: Queue
) -> None:
    app = make_app(queue, QUEUE_ENCRYPTION_KEYS=[NEW], QUEUE_DASHBOARD_AUTH="admin:pw")
    with app.app_context():
        job = queue.enqueue("echo", SECRET, delay="1h")
    client = app.test_client()
    refused = client.get(f"/_queue/job/{job.id}")
    assert refused.status_code == 401 and SECRET not in refused.get_data(as_text=True)
    import base64

    auth = {"Authorization": "Basic " + base64.b64encode(b"admin:pw").decode()}
    assert SECRET in client.get(f"/_queue/job/{job.id}", headers=auth).get_data(as_text=True)
