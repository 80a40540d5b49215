"""The dashboard's job control (issue 19): the Cancel button (POST, CSRF, refused
for the read-only role), the result on the job page, the Running list's start,
elapsed time and progress bar; in the test client and in real Chromium at 375 px
and 1,440 px."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from flask_queue import Job, JobStatus, Queue
from tests.servers import Server, isolated_database
from tests.test_browser import (  # noqa: F401 - browser is a fixture
    ARTIFACTS,
    _check_layout,
    _context,
    browser,
)


def _csrf(client: Any, path: str) -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, page[:500]
    return match.group(1)


def test_cancel_button_result_and_progress(debug_app: Flask, queue: Queue) -> None:
    client = debug_app.test_client()

    @queue.handler("answer")
    def answer(job: Job[Any]) -> dict[str, Any]:
        return {"rows": 3, "note": "<b>not html</b>"}

    later = queue.enqueue("echo", 1, delay="1h")
    page = client.get(f"/_queue/job/{later.id}").get_data(as_text=True)
    assert ">Cancel</button>" in page
    token = _csrf(client, f"/_queue/job/{later.id}")
    assert client.post(f"/_queue/job/{later.id}/cancel").status_code == 400  # no CSRF token
    assert queue.get(later.id).status is JobStatus.SCHEDULED  # type: ignore[union-attr]
    done = client.post(f"/_queue/job/{later.id}/cancel", data={"csrf_token": token})
    assert done.status_code == 303
    assert queue.get(later.id).status is JobStatus.CANCELLED  # type: ignore[union-attr]
    cancelled = client.get(f"/_queue/job/{later.id}").get_data(as_text=True)
    assert ">Retry</button>" in cancelled and ">Cancel</button>" not in cancelled
    listed = client.get("/_queue/jobs/cancelled").get_data(as_text=True)
    assert later.id in listed
    again = client.post(f"/_queue/job/{later.id}/cancel", data={"csrf_token": token})
    assert again.status_code == 409

    finished = queue.enqueue("answer", None)
    shown = client.get(f"/_queue/job/{finished.id}").get_data(as_text=True)
    assert "<h2>Result</h2>" in shown
    assert "&lt;b&gt;not html&lt;/b&gt;" in shown and "<b>not html</b>" not in shown

    # A running job's start, elapsed time and progress, as its beat wrote them.
    state = debug_app.extensions["queue"]
    running = queue.enqueue("echo", 2, delay="1s")
    queue.clock.advance(2)  # type: ignore[attr-defined]
    (claimed,) = state.store.claim_started(1, timedelta(minutes=5))
    state.store.mark_started([(claimed.id, claimed.attempt)])
    state.store.extend_leases(
        [(claimed.id, claimed.attempt)], timedelta(minutes=5), {claimed.id: '[0.4, "row 40"]'}
    )
    queue.clock.advance(90)  # type: ignore[attr-defined]
    rows = client.get("/_queue/jobs/running").get_data(as_text=True)
    assert 'progress max="1" value="0.4"' in rows and "40% · row 40" in rows
    assert "running 1 min" in rows
    job_page = client.get(f"/_queue/job/{running.id}").get_data(as_text=True)
    assert "40% · row 40" in job_page and ">Cancel</button>" in job_page


def test_read_only_role_cannot_cancel(make_app: Any, queue: Queue) -> None:
    app = make_app(queue, QUEUE_DASHBOARD_AUTH=lambda: True)
    roles = {"role": "read"}
    queue.dashboard_auth(lambda: "read" if roles["role"] == "read" else True)  # type: ignore[arg-type, return-value]
    client = app.test_client()
    with app.app_context():
        job = queue.enqueue("echo", 1, delay="1h")
    page = client.get(f"/_queue/job/{job.id}").get_data(as_text=True)
    assert ">Cancel</button>" not in page
    refused = client.post(f"/_queue/job/{job.id}/cancel", data={"csrf_token": "x"})
    assert refused.status_code == 403
    with app.app_context():
        assert queue.get(job.id).status is JobStatus.SCHEDULED  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def exporting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server running a long export that reports progress."""
    from example_app import create_app

    ARTIFACTS.mkdir(exist_ok=True)
    with isolated_database("sqlite://", tmp_path_factory.mktemp("jc")) as url:
        server = Server(
            url, QUEUE_DASHBOARD_AUTH="admin:pw", QUEUE_LEASE="0.6s", QUEUE_EXECUTOR="thread"
        ).start()
        try:
            reader = create_app(SQLALCHEMY_DATABASE_URI=url, QUEUE_SCHEDULER=False)
            yield {"server": server, "reader": reader}
        finally:
            server.stop()


