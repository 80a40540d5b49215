"""GET <prefix>/metrics (issue 11): Prometheus text, bearer-guarded, job counts and
queue lag from the table, run counters from this process's signals."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from flask_queue import Queue
from tests.conftest import Clock, all_databases


def scrape(app: Flask, queue: Queue) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    client = app.test_client()
    response = client.get(
        "/_queue/metrics", headers={"Authorization": f"Bearer {queue.produce_token()}"}
    )
    assert response.status_code == 200, response.data
    assert response.content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@all_databases
def test_metrics_count_jobs_lag_and_runs(app: Flask, queue: Queue, clock: Clock) -> None:
    queue.enqueue("echo", 1)  # runs now (inline): started + succeeded
    queue.enqueue("boom", 2, delay="1s")
    queue.enqueue_many("echo", [3, 4], delay="1h")
    clock.advance(1)
    queue.produce()  # boom fails once, retries in 10 s
    clock.advance(30)  # the retry has now waited 20 s past its time
    samples = scrape(app, queue)
    assert samples[("flask_queue_jobs", (("queue", "echo"), ("status", "SCHEDULED")))] == 2
    assert samples[("flask_queue_jobs", (("queue", "boom"), ("status", "SCHEDULED")))] == 1
    assert samples[("flask_queue_oldest_due_seconds", (("queue", "boom"),))] == 20
    assert samples[("flask_queue_oldest_due_seconds", (("queue", "echo"),))] == 0
    assert samples[("flask_queue_runs_started_total", (("queue", "echo"),))] == 1
    assert samples[("flask_queue_runs_succeeded_total", (("queue", "echo"),))] == 1
    assert samples[("flask_queue_runs_failed_total", (("queue", "boom"),))] == 1
    assert samples[("flask_queue_run_duration_seconds_count", (("queue", "echo"),))] == 1


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic abc"])
def test_metrics_need_the_bearer_token(app: Flask, header: Any) -> None:
    headers = {"Authorization": header} if header else {}
    response = app.test_client().get("/_queue/metrics", headers=headers)
    assert response.status_code == 401
    assert b"flask_queue_jobs" not in response.data
