"""The dashboard in real headless Chromium (Debian's, driven by Playwright).

Screenshots land in test-artifacts/ (desktop 1440 px and phone 375 px).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flask_queue import JobStatus
from tests.servers import REPO, Server, isolated_database

CHROMIUM = os.environ.get("QUEUE_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts"
XSS = "<script>window.__pwned=1</script>"

if not shutil.which(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)


@pytest.fixture
def running(db_url: str, tmp_path: Path) -> Iterator[tuple[Server, Any]]:
    """The example app under waitress, with jobs in every state."""
    from example_app import create_app

    with isolated_database(db_url, tmp_path) as url:
        server = Server(
            url,
            QUEUE_DASHBOARD_AUTH="admin:pw",
            QUEUE_KEEP_COMPLETED="1 day",
            FAILURE_RATE="1",
        ).start()
        try:
            for i in range(3):
                server.enqueue("bookingReminder", i + 1, delay=f"{i + 1} hours")
            server.enqueue("record", {"report": "weekly"}, cron="0 9 * * 1", tz="Europe/Paris")
            server.enqueue("record", "heartbeat", every="5 minutes", times=12)
            server.enqueue("chargeCard", 41, retry=0)  # fails at once
            server.enqueue("chargeCard", XSS, retry=0)  # fails, with the payload in the reason
            server.enqueue("record", "done-now")
            server.wait_for_runs(lambda r: any(x["payload"] == "'done-now'" for x in r))
            reader = create_app(SQLALCHEMY_DATABASE_URI=url, QUEUE_SCHEDULER=False)
            yield server, reader
        finally:
            server.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield browser
        browser.close()


def _page(browser: Any, width: int, height: int) -> Any:
    context = browser.new_context(
        viewport={"width": width, "height": height},
        http_credentials={"username": "admin", "password": "pw"},
    )
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # the confirm() before deletes
    return page


def _failed(reader: Any) -> list[Any]:
    from example_app import queue

    with reader.app_context():
        return list(queue.jobs(status="FAILED"))


def test_dashboard_in_chromium(running: tuple[Server, Any], browser: Any) -> None:
    from example_app import queue

    server, reader = running
    ARTIFACTS.mkdir(exist_ok=True)
    page = _page(browser, 1440, 900)
    page.goto(f"{server.base}/_queue/")
    assert page.title() == "Overview · flask_queue"
    assert page.locator(".totals .status-failed .n").inner_text() == "2"
    page.screenshot(path=str(ARTIFACTS / "dashboard-overview-1440.png"), full_page=True)

    # Status tabs.
    page.get_by_role("link", name="Scheduled").first.click()
    assert page.locator("h1").inner_text() == "Scheduled jobs"
    assert page.locator("table.jobs tbody tr").count() == 5
    assert page.get_by_text("At 09:00 AM, only on Monday (Europe/Paris)").count() == 1

    # Filter by queue.
    page.select_option("#queue-filter", "bookingReminder")
    page.get_by_role("button", name="Filter").click()
    assert "queue=bookingReminder" in page.url
    assert page.locator("table.jobs tbody tr").count() == 3

    # Open a failed job: the hostile payload is text, never a script.
    page.get_by_role("link", name="Failed").first.click()
    page.screenshot(path=str(ARTIFACTS / "dashboard-failed-1440.png"), full_page=True)
    failed = _failed(reader)
    hostile = next(j for j in failed if j.payload == XSS)
    page.click(f"a[href$='/job/{hostile.id}']")
    assert XSS in page.locator("pre.code").first.inner_text()
    assert XSS in page.locator("pre.reason").inner_text()
    assert page.evaluate("window.__pwned") is None
    page.screenshot(path=str(ARTIFACTS / "dashboard-job-1440.png"), full_page=True)

    # Retry it from the page: the row is SCHEDULED again.
    page.get_by_role("button", name="Retry").click()
    assert "scheduled again" in page.locator(".flash").inner_text()
    with reader.app_context():
        assert queue.get(hostile.id).status is not JobStatus.FAILED  # type: ignore[union-attr]

    # Delete the other failed job.
    other = next(j for j in failed if j.id != hostile.id)
    page.goto(f"{server.base}/_queue/job/{other.id}")
    page.get_by_role("button", name="Delete").click()
    assert "Deleted job" in page.locator(".flash").inner_text()
    with reader.app_context():
        assert queue.get(other.id) is None
    assert page.evaluate("window.__pwned") is None


def test_dashboard_on_a_phone(running: tuple[Server, Any], browser: Any) -> None:
    server, reader = running
    ARTIFACTS.mkdir(exist_ok=True)
    page = _page(browser, 375, 812)
    for name, path in [
        ("overview", "/_queue/"),
        ("failed", "/_queue/jobs/failed"),
        ("scheduled", "/_queue/jobs/scheduled"),
    ]:
        page.goto(server.base + path)
        # Nothing wider than the screen but the tables' own scroll boxes.
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, (name, overflow)
        page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}-375.png"), full_page=True)
    failed = _failed(reader)[0]
    page.goto(f"{server.base}/_queue/job/{failed.id}")
    assert page.evaluate("document.documentElement.scrollWidth - window.innerWidth") <= 0
    page.screenshot(path=str(ARTIFACTS / "dashboard-job-375.png"), full_page=True)


def test_dashboard_without_javascript(running: tuple[Server, Any], browser: Any) -> None:
    from example_app import queue

    server, reader = running
    context = browser.new_context(
        java_script_enabled=False, http_credentials={"username": "admin", "password": "pw"}
    )
    page = context.new_page()
    failed = _failed(reader)[0]
    page.goto(f"{server.base}/_queue/jobs/failed")
    page.click(f"a[href$='/job/{failed.id}']")
    page.get_by_role("button", name="Retry").click()
    with reader.app_context():
        assert queue.get(failed.id).status is not JobStatus.FAILED  # type: ignore[union-attr]


def test_closed_dashboard_in_browser(running: tuple[Server, Any], browser: Any) -> None:
    server, _ = running
    context = browser.new_context()
    response = context.request.get(f"{server.base}/_queue/")
    assert response.status == 401
    assert response.headers["www-authenticate"].startswith("Basic")
