"""The dashboard in real headless Chromium (Debian's, driven by Playwright).

Screenshots land in test-artifacts/ (desktop 1440 px and phone 375 px).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from flask_queue import JobStatus
from tests.servers import REPO, Server, isolated_database

DOCS = REPO / "docs"
#: Set to refresh the README's screenshots in docs/ (`make screenshots`); by
#: default a run writes them to test-artifacts/ only, leaving the tree clean.
UPDATE_README_SHOTS = os.environ.get("QUEUE_UPDATE_SCREENSHOTS") == "1"

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


@pytest.fixture(scope="module")
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


# --- Layout at 375 and 1440 px with the longest things a row can hold -----------

PHONE = (375, 812)
DESKTOP = (1440, 900)
#: A 200-character queue name with no space or hyphen to break at.
LONG_QUEUE = ("tenant_acme_eu_west_billing_invoices_monthly_reconciliation_" * 4)[:200]
#: 255-character custom ids (the most a custom id may have), unbreakable too.
LONG_ID = ("order_2024_" + "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" * 4)[
    :255
]
RETRIED_ID = "retried_" + LONG_ID[8:]
#: Makes chargeCard's error line longer than the 255 characters the row keeps.
LONG_CARD = (
    "9921 (card ending 4242, declined by the issuer after three attempts; the gateway said"
    " insufficient funds or a limit exceeded on https://gateway.example/v1/charges/"
    + "ch_3OqYk2LkdIwHu7ix0xN1x2Yz" * 6
    + ")"
)
LONG_PAYLOAD = {
    "booking": 9921,
    "guest": {"name": "Ada Lovelace", "email": "ada@example.com", "notes": "late arrival " * 40},
    "token": "tok_" + "A1b2C3d4E5" * 60,
    "lines": [{"sku": f"ROOM-{i:04d}", "nights": i % 7 + 1} for i in range(40)],
}


def _traceback(size: int = 10_000) -> str:
    frame = (
        '  File "/srv/app/billing/gateway.py", line {n}, in charge\n'
        "    response = session.post(url, json=body, timeout=settings.GATEWAY_TIMEOUT)\n"
    )
    lines = ["Traceback (most recent call last):"]
    n = 0
    while sum(len(x) + 1 for x in lines) < size - 700:
        n += 1
        lines.append(frame.format(n=n).rstrip("\n"))
    lines.append("    raise ConnectionError(" + "x" * 500 + ")")  # one unbreakable line
    text = "\n".join(lines) + "\n"
    last = "ConnectionError: payment gateway timed out for booking 9921"
    return (text + " " * (size - len(text) - len(last) - 1))[: size - len(last) - 1] + "\n" + last


#: Counts per minute seeded into the stats table: minutes ago -> (succeeded, failed).
HOUR_COUNTS = {m: (12 + (m * 7) % 23, 3 if m % 9 == 0 else 0) for m in range(1, 60)}
#: And per hour for the day chart: hours ago -> (succeeded, failed).
DAY_COUNTS = {h: (300 + (h * 53) % 400, 20 if h % 5 == 0 else 1) for h in range(2, 24)}


def _auth(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(user.encode()).decode()}


def _wait(check: Any, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server with a read-only user beside the admin, jobs with the longest
    queue names, ids, errors, payloads and tracebacks, and an hour and a day of
    run counts for the charts. Layout does not depend on the database: SQLite."""
    import sqlalchemy as sa

    from example_app import create_app, queue

    with isolated_database("sqlite://", tmp_path_factory.mktemp("layout")) as url:
        server = Server(
            url,
            QUEUE_DASHBOARD_AUTH="admin:pw",
            DASHBOARD_READER="viewer:pw",
            QUEUE_KEEP_COMPLETED="1 day",
            FAILURE_RATE="1",
            EXTRA_QUEUES=[LONG_QUEUE],
        ).start()
        try:
            server.enqueue("bookingReminder", 1, delay="1 hour")
            server.enqueue("record", {"report": "weekly"}, cron="0 9 * * 1", tz="Europe/Paris")
            server.enqueue(LONG_QUEUE, 7, delay="2 hours", id=LONG_ID)
            server.enqueue("chargeCard", LONG_CARD, retry=0)
            server.enqueue("chargeCard", 41, retry=0)
            server.enqueue(LONG_QUEUE, LONG_CARD, retry=0)
            retried = server.enqueue(LONG_QUEUE, LONG_PAYLOAD, retry=["0s", "0s"], id=RETRIED_ID)[
                "id"
            ]
            server.enqueue("record", "done-now")
            server.wait_for_runs(lambda r: any(x["payload"] == "'done-now'" for x in r))
            reader = create_app(SQLALCHEMY_DATABASE_URI=url, QUEUE_SCHEDULER=False)

            def failed_for_good() -> bool:
                with reader.app_context():
                    job = queue.get(retried)
                if job is not None and job.status is JobStatus.FAILED:
                    return True
                server.ping()  # runs the retry that is due
                return False

            assert _wait(failed_for_good, 30), "the retried job never failed for good"
            with reader.app_context():
                store = reader.extensions["queue"].store
                with store.engine.begin() as c:
                    c.execute(
                        sa.update(store.table)
                        .where(store.table.c.id == retried)
                        .values(reason=_traceback())
                    )
                now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
                rows = [
                    (now - timedelta(minutes=m), "record", ok, bad)
                    for m, (ok, bad) in HOUR_COUNTS.items()
                ]
                rows += [
                    (now.replace(minute=0) - timedelta(hours=h), "chargeCard", ok, bad)
                    for h, (ok, bad) in DAY_COUNTS.items()
                ]
                store.add_stats(rows)
            yield {"server": server, "reader": reader, "retried": retried, "seeded_at": now}
        finally:
            server.stop()


