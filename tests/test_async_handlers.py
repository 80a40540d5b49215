"""``async def`` handlers (issue 10): run to completion on every executor, with
the app context current, retried like sync handlers."""

from __future__ import annotations

import asyncio
from typing import Any

from flask import Flask, current_app

from flask_queue import Job, Queue
from flask_queue.worker import work
from tests.conftest import AppFactory, Clock, all_databases


def register(queue: Queue, seen: list[Any]) -> None:
    @queue.handler("fetch")
    async def fetch(job: Job[dict[str, Any]]) -> None:
        await asyncio.sleep(0.001)  # a real await: the loop runs
        seen.append((job.payload["n"], current_app.name))

    @queue.handler("afail", retry=["10s"])
    async def afail(job: Job[int]) -> None:
        await asyncio.sleep(0)
        raise ValueError(f"async boom {job.payload}")


@all_databases
def test_async_handler_runs_inline_with_the_app_context(
    app: Flask, queue: Queue, clock: Clock
) -> None:
    seen: list[Any] = []
    register(queue, seen)
    queue.enqueue("fetch", {"n": 1})
    assert seen == [(1, app.name)]
    assert list(queue.jobs()) == []


@all_databases
def test_async_handler_failure_is_retried_then_failed(
    app: Flask, queue: Queue, clock: Clock
) -> None:
    register(queue, [])
    job = queue.enqueue("afail", 7)
    stored = queue.get(job.id)
    assert stored is not None and stored.status.value == "SCHEDULED" and stored.errors == 1
    assert stored.reason is not None and "async boom 7" in stored.reason
    clock.advance(10)
    queue.produce()
    stored = queue.get(job.id)
    assert stored is not None and stored.status.value == "FAILED"


@all_databases
def test_async_handlers_run_concurrently_on_the_worker(make_app: AppFactory, queue: Queue) -> None:
    seen: list[Any] = []
    register(queue, seen)
    app = make_app(queue, QUEUE_EXECUTOR="worker")
    with app.app_context():
        queue.enqueue_many("fetch", [{"n": i} for i in range(20)])
        ran = work(queue, concurrency=4, interval=0.05, max_jobs=20, report=lambda _: None)
        assert ran == 20
        assert sorted(n for n, _ in seen) == list(range(20))
        assert list(queue.jobs()) == []
