"""The extension's wiring: init patterns, per-app state, config, two apps."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_queue import ConfigError, Job, Queue
from flask_queue.config import DEFAULTS
from tests.conftest import Clock, Recorder, row_snapshot


def _app(tmp_path: Any, name: str = "a", **config: Any) -> Flask:
    app = Flask(name)
    settings = {
        "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / (name + '.db')}",
        "SECRET_KEY": "k",
        "QUEUE_EXECUTOR": "inline",
    }
    app.config.update({**settings, **config})
    return app


def test_queue_app_finds_flask_sqlalchemy(tmp_path: Any) -> None:
    app = _app(tmp_path)
    db = SQLAlchemy(app)
    queue = Queue(app)
    state = app.extensions["queue"]
    assert state.db is db
    assert state.queue is queue
    assert "queue_job" in db.metadata.tables
    assert app.blueprints["queue"].url_prefix is None  # prefix applied at registration
    assert any(r.rule == "/_queue/invoke" for r in app.url_map.iter_rules())
    assert "queue" in app.cli.commands


def test_queue_app_db_and_factory_forms(tmp_path: Any) -> None:
    db = SQLAlchemy()
    app1 = _app(tmp_path, "one")
    queue = Queue(app1, db=db)  # db not yet registered on the app: fine, resolved lazily
    db.init_app(app1)
    app2 = _app(tmp_path, "two")
    db.init_app(app2)
    queue.init_app(app2)
    assert app1.extensions["queue"].db is db
    assert app2.extensions["queue"].db is db


def test_second_init_app_is_a_clear_error(tmp_path: Any) -> None:
    app = _app(tmp_path)
    SQLAlchemy(app)
    queue = Queue(app)
    with pytest.raises(ConfigError, match="already initialised"):
        queue.init_app(app)
    with pytest.raises(ConfigError, match="already initialised"):
        Queue().init_app(app)


def test_missing_flask_sqlalchemy_says_how_to_fix(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match=r"db.init_app\(app\)"):
        Queue(_app(tmp_path))


def test_config_defaults_are_set_once(tmp_path: Any) -> None:
    app = _app(tmp_path, QUEUE_BATCH_SIZE=7)
    SQLAlchemy(app)
    Queue(app)
    for key in DEFAULTS:
        assert key in app.config
    assert app.config["QUEUE_BATCH_SIZE"] == 7
    assert app.extensions["queue"].config.batch_size == 7
    app.config["QUEUE_BATCH_SIZE"] = 99  # read once: later edits do not leak in
    assert app.extensions["queue"].config.batch_size == 7


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("QUEUE_EXECUTOR", "celery", "'celery'"),
        ("QUEUE_LEASE", "forever", "'forever'"),
        ("QUEUE_BATCH_SIZE", 0, "QUEUE_BATCH_SIZE"),
        ("QUEUE_RETRY", "3", "QUEUE_RETRY"),
        ("QUEUE_URL_PREFIX", "queue", "'queue'"),
        ("QUEUE_TABLE_NAME", "jobs; drop", "'jobs; drop'"),
        ("QUEUE_PRODUCE_INTERVAL", 0, "QUEUE_PRODUCE_INTERVAL"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Any, key: str, value: Any, named: str) -> None:
    app = _app(tmp_path, **{key: value})
    SQLAlchemy(app)
    with pytest.raises(ConfigError) as info:
        Queue(app)
    assert named in str(info.value)
    assert "queue" not in app.extensions


def test_http_executor_needs_secret_and_url(tmp_path: Any) -> None:
    app = _app(tmp_path, QUEUE_EXECUTOR="http", QUEUE_BASE_URL="http://x")
    app.config["SECRET_KEY"] = None
    SQLAlchemy(app)
    with pytest.raises(ConfigError, match="QUEUE_SECRET"):
        Queue(app)
    app = _app(tmp_path, "b", QUEUE_EXECUTOR="http")
    SQLAlchemy(app)
    with pytest.raises(ConfigError, match="QUEUE_BASE_URL"):
        Queue(app)
    app = _app(tmp_path, "c", QUEUE_EXECUTOR="http", QUEUE_BASE_URL="https://ex.com/")
    SQLAlchemy(app)
    Queue(app)
    assert app.extensions["queue"].config.invoke_url == "https://ex.com/_queue/invoke"


def test_durations_in_config_take_delay_forms(tmp_path: Any) -> None:
    app = _app(tmp_path, QUEUE_LEASE="20 minutes", QUEUE_PRODUCE_INTERVAL=2.5)
    SQLAlchemy(app)
    Queue(app)
    config = app.extensions["queue"].config
    assert config.lease.total_seconds() == 1200
    assert config.produce_interval.total_seconds() == 2.5


def test_no_app_context_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="app context"):
        Queue().enqueue("x", 1)


def test_one_queue_serves_two_apps_with_two_databases(
    tmp_path: Any, clock: Clock, db_url: str
) -> None:
    queue = Queue(clock=clock)
    seen: list[tuple[str, Any]] = []

    @queue.handler("hello")
    def hello(job: Job[str]) -> None:
        from flask import current_app

        seen.append((current_app.name, job.payload))

    apps = []
    for name in ("left", "right"):
        app = _app(tmp_path, name)
        db = SQLAlchemy(app)
        queue.init_app(app)
        with app.app_context():
            db.create_all()
        apps.append(app)
    left, right = apps
    with left.app_context():
        hello.enqueue("to left", delay="1h")
        hello.enqueue("now left")
    with right.app_context():
        hello.enqueue("to right", delay="1h")
        assert [j.payload for j in queue.jobs()] == ["to right"]
    with left.app_context():
        assert [j.payload for j in queue.jobs()] == ["to left"]
    assert seen == [("left", "now left")]
    assert left.extensions["queue"].store.engine.url != right.extensions["queue"].store.engine.url


@pytest.mark.parametrize("csrf_first", [True, False], ids=["csrf-before-queue", "csrf-after-queue"])
def test_csrfprotect_exempts_machine_endpoints_in_either_init_order(
    tmp_path: Any, queue: Queue, clock: Clock, recorder: Recorder, csrf_first: bool
) -> None:
    from flask_wtf.csrf import CSRFProtect

    from flask_queue.signing import sign_invoke

    app = _app(tmp_path)
    db = SQLAlchemy(app)
    csrf = CSRFProtect()
    if csrf_first:
        csrf.init_app(app)
    queue.init_app(app)
    if not csrf_first:
        csrf.init_app(app)
    app.debug = True  # opens the dashboard, so only CSRF can refuse its POST
    client = app.test_client()
    with app.app_context():
        db.create_all()
        queue.enqueue("echo", "via invoke", delay="1s")
        clock.advance(1)
        state = app.extensions["queue"]
        (job,) = state.store.claim(1, state.config.lease)
        body = sign_invoke(state.config.secret_keys, job.id, job.attempt)
        response = client.post("/_queue/invoke", data=body)
        assert response.status_code == 200, response.data
        assert recorder.calls == [("echo", "via invoke")]

        bearer = {"Authorization": f"Bearer {queue.produce_token()}"}
        response = client.post("/_queue/produce", headers=bearer)
        assert response.status_code == 200, response.data

        before = row_snapshot(app)
        refused = client.post("/_queue/bulk", data={"action": "delete"})
        assert refused.status_code == 400
        assert b"CSRF" in refused.data
        assert row_snapshot(app) == before