def _readme_shot(page: Any, name: str, **options: Any) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"readme-{name}"), **options)
    if UPDATE_README_SHOTS:
        page.screenshot(path=str(DOCS / name), **options)


def _context(browser: Any, size: tuple[int, int], user: str = "admin:pw") -> Any:
    width, height = size
    # Sent with every request: the two-user guard answers 401 only to strangers.
    return browser.new_context(
        viewport={"width": width, "height": height}, extra_http_headers=_auth(user)
    )


MEASURE = """() => {
  const visible = (el) => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== "hidden";
  const cells = [...document.querySelectorAll("td, th")].filter(visible);
  return {
    page: document.documentElement.scrollWidth,
    viewport: window.innerWidth,
    cells: cells.length,
    overflowing: cells
      .filter((el) => el.scrollWidth > el.clientWidth + 1)
      .map((el) => [el.tagName, el.getAttribute("data-label"), el.clientWidth, el.scrollWidth,
                    el.textContent.trim().slice(0, 40)]),
  };
}"""


def _check_layout(page: Any, name: str, width: int) -> dict[str, Any]:
    """No page wider than the screen, no table cell whose content spills out."""
    page.wait_for_load_state("load")  # a layout read before the CSS applies is unstyled
    m = page.evaluate(MEASURE)
    assert m["viewport"] == width
    assert m["page"] <= m["viewport"], (name, width, m["page"])
    assert not m["overflowing"], (name, width, m["overflowing"])
    page.screenshot(path=str(ARTIFACTS / f"layout-{name}-{width}.png"), full_page=True)
    return m  # type: ignore[no-any-return]


BAR = re.compile(r"^(\d\d:\d\d) UTC: ([\d,]+) succeeded, ([\d,]+) failed$")


def _check_charts(page: Any, seeded_at: datetime) -> None:
    charts = page.locator("figure.chart")
    assert charts.count() == 2
    expected = [
        {(seeded_at - timedelta(minutes=m)).strftime("%H:%M"): v for m, v in HOUR_COUNTS.items()},
        {
            (seeded_at.replace(minute=0) - timedelta(hours=h)).strftime("%H:00"): v
            for h, v in DAY_COUNTS.items()
            if h >= 3  # the hour of the seeded minutes has them too
        },
    ]
    for chart, bars, seeded in zip(charts.all(), (60, 24), expected, strict=True):
        assert chart.is_visible()
        box = chart.evaluate(
            """(fig) => {
              const s = getComputedStyle(fig), svg = fig.querySelector("svg").getBoundingClientRect();
              return {content: fig.clientWidth - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight),
                      svg: svg.width, height: svg.height, right: svg.right,
                      fig: fig.getBoundingClientRect().right};
            }"""
        )
        # preserveAspectRatio="none": the drawing stretches to its box, exactly.
        assert abs(box["svg"] - box["content"]) < 0.5, box
        assert box["height"] > 50 and box["right"] <= box["fig"], box
        titles = chart.locator("svg g > title").all_text_contents()
        assert len(titles) == bars
        parsed = []
        for title in titles:
            match = BAR.match(title)
            assert match, title
            at, ok, bad = match[1], int(match[2].replace(",", "")), int(match[3].replace(",", ""))
            if at in seeded:
                assert (ok, bad) == seeded[at], (at, ok, bad)
            parsed.append((ok, bad))
        assert chart.locator("svg rect.ok").count() == sum(1 for ok, _ in parsed if ok)
        assert chart.locator("svg rect.bad").count() == sum(1 for _, bad in parsed if bad)
        assert chart.locator("svg rect.ok").count() >= len(seeded) - 1  # one may have aged out
        assert chart.locator("svg rect.bad").count() >= 1


