"""Long-lived loops: ``flask queue produce --loop`` and ``flask queue work``."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .executors import ThreadExecutor

if TYPE_CHECKING:
    from .extension import Queue

log = logging.getLogger("flask_queue")


def _stop_on_signals(stop: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())


def produce_loop(
    queue: Queue,
    interval: float,
    *,
    stop: threading.Event | None = None,
    report: Callable[[str], None] = print,
) -> None:
    """Call ``produce`` every ``interval`` seconds (sooner while work is left)."""
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
    lets running handlers finish.
    """
    if stop is None:  # the CLI: SIGTERM/SIGINT stop the worker
        stop = threading.Event()
        _stop_on_signals(stop)
    state = queue.state()
    executor = ThreadExecutor(state, workers=concurrency)
    total = 0
    try:
        while not stop.is_set():
            if max_jobs is not None and total >= max_jobs:
                break
            room = executor.capacity()
            if max_jobs is not None:
                room = min(room, max_jobs - total)
            result = queue.produce(executor=executor) if room > 0 else None
            total += result.claimed if result else 0
            if result is None or not result.claimed:
                stop.wait(interval)
    finally:
        executor.shutdown(wait=True)
    report(f"worker stopped after {total} job(s)")
    return total
