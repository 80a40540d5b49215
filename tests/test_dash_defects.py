"""Issue 17: the dashboard's defects, each with the test that failed before its fix.

1. NUL in a search, a job URL or the queue filter (PostgreSQL refused it: a 500).
2. An out-of-range page key (an offset that overflows: a 500 everywhere).
3. Failed deliveries looked like success (``"claimed": 1`` while nothing ran).
4. The in-process scheduler waited for the first request (idle gunicorn: no crons).
5. Error lines cut at 120 characters in the failed list.
6. Snags: long custom ids, queue names broken mid-word, "Attempts 6" for a cron
   that succeeded six times, exact-only search, phone pages with no way back.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_queue import InvalidOptionError, Job, JobStatus, Queue
from tests.conftest import Clock, all_databases, row_snapshot
from tests.servers import REPO, Server, free_port, isolated_database


def _csrf(client: Any, path: str) -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "no CSRF token on the page"
    return match.group(1)


def _fail(queue: Queue, clock: Clock, name: str, payload: Any, **options: Any) -> Job[Any]:
    job = queue.enqueue(name, payload, delay="1s", retry=0, **options)
    clock.advance(1)
    queue.produce()
    stored = queue.get(job.id)
    assert stored is not None and stored.status is JobStatus.FAILED
    return stored


# --- 1. NUL in what the dashboard is asked for --------------------------------------


@all_databases
def test_nul_in_search_job_urls_and_queue_filter_is_not_found(
    debug_app: Flask, queue: Queue, clock: Clock
) -> None:
    failed = _fail(queue, clock, "boom", "x")
    before = row_snapshot(debug_app)
    client = debug_app.test_client()
    assert client.get("/_queue/search?q=a%00b").status_code == 404
    assert client.get(f"/_queue/search?q={failed.id}%00").status_code == 404
    for path in (f"/_queue/job/{failed.id}%00", f"/_queue/job/%00{failed.id}/payload.json"):
        response = client.get(path)
        assert response.status_code == 404, (path, response.status_code)
        assert "No job with id" in response.get_data(as_text=True)
    token = _csrf(client, f"/_queue/job/{failed.id}")
    response = client.post(f"/_queue/job/{failed.id}%00/retry", data={"csrf_token": token})
    assert response.status_code == 404, response.status_code
    # A queue filter nobody has: an empty list, as for any unknown queue.
    for status in ("failed", "scheduled"):
        response = client.get(f"/_queue/jobs/{status}?queue=boom%00")
        assert response.status_code == 200, response.status_code
        assert f"/_queue/job/{failed.id}" not in response.get_data(as_text=True)
    response = client.post(
        "/_queue/bulk", data={"csrf_token": token, "action": "retry", "queue": "boom\x00"}
    )
    assert response.status_code == 303, response.status_code
    assert row_snapshot(debug_app) == before


def test_a_queue_name_with_nul_is_refused_like_a_custom_id() -> None:
    # No stored name may hold NUL (PostgreSQL cannot store it), so none is looked up.
    with pytest.raises(InvalidOptionError, match="NUL"):
        Queue().handler("tick\x00tock")


# --- 2. Page keys out of range ------------------------------------------------------


@all_databases
@pytest.mark.parametrize(
    "key",
    [
        "9999-12-31T23:59:59-01:00~0",  # past year 9999 in UTC
        "0001-01-01T00:00:00+01:00~0",  # before year 1 in UTC
        "99999-01-01T00:00:00~0",
        "2026-13-01T00:00:00~0",
        "2026-03-01T12:00:00+00:00~a\x00b",
    ],
)
def test_an_out_of_range_page_key_is_a_400_that_says_so(
    debug_app: Flask, queue: Queue, key: str
) -> None:
    queue.enqueue("echo", 1, delay="1h")
    client = debug_app.test_client()
    for arg in ("after", "before"):
        response = client.get(f"/_queue/jobs/scheduled?{arg}={quote(key)}")
        assert response.status_code == 400, (arg, response.status_code)
        html = response.get_data(as_text=True)
        assert "Invalid page key" in html
        assert 'href="/_queue/jobs/scheduled"' in html  # the way back to the first page


# --- 3. Failed deliveries -----------------------------------------------------------


@all_databases
def test_produce_counts_deliveries_that_failed_and_the_dashboard_says_so(
    make_app: Any, queue: Queue, clock: Clock
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    app = make_app(queue, QUEUE_EXECUTOR="http", QUEUE_BASE_URL=closed)
    app.debug = True
    with app.app_context():
        queue.enqueue("echo", "x", delay="1s")
        clock.advance(1)
        result = queue.produce()
        assert (result.claimed, result.failed_deliveries) == (1, 1)
        assert result.as_dict()["failed_deliveries"] == 1
        assert f"could not reach {closed}/_queue/invoke" in result.as_dict()["delivery_error"]
        client = app.test_client()
        token = {"Authorization": f"Bearer {queue.produce_token()}"}
        answer = client.get("/_queue/produce", headers=token).get_json()
        assert (answer["claimed"], answer["failed_deliveries"]) == (1, 1)
        produced = app.test_cli_runner().invoke(args=["queue", "produce"])
        assert produced.exit_code == 0
        assert '"failed_deliveries": 1' in produced.output
        assert "1 of 1 deliveries failed" in produced.output
        from flask_queue.worker import produce_loop

        lines: list[str] = []
        stop = threading.Event()
        produce_loop(queue, 0.01, stop=stop, report=lambda line: (lines.append(line), stop.set()))
        assert lines == [
            f"claimed 1 job(s), 1 could not be delivered: could not reach {closed}/_queue/invoke:"
            " [Errno 111] Connection refused"
        ]
        page = client.get("/_queue/").get_data(as_text=True)
        assert 'class="banner' in page and "Deliveries are failing" in page
        assert f"could not reach {closed}/_queue/invoke" in page
        metrics = client.get("/_queue/metrics", headers=token).get_data(as_text=True)
        assert "flask_queue_delivery_failures_total 4.0" in metrics
        # Failures long past are no banner.
        clock.advance(minutes=10)
        assert "Deliveries are failing" not in client.get("/_queue/").get_data(as_text=True)


def test_a_wrong_base_url_through_a_real_server(db_url: str, tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    with isolated_database(db_url, tmp_path) as url:
        server = Server(url, QUEUE_BASE_URL=closed, QUEUE_DASHBOARD_AUTH="admin:pw").start()
        try:
            server.enqueue("record", "lost", delay="1ms")
            time.sleep(0.05)
            answer = server.ping()
            assert answer["claimed"] == 1 and answer["failed_deliveries"] == 1, answer
            assert closed in answer["delivery_error"]
            assert server.runs() == []  # nothing ran
            page = _get(server, "/_queue/", "admin:pw")
            assert "Deliveries are failing" in page and closed in page, page[-3000:]
        finally:
            server.stop()


def _get(server: Server, path: str, user: str) -> str:
    import base64
    import urllib.request

    auth = "Basic " + base64.b64encode(user.encode()).decode()
    request = urllib.request.Request(server.base + path, headers={"Authorization": auth})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read().decode()  # type: ignore[no-any-return]


# --- 4. The in-process scheduler starts with the serving process --------------------

APP_MODULE = """
import os
from pathlib import Path

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_queue import Job, Queue

