"""The optional in-process producer for development and single-server hosts.

It starts when the process that serves the app starts, so an idle server still
runs its crons: when ``init_app`` runs in a gunicorn worker, in the process
``flask run`` serves from (the reloader's child, or the only process without a
reloader), or, for ``gunicorn --preload``, in each worker right after the
master forks it. Never in the reloader's parent (it serves nothing and keeps
the old code), in CLI commands (``flask db upgrade``, ``flask queue ...``), in
a pre-forking master (threads do not survive a fork), or in a script or test
that only builds the app. Where the server is not recognised (waitress, uWSGI,
``app.run()``) the first request starts it, as before. One per app and process.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import weakref
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import click

from .producer import produce

if TYPE_CHECKING:
    from flask import Flask

    from .state import QueueState

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

    def ensure() -> None:
        if state.scheduler is None:
            with lock:
                if state.scheduler is None:
                    start_scheduler(state)

    # Wherever this process turns out to serve from, its first request starts it.
    state.app.before_request(ensure)
    where = _serving(state.app)
    if where == "here":
        ensure()
    elif where == "workers":
        _start_in_forked_workers(state, os.getpid())


def _serving(app: Flask) -> str | None:
    """``"here"`` when this process serves the app's requests, ``"workers"``
    when it is a gunicorn master that built the app before forking its workers
    (``--preload``), None when it does not serve or cannot tell."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        # Built by the flask CLI: only `flask run` serves, and with its reloader
        # only from the child the reloader starts (WERKZEUG_RUN_MAIN).
        if ctx.command.name != "run":
            return None
        from flask.helpers import get_debug_flag
        from werkzeug.serving import is_running_from_reloader

        reload = ctx.params.get("reload")
        if reload is None:
            reload = get_debug_flag()
        return "here" if not reload or is_running_from_reloader() else None
    if os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn/"):
        return "here" if _in_gunicorn_worker() else "workers"
    return None


def _in_gunicorn_worker() -> bool:
    # A worker installs its signal handlers before it loads the app; the master
    # loads a preloaded app before it installs any.
    base = sys.modules.get("gunicorn.workers.base")
    handler = signal.getsignal(signal.SIGQUIT)
    return base is not None and isinstance(getattr(handler, "__self__", None), base.Worker)


def _start_in_forked_workers(state: QueueState, master: int) -> None:
    ref = weakref.ref(state)

    def forked() -> None:
        state = ref()
        # Only the master's own children: a handler that forks (multiprocessing)
        # must not start another producer in its child.
        if state is None or os.getppid() != master or state.scheduler is not None:
            return
        try:
            # The master's pooled connections are not this process's to use
            # (SQLAlchemy: dispose without closing in a forked child).
            with state.app.app_context():
                state.store.engine.dispose(close=False)
            start_scheduler(state)
        except Exception:
            log.exception("flask_queue: could not start the in-process producer in a worker")

    os.register_at_fork(after_in_child=forked)


def start_scheduler(state: QueueState) -> None:
    """Run ``produce`` every ``QUEUE_PRODUCE_INTERVAL`` on a background thread."""
    from apscheduler.schedulers.background import BackgroundScheduler

    def tick() -> None:
        with state.app.app_context():
            try:
                produce(state)
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