@pytest.mark.parametrize("size", [(375, 812), (1440, 900)], ids=["375", "1440"])
def test_running_list_and_cancel_in_chromium(
    exporting: dict[str, Any],
    browser: Any,  # noqa: F811 - the fixture
    size: tuple[int, int],
) -> None:
    from example_app import queue

    server, reader = exporting["server"], exporting["reader"]
    job = server.enqueue("export", {"rows": 2000, "pause": 0.05})
    with reader.app_context():
        give_up = time.monotonic() + 20
        while not ((seen := queue.get(job["id"])) is not None and seen.progress):
            assert time.monotonic() < give_up, "no progress reported"
            time.sleep(0.05)
    context = _context(browser, size)
    page = context.new_page()
    try:
        page.goto(f"{server.base}/_queue/jobs/running")
        bar = page.locator(f"tr:has(a[href$='/job/{job['id']}']) progress")
        assert bar.is_visible()
        assert page.locator(f"tr:has(a[href$='/job/{job['id']}'])").inner_text().count("row ") == 1
        _check_layout(page, "issue19-running", size[0])
        page.goto(f"{server.base}/_queue/job/{job['id']}")
        _check_layout(page, "issue19-job-running", size[0])
        page.on("dialog", lambda dialog: dialog.accept())
        with page.expect_navigation():
            page.get_by_role("button", name="Cancel").click()
        page.wait_for_load_state("load")
        assert "Asked to stop" in page.locator(".flash").inner_text()
        with reader.app_context():
            assert queue.wait(job["id"], timeout="10s").status is JobStatus.CANCELLED
        page.reload()
        assert page.locator("h1 .badge").inner_text().upper() == "CANCELLED"
        _check_layout(page, "issue19-job-cancelled", size[0])
    finally:
        context.close()


@pytest.mark.parametrize("size", [(375, 812), (1440, 900)], ids=["375", "1440"])
def test_keys_at_their_limit_in_chromium(
    exporting: dict[str, Any],
    browser: Any,  # noqa: F811 - the fixture
    size: tuple[int, int],
) -> None:
    # One tenant's three syncs: one runs, two wait on its key; another tenant's
    # sync runs beside it. The overview lists the held tenant, phone or desktop.
    from example_app import queue

    server, reader = exporting["server"], exporting["reader"]
    tenant = f"tenant-{size[0]}-" + "long" * 20
    held = [server.enqueue("syncTenant", {"tenant": tenant, "seconds": 30}) for _ in range(3)]
    other = server.enqueue("syncTenant", {"tenant": f"other-{size[0]}", "seconds": 30})
    with reader.app_context():
        give_up = time.monotonic() + 20
        while queue.get(other["id"]).status is not JobStatus.RUNNING:  # type: ignore[union-attr]
            assert time.monotonic() < give_up, "the other tenant's sync never ran"
            time.sleep(0.05)
        statuses = sorted(queue.get(j["id"]).status.value for j in held)  # type: ignore[union-attr]
        assert statuses == ["RUNNING", "SCHEDULED", "SCHEDULED"]
    context = _context(browser, size)
    page = context.new_page()
    try:
        page.goto(f"{server.base}/_queue/")
        page.wait_for_load_state("load")
        row = page.locator("table.keys tr", has_text=tenant[:20])
        assert row.count() == 1
        assert row.locator("td[data-label='Held back']").inner_text().strip() == "2"
        _check_layout(page, "issue19-keys", size[0])
    finally:
        context.close()
        with reader.app_context():
            for job in [*held, other]:
                queue.cancel(job["id"])