@pytest.mark.parametrize("size", [PHONE, DESKTOP], ids=["375", "1440"])
def test_layout_with_long_names(
    seeded: dict[str, Any], browser: Any, size: tuple[int, int]
) -> None:
    from urllib.parse import quote

    server, retried = seeded["server"], seeded["retried"]
    width = size[0]
    ARTIFACTS.mkdir(exist_ok=True)
    context = _context(browser, size)
    page = context.new_page()
    base = f"{server.base}/_queue"

    page.goto(f"{base}/")
    _check_layout(page, "overview", width)
    _check_charts(page, seeded["seeded_at"])
    assert page.get_by_text(LONG_QUEUE).first.is_visible()
    if width == 1440:
        _readme_shot(page, "dashboard.png")

    for status in ("scheduled", "running", "failed", "completed"):
        page.goto(f"{base}/jobs/{status}")
        _check_layout(page, status, width)

    page.goto(f"{base}/jobs/failed")
    errors = page.locator("table.jobs td.error")
    assert errors.count() == 4
    widths = [
        e.evaluate("(el) => el.querySelector('.error-line').getBoundingClientRect().width")
        for e in errors.all()
    ]
    if width == 375:
        # Cards: the error line has the card's width (a plain table left it ~70 px).
        assert min(widths) >= 250, widths
        _readme_shot(page, "dashboard-phone.png", full_page=True)
    else:
        assert min(widths) >= 300, widths

    page.goto(f"{base}/jobs/failed?queue={quote(LONG_QUEUE)}")
    _check_layout(page, "failed-long-queue", width)
    page.goto(f"{base}/jobs/scheduled?queue={quote(LONG_QUEUE)}")
    _check_layout(page, "scheduled-long-queue", width)

    # The job page: long queue, long custom id, attempts, a long payload and a
    # 10,000-character traceback that scrolls inside its own box.
    page.goto(f"{base}/search?q={quote(RETRIED_ID)}")
    assert page.url.endswith(f"/job/{retried}")
    _check_layout(page, "job", width)
    rows = page.locator("table.attempts tbody tr")
    assert rows.count() == 3
    assert [r.locator(".outcome").inner_text() for r in rows.all()] == ["Failed"] * 3
    assert rows.first.locator(".error-line").inner_text().startswith("ConnectionError: payment")
    reason = page.locator("pre.reason").evaluate(
        """(el) => ({client: el.clientWidth, scroll: el.scrollWidth, height: el.clientHeight,
                     full: el.scrollHeight, right: el.getBoundingClientRect().right,
                     main: document.querySelector("main").getBoundingClientRect().right,
                     overflow: getComputedStyle(el).overflow})"""
    )
    assert reason["full"] > reason["height"] <= 600, reason  # scrolls, in a bounded box
    assert reason["scroll"] > reason["client"], reason  # the long line scrolls sideways
    assert reason["right"] <= reason["main"], reason
    assert len(page.locator("pre.reason").inner_text()) >= 9_990
    if width == 375:
        _readme_shot(page, "dashboard-job-phone.png", full_page=True)

    # A search that finds nothing echoes the 255-character id it was given.
    page.goto(f"{base}/search?q={quote(LONG_ID + 'x')}")
    _check_layout(page, "search", width)
    context.close()


def test_read_only_user(seeded: dict[str, Any], browser: Any) -> None:
    from example_app import queue

    server, reader, retried = seeded["server"], seeded["reader"], seeded["retried"]
    base = f"{server.base}/_queue"
    for size in (PHONE, DESKTOP):
        context = _context(browser, size, user="viewer:pw")
        page = context.new_page()
        for name, path in [
            ("overview", "/"),
            ("failed", "/jobs/failed"),
            ("scheduled", "/jobs/scheduled"),
            ("job", f"/job/{retried}"),
        ]:
            page.goto(base + path)
            assert page.locator("main h1").is_visible()
            assert page.locator("form[method=post]").count() == 0, name
            for label in (
                "Retry",
                "Delete",
                "Run now",
                "Pause",
                "Resume",
                "Retry all",
                "Delete all",
            ):
                assert page.get_by_role("button", name=label).count() == 0, (name, label)
            _check_layout(page, f"read-only-{name}", size[0])
        # Everything is shown, but nothing can be changed: a forged POST is refused.
        assert page.locator("table.attempts tbody tr").count() == 3
        for path, form in [
            (f"/job/{retried}/retry", {}),
            (f"/job/{retried}/delete", {}),
            ("/bulk", {"action": "delete"}),
            (f"/queues/{LONG_QUEUE}/pause", {}),
        ]:
            response = context.request.post(base + path, form=form)
            assert response.status == 403, (path, response.status)
            assert "Read-only" in response.text()
        context.close()
    with reader.app_context():
        assert queue.get(retried).status is JobStatus.FAILED  # type: ignore[union-attr]
        assert len(list(queue.jobs(status="FAILED"))) == 4
    # The admin on the same server still sees the buttons.
    context = _context(browser, DESKTOP)
    page = context.new_page()
    page.goto(f"{base}/job/{retried}")
    assert page.get_by_role("button", name="Retry").is_visible()
    context.close()