db = SQLAlchemy()
queue = Queue()
OUT = Path(os.environ["PROBE_OUT"])


@queue.handler("touch")
def touch(job: Job[str]) -> None:
    (OUT / f"ran-{job.payload}").write_text(str(os.getpid()))


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI=os.environ["PROBE_DB"],
        SECRET_KEY="probe",
        QUEUE_SCHEDULER=True,
        QUEUE_EXECUTOR="thread",
        QUEUE_PRODUCE_INTERVAL="0.2s",
    )
    db.init_app(app)
    queue.init_app(app)
    with app.app_context():
        db.create_all()
    (OUT / f"booted-{os.getpid()}").write_text("")

    @app.cli.command("probe")
    def probe() -> None:
        print("scheduler:", app.extensions["queue"].scheduler)

    return app
"""


def _probe_module(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    (tmp_path / "probe_app.py").write_text(APP_MODULE)
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ)
    env.update(
        PROBE_OUT=str(out),
        PROBE_DB=f"sqlite:///{tmp_path / 'probe.db'}",
        PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}",
    )
    env.pop("WERKZEUG_RUN_MAIN", None)
    return out, env


def _wait_for(check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    return check()


@pytest.mark.parametrize("preload", [False, True], ids=["per-worker", "preload"])
def test_scheduler_runs_due_jobs_under_gunicorn_without_any_request(
    tmp_path: Path, preload: bool
) -> None:
    out, env = _probe_module(tmp_path)
    # The tables first, once: two workers' db.create_all() at once on one SQLite
    # file race (one fails with "table already exists" and the worker dies).
    subprocess.run(
        [sys.executable, "-c", "import probe_app; probe_app.create_app()"],
        cwd=tmp_path,
        env=env,
        check=True,
        timeout=60,
    )
    for booted in out.glob("booted-*"):
        booted.unlink()
    port = free_port()
    args = [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}"]
    args += ["--preload"] if preload else []
    log = (tmp_path / "gunicorn.log").open("wb")
    proc = subprocess.Popen(
        [*args, "probe_app:create_app()"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        booted = _wait_for(lambda: len(list(out.glob("booted-*"))) >= (1 if preload else 2), 8)
        assert booted, (tmp_path / "gunicorn.log").read_text()
        # Enqueued from here, straight into the table: no request reaches the server.
        writer = Flask("writer")
        writer.config.update(SQLALCHEMY_DATABASE_URI=env["PROBE_DB"], SECRET_KEY="probe")
        from flask_sqlalchemy import SQLAlchemy

        db = SQLAlchemy()
        db.init_app(writer)
        q = Queue()
        q.handler("touch")(lambda job: None)
        q.init_app(writer)
        with writer.app_context():
            q.enqueue("touch", "later", delay="0.5s")
        ran = _wait_for(lambda: (out / "ran-later").exists(), 8)
        assert ran, "the due job never ran: " + (tmp_path / "gunicorn.log").read_text()[-2000:]
        with writer.app_context():
            db.engine.dispose()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
        log.close()


def test_scheduler_does_not_start_in_cli_commands(tmp_path: Path) -> None:
    _, env = _probe_module(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "probe_app:create_app", "probe"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "scheduler: None" in done.stdout


@pytest.mark.parametrize(
    ("reload", "child", "starts"),
    [(True, False, False), (True, True, True), (False, False, True), (None, False, False)],
    ids=["reloader-parent", "reloader-child", "no-reloader", "debug-default-parent"],
)
def test_scheduler_starts_in_the_process_flask_run_serves_from(
    make_app: Any, monkeypatch: pytest.MonkeyPatch, reload: Any, child: bool, starts: bool
) -> None:
    import click
    from flask.cli import run_command

    monkeypatch.setenv("FLASK_DEBUG", "1")
    if child:
        monkeypatch.setenv("WERKZEUG_RUN_MAIN", "true")
    else:
        monkeypatch.delenv("WERKZEUG_RUN_MAIN", raising=False)
    with click.Context(run_command, info_name="run") as ctx:
        ctx.params = {"reload": reload}
        app = make_app(Queue(), QUEUE_SCHEDULER=True, TESTING=False)
    scheduler = app.extensions["queue"].scheduler
    assert (scheduler is not None) is starts
    if scheduler is not None:
        assert scheduler.running


# --- 5. Error lines in full ---------------------------------------------------------

#: An error whose end names what went wrong: the key, past character 120.
LONG_ERROR = (
    "the gateway refused the charge for booking 9921 after three attempts; retry later or"
    " ask the customer for another card; idempotency key="
)
TAIL = "idem_5f2c9d3e8a7b41f0aa"


@all_databases
def test_failed_list_shows_the_whole_error_line_and_the_job_page_all_of_it(
    debug_app: Flask, queue: Queue, clock: Clock
) -> None:
    @queue.handler("charge")
    def charge(job: Job[str]) -> None:
        raise RuntimeError(job.payload)

    failed = _fail(queue, clock, "charge", LONG_ERROR + TAIL)
    longer = _fail(queue, clock, "charge", "x" * 300 + " " + TAIL + "-end")
    client = debug_app.test_client()
    html = client.get("/_queue/jobs/failed").get_data(as_text=True)
    assert TAIL in html  # it was cut at 120 characters, before the key
    # The stored line keeps 255 characters; a longer one says it is cut.
    assert "full error on the job page" in html
    page = client.get(f"/_queue/job/{longer.id}").get_data(as_text=True)
    whole = re.search(r'<p class="error-full">(.*?)</p>', page, re.S)
    assert whole, "no whole error line on the job page"
    assert whole.group(1).strip() == "RuntimeError: " + "x" * 300 + " " + TAIL + "-end"
    page = client.get(f"/_queue/job/{failed.id}").get_data(as_text=True)
    assert f"RuntimeError: {LONG_ERROR}{TAIL}</p>" in page


def test_the_whole_error_is_the_end_of_the_traceback_or_the_whole_reason() -> None:
    from datetime import datetime, timezone

    from flask_queue import present

    def job(reason: str, error: str | None = None) -> Job[Any]:
        now = datetime(2026, 1, 1, tzinfo=timezone.utc)
        return Job(
            id="j",
            queue="q",
            payload=None,
            run_at=now,
            status=JobStatus.FAILED,
            reason=reason,
            error=error,
        )

    traceback = (
        "Traceback (most recent call last):\n"
        '  File "/srv/app.py", line 3, in run\n'
        "    cursor.execute(sql)\n"
        "    ^^^^^^^^^^^^^^^^^^^\n"
        'psycopg.errors.SyntaxError: syntax error at or near "SELEC"\n'
        "LINE 1: SELEC 1\n"
        "        ^\n"
    )
    assert present.error_text(job(traceback)) == (
        'psycopg.errors.SyntaxError: syntax error at or near "SELEC"\nLINE 1: SELEC 1\n        ^'
    )
    refusal = "The invoke request to http://x/_queue/invoke was refused with HTTP 404: ..."
    assert present.error_text(job(refusal)) == refusal
    assert present.error_text(job("", error="ValueError: v")) == "ValueError: v"


# --- 6. Snags -----------------------------------------------------------------------

LONG_ID = ("order_2024_" + "9f86d081884c7d659a2feaa0c55ad015" * 8)[:255]


def test_a_long_custom_id_is_one_line_with_the_whole_id_in_its_title(
    debug_app: Flask, queue: Queue
) -> None:
    queue.enqueue("echo", 1, delay="1h", id=LONG_ID)
    html = debug_app.test_client().get("/_queue/jobs/scheduled").get_data(as_text=True)
    assert f'<div class="muted small id-extra clip-line" title="{LONG_ID}">' in html


def test_queue_names_break_at_their_separators(make_app: Any, clock: Clock) -> None:
    q = Queue(clock=clock)
    name = "tenant.acme_eu-west:billing/invoices"
    q.handler(name)(lambda job: None)
    app = make_app(q)
    app.debug = True
    with app.app_context():
        q.enqueue(name, 1, delay="1h")
    client = app.test_client()
    broken = "tenant.<wbr>acme_<wbr>eu-<wbr>west:<wbr>billing/<wbr>invoices"
    for path in ("/_queue/", "/_queue/jobs/scheduled", f"/_queue/jobs/scheduled?queue={name}"):
        assert broken in client.get(path).get_data(as_text=True), path


@all_databases
def test_a_cron_that_succeeded_six_times_shows_runs_and_failures_apart(
    debug_app: Flask, queue: Queue, clock: Clock
) -> None:
    cron = queue.enqueue("echo", "tick", every="1m")
    for _ in range(6):
        clock.advance(60)
        queue.produce()
    stored = queue.get(cron.id)
    assert stored is not None and (stored.attempt, stored.count, stored.errors) == (6, 6, 0)
    client = debug_app.test_client()
    html = client.get("/_queue/jobs/scheduled").get_data(as_text=True)
    assert '<th scope="col">Attempts</th>' not in html
    assert '<th scope="col">Runs</th>' in html
    assert re.search(r'data-label="Runs">6 runs<span class="muted"> · no failures</span>', html)
    page = client.get(f"/_queue/job/{cron.id}").get_data(as_text=True)
    assert "<dt>Attempts</dt>" not in page
    assert re.search(r"<dt>Runs</dt><dd>6 started · 6 done</dd>", page)
    assert re.search(r"<dt>Failures</dt><dd>none</dd>", page)
    # A failing one says how many of its runs failed.
    flaky = queue.enqueue("boom", "x", delay="1s")
    clock.advance(1)
    queue.produce()
    html = client.get("/_queue/jobs/scheduled").get_data(as_text=True)
    assert re.search(r'data-label="Runs">1 run<span class="bad"> · 1 failed</span>', html)
    page = client.get(f"/_queue/job/{flaky.id}").get_data(as_text=True)
    assert re.search(r'<dt>Failures</dt><dd><span class="bad">1 in a row</span>', page)


@all_databases
def test_search_finds_a_prefix_of_an_id_or_a_custom_id(debug_app: Flask, queue: Queue) -> None:
    jobs = queue.enqueue_many("echo", list(range(30)), delay="1h")
    for cid in ("invoice-2024-001", "invoice-2024-002", "invoice-2025-001", "a_b%c", "axbyc"):
        queue.enqueue("echo", cid, delay="1h", id=cid)
    client = debug_app.test_client()

    def found(q: str) -> Any:
        return client.get(f"/_queue/search?q={quote(q)}")

    # A unique prefix of an id goes to the job (ids share their first, time, digits).
    target = jobs[-1]
    prefix = next(
        target.id[:n]
        for n in range(1, 27)
        if sum(j.id.startswith(target.id[:n]) for j in jobs) == 1
    )
    response = found(prefix)
    assert response.status_code == 302 and response.headers["Location"].endswith(target.id)
    response = found(prefix.upper())  # ids are lower case; a pasted upper case one still finds
    assert response.status_code == 302 and response.headers["Location"].endswith(target.id)
    # Several matches: a list of them.
    response = found("invoice-2024")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "invoice-2024-001" in html and "invoice-2024-002" in html
    assert "invoice-2025-001" not in html
    # % and _ are plain characters, not patterns.
    response = found("a_b%")
    assert response.status_code == 302
    assert queue.get_by_custom_id("a_b%c").id in response.headers["Location"]  # type: ignore[union-attr]
    assert found("a%").status_code == 404
    assert found("a_").status_code == 302  # only "a_b%c", not "axbyc"
    # An exact custom id still wins over the longer ones it is a prefix of.
    queue.enqueue("echo", "short", delay="1h", id="invoice-2024")
    response = found("invoice-2024")
    exact = queue.get_by_custom_id("invoice-2024")
    assert response.status_code == 302 and exact is not None
    assert response.headers["Location"].endswith(exact.id)
    assert found("nothing-like-it").status_code == 404


@all_databases
def test_prefix_search_reads_an_index(debug_app: Flask, queue: Queue) -> None:
    queue.enqueue_many("echo", list(range(3000)), delay="1h")
    for i in range(50):
        queue.enqueue("echo", i, delay="1h", id=f"ab{i:04d}")
    store = debug_app.extensions["queue"].store
    table = store.table.name
    with store.engine.begin() as c:
        if store.dialect == "postgresql":
            c.execute(sa.text(f"ANALYZE {table}"))
        elif store.dialect == "mysql":
            c.execute(sa.text(f"ANALYZE TABLE {table}"))
        else:
            c.execute(sa.text("ANALYZE"))
    plans = []
    for statement in store.search_statements("ab00", 21):
        compiled = statement.compile(dialect=store.engine.dialect)
        params: Any = compiled.params
        if compiled.positiontup is not None:
            params = tuple(compiled.params[k] for k in compiled.positiontup)
        explain = {
            "postgresql": "EXPLAIN ",
            "mysql": "EXPLAIN ",
            "sqlite": "EXPLAIN QUERY PLAN ",
        }[store.dialect]
        with store.engine.connect() as c:
            rows = c.exec_driver_sql(explain + compiled.string, params).fetchall()
        plans.append(" | ".join(" ".join(str(v) for v in r) for r in rows))
    id_plan, custom_plan = plans
    if store.dialect == "postgresql":
        assert f"{table}_pkey" in id_plan, id_plan
        assert f"ix_{table}_custom_id" in custom_plan, custom_plan
        assert "Seq Scan" not in id_plan + custom_plan
    elif store.dialect == "mysql":
        assert "PRIMARY" in id_plan and "range" in id_plan, id_plan
        assert f"ix_{table}_custom_id" in custom_plan and "range" in custom_plan, custom_plan
    else:
        assert "USING PRIMARY KEY" in id_plan or "sqlite_autoindex" in id_plan, id_plan
        assert f"USING INDEX ix_{table}_custom_id (custom_id>? AND custom_id<?)" in custom_plan


@all_databases
def test_pages_go_back_as_well_as_forward(debug_app: Flask, queue: Queue, clock: Clock) -> None:
    jobs = queue.enqueue_many("echo", list(range(120)), delay="1h")
    ids = sorted(j.id for j in jobs)
    client = debug_app.test_client()

    def page(path: str) -> tuple[list[str], list[str], dict[str, str]]:
        """Every row's id, the ids a phone shows, and the pagers' links."""
        html = client.get(path).get_data(as_text=True)
        rows = re.findall(
            r'<tr( class="wide-only")?>\s*<td data-label="Job" class="job-id">'
            r'<a href="/_queue/job/([0-9a-z]{26})"',
            html,
        )
        links = {}
        for kind, nav in re.findall(
            r'<nav class="pager pager-(wide|phone)"[^>]*>(.*?)</nav>', html, re.S
        ):
            for name, href in re.findall(r'data-page="(\w+)"[^>]*href="([^"]+)"', nav):
                links[name + ("-phone" if kind == "phone" else "")] = href.replace("&amp;", "&")
        return [i for _, i in rows], [i for wide, i in rows if not wide], links

    # Phones see 20 a page, wider screens 50; both can go forward and back.
    every, phone, links = page("/_queue/jobs/scheduled")
    assert (every, phone) == (ids[:50], ids[:20])
    assert "previous" not in links and "first" not in links
    _, phone2, phone_links = page(links["next-phone"])
    assert phone2 == ids[20:40]
    assert page(phone_links["previous-phone"])[1] == ids[:20]
    every2, _, links2 = page(links["next"])
    assert every2 == ids[50:100]
    every_back, _, _ = page(links2["previous"])
    assert every_back == ids[:50]
    every3, _, links3 = page(links2["next"])
    assert every3 == ids[100:] and "next" not in links3
    every_back, phone_back, _ = page(links3["previous"])
    assert every_back == ids[50:100] and phone_back == ids[80:100]
    assert page(links3["first"])[0] == ids[:50]
