"""Issue 17's dashboard fixes in real headless Chromium, at 375 and 1440 px:
whole error lines that wrap, one-line custom ids, queue names that wrap only at
their separators, and pages sized for a phone with a way back.

Reuses tests/test_browser.py's harness (Debian's Chromium via Playwright).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import pytest

from flask_queue import JobStatus
from tests.servers import Server, isolated_database
from tests.test_browser import (  # noqa: F401 - browser is a fixture
    ARTIFACTS,
    DESKTOP,
    LONG_CARD,
    LONG_ID,
    LONG_QUEUE,
    PHONE,
    _check_layout,
    _context,
    _wait,
    browser,
)

#: Failed jobs in all: more than a wide page (50) holds, so there are three phone pages and two wide ones.
FAILED = 64
FAILED_ID = "failed_" + LONG_ID[7:]
SEPARATORS = "._-:/"


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A server whose failed list holds two real failures with long errors and
    custom ids, on top of older failed rows written straight into the table."""
    from example_app import create_app, queue

    ARTIFACTS.mkdir(exist_ok=True)
    with isolated_database("sqlite://", tmp_path_factory.mktemp("issue17")) as url:
        server = Server(
            url,
            QUEUE_DASHBOARD_AUTH="admin:pw",
            FAILURE_RATE="1",
            EXTRA_QUEUES=[LONG_QUEUE],
        ).start()
        try:
            server.enqueue(LONG_QUEUE, 7, delay="2 hours", id=LONG_ID)
            card = server.enqueue("chargeCard", LONG_CARD, retry=0)["id"]
            server.enqueue(LONG_QUEUE, 9, retry=0, id=FAILED_ID)
            reader = create_app(SQLALCHEMY_DATABASE_URI=url, QUEUE_SCHEDULER=False)

            def both_failed() -> bool:
                with reader.app_context():
                    return len(list(queue.jobs(status="FAILED"))) == 2

            assert _wait(both_failed, 30), "the two jobs never failed"
            with reader.app_context():
                store = reader.extensions["queue"].store
                long_ago = datetime.now(timezone.utc) - timedelta(days=1)
                store.insert(
                    [
                        store.new_row(
                            queue="record",
                            payload="null",
                            run_at=long_ago - timedelta(minutes=i),
                            status=JobStatus.FAILED.value,
                            attempt=1,
                            errors=1,
                            reason=f"ValueError: old failure {i}",
                            error=f"ValueError: old failure {i}",
                        )
                        for i in range(FAILED - 2)
                    ]
                )
            yield {"server": server, "card": card}
        finally:
            server.stop()


#: Where each line of an element's text ends: the character before each break.
LINE_ENDS = """(el) => {
  const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
  const chars = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    for (let i = 0; i < n.length; i++) {
      const range = document.createRange();
      range.setStart(n, i);
      range.setEnd(n, i + 1);
      const rect = range.getClientRects()[0];
      if (rect) chars.push([n.data[i], rect.top]);
    }
  }
  const ends = [];
  for (let i = 1; i < chars.length; i++) {
    if (chars[i][1] > chars[i - 1][1] + 2) ends.push(chars[i - 1][0]);
  }
  return {ends: ends, text: chars.map((c) => c[0]).join("")};
}"""

BOX = """(el) => {
  const s = getComputedStyle(el), r = el.getBoundingClientRect();
  return {height: r.height, right: r.right, line: parseFloat(s.lineHeight) || parseFloat(s.fontSize) * 1.5,
          client: el.clientWidth, scroll: el.scrollWidth, overflow: s.textOverflow,
          main: document.querySelector("main").getBoundingClientRect().right};
}"""


def _breaks_only_at_separators(page: Any, selector: str, must_wrap: bool) -> None:
    items = page.locator(selector).filter(has_text=LONG_QUEUE[:60])
    assert items.count() >= 1, selector
    for item in items.all():
        lines = item.evaluate(LINE_ENDS)
        assert lines["text"] == LONG_QUEUE, (selector, lines["text"][:40])
        assert all(end in SEPARATORS for end in lines["ends"]), (selector, lines["ends"])
        if must_wrap:
            assert lines["ends"], (selector, "a 200-character name on one line")


def _follow(page: Any, name: str) -> None:
    """Click the link ``name`` and wait for the page it leads to: a click returns
    before its navigation, and a read then sees the old page, or none."""
    with page.expect_navigation():
        page.get_by_role("link", name=name).click()
    page.wait_for_load_state("load")


def _visible_ids(page: Any) -> list[str]:
    links = page.locator("table.jobs tbody tr td.job-id > a")
    return [a.get_attribute("href").rsplit("/", 1)[1] for a in links.all() if a.is_visible()]


