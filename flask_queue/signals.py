"""Signals (blinker, as Flask's own): hooks for what happens to jobs.

Each is sent in the process where the event happens, with the app as sender::

    from flask_queue.signals import job_failed

    @job_failed.connect_via(app)
    def alert(app, job, error, will_retry, **extra):
        if not will_retry:
            slack.post(f"job {job.id} ({job.queue}) gave up: {error}")

- ``job_enqueued(app, job)``: after ``enqueue``/``enqueue_many`` stored the job (with
  ``session=``, before your commit: the job may still roll back).
- ``job_started(app, job)``: a run is about to call its handler.
- ``job_succeeded(app, job, duration)``: the handler returned (seconds it took).
- ``job_failed(app, job, error, will_retry)``: the handler raised (``error`` is the
  exception), or the run's process died and the retries are used up (``error`` is
  None); ``will_retry`` says whether the job runs again by its retry policy.
- ``event_emitted(app, event)``: ``queue.emit`` stored a new event (not a duplicate
  of its id); ``event.started`` and ``event.woke`` are the jobs it enqueued and
  woke. With ``session=``, before your commit, as for ``job_enqueued``.

A receiver that raises is logged and does not change the job's outcome.
"""

from __future__ import annotations

import logging
from typing import Any

from blinker import Namespace

log = logging.getLogger("flask_queue")
_signals = Namespace()

job_enqueued = _signals.signal("job-enqueued")
job_started = _signals.signal("job-started")
job_succeeded = _signals.signal("job-succeeded")
job_failed = _signals.signal("job-failed")
event_emitted = _signals.signal("event-emitted")


def send(signal: Any, sender: Any, **kwargs: Any) -> None:
    """Send without letting a receiver's error reach the run path."""
    if not signal.receivers:
        return
    try:
        signal.send(sender, **kwargs)
    except Exception:
        log.exception("flask_queue: a receiver of %s raised", signal.name)


__all__ = ["event_emitted", "job_enqueued", "job_failed", "job_started", "job_succeeded"]
