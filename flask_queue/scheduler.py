"""The optional in-process producer for development and single-server hosts.

Started on the app's first request, not in ``init_app``: ``flask run --debug``
imports the app in the reloader's parent process too (which serves nothing), and
CLI commands such as ``flask db upgrade`` build the app without serving it. Only
a process that serves requests gets a scheduler, and only one per app.
"""

from __future__ import annotations

import atexit
import logging
import threading
from datetime import datetime, timezone
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .extension import QueueState

log = logging.getLogger("flask_queue")


def require_apscheduler() -> None:
    try:
        import apscheduler  # noqa: F401
    except ImportError:
        from .errors import ConfigError

        raise ConfigError(
            "QUEUE_SCHEDULER=True needs APScheduler: pip install 'flask_queue[scheduler]'."
        ) from None


def install_scheduler(state: QueueState) -> None:
    lock = threading.Lock()

    @state.app.before_request
    def _start_scheduler() -> None:
        if state.scheduler is None:
            with lock:
                if state.scheduler is None:
                    start_scheduler(state)


def start_scheduler(state: QueueState) -> None:
    """Run ``produce`` every ``QUEUE_PRODUCE_INTERVAL`` on a background thread."""
    from apscheduler.schedulers.background import BackgroundScheduler

    def tick() -> None:
        with state.app.app_context():
            try:
                state.queue.produce()
            except Exception:
                log.exception("flask_queue: scheduled produce failed")

    scheduler = BackgroundScheduler(daemon=True)
    scheduler.add_job(
        tick,
        "interval",
        seconds=state.config.produce_interval.total_seconds(),
        id="flask_queue.produce",
        max_instances=1,
        coalesce=True,
        next_run_time=None,
    )
    scheduler.start()
    # The first tick right away, so a just-started dev server runs what is due.
    scheduler.modify_job("flask_queue.produce", next_run_time=datetime.now(timezone.utc))
    state.scheduler = scheduler
    atexit.register(lambda: scheduler.running and scheduler.shutdown(wait=False))
    log.info("flask_queue: in-process producer every %s", state.config.produce_interval)
