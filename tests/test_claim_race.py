"""Eight producers at once over 5,000 due jobs: each job is claimed exactly once."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from flask import Flask

from flask_queue import Queue
from tests.conftest import Clock, server_databases
from tests.servers import REPO

JOBS = 5_000
PRODUCERS = 8
ROUNDS = 3


def _seed(queue: Queue, clock: Clock) -> set[str]:
    ids = {j.id for j in queue.enqueue_many("echo", list(range(JOBS)), delay="1s")}
    clock.advance(2)
    return ids


def _assert_exactly_once(expected: set[str], claims: list[list[str]]) -> None:
    counts = Counter(i for ids in claims for i in ids)
    duplicated = [i for i, n in counts.items() if n > 1]
    assert duplicated == [], f"{len(duplicated)} jobs claimed more than once"
    assert set(counts) == expected, f"{len(expected - set(counts))} jobs never claimed"
    # Every producer got work: the claims really ran side by side.
    assert sum(1 for ids in claims if ids) >= 2


@server_databases
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_threads_claim_each_job_once(app: Flask, queue: Queue, clock: Clock, round_: int) -> None:
    store = app.extensions["queue"].store
    expected = _seed(queue, clock)
    barrier = threading.Barrier(PRODUCERS)
    claims: list[list[str]] = [[] for _ in range(PRODUCERS)]
    errors: list[BaseException] = []

    def produce(slot: int) -> None:
        try:
            barrier.wait()
            while jobs := store.claim(50, app.extensions["queue"].config.lease):
                claims[slot].extend(j.id for j in jobs)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(PRODUCERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    _assert_exactly_once(expected, claims)
    assert list(queue.jobs(status="SCHEDULED")) == []


@server_databases
@pytest.mark.parametrize("round_", range(ROUNDS))
def test_processes_claim_each_job_once(
    app: Flask, queue: Queue, clock: Clock, db_url: str, tmp_path: Path, round_: int
) -> None:
    state = app.extensions["queue"]
    expected = _seed(queue, clock)
    # The subprocesses use the real clock; the seeded jobs are due in 2026-03,
    # which is in their past too.
    start = tmp_path / "go"
    procs: list[subprocess.Popen[str]] = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.claimer",
                db_url,
                state.store.table.name,
                "50",
                str(start),
            ],
            cwd=str(REPO),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PRODUCERS)
    ]
    # Only once every process is imported and connected: a claim of the whole
    # backlog takes ~50 ms now, less than one interpreter's start-up, so a
    # process that started first could otherwise claim every job alone.
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("go.ready.*"))) < PRODUCERS:
        assert time.monotonic() < deadline, "the claimer processes did not start"
        assert all(p.poll() is None for p in procs), "a claimer process died"
        time.sleep(0.01)
    start.touch()
    claims: list[list[str]] = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        claims.append([line for line in out.splitlines() if line])
    _assert_exactly_once(expected, claims)
