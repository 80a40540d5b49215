"""Limits per key (issue 19, item 5): ``key=`` on enqueue or as the handler's
function of the payload; a limited queue's concurrency, exclusive and rate hold
per key, enforced by the claim across processes; ``fair=True``."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter, defaultdict
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from flask_queue import Job, Queue
from flask_queue.errors import InvalidOptionError
from flask_queue.store import Finish
from tests.conftest import AppFactory, Clock, all_databases, row_snapshot, server_databases
from tests.test_flow_control import all_rows, produce_until, sharing_apps

LEASE = timedelta(minutes=1)


def claimed_keys(app: Flask, limit: int = 50) -> Counter[str | None]:
    """One claim of up to ``limit``: how many runs each key got."""
    store = app.extensions["queue"].store
    got = store.claim(limit, LEASE)
    return Counter(store.get(c.id).key for c in got)


def keyed_queue(clock: Clock, **options: Any) -> Queue:
    queue = Queue(clock=clock)

    @queue.handler("sync", **options)
    def sync(job: Job[Any]) -> None:
        return None

    return queue


# -- declaring keys --------------------------------------------------------------------


@all_databases
def test_a_key_is_stored_from_enqueue_or_the_handlers_function(
    make_app: AppFactory, clock: Clock
) -> None:
    queue = Queue(clock=clock)

    @queue.handler("sync", key=lambda payload: payload["tenant"])
    def sync(job: Job[Any]) -> None:
        return None

    @queue.handler("plain")
    def plain(job: Job[Any]) -> None:
        return None

    app = make_app(queue)
    with app.app_context():
        a = sync.enqueue({"tenant": "Acme"}, delay="1s")
        b = sync.enqueue({"tenant": "Acme"}, key="acme", delay="1s")  # enqueue's key wins
        many = queue.enqueue_many("sync", [{"tenant": "t1"}, {"tenant": "T1"}], delay="1s")
        assert a.key == "Acme" and b.key == "acme"
        assert [j.key for j in many] == ["t1", "T1"]
        # Read back exactly (MySQL keeps keys as bytes: "T1" is not "t1").
        assert [queue.get(j.id).key for j in (a, b, *many)] == ["Acme", "acme", "t1", "T1"]  # type: ignore[union-attr]
        plain = queue.enqueue("plain", 1, delay="1s")
        assert plain.key is None and queue.get(plain.id).key is None  # type: ignore[union-attr]


@all_databases
@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (7, r"Invalid key 7"),
        ("", r"Invalid key ''"),
        ("x" * 256, r"Invalid key 'xxx"),
        ("a\x00b", r"Invalid key 'a\\x00b'"),
        ("\udc80", r"not valid Unicode"),
    ],
)
def test_a_bad_key_is_refused_and_nothing_is_written(
    app: Flask, queue: Queue, bad: Any, message: str
) -> None:
    before = row_snapshot(app)
    with pytest.raises(InvalidOptionError, match=message):
        queue.enqueue("echo", 1, key=bad)
    with pytest.raises(InvalidOptionError, match=message):
        queue.enqueue_many("echo", [1, 2], key=bad)
    assert row_snapshot(app) == before


@all_databases
def test_a_key_function_that_raises_or_returns_no_str_stores_nothing(
    make_app: AppFactory, clock: Clock
) -> None:
    queue = Queue(clock=clock)

    def tenant_of(payload: Any) -> Any:
        return payload["tenant"]

    @queue.handler("sync", key=tenant_of)
    def sync(job: Job[Any]) -> None:
        return None

    app = make_app(queue)
    with app.app_context():
        before = row_snapshot(app)
        with pytest.raises(InvalidOptionError, match=r"key function .*tenant_of.* raised KeyError"):
            sync.enqueue({"name": "no tenant"})
        with pytest.raises(
            InvalidOptionError,
            match=r"Invalid key 42 from the key function .*tenant_of of queue 'sync'",
        ):
            sync.enqueue({"tenant": 42})
        # One bad payload of many: the batch stores nothing.
        with pytest.raises(InvalidOptionError, match=r"tenant_of"):
            sync.enqueue_many([{"tenant": "ok"}, {"tenant": None}])
        assert row_snapshot(app) == before


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"key": "tenant"}, r"Invalid key 'tenant' for queue 'sync': pass a function"),
        ({"fair": "yes"}, r"Invalid fair 'yes'"),
    ],
)
def test_bad_key_declarations_are_refused(options: dict[str, Any], message: str) -> None:
    queue = Queue()
    with pytest.raises(InvalidOptionError, match=message):
        queue.handler("sync", **options)


# -- limits per key --------------------------------------------------------------------


@all_databases
def test_concurrency_holds_per_key_and_keyless_jobs_are_one_group(
    make_app: AppFactory, clock: Clock
) -> None:
    queue = keyed_queue(clock, concurrency=2)
    app = make_app(queue)
    with app.app_context():
        for key in ("a", "b", None):
            queue.enqueue_many("sync", [0] * 5, delay="1s", **({"key": key} if key else {}))
        clock.advance(1)
        assert claimed_keys(app) == {"a": 2, "b": 2, None: 2}
        assert claimed_keys(app) == {}  # every group is at its limit
        # One run of "a" ends: "a" alone gets one more.
        store = app.extensions["queue"].store
        running_a = [r for r in all_rows(app) if r.status == "RUNNING" and r.key in ("a", b"a")]
        store.finish(store.get(running_a[0].id), Finish(status="DELETE"))
        assert claimed_keys(app) == {"a": 1}


@all_databases
def test_exclusive_runs_one_job_per_key(make_app: AppFactory, clock: Clock) -> None:
    queue = keyed_queue(clock, exclusive=True)
    app = make_app(queue)
    with app.app_context():
        for n in range(30):
            queue.enqueue("sync", n, delay="1s", key=f"tenant-{n % 10}")
        clock.advance(1)
        assert claimed_keys(app) == {f"tenant-{n}": 1 for n in range(10)}
        assert claimed_keys(app) == {}


@all_databases
def test_rate_holds_per_key(make_app: AppFactory, clock: Clock) -> None:
    queue = keyed_queue(clock, rate="2/m")
    app = make_app(queue)
    with app.app_context():
        for key in ("a", "b"):
            queue.enqueue_many("sync", [0] * 5, delay="1s", key=key)
        clock.advance(1)
        store = app.extensions["queue"].store
        first = store.claim(50, LEASE)
        assert Counter(store.get(c.id).key for c in first) == {"a": 2, "b": 2}
        for c in first:  # the runs end; the window still holds them
            store.finish(store.get(c.id), Finish(status="DELETE"))
        assert claimed_keys(app) == {}
        clock.advance(61)
        assert claimed_keys(app) == {"a": 2, "b": 2}


@all_databases
def test_a_full_key_with_a_long_backlog_does_not_hold_back_the_others(
    make_app: AppFactory, clock: Clock
) -> None:
    # 300 jobs of one key come first in the claim's order; five other keys
    # come after. One claim gives the first key its one run and every other
    # key its own, instead of a page of the first key's backlog.
    queue = keyed_queue(clock, exclusive=True)
    app = make_app(queue)
    with app.app_context():
        queue.enqueue_many("sync", [0] * 300, delay="1s", key="big")
        clock.advance(0.01)
        for n in range(5):
            queue.enqueue("sync", n, delay="1s", key=f"small-{n}")
        clock.advance(1)
        assert claimed_keys(app, limit=10) == {"big": 1, **{f"small-{n}": 1 for n in range(5)}}


@all_databases
def test_fair_takes_due_jobs_round_robin_across_keys(make_app: AppFactory, clock: Clock) -> None:
    fair = Queue(clock=clock)

    @fair.handler("sync", fair=True)
    def sync(job: Job[Any]) -> None:
        return None

    app = make_app(fair)
    with app.app_context():
        fair.enqueue_many("sync", [0] * 100, delay="1s", key="big")
        clock.advance(0.01)
        fair.enqueue_many("sync", [0] * 3, delay="1s", key="b")
        fair.enqueue_many("sync", [0] * 3, delay="1s", key="c")
        clock.advance(1)
        # Rounds of one job per key while the room lasts: 3 rounds of 3.
        assert claimed_keys(app, limit=9) == {"big": 3, "b": 3, "c": 3}
        # b and c are drained; the rest goes to the one key left.
        assert claimed_keys(app, limit=5) == {"big": 5}


@all_databases
def test_without_fair_the_oldest_jobs_go_first_whatever_their_key(
    make_app: AppFactory, clock: Clock
) -> None:
    queue = keyed_queue(clock)  # keys without limits or fair: order alone
    app = make_app(queue)
    with app.app_context():
        queue.enqueue_many("sync", [0] * 100, delay="1s", key="big")
        clock.advance(0.01)
        queue.enqueue_many("sync", [0] * 3, delay="1s", key="b")
        clock.advance(1)
        assert claimed_keys(app, limit=9) == {"big": 9}


@all_databases
def test_per_key_concurrency_holds_across_eight_producers(
    make_app: AppFactory, clock: Clock
) -> None:
    queue = Queue(clock=clock)
    lock = threading.Lock()
    now: dict[str, int] = defaultdict(int)
    peak: dict[str, int] = defaultdict(int)
    done: list[int] = []

    @queue.handler("sync", concurrency=2, key=lambda payload: f"tenant-{payload % 4}")
    def sync(job: Job[int]) -> None:
        assert job.key is not None
        with lock:
            now[job.key] += 1
            peak[job.key] = max(peak[job.key], now[job.key])
        time.sleep(0.02)
        with lock:
            now[job.key] -= 1
            done.append(job.payload)

    apps = sharing_apps(make_app, queue)
    first = apps[0]
    with first.app_context():
        queue.enqueue_many("sync", list(range(48)), delay="1s")
    clock.advance(1)
    produce_until(
        apps,
        queue,
        lambda: len(done) == 48 and all_rows(first) == [],
        "48 keyed jobs, and every row finished",
    )
    assert sorted(done) == list(range(48))  # each once
    assert set(peak) == {f"tenant-{n}" for n in range(4)}
    assert max(peak.values()) <= 2  # per key, across 8 producers
    # And the keys ran side by side: 4 keys x 2 is more than one queue-wide 2.
    assert sum(peak.values()) > 2


@all_databases
def test_per_key_rate_holds_in_every_window_across_eight_producers(
    make_app: AppFactory,
) -> None:
    queue = Queue()  # the real clock: the limit is over real seconds
    claimed_at: dict[str, list[Any]] = defaultdict(list)
    lock = threading.Lock()

    @queue.handler("api", rate="5/s", key=lambda payload: payload["customer"])
    def api(job: Job[Any]) -> None:
        with lock:
            claimed_at[job.payload["customer"]].append(job.updated_at)

    apps = sharing_apps(make_app, queue, QUEUE_KEEP_COMPLETED="1h")
    first = apps[0]
    with first.app_context():
        queue.enqueue_many("api", [{"customer": c} for c in "ab" for _ in range(12)])
    produce_until(
        apps,
        queue,
        lambda: sum(r.status == "COMPLETED" for r in all_rows(first)) == 24,
        "24 jobs",
    )
    for customer, times in claimed_at.items():
        starts = sorted(times)
        assert len(starts) == 12
        for i, begin in enumerate(starts):
            in_window = [s for s in starts[i:] if s - begin < timedelta(seconds=1)]
            assert len(in_window) <= 5, (customer, [str(s)[17:] for s in starts])
    # Two customers at 5/s each: together more than one customer's 5 in a second.
    every = sorted(s for times in claimed_at.values() for s in times)
    assert any(
        len([s for s in every[i:] if s - begin < timedelta(seconds=1)]) > 5
        for i, begin in enumerate(every)
    )


# -- where users see keys ----------------------------------------------------------


@all_databases
def test_the_dashboard_lists_the_keys_at_their_limit(
    debug_app: Flask, queue: Queue, clock: Clock
) -> None:
    @queue.handler("sync", exclusive=True, key=lambda payload: payload["tenant"])
    def sync(job: Job[Any]) -> None:
        return None

    client = debug_app.test_client()
    store = debug_app.extensions["queue"].store
    for tenant in ["acme"] * 3 + ["zeta", "<b>x</b>", "<b>x</b>"]:
        sync.enqueue({"tenant": tenant}, delay="1s")
    clock.advance(1)
    assert client.get("/_queue/").status_code == 200
    assert "Keys at their limit" not in client.get("/_queue/").get_data(as_text=True)
    assert len(store.claim(10, LEASE)) == 3  # one run per key
    page = client.get("/_queue/").get_data(as_text=True)
    assert "Keys at their limit" in page
    section = page[page.index("Keys at their limit") :]
    rows = re.findall(r"<tr><td class=\"name\" data-label=\"Key\">(.*?)</tr>", section)
    assert len(rows) == 2, rows  # zeta holds nothing back
    assert "acme" in rows[0] and re.search(r'data-label="Held back"[^>]*>2<', rows[0])
    assert "&lt;b&gt;x&lt;/<wbr>b&gt;" in rows[1] and "<b>x</b>" not in section
    job = queue.enqueue("sync", {"tenant": "acme"}, delay="1h")
    assert "<dt>Key</dt>" in client.get(f"/_queue/job/{job.id}").get_data(as_text=True)


def test_cli_enqueue_takes_a_key(app: Flask, queue: Queue, runner: Any) -> None:
    result = runner.invoke(args=["queue", "enqueue", "echo", "1", "--delay", "1h", "--key", "t-1"])
    assert result.exit_code == 0, result.output
    job_id = result.output.split()[0]
    assert queue.get(job_id).key == "t-1"  # type: ignore[union-attr]
    shown = runner.invoke(args=["queue", "show", job_id])
    assert '"key": "t-1"' in shown.output
    bad = runner.invoke(args=["queue", "enqueue", "echo", "1", "--key", "x" * 300])
    assert bad.exit_code != 0 and "Invalid key" in bad.output


# -- review defects (each seen failing before its fix) ---------------------------------


@all_databases
@pytest.mark.parametrize("how", [{"override": True, "delay": "1s"}, {"debounce": "1s"}])
def test_a_new_key_for_a_running_job_does_not_free_its_old_key(
    make_app: AppFactory, clock: Clock, how: dict[str, Any]
) -> None:
    # The override's row still carries the old run's lease: that run counts
    # against the old key until it ends, so the row keeps that key.
    queue = keyed_queue(clock, exclusive=True)
    app = make_app(queue)
    with app.app_context():
        queue.enqueue("sync", "old", id="x", key="A", delay="1s")
        clock.advance(1)
        assert claimed_keys(app) == {"A": 1}  # A's run goes on
        queue.enqueue("sync", "new", id="x", key="B", **how)
        queue.enqueue("sync", "another A", key="A", delay="1s")
        clock.advance(2)
        assert claimed_keys(app).get("A", 0) == 0


@all_databases
@pytest.mark.parametrize(("limit", "busy"), [(1, 40), (4, 140)])
def test_many_full_keys_do_not_starve_a_key_with_room(
    make_app: AppFactory, clock: Clock, limit: int, busy: int
) -> None:
    queue = keyed_queue(clock, exclusive=True)
    app = make_app(queue)
    with app.app_context():
        for i in range(busy):  # each key: one run going, one due behind it
            queue.enqueue_many("sync", [0, 0], delay="1s", key=f"k{i:03}")
        clock.advance(1)
        store = app.extensions["queue"].store
        assert len(store.claim(500, LEASE)) == busy
        clock.advance(1)
        queue.enqueue("sync", "new tenant", key="fresh", delay="1s")
        clock.advance(1)
        assert claimed_keys(app, limit=limit) == {"fresh": 1}


@all_databases
def test_fair_fills_the_claim_from_two_long_backlogs(make_app: AppFactory, clock: Clock) -> None:
    queue = keyed_queue(clock, fair=True)
    app = make_app(queue)
    with app.app_context():
        queue.enqueue_many("sync", [0] * 200, delay="1s", key="a")
        clock.advance(0.01)
        queue.enqueue_many("sync", [0] * 200, delay="1s", key="b")
        clock.advance(1)
        assert claimed_keys(app, limit=50) == {"a": 25, "b": 25}


@all_databases
@pytest.mark.parametrize("due", [100, 15])
def test_fair_fills_the_claim_from_keyless_jobs(
    make_app: AppFactory, clock: Clock, due: int
) -> None:
    queue = keyed_queue(clock, fair=True)
    app = make_app(queue)
    with app.app_context():
        queue.enqueue_many("sync", [0] * due, delay="1s")
        clock.advance(1)
        assert claimed_keys(app, limit=10) == {None: 10}


@server_databases
def test_a_key_changed_between_the_claims_read_and_its_take_is_not_claimed(
    make_app: AppFactory, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process overrides a due job with a key that is at its limit
    # after the claim read it under its old key, before the take: the take
    # must not give the new key a run it counted no room for.
    from flask_queue.store.claim import limited

    queue = keyed_queue(clock, exclusive=True)
    app = make_app(queue, QUEUE_EXECUTOR="worker")
    with app.app_context():
        queue.enqueue("sync", "b1", key="B", delay="1s")
        clock.advance(1)
        assert claimed_keys(app) == {"B": 1}  # B's one run goes on
        queue.enqueue("sync", "x as A", id="x", key="A", delay="1s")
        clock.advance(1)
        original = limited.LimitedClaim._learn
        fired: list[int] = []

        def learn(self: Any, c: Any, rooms: Any, keys: Any, now: Any) -> None:
            original(self, c, rooms, keys, now)
            if not fired:
                fired.append(1)

                def other_process() -> None:
                    with app.app_context():
                        queue.enqueue("sync", "x as B", id="x", key="B", override=True)

                thread = threading.Thread(target=other_process)
                thread.start()
                thread.join(10)
                assert not thread.is_alive()

        monkeypatch.setattr(limited.LimitedClaim, "_learn", learn)
        assert claimed_keys(app) == {}
    running = Counter(
        r.key.decode() if isinstance(r.key, bytes) else r.key
        for r in all_rows(app)
        if r.status == "RUNNING"
    )
    assert fired and running == {"B": 1}