SIZES = pytest.mark.parametrize("size", [PHONE, DESKTOP], ids=["375", "1440"])


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:  # noqa: F811
    context = _context(browser, request.node.callspec.params["size"])
    yield context.new_page()
    context.close()


@SIZES
def test_pages_fit_a_phone_and_go_back(
    failing: dict[str, Any], page: Any, size: tuple[int, int]
) -> None:
    base, width = f"{failing['server'].base}/_queue", size[0]
    per_page = 20 if width == 375 else 50
    page.goto(f"{base}/jobs/failed")
    _check_layout(page, "issue17-failed", width)
    height = page.evaluate("document.documentElement.scrollHeight")
    if width == 375:
        assert height < 6_500, height  # was 10,800 px with 50 cards
    first = _visible_ids(page)
    assert len(first) == per_page, len(first)
    for label in ("Previous page", "First page"):
        assert not page.get_by_role("link", name=label).is_visible()
    _follow(page, "Next page")
    second = _visible_ids(page)
    assert second and not set(second) & set(first)
    assert len(second) == min(per_page, FAILED - per_page)
    assert page.get_by_role("link", name="Previous page").is_visible(), "no way back"
    _follow(page, "Previous page")
    assert _visible_ids(page) == first
    _follow(page, "Next page")
    _follow(page, "First page")
    assert _visible_ids(page) == first


@SIZES
def test_error_lines_are_whole_and_wrap(
    failing: dict[str, Any], page: Any, size: tuple[int, int]
) -> None:
    base, width = f"{failing['server'].base}/_queue", size[0]
    page.goto(f"{base}/jobs/failed")
    row = page.locator(
        "table.jobs tbody tr", has=page.locator(f"a[href$='/job/{failing['card']}']")
    )
    line = row.locator(".error-line")
    assert len(line.inner_text()) == 255, line.inner_text()  # the stored line, whole
    box = line.evaluate(BOX)
    assert box["scroll"] <= box["client"] + 1 and box["right"] <= box["main"] + 0.5, box
    assert box["height"] > 2 * box["line"], box  # wrapped, not cut or scrolled
    more = row.get_by_role("link", name="full error on the job page")
    assert more.is_visible()
    # Measure only once the job page's stylesheet applies: a layout read before the
    # CSS loads sees an unstyled page (CI saw 16 px text that did not wrap:
    # scrollWidth 1,625 px in a 359 px box).
    with page.expect_navigation():
        more.click()
    page.wait_for_load_state("load")
    whole = page.locator("p.error-full")
    assert LONG_CARD in whole.inner_text()
    box = whole.evaluate(BOX)
    assert box["scroll"] <= box["client"] + 1 and box["right"] <= box["main"] + 0.5, box
    _check_layout(page, "issue17-job", width)


@SIZES
def test_a_long_custom_id_is_one_line(
    failing: dict[str, Any], page: Any, size: tuple[int, int]
) -> None:
    base, width = f"{failing['server'].base}/_queue", size[0]
    page.goto(f"{base}/jobs/scheduled?queue={quote(LONG_QUEUE)}")
    _check_layout(page, "issue17-scheduled-long-queue", width)
    cid = page.locator(".id-extra").first
    box = cid.evaluate(BOX)
    assert box["height"] <= 1.5 * box["line"], box  # was five lines
    assert box["scroll"] > box["client"] and box["overflow"] == "ellipsis", box
    assert cid.get_attribute("title") == LONG_ID
    # Whole on its job page, inside the page (its 244 hex digits have no
    # separator: there it breaks anywhere, the last resort).
    page.goto(f"{base}/search?q={quote(LONG_ID)}")
    custom = page.locator("dl.facts dd code").nth(1)
    assert custom.evaluate(LINE_ENDS)["text"] == LONG_ID
    box = custom.evaluate(BOX)
    assert box["right"] <= box["main"] + 0.5, box
    _check_layout(page, "issue17-job-long-id", width)


@SIZES
def test_queue_names_wrap_at_their_separators(
    failing: dict[str, Any], page: Any, size: tuple[int, int]
) -> None:
    base, width = f"{failing['server'].base}/_queue", size[0]
    page.goto(f"{base}/jobs/scheduled?queue={quote(LONG_QUEUE)}")
    _breaks_only_at_separators(page, "table.jobs td.name code", must_wrap=width == 375)
    _breaks_only_at_separators(page, "main h1 code", must_wrap=True)
    assert page.locator("table.jobs td[data-label='Runs']").first.is_visible()
    page.goto(f"{base}/")
    _breaks_only_at_separators(page, "table.queues th[scope=row] code", must_wrap=width == 375)
    page.goto(f"{base}/search?q={quote(LONG_ID)}")
    _breaks_only_at_separators(page, "dl.facts dd code >> nth=0", must_wrap=True)
    page.screenshot(path=str(ARTIFACTS / f"issue17-job-{width}.png"), full_page=True)
