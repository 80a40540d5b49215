"""What flask_queue keeps per app (``app.extensions["queue"]``), and how code
below the ``Queue`` facade finds it.

This module sits beneath the CLI, views, producer and executors so each can
import it without importing ``extension.py`` (which imports all of them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from flask import Flask, current_app

from .errors import ConfigError

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

    from .config import QueueConfig
    from .deliveries import DeliveryLog
    from .finisher import Finisher
    from .heartbeat import Heartbeat
    from .registry import Registry
    from .stats import Tally
    from .store import JobStore


class Executor(Protocol):
    """How claimed jobs reach a handler (``executors.py`` has the four kinds)."""

    #: ``QUEUE_EXECUTOR``'s name for it.
    name: str
    #: False for ``worker``: the web process claims nothing, a worker does.
    runs_jobs: bool
    #: Enqueue tells idle workers (NOTIFY) in the INSERT itself.
    notifies: bool
    #: A produce may wait for room instead of returning (``http``).
    hands_off: bool

    def submit(self, job: Any) -> Any:
        """Start one claimed run; return its outcome or a future of it."""

    def dispatch(self, job_id: str) -> None:
        """Run a job just enqueued and due now, as this executor does."""

    def dispatch_many(self, job_ids: list[str]) -> None: ...

    def claim(self, limit: int, ids: list[str] | None = None) -> list[Any]:
        """Claim up to ``limit`` due jobs (of ``ids`` only, when given)."""

    def capacity(self) -> int:
        """How many more runs this executor can take now."""

    def wait_for_room(self, timeout: float) -> None: ...

    def flush(self, timeout: float) -> None:
        """Wait up to ``timeout`` for what was submitted to be handed off."""

    def shutdown(self, wait: bool = True) -> None: ...


@dataclass
class QueueState:
    """Everything flask_queue keeps per app, in ``app.extensions["queue"]``."""

    #: The ``Queue`` (a ``Registry``) that was initialised on the app.
    queue: Registry
    app: Flask
    db: SQLAlchemy
    config: QueueConfig
    store: JobStore
    executor: Executor
    heartbeat: Heartbeat
    finisher: Finisher
    #: Runs counted for the charts, written once per interval (``stats.py``).
    tally: Tally
    #: This process's failed deliveries (``deliveries.py``).
    deliveries: DeliveryLog
    scheduler: Any = None
    #: Prometheus metrics, when prometheus_client is installed (``metrics.py``).
    metrics: Any = None


def current_state(registry: Registry | None = None, app: Flask | None = None) -> QueueState:
    """The per-app state of ``app`` (default: the current app); with
    ``registry``, only if that ``Queue`` is the one initialised on it."""
    if app is None:
        try:
            app = current_app._get_current_object()  # type: ignore[attr-defined]
        except RuntimeError:
            raise ConfigError(
                "flask_queue needs an app context: use `with app.app_context():`."
            ) from None
    state = app.extensions.get("queue")
    if state is None or (registry is not None and state.queue is not registry):
        raise ConfigError(
            f"This Queue is not initialised on app {app.name!r}: call queue.init_app(app)."
        )
    return state  # type: ignore[no-any-return]
