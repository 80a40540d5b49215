"""The dashboard through the test client: guard, CSRF, pages, actions, escaping."""

from __future__ import annotations

import base64
import re
from typing import Any

import pytest
from flask import Flask

from flask_queue import Job, JobStatus, Queue
from tests.conftest import Clock, all_databases, row_snapshot

XSS = "<script>window.__pwned=1</script>"


def _csrf(client: Any, path: str) -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "no CSRF token on the page"
    return match.group(1)


def _failed(queue: Queue, clock: Clock, payload: Any = "x", name: str = "boom") -> Job[Any]:
    job = queue.enqueue(name, payload, delay="1s", retry=0)
    clock.advance(1)
    queue.produce()
    stored = queue.get(job.id)
    assert stored is not None and stored.status is JobStatus.FAILED
    return stored


def test_closed_without_debug_or_guard(app: Flask) -> None:
    client = app.test_client()
    for path in ["/_queue/", "/_queue/jobs/failed", "/_queue/job/x", "/_queue/search?q=x"]:
        response = client.get(path)
        assert response.status_code == 403, path
        assert b"closed" in response.data
        assert b"<html" not in response.data
    # The machine endpoints keep their own checks and are not behind the guard.
    assert client.get("/_queue/produce").status_code == 401
    assert client.post("/_queue/invoke", data=b"").status_code == 401


def test_callback_guard(make_app: Any, queue: Queue) -> None:
    allowed = {"yes": False}
    queue.dashboard_auth(lambda: allowed["yes"])
    app = make_app(queue)
    client = app.test_client()
    assert client.get("/_queue/").status_code == 403
    allowed["yes"] = True
    assert client.get("/_queue/").status_code == 200