@pytest.mark.parametrize("size", [(375, 812), (1440, 900)], ids=["375", "1440"])
def test_a_booking_flows_wait_sleep_and_events_in_chromium(
    exporting: dict[str, Any],
    browser: Any,  # noqa: F811 - the fixture
    size: tuple[int, int],
) -> None:
    # The example's booking flow charges, then waits for its confirmation: its
    # page says what it waits for; the confirmation's emit shows on the Events
    # page with the job it woke and the mail it started; the flow then sleeps
    # until a day before the stay, and its page lists the three records.
    from example_app import queue

    server, reader = exporting["server"], exporting["reader"]
    booking = size[0]
    flow = server.enqueue("bookingFlow", {"booking": booking})

    def history(length: int) -> Any:
        with reader.app_context():
            give_up = time.monotonic() + 20
            while not (
                (seen := queue.get(flow["id"])) is not None and len(seen.history or ()) >= length
            ):
                assert time.monotonic() < give_up, "the flow did not get there"
                time.sleep(0.05)
            return seen

    assert history(1).status is JobStatus.SCHEDULED
    context = _context(browser, size)
    page = context.new_page()
    try:
        page.goto(f"{server.base}/_queue/job/{flow['id']}")
        assert page.locator("p.waiting").is_visible()
        assert "booking.confirmed" in page.locator("p.waiting").inner_text()
        assert page.locator("table.steps tbody tr").count() == 1
        _check_layout(page, "issue20-waiting", size[0])

        emitted = server.emit("booking.confirmed", {"booking": booking}, f"confirm-{booking}")
        assert emitted["woke"] == [flow["id"]]
        assert history(2).history[-1]["outcome"] == "slept"
        page.goto(f"{server.base}/_queue/events")
        row = page.locator("table.events tbody tr", has_text=f"confirm-{booking}")
        assert row.locator("td[data-label='Woke']").inner_text().strip() == flow["id"]
        started = row.locator("td[data-label='Started'] a")
        assert started.count() == 1 and started.inner_text().strip() == emitted["started"][0]
        assert f'"booking": {booking}' in row.locator("td[data-label='Data']").inner_text()
        _check_layout(page, "issue20-events", size[0])
        row.locator("td[data-label='Woke'] a").click()
        page.wait_for_url(f"**/_queue/job/{flow['id']}")
        steps = page.locator("table.steps tbody tr")
        assert steps.count() == 3
        assert steps.nth(0).locator("td[data-label='Step']").inner_text().strip() == "charge"
        assert f'"charge-{booking}"' in steps.nth(0).locator("td[data-label='Result']").inner_text()
        assert "wait" in steps.nth(1).locator("td[data-label='Step']").inner_text()
        assert f"confirm-{booking}" in steps.nth(1).locator("td[data-label='Result']").inner_text()
        assert "sleep" in steps.nth(2).locator("td[data-label='Step']").inner_text()
        assert page.get_by_text("Sleeping at").is_visible()
        _check_layout(page, "issue20-steps", size[0])
    finally:
        context.close()
        with reader.app_context():
            queue.cancel(flow["id"])


@pytest.mark.parametrize("size", [(375, 812), (1440, 900)], ids=["375", "1440"])
def test_a_blocked_jobs_parents_and_children_in_chromium(
    exporting: dict[str, Any],
    browser: Any,  # noqa: F811 - the fixture
    size: tuple[int, int],
) -> None:
    # A child enqueued after a parent due in an hour is BLOCKED: the Blocked tab
    # lists it, its page links the parent, the parent's page links it back.
    from example_app import queue

    server, reader = exporting["server"], exporting["reader"]
    parent = server.enqueue("bookingReminder", size[0], delay="1h")
    child = server.enqueue("record", {"after": size[0]}, after=[parent["id"]])
    assert child["status"] == "BLOCKED"
    context = _context(browser, size)
    page = context.new_page()
    try:
        page.goto(f"{server.base}/_queue/jobs/blocked")
        assert page.locator("a.tab-blocked").is_visible()
        page.locator(f"a[href$='/job/{child['id']}']").click()
        page.wait_for_url(f"**/_queue/job/{child['id']}")
        row = page.locator("table.links tbody tr")
        assert row.count() == 1
        assert row.locator("td[data-label='Relation']").inner_text().strip() == "parent"
        assert row.locator("td[data-label='Status']").inner_text().strip() == "Scheduled"
        assert page.get_by_text("Blocked: it runs once every parent").is_visible()
        _check_layout(page, "issue20-blocked", size[0])
        row.locator("a").click()
        page.wait_for_url(f"**/_queue/job/{parent['id']}")
        back = page.locator("table.links tbody tr")
        assert back.locator("td[data-label='Relation']").inner_text().strip() == "child"
        assert back.locator("td[data-label='Status']").inner_text().strip() == "Blocked"
    finally:
        context.close()
        with reader.app_context():
            queue.cancel(parent["id"])
            queue.produce()  # the cancelled parent cancels its child
            assert queue.get(child["id"]).status is JobStatus.CANCELLED  # type: ignore[union-attr]
