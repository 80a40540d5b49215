"""Long-lived loops: ``flask queue produce --loop`` and ``flask queue work``."""

from __future__ import annotations

import logging
import math
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import InvalidOptionError
from .executors import ThreadExecutor

if TYPE_CHECKING:
    from .extension import Queue

log = logging.getLogger("flask_queue")


def _stop_on_signals(stop: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())


def _check_interval(interval: float) -> None:
    # Zero or less would wait for nothing between idle polls: a loop spinning on
    # the database hundreds of times a second. (Infinity would not wait at all:
    # Event.wait refuses it.)
    if not (interval > 0 and math.isfinite(interval)):
        raise InvalidOptionError(
            f"interval must be a finite number of seconds more than 0, got {interval!r}."
        )


def produce_loop(
    queue: Queue,
    interval: float,
    *,
    stop: threading.Event | None = None,
    report: Callable[[str], None] = print,
) -> None:
    """Call ``produce`` every ``interval`` seconds (sooner while work is left)."""
    _check_interval(interval)
    if stop is None:  # the CLI: SIGTERM/SIGINT stop the loop
        stop = threading.Event()
        _stop_on_signals(stop)
    while not stop.is_set():
        result = queue.produce()
        if result.claimed:
            report(f"claimed {result.claimed} job(s)")
        stop.wait(0 if result.more else interval)


def work(
    queue: Queue,
    *,
    concurrency: int,
    interval: float,
    stop: threading.Event | None = None,
    max_jobs: int | None = None,
    report: Callable[[str], None] = print,
) -> int:
    """Claim and run jobs on ``concurrency`` threads until stopped; return jobs run.

    The worker runs jobs itself whatever ``QUEUE_EXECUTOR`` says: it is the
    process that exists to run them. On SIGTERM/SIGINT it stops claiming and
    lets running handlers finish. ``report`` gets one line on start (what it
    serves, and how) and one on stop.
    """
    _check_interval(interval)
    state = queue.state()
    report(_started_line(queue, state.store.dialect, concurrency, interval, max_jobs))
    if stop is None:  # the CLI: SIGTERM/SIGINT stop the worker
        stop = threading.Event()
        _stop_on_signals(stop)
    executor = ThreadExecutor(state, workers=concurrency)
    total = 0
    try:
        while not stop.is_set():
            left = None if max_jobs is None else max_jobs - total
            if left is not None and left <= 0:
                break
            # produce claims in batches of up to twice the pool: without the
            # limit, --max-jobs 1 would claim (and run) a whole batch.
            result = (
                queue.produce(executor=executor, limit=left) if executor.capacity() > 0 else None
            )
            total += result.claimed if result else 0
            if result is None or not result.claimed:
                stop.wait(interval)
    finally:
        executor.shutdown(wait=True)
    report(f"worker stopped after {total} job(s)")
    return total


def _started_line(
    queue: Queue, dialect: str, concurrency: int, interval: float, max_jobs: int | None
) -> str:
    names = ", ".join(queue.handlers) or "(none registered)"
    line = (
        f"worker started: queues {names}; concurrency {concurrency};"
        f" idle poll {interval}s; database {dialect}"
    )
    return line if max_jobs is None else f"{line}; stops after {max_jobs} job(s)"
