"""Executors hand claimed jobs to whatever runs them.

``inline`` runs in the caller (tests, scripts); ``thread`` on an in-process pool;
``http`` POSTs a signed request to the app's own invoke endpoint, so the run
happens in a request of its own (a serverless function, another worker). None
of them loses a job: a run that never starts is recovered by ``release`` (the
dispatch failed and we know it) or by the lease (we do not know).
"""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, Protocol

from .runner import run_job
from .signing import sign_invoke

if TYPE_CHECKING:
    from .extension import QueueState

log = logging.getLogger("flask_queue")


class Deliverable(Protocol):
    """A run to deliver: a claimed job, or a job enqueued as due now."""

    @property
    def id(self) -> str: ...

    @property
    def attempt(self) -> int: ...


class Executor:
    """Delivers runs. ``submit`` takes a claimed run; ``dispatch`` takes a job that
    was just enqueued as due now, claims it (unless a producer got there first)
    and delivers it. Until that claim the job is a plain due SCHEDULED row, so a
    dispatch that never happens (the process froze or died) is picked up by the
    next produce, not after a lease."""

    name = "base"

    def __init__(self, state: QueueState) -> None:
        self.state = state

    def deliver(self, job: Deliverable) -> None:
        """Deliver one claimed run, in the calling thread."""
        raise NotImplementedError

    def submit(self, job: Deliverable) -> None:
        self.deliver(job)

    def dispatch(self, job_id: str) -> None:
        self._claim_and_deliver(job_id)

    def _claim_and_deliver(self, job_id: str) -> None:
        claimed = self.state.store.claim_one(job_id, self.state.config.lease)
        if claimed is not None:
            self.deliver(claimed)

    def capacity(self) -> int:
        """How many more jobs it can take now without piling them up."""
        return self.state.config.batch_size

    def flush(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until what was submitted has been handed off."""

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking work; with ``wait``, let what runs finish."""


class InlineExecutor(Executor):
    name = "inline"

    def deliver(self, job: Deliverable) -> None:
        run_job(self.state, job.id, job.attempt)


class _PoolExecutor(Executor):
    def __init__(self, state: QueueState, workers: int) -> None:
        super().__init__(state)
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._pending: set[Future[Any]] = set()

    def submit(self, job: Deliverable) -> None:
        self._submit(self.deliver, job)

    def dispatch(self, job_id: str) -> None:
        # The claim happens on the pool too: enqueue returns at once.
        self._submit(self._claim_and_deliver, job_id)

    def _submit(self, fn: Any, *args: Any) -> None:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="flask_queue")
            future = self._pool.submit(fn, *args)
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)
        if future.exception() is not None:
            log.error("flask_queue: executor task failed", exc_info=future.exception())

    def inflight(self) -> int:
        with self._lock:
            return len(self._pending)

    def flush(self, timeout: float) -> None:
        with self._lock:
            pending = list(self._pending)
        if pending:
            wait(pending, timeout=max(timeout, 0))

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait)


class ThreadExecutor(_PoolExecutor):
    name = "thread"

    def __init__(self, state: QueueState, workers: int | None = None) -> None:
        super().__init__(state, workers or state.config.threads)

    def deliver(self, job: Deliverable) -> None:
        run_job(self.state, job.id, job.attempt)

    def capacity(self) -> int:
        # Claim only what the pool can start soon: a claimed job waiting in the
        # pool's queue holds a lease that nothing is using.
        return max(0, 2 * self.workers - self.inflight())

    def flush(self, timeout: float) -> None:
        # Runs are not hand-offs: produce must not wait for handlers to finish.
        return None


class HttpExecutor(_PoolExecutor):
    """POST ``sign_invoke(id, attempt)`` to the invoke URL from a small send pool.

    The sender waits at most ``QUEUE_DISPATCH_TIMEOUT`` for the response's status:
    long handlers keep running server-side after we stop listening (WSGI servers
    run the app to completion), and a quick 4xx/5xx or a refused connection is
    seen in time to release the job for the next produce.
    """

    name = "http"

    def __init__(self, state: QueueState) -> None:
        super().__init__(state, workers=max(4, state.config.threads))

    def deliver(self, job: Deliverable) -> None:
        self.send(job.id, job.attempt)

    def send(self, job_id: str, attempt: int) -> str:
        config = self.state.config
        assert config.invoke_url is not None
        request = urllib.request.Request(
            config.invoke_url,
            data=sign_invoke(config.secret_keys, job_id, attempt),
            headers={"Content-Type": "text/plain", "User-Agent": "flask_queue"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(
                request, timeout=config.dispatch_timeout.total_seconds()
            ) as response:
                return f"http {response.status}"
        except urllib.error.HTTPError as exc:
            if exc.code >= 500:
                self._release(job_id, attempt, f"invoke answered {exc.code}")
            return f"http {exc.code}"
        except TimeoutError:
            # urllib raises a bare timeout only while waiting for the response:
            # the request went out and the handler may be running for minutes.
            # Its lease guards it.
            return "sent"
        except OSError as exc:
            # Refused, unreachable, or timed out connecting or sending (urllib
            # wraps those in URLError): the run never started. Releasing it is
            # safe even if the request did arrive: only one start can win, and a
            # released job's attempt is no longer startable.
            reason = getattr(exc, "reason", exc)
            self._release(job_id, attempt, f"could not reach {config.invoke_url}: {reason}")
            return "refused"

    def _release(self, job_id: str, attempt: int, why: str) -> None:
        log.warning("flask_queue: dispatch of job %s failed (%s); released for retry", job_id, why)
        try:
            with self.state.app.app_context():
                self.state.store.release(job_id, attempt)
        except Exception:
            log.exception("flask_queue: could not release job %s; its lease will", job_id)


def make_executor(state: QueueState, name: str | None = None) -> Executor:
    kind = name or state.config.executor
    if kind == "inline":
        return InlineExecutor(state)
    if kind == "thread":
        return ThreadExecutor(state)
    return HttpExecutor(state)


__all__ = ["Executor", "HttpExecutor", "InlineExecutor", "ThreadExecutor"]