def test_basic_auth_guard(make_app: Any, queue: Queue) -> None:
    app = make_app(queue, QUEUE_DASHBOARD_AUTH="admin:s3cret")
    client = app.test_client()
    response = client.get("/_queue/")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    wrong = base64.b64encode(b"admin:nope").decode()
    assert client.get("/_queue/", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
    right = base64.b64encode(b"admin:s3cret").decode()
    page = client.get("/_queue/", headers={"Authorization": f"Basic {right}"})
    assert page.status_code == 200
    assert b"s3cret" not in page.data


def test_security_headers_and_no_inline_script(debug_app: Flask) -> None:
    response = debug_app.test_client().get("/_queue/")
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    html = response.get_data(as_text=True)
    assert "<script>" not in html and " style=" not in html and "onclick" not in html
    assert debug_app.config["SECRET_KEY"] not in html


@all_databases
def test_overview_counts_and_failures(debug_app: Flask, queue: Queue, clock: Clock) -> None:
    queue.enqueue_many("echo", [1, 2, 3], delay="1h")
    _failed(queue, clock)
    html = debug_app.test_client().get("/_queue/").get_data(as_text=True)
    assert "RuntimeError" in html  # failures grouped by exception type
    assert 'href="/_queue/jobs/scheduled?queue=echo">3</a>' in html
    assert 'href="/_queue/jobs/failed?queue=boom">1</a>' in html


@all_databases
def test_lists_filter_search_and_keyset_pages(debug_app: Flask, queue: Queue) -> None:
    jobs = queue.enqueue_many("echo", list(range(120)), delay="1h")
    queue.enqueue("flaky", "other", delay="1h", id="custom-7")
    client = debug_app.test_client()
    seen: list[str] = []
    path: str | None = "/_queue/jobs/scheduled?queue=echo"
    pages = 0
    while path:
        html = client.get(path).get_data(as_text=True)
        seen += re.findall(r'href="/_queue/job/([0-9a-z]{26})"', html)
        nxt = re.search(r'rel="next" href="([^"]+)"', html)
        path = nxt.group(1).replace("&amp;", "&") if nxt else None
        pages += 1
    assert pages == 3
    # Every job once, in (run_at, id) order (one run_at here), none from "flaky".
    assert seen == sorted(j.id for j in jobs)
    found = client.get("/_queue/search?q=custom-7")
    assert found.status_code == 302 and "/_queue/job/" in found.headers["Location"]
    assert client.get("/_queue/search?q=nothing-here").status_code == 404
    assert client.get("/_queue/jobs/bogus").status_code == 404


@all_databases
def test_job_page_shows_payload_reason_schedule(
    debug_app: Flask, queue: Queue, clock: Clock
) -> None:
    cron = queue.enqueue(
        "echo", {"password": "hunter2", "n": 1}, cron="0 9 * * 1-5", tz="Europe/Paris"
    )
    html = debug_app.test_client().get(f"/_queue/job/{cron.id}").get_data(as_text=True)
    assert "At 09:00 AM, Monday through Friday (Europe/Paris)" in html
    assert "hunter2" not in html and "&#34;n&#34;: 1" in html
    assert html.count("<li><time") == 5  # next runs
    failed = _failed(queue, clock, payload="p")
    html = debug_app.test_client().get(f"/_queue/job/{failed.id}").get_data(as_text=True)
    assert "RuntimeError: boom p" in html and "Traceback" in html


@all_databases
def test_payload_and_reason_are_escaped(debug_app: Flask, queue: Queue, clock: Clock) -> None:
    job = _failed(queue, clock, payload=XSS)
    client = debug_app.test_client()
    for path in [f"/_queue/job/{job.id}", "/_queue/jobs/failed", "/_queue/"]:
        html = client.get(path).get_data(as_text=True)
        assert XSS not in html, path
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in client.get(
        f"/_queue/job/{job.id}"
    ).get_data(as_text=True)


@all_databases
def test_actions_need_csrf_and_change_nothing_without(
    debug_app: Flask, queue: Queue, clock: Clock
) -> None:
    failed = _failed(queue, clock)
    client = debug_app.test_client()
    before = row_snapshot(debug_app)
    for path, data in [
        (f"/_queue/job/{failed.id}/retry", {}),
        (f"/_queue/job/{failed.id}/delete", {"csrf_token": "forged"}),
        ("/_queue/bulk", {"action": "delete"}),
    ]:
        response = client.post(path, data=data)
        assert response.status_code == 400, path
        assert b"CSRF" in response.data
    assert row_snapshot(debug_app) == before
    # No state change on GET either.
    assert client.get(f"/_queue/job/{failed.id}/retry").status_code == 405
    assert row_snapshot(debug_app) == before


@all_databases
def test_retry_run_now_delete_actions(debug_app: Flask, queue: Queue, clock: Clock) -> None:
    failed = _failed(queue, clock)
    later = queue.enqueue("echo", "later", delay="1 day")
    client = debug_app.test_client()
    token = _csrf(client, f"/_queue/job/{failed.id}")
    response = client.post(f"/_queue/job/{failed.id}/retry", data={"csrf_token": token})
    assert response.status_code == 303
    assert queue.get(failed.id).status is JobStatus.SCHEDULED  # type: ignore[union-attr]
    # Retrying a job that is not FAILED is a conflict, and changes nothing.
    before = row_snapshot(debug_app)
    assert (
        client.post(f"/_queue/job/{later.id}/retry", data={"csrf_token": token}).status_code == 409
    )
    assert row_snapshot(debug_app) == before
    client.post(f"/_queue/job/{later.id}/run-now", data={"csrf_token": token})
    assert queue.get(later.id).run_at == clock()  # type: ignore[union-attr]
    client.post(f"/_queue/job/{later.id}/delete", data={"csrf_token": token})
    assert queue.get(later.id) is None
    assert client.post("/_queue/job/gone/delete", data={"csrf_token": token}).status_code == 404


@pytest.mark.parametrize(
    "target",
    [
        "https://evil.example/x",
        "http:/evil.example",
        "//evil.example",
        "///evil.example",
        "/\\evil.example",
        "\\\\evil.example",
        "/\t/evil.example",
        "/\n/evil.example",
        " //evil.example",
        "javascript:alert(1)",
        "evil.example",
        "",
    ],
)
def test_delete_redirects_only_within_the_site(debug_app: Flask, queue: Queue, target: str) -> None:
    job = queue.enqueue("echo", "x", delay="1h")
    client = debug_app.test_client()
    token = _csrf(client, f"/_queue/job/{job.id}")
    response = client.post(
        f"/_queue/job/{job.id}/delete", data={"csrf_token": token, "next": target}
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/_queue/"
    assert queue.get(job.id) is None


def test_delete_follows_a_same_site_next(debug_app: Flask, queue: Queue) -> None:
    job = queue.enqueue("echo", "x", delay="1h")
    client = debug_app.test_client()
    page = client.get(f"/_queue/job/{job.id}").get_data(as_text=True)
    # The job page's own delete form names where to go afterwards.
    assert 'name="next" value="/_queue/jobs/scheduled"' in page
    token = _csrf(client, f"/_queue/job/{job.id}")
    response = client.post(
        f"/_queue/job/{job.id}/delete",
        data={"csrf_token": token, "next": "/_queue/jobs/scheduled?queue=echo"},
    )
    assert response.status_code == 303
    assert response.headers["Location"] == "/_queue/jobs/scheduled?queue=echo"


@all_databases
def test_bulk_actions_follow_the_queue_filter(debug_app: Flask, queue: Queue, clock: Clock) -> None:
    boom = [_failed(queue, clock, payload=i) for i in range(3)]
    flaky = queue.enqueue("flaky", "f", delay="1s", retry=0)
    debug_app.extensions["queue"].queue.handlers["flaky"].func = lambda job: 1 / 0  # type: ignore[attr-defined]
    clock.advance(1)
    queue.produce()
    assert queue.get(flaky.id).status is JobStatus.FAILED  # type: ignore[union-attr]
    client = debug_app.test_client()
    token = _csrf(client, "/_queue/jobs/failed?queue=boom")
    client.post("/_queue/bulk", data={"csrf_token": token, "action": "retry", "queue": "boom"})
    assert {queue.get(j.id).status for j in boom} == {JobStatus.SCHEDULED}  # type: ignore[union-attr]
    assert queue.get(flaky.id).status is JobStatus.FAILED  # type: ignore[union-attr]
    client.post("/_queue/bulk", data={"csrf_token": token, "action": "delete"})
    assert queue.get(flaky.id) is None
    assert len(list(queue.jobs(status="SCHEDULED"))) == 3


def test_empty_states_say_what_to_do(debug_app: Flask) -> None:
    client = debug_app.test_client()
    assert "Enqueue a job" in client.get("/_queue/jobs/scheduled").get_data(as_text=True)
    assert "No failed jobs" in client.get("/_queue/jobs/failed").get_data(as_text=True)


def test_app_can_override_templates(tmp_path: Any, make_app: Any, queue: Queue) -> None:
    override = tmp_path / "templates" / "flask_queue"
    override.mkdir(parents=True)
    (override / "index.html").write_text(
        '{% extends "flask_queue/base.html" %}{% block content %}OUR OWN OVERVIEW{% endblock %}'
    )
    app = make_app(queue)
    app.template_folder = str(tmp_path / "templates")
    app.debug = True
    html = app.test_client().get("/_queue/").get_data(as_text=True)
    assert "OUR OWN OVERVIEW" in html
    assert "flask_queue" in html  # the shipped base template still frames it


def test_csrfprotect_app_still_accepts_invoke_and_produce(
    db_url: str, queue: Queue, clock: Clock
) -> None:
    from flask_sqlalchemy import SQLAlchemy
    from flask_wtf.csrf import CSRFProtect

    from flask_queue.signing import sign_invoke

    app = Flask("csrf_app")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=db_url,
        SECRET_KEY="k",
        QUEUE_EXECUTOR="inline",
        QUEUE_TABLE_NAME="qj_csrf",
    )
    db = SQLAlchemy(app)
    CSRFProtect(app)
    queue.init_app(app)
    app.debug = True
    with app.app_context():
        db.create_all()
        try:
            queue.enqueue("echo", 1, delay="1s")
            clock.advance(1)
            (job,) = app.extensions["queue"].store.claim(1, app.extensions["queue"].config.lease)
            client = app.test_client()
            body = sign_invoke(app.extensions["queue"].config.secret_keys, job.id, job.attempt)
            assert client.post("/_queue/invoke", data=body).status_code == 200
            token = f"Bearer {queue.produce_token()}"
            assert (
                client.post("/_queue/produce", headers={"Authorization": token}).status_code == 200
            )
            assert client.post("/_queue/bulk", data={"action": "delete"}).status_code == 400
        finally:
            db.drop_all()


@all_databases
def test_overview_pauses_and_resumes_a_queue_with_csrf(
    make_app: Any, queue: Queue, clock: Clock
) -> None:
    @queue.handler("gateway", concurrency=3, rate="10/s")
    def gateway(job: Job[Any]) -> None:
        return None

    app = make_app(queue)
    app.debug = True
    with app.app_context():
        queue.produce()  # stores the declared limits
        queue.enqueue_many("echo", [1, 2], delay="1s")
        clock.advance(1)
        client = app.test_client()
        page = client.get("/_queue/").get_data(as_text=True)
        assert "3 at once, 10 per 1 second" in page
        # Without a token: refused, nothing paused.
        assert client.post("/_queue/queues/echo/pause").status_code == 400
        assert queue.queue_settings().get("echo") is None
        token = _csrf(client, "/_queue/")
        response = client.post("/_queue/queues/echo/pause", data={"csrf_token": token})
        assert response.status_code == 303
        assert queue.queue_settings()["echo"]["paused"] is True
        assert queue.produce().claimed == 0
        page = client.get("/_queue/").get_data(as_text=True)
        row = re.search(r"<tr class=\"paused\">.*?</tr>", page, re.S)
        assert row is not None and "<code>echo</code>" in row.group(0)
        assert ">2</td>" in row.group(0)  # two due jobs held back by the pause
        assert "Resume" in row.group(0)
        response = client.post("/_queue/queues/echo/resume", data={"csrf_token": token})
        assert response.status_code == 303
        assert queue.produce().claimed == 2
        unknown = client.post("/_queue/queues/nope/pause", data={"csrf_token": token})
        assert unknown.status_code == 404


def test_job_page_shows_a_priority(debug_app: Flask, queue: Queue) -> None:
    job = queue.enqueue("echo", "x", delay="1h", priority=7)
    page = debug_app.test_client().get(f"/_queue/job/{job.id}").get_data(as_text=True)
    assert "<dt>Priority</dt><dd>7 " in page


@all_databases
def test_a_read_only_guard_shows_everything_and_changes_nothing(
    make_app: Any, queue: Queue, clock: Clock
) -> None:
    role = {"value": "read"}
    queue.dashboard_auth(lambda: role["value"])
    app = make_app(queue)
    with app.app_context():
        failed = _failed(queue, clock)
        client = app.test_client()
        for path in ("/_queue/", f"/_queue/job/{failed.id}", "/_queue/jobs/failed"):
            page = client.get(path)
            assert page.status_code == 200, path
            assert 'method="post"' not in page.get_data(as_text=True), path
        assert failed.id in client.get("/_queue/jobs/failed").get_data(as_text=True)
        # A token from a page a writer saw does not help a reader.
        role["value"] = "write"
        token = _csrf(client, f"/_queue/job/{failed.id}")
        role["value"] = "read"
        before = row_snapshot(app)
        for path, data in [
            (f"/_queue/job/{failed.id}/retry", {"csrf_token": token}),
            (f"/_queue/job/{failed.id}/delete", {"csrf_token": token}),
            ("/_queue/bulk", {"action": "delete", "csrf_token": token}),
            ("/_queue/queues/echo/pause", {"csrf_token": token}),
        ]:
            response = client.post(path, data=data)
            assert response.status_code == 403, path
            assert b"Read-only" in response.data
        assert row_snapshot(app) == before
        assert queue.queue_settings() == {}
        role["value"] = "write"  # True works the same
        response = client.post(f"/_queue/job/{failed.id}/retry", data={"csrf_token": token})
        assert response.status_code == 303
        role["value"] = ""  # anything false: no access
        assert client.get("/_queue/").status_code == 403


@all_databases
def test_lists_read_no_payloads_and_only_the_end_of_reasons(
    debug_app: Flask, queue: Queue, clock: Clock
) -> None:
    import sqlalchemy as sa

    store = debug_app.extensions["queue"].store
    queue.enqueue("echo", {"blob": "p" * 200_000}, delay="1h")
    failed = _failed(queue, clock)
    # A 20,000-character reason whose last line names the exception, on a row
    # written before the error column (NULL there): the list reads its end.
    long_reason = "Traceback (most recent call last):\n" + "  frame\n" * 2500 + "KeyError: 'gone'"
    with store.engine.begin() as c:
        c.execute(
            sa.update(store.table)
            .where(store.table.c.id == failed.id)
            .values(reason=long_reason, error=None)
        )
    # A row of this release: its error line is what the list shows.
    newer = _failed(queue, clock)
    assert newer.error == "RuntimeError: boom x" and "Traceback" in (newer.reason or "")
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(store.engine, "before_cursor_execute", record)
    try:
        client = debug_app.test_client()
        scheduled = client.get("/_queue/jobs/scheduled").get_data(as_text=True)
        failed_page = client.get("/_queue/jobs/failed").get_data(as_text=True)
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", record)
    assert "p" * 1000 not in scheduled
    assert "KeyError: &#39;gone&#39;" in failed_page or "KeyError: 'gone'" in failed_page
    listing = [s for s in seen if "ORDER BY" in s and store.table.name in s]
    assert listing and all(f"{store.table.name}.payload" not in s for s in listing)
    assert "RuntimeError: boom x" in failed_page
    listed = {j.id: j for j in queue.jobs(status="FAILED", payloads=False)}
    assert listed[failed.id].payload is None and len(listed[failed.id].reason or "") <= 1000
    assert listed[newer.id].reason is None and listed[newer.id].history is None
    assert queue.get(failed.id).reason == long_reason  # type: ignore[union-attr]


def test_job_page_shows_an_excerpt_of_a_big_payload_and_offers_it_whole(
    debug_app: Flask, queue: Queue
) -> None:
    import json as _json

    payload = {"rows": ["r" * 100] * 2000, "api_token": "s3cret"}
    job = queue.enqueue("echo", payload, delay="1h")
    client = debug_app.test_client()
    page = client.get(f"/_queue/job/{job.id}").get_data(as_text=True)
    assert len(page) < 100_000
    assert "Download the whole payload" in page
    download = client.get(f"/_queue/job/{job.id}/payload.json")
    assert download.status_code == 200
    assert download.headers["Content-Disposition"].startswith("attachment")
    whole = _json.loads(download.get_data(as_text=True))
    assert whole["rows"] == payload["rows"]
    assert whole["api_token"] != "s3cret"  # masked like the page
    assert client.get("/_queue/job/nope/payload.json").status_code == 404


@all_databases
def test_failures_overview_groups_by_the_stored_error_line(
    debug_app: Flask, queue: Queue, clock: Clock
) -> None:
    import sqlalchemy as sa

    store = debug_app.extensions["queue"].store
    current = _failed(queue, clock)
    legacy = _failed(queue, clock, payload="y")
    long_reason = "Traceback (most recent call last):\n" + "  frame\n" * 5000 + "TimeoutError: slow"
    with store.engine.begin() as c:
        # A traceback that says otherwise: the overview must go by the error line.
        c.execute(
            sa.update(store.table).where(store.table.c.id == current.id).values(reason=long_reason)
        )
        # A row written before the error column: its traceback's end is read.
        c.execute(
            sa.update(store.table)
            .where(store.table.c.id == legacy.id)
            .values(reason=long_reason, error=None)
        )
    (_, tail), (_, line) = store.recent_failures(10)  # newest first
    assert line == "RuntimeError: boom x"
    assert tail.endswith("TimeoutError: slow") and len(tail) <= 1000
    page = debug_app.test_client().get("/_queue/").get_data(as_text=True)
    assert "<code>RuntimeError</code>" in page and "<code>TimeoutError</code>" in page


@pytest.mark.parametrize("granted", ["readonly", "Read", "viewer", "none", "false", b"read", 1])
def test_a_guard_value_that_is_no_known_role_gives_no_access(
    make_app: Any, queue: Queue, granted: Any, caplog: pytest.LogCaptureFixture
) -> None:
    queue.dashboard_auth(lambda: granted)
    app = make_app(queue)
    with app.app_context():
        client = app.test_client()
        assert client.get("/_queue/").status_code == 403
        assert client.post("/_queue/queues/echo/pause").status_code == 403
        assert queue.queue_settings() == {}
    assert "No access given" in caplog.text
