"""Per-minute run counts and the overview's SVG charts (issue 11)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_queue import Queue, present
from flask_queue.stats import Tally
from tests.conftest import Clock, Recorder, all_databases

UTC = timezone.utc


def _writes_to(app: Flask, table: sa.Table) -> tuple[list[str], Any]:
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if table.name in statement and statement.lstrip().upper().startswith("INSERT"):
            seen.append(statement)

    return seen, record


def _stats(app: Flask) -> list[tuple[Any, ...]]:
    store = app.extensions["queue"].store
    st = store.stats
    with store.engine.connect() as c:
        rows = c.execute(sa.select(st).order_by(st.c.minute, st.c.queue))
        return [(m.replace(tzinfo=None), q, ok, bad) for m, q, ok, bad in rows]


@all_databases
def test_runs_are_counted_per_minute_and_queue_with_one_write_per_interval(
    debug_app: Flask, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    state = debug_app.extensions["queue"]
    state.tally.every = 3600.0  # not due during the runs
    state.tally._next = float("inf")
    queue.enqueue_many("echo", list(range(7)), delay="1s")
    queue.enqueue_many("boom", ["a", "b"], delay="1s")
    clock.advance(1)
    seen, record = _writes_to(debug_app, state.store.stats)
    sa.event.listen(state.store.engine, "before_cursor_execute", record)
    try:
        queue.produce()
        assert seen == []  # the runs wrote no count of their own
        state.tally.flush()
        assert len(seen) == 1  # one statement for every minute and queue
    finally:
        sa.event.remove(state.store.engine, "before_cursor_execute", record)
    minute = clock().replace(second=0, microsecond=0, tzinfo=None)
    assert _stats(debug_app) == [(minute, "boom", 0, 2), (minute, "echo", 7, 0)]


@all_databases
def test_two_processes_add_to_the_same_minute(debug_app: Flask, queue: Queue, clock: Clock) -> None:
    store = debug_app.extensions["queue"].store
    one, two = Tally(store), Tally(store)
    now = clock()
    one.count("echo", True, now)
    one.count("echo", False, now)
    two.count("echo", True, now)
    two.count("echo", True, now + timedelta(minutes=1))
    one.flush()
    two.flush()
    minute = now.replace(second=0, microsecond=0, tzinfo=None)
    assert _stats(debug_app) == [
        (minute, "echo", 2, 1),
        (minute + timedelta(minutes=1), "echo", 1, 0),
    ]


@all_databases
def test_counts_a_flush_could_not_write_are_kept_for_the_next(
    debug_app: Flask, queue: Queue, clock: Clock
) -> None:
    store = debug_app.extensions["queue"].store
    tally = Tally(store)
    tally.count("echo", True, clock())
    with store.engine.begin() as c:
        store.stats.drop(c)
    tally.flush()  # fails quietly: chart data must never break a run
    with store.engine.begin() as c:
        store.stats.create(c)
    tally.flush()
    assert [row[2:] for row in _stats(debug_app)] == [(1, 0)]


@all_databases
def test_produce_prunes_counts_older_than_two_days(
    debug_app: Flask, queue: Queue, clock: Clock
) -> None:
    store = debug_app.extensions["queue"].store
    now = clock()
    store.add_stats([(now - timedelta(days=3), "echo", 5, 0), (now, "echo", 1, 0)])
    queue.produce()
    assert [row[2] for row in _stats(debug_app)] == [1]


def test_charts_place_minutes_and_hours_and_scale_to_the_peak() -> None:
    now = datetime(2026, 3, 1, 12, 30, 20, tzinfo=UTC)
    minutes = [
        (datetime(2026, 3, 1, 12, 30, tzinfo=UTC), 40, 10),  # this minute: last bar
        (datetime(2026, 3, 1, 11, 31, tzinfo=UTC), 1, 0),  # 59 minutes ago: first bar
    ]
    hours = [
        (datetime(2026, 3, 1, 12, 0, tzinfo=UTC), 41, 10),  # this hour: last bar
        (datetime(2026, 3, 1, 11, 0, tzinfo=UTC), 8, 3),
        (datetime(2026, 2, 28, 13, 0, tzinfo=UTC), 2, 0),  # 23 hours ago: first bar
    ]
    hour, day = present.run_charts(minutes, hours, now)
    assert len(hour["bars"]) == 60 and len(day["bars"]) == 24
    assert (hour["bars"][-1]["ok"], hour["bars"][-1]["bad"]) == (40, 10)
    assert (hour["bars"][0]["ok"], hour["bars"][0]["bad"]) == (1, 0)
    assert (hour["succeeded"], hour["failed"], hour["peak"]) == (41, 10, 50)
    assert [b["ok"] for b in day["bars"][-2:]] == [8, 41] and day["bars"][0]["ok"] == 2
    assert (day["succeeded"], day["failed"]) == (51, 13)
    top = hour["bars"][-1]
    assert top["y_bad"] == pytest.approx(2.0) and top["y_ok"] + top["h_ok"] == 120
    assert hour["bars"][0]["h_ok"] == pytest.approx(118 / 50)
    (busy, _) = present.run_charts([(now, 10_000, 1)], [], now)
    assert busy["bars"][-1]["h_bad"] == 1.0  # a count of one stays visible beside 10,000
    assert hour["bars"][-1]["label"] == "12:30 UTC: 40 succeeded, 10 failed"


@all_databases
def test_run_stats_sums_minutes_or_hours_in_the_database(
    debug_app: Flask, queue: Queue, clock: Clock
) -> None:
    store = debug_app.extensions["queue"].store
    base = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    store.add_stats(
        [
            (base + timedelta(minutes=5), "a", 1, 0),
            (base + timedelta(minutes=5), "b", 2, 1),
            (base + timedelta(minutes=59), "a", 3, 0),
            (base + timedelta(hours=1, minutes=1), "a", 4, 2),
        ]
    )
    assert store.run_stats(base) == [
        (base + timedelta(minutes=5), 3, 1),
        (base + timedelta(minutes=59), 3, 0),
        (base + timedelta(hours=1, minutes=1), 4, 2),
    ]
    assert store.run_stats(base, by_hour=True) == [
        (base, 6, 1),
        (base + timedelta(hours=1), 4, 2),
    ]


@all_databases
def test_the_overview_draws_the_counted_runs(debug_app: Flask, queue: Queue, clock: Clock) -> None:
    queue.enqueue_many("echo", [1, 2, 3], delay="1s")
    queue.enqueue_many("boom", ["a", "b"], delay="1s", retry=0)
    clock.advance(1)
    queue.produce()
    debug_app.extensions["queue"].tally.flush()
    page = debug_app.test_client().get("/_queue/").get_data(as_text=True)
    label = f"{clock():%H:%M} UTC: 3 succeeded, 2 failed"
    assert f"<title>{label}</title>" in page
    assert len(re.findall(r'class="ok"', page)) == 2  # this minute and this hour
    assert len(re.findall(r'class="bad"', page)) == 2
    assert page.count("<svg viewBox") == 2
