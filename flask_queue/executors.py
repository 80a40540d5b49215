"""Executors hand claimed jobs to whatever runs them.

``inline`` runs in the caller (tests, scripts); ``thread`` on an in-process pool;
``http`` POSTs a signed request to the app's own invoke endpoint, so the run
happens in a request of its own (a serverless function, another worker). None
of them loses a job: a run that never starts is recovered by ``release`` (the
dispatch failed and we know it) or by the lease (we do not know).
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, Protocol, Union

from .deliveries import Failed
from .history import LOG_LINE, clipped
from .runner import refuse_delivery, run_claimed
from .signing import sign_invoke

if TYPE_CHECKING:
    from .state import QueueState

log = logging.getLogger("flask_queue")


#: What ``submit`` returns: a delivery's outcome, or the future of it.
Submitted = Union[Failed, None, "Future[Failed | None]"]


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

    def deliver(self, job: Deliverable) -> Failed | None:
        """Deliver one claimed run, in the calling thread: ``Failed`` when it
        surely did not reach a handler (``produce`` counts those)."""
        raise NotImplementedError

    def submit(self, job: Deliverable) -> Submitted:
        """Hand over one claimed run: what ``deliver`` returned, or the future
        of it for an executor that delivers on a pool."""
        return self.deliver(job)

    def dispatch(self, job_id: str) -> None:
        self._claim_and_deliver(job_id)

    def dispatch_many(self, job_ids: list[str]) -> None:
        """``dispatch`` for a batch enqueued as due: one claim statement for all."""
        self._claim_and_submit(job_ids)

    def claim(self, limit: int, ids: list[str] | None = None) -> list[Any]:
        """Claim up to ``limit`` due jobs (of ``ids``, if given) for ``submit``."""
        return self.state.store.claim(limit, self.state.config.lease, ids=ids)

    def _claim_and_deliver(self, job_id: str) -> None:
        claimed = self.state.store.claim_one(job_id, self.state.config.lease)
        if claimed is not None:
            self.deliver(claimed)

    def _claim_and_submit(self, job_ids: list[str]) -> None:
        # Only what can start soon: the rest stay plain due rows for the next
        # produce, rather than claimed rows whose leases run out in a queue.
        for claimed in self.claim(max(1, self.capacity()), ids=job_ids):
            self.submit(claimed)

    #: Whether ``produce`` may claim jobs for it at all.
    runs_jobs = True
    #: Whether its dispatch only wakes the workers (``JobStore.notify``), which
    #: ``enqueue`` may then fold into the INSERT.
    notifies = False

    #: Whether a submitted run is handed off quickly (an HTTP request) rather than
    #: run to completion here: produce may then wait for room and claim more
    #: within its budget, instead of claiming what it cannot send.
    hands_off = False

    def capacity(self) -> int:
        """How many more jobs it can take now without piling them up."""
        return self.state.config.batch_size

    def wait_for_room(self, timeout: float) -> None:
        """Block (at most ``timeout`` s) until ``capacity`` has room again, or
        nothing is in flight."""

    def flush(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until what was submitted has been handed off."""

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking work; with ``wait``, let what runs finish."""


class _RunsHere(Executor):
    """An executor that runs jobs in this process: its claim starts them.

    No request can be replayed between the claim and the run, so the claim
    marks the runs started (one statement for the batch, not one per job)
    and returns them whole; they are in the lease heartbeat from then on.
    """

    def claim(self, limit: int, ids: list[str] | None = None) -> list[Any]:
        state = self.state
        jobs = state.store.claim_started(limit, state.config.lease, ids=ids)
        state.heartbeat.add_many([(job.id, job.attempt) for job in jobs])
        return jobs

    def dispatch(self, job_id: str) -> None:
        self._claim_and_submit([job_id])


class InlineExecutor(_RunsHere):
    name = "inline"

    def deliver(self, job: Deliverable) -> None:
        # Written at once: the caller (a test, a script) reads the row next.
        run_claimed(self.state, job, None)  # type: ignore[arg-type]
        return None


#: How far ahead the pool executors claim: what their pool delivers within this
#: many seconds. Claimed runs wait no longer than about this in the pool's queue.
HORIZON = 0.1


class _PoolExecutor(Executor):
    def __init__(self, state: QueueState, workers: int) -> None:
        super().__init__(state)
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._pending: set[Future[Any]] = set()
        #: Notified whenever a submitted task ends (see ``wait_for_room``).
        self._freed = threading.Condition()
        #: Seconds per delivery (a run, or a send), recently: sizes the claims
        #: (see ``capacity``). Starts high: until deliveries are seen, two per thread.
        self._run_seconds = 1.0

    def submit(self, job: Deliverable) -> Submitted:
        return self._submit(self.deliver, job)

    def dispatch(self, job_id: str) -> None:
        # The claim happens on the pool too: enqueue returns at once.
        self._submit(self._claim_and_deliver, job_id)

    def dispatch_many(self, job_ids: list[str]) -> None:
        self._submit(self._claim_and_submit, job_ids)

    def _submit(self, fn: Any, *args: Any) -> Future[Any]:
        with self._lock:
            future = self._pool_now().submit(fn, *args)
            self._pending.add(future)
        future.add_done_callback(self._done)
        return future

    def _pool_now(self) -> ThreadPoolExecutor:
        # Called with the lock held.
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="flask_queue")
        return self._pool

    def _done(self, future: Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)
        with self._freed:
            self._freed.notify_all()
        # A task cancelled by ``shutdown(cancel=True)`` has no exception to ask
        # for (``exception()`` would raise CancelledError in this callback).
        if not future.cancelled() and future.exception() is not None:
            log.error("flask_queue: executor task failed", exc_info=future.exception())

    def deliver(self, job: Deliverable) -> Failed | None:
        started = time.perf_counter()
        outcome = self._deliver(job)
        # A moving average of the last deliveries' durations (races between
        # threads lose an update, never the average): the pace ``capacity`` uses.
        self._run_seconds += (time.perf_counter() - started - self._run_seconds) * 0.1
        return outcome

    def _deliver(self, job: Deliverable) -> Failed | None:
        raise NotImplementedError

    def capacity(self) -> int:
        """Room for as many deliveries (runs, or sends: a send lasts until the
        endpoint answers) as the pool makes within ``HORIZON`` at the recent
        pace — at least two per thread, at most ``QUEUE_BATCH_SIZE`` — claimed
        when the pool is down to half of that.

        Quick jobs are claimed a batch at a time (one claim statement per
        hundred no-op jobs, not per four); slow ones two per thread, so no
        claimed job waits long in the pool's queue holding a lease nothing uses,
        and a worker does not sit on jobs another worker could start now.
        """
        fits = self.workers * HORIZON / max(self._run_seconds, 1e-6)
        return self._room(max(2 * self.workers, min(self.state.config.batch_size, int(fits))))

    def _room(self, target: int) -> int:
        """Room up to ``target`` in flight, once the pool is down to half of it:
        refilling at every free slot would shrink claims to one job each, a
        claim statement per job."""
        inflight = self.inflight()
        if inflight > target // 2:
            return 0
        return target - inflight

    def inflight(self) -> int:
        with self._lock:
            return len(self._pending)

    def wait_for_room(self, timeout: float) -> None:
        # Until there is room, not just until one task ends: with a batch in
        # flight ``capacity`` stays 0 until half of it is sent, and waiting on
        # every pending future once per completion (``concurrent.futures.wait``)
        # cost the producer O(in flight) lock operations per job sent.
        # (Lock order: ``_freed``, then ``_lock`` inside ``capacity``; ``_done``
        # never holds both.)
        with self._freed:
            self._freed.wait_for(
                lambda: self.capacity() > 0 or not self.inflight(), timeout=max(timeout, 0)
            )

    def wait_for_a_run(self, before: int, timeout: float) -> None:
        """Until fewer than ``before`` deliveries are in flight (one ended
        since the caller counted them), or ``timeout``."""
        with self._freed:
            self._freed.wait_for(lambda: self.inflight() < before, timeout=max(timeout, 0))

    def flush(self, timeout: float) -> None:
        with self._lock:
            pending = list(self._pending)
        if pending:
            wait(pending, timeout=max(timeout, 0))

    def shutdown(self, wait: bool = True, *, cancel: bool = False) -> None:
        """Stop taking work; with ``wait``, let what runs finish. With ``cancel``
        what was submitted but has not begun never begins (a worker stopped at
        once hands those runs back); what has begun goes on in its thread.

        A task may submit more (a claim submits its runs): those land in a
        fresh pool, so waiting goes on until a pass finds no pool left.
        """
        while True:
            with self._lock:
                pool, self._pool = self._pool, None
            if pool is None:
                return
            pool.shutdown(wait=wait, cancel_futures=cancel)
            if not wait:
                return


class ThreadExecutor(_PoolExecutor, _RunsHere):
    """Runs jobs on a pool of ``workers`` threads, one job per thread at a time.

    A handler that blocks on I/O holds its thread (and releases the GIL), so
    ``workers`` is how many jobs run at once; CPU-bound handlers share one core
    whatever the number. Outcomes are written in batches by the app's
    :class:`~flask_queue.finisher.Finisher`.
    """

    name = "thread"

    def __init__(self, state: QueueState, workers: int | None = None) -> None:
        super().__init__(state, workers or state.config.threads)
        # Claimed runs wait here, not as one pool task each: up to ``workers``
        # drain tasks take them in order. A future, its condition and its done
        # callback per run were a quarter of a draining worker's samples on
        # no-op jobs; the order and the concurrency are the pool queue's.
        self._runs: collections.deque[Deliverable] = collections.deque()
        #: Runs submitted and not ended (waiting here, or running); under _lock.
        self._queued = 0
        #: Drain tasks alive; under _lock.
        self._drainers = 0

    def dispatch(self, job_id: str) -> None:
        # The claim happens on the pool too: enqueue returns at once.
        self._submit(self._claim_and_submit, [job_id])

    def submit(self, job: Deliverable) -> Submitted:
        with self._lock:
            self._runs.append(job)
            self._queued += 1
            if self._drainers >= self.workers:
                return None
            self._drainers += 1
            drainer = self._pool_now().submit(self._drain)
        drainer.add_done_callback(self._drainer_cancelled)
        return None

    def _drainer_cancelled(self, future: Future[None]) -> None:
        # ``shutdown(cancel=True)`` cancels a drain task that never began.
        if future.cancelled():
            with self._lock:
                self._drainers -= 1

    def _drain(self) -> None:
        """Run waiting runs one after another until none waits."""
        while True:
            with self._lock:
                if not self._runs:
                    self._drainers -= 1
                    return
                job = self._runs.popleft()
            try:
                self.deliver(job)
            except Exception:
                log.exception("flask_queue: executor task failed")
            except BaseException:
                with self._lock:
                    self._drainers -= 1
                raise
            finally:
                with self._lock:
                    self._queued -= 1
                with self._freed:
                    self._freed.notify_all()

    def inflight(self) -> int:
        with self._lock:
            return len(self._pending) + self._queued

    def _deliver(self, job: Deliverable) -> None:
        run_claimed(self.state, job, self.state.finisher)  # type: ignore[arg-type]
        return None

    def flush(self, timeout: float) -> None:
        # Runs are not hand-offs: produce must not wait for handlers to finish.
        return None

    def shutdown(self, wait: bool = True, *, cancel: bool = False) -> None:
        if cancel:
            # What has not begun never begins (the worker hands those runs back).
            with self._lock:
                self._queued -= len(self._runs)
                self._runs.clear()
        super().shutdown(wait=wait, cancel=cancel)
        # The outcomes of the runs that ended are written before the process
        # goes: a worker told to stop leaves no finished run RUNNING. Without
        # ``wait`` (interpreter exit) one try: exit must not wait out an outage.
        self.state.finisher.flush(None if wait else 0)


class HttpExecutor(_PoolExecutor):
    """POST ``sign_invoke(id, attempt)`` to the invoke URL from a small send pool.

    The sender waits at most ``QUEUE_DISPATCH_TIMEOUT`` for the response's status:
    long handlers keep running server-side after we stop listening (WSGI servers
    run the app to completion), and a quick 4xx/5xx or a refused connection is
    seen in time to release the job for the next produce.
    """

    name = "http"
    hands_off = True

    def __init__(self, state: QueueState) -> None:
        super().__init__(state, workers=max(4, state.config.threads))
        # Redirects are not followed: a 3xx means the URL is wrong (http vs https,
        # a missing trailing slash, a login page), and following it would POST
        # the signed token to wherever it points.
        self._opener = urllib.request.build_opener(_NoRedirect)

    def _deliver(self, job: Deliverable) -> Failed | None:
        return self._send(job.id, job.attempt)[1]

    def send(self, job_id: str, attempt: int) -> str:
        """Send one run; what happened, in a word or two ("http 200", "refused")."""
        return self._send(job_id, attempt)[0]

    def _send(self, job_id: str, attempt: int) -> tuple[str, Failed | None]:
        config = self.state.config
        assert config.invoke_url is not None
        request = urllib.request.Request(
            config.invoke_url,
            data=sign_invoke(config.secret_keys, job_id, attempt),
            headers={"Content-Type": "text/plain", "User-Agent": "flask_queue"},
            method="POST",
        )
        try:
            with self._opener.open(
                request, timeout=config.dispatch_timeout.total_seconds()
            ) as response:
                if not _ours(response.read(4096), job_id):
                    # A 2xx that is not the invoke endpoint's answer (a catch-all
                    # page at a wrong URL): the run never started and never will.
                    why = (
                        f"{config.invoke_url} answered HTTP {response.status} but is not"
                        " flask_queue's invoke endpoint (check QUEUE_BASE_URL /"
                        " QUEUE_INVOKE_URL and QUEUE_URL_PREFIX)."
                    )
                    return "refused", self._refuse(job_id, attempt, why)
                self.state.deliveries.delivered()
                return f"http {response.status}", None
        except urllib.error.HTTPError as exc:
            if exc.code >= 500 or exc.code in (408, 425, 429):
                # Not delivered for sure (a 5xx, or a timeout or throttling
                # answer from a gateway), or the run started and its own lease
                # recovers it: release touches only an attempt nobody started.
                why = f"{config.invoke_url} answered HTTP {exc.code}"
                return f"http {exc.code}", self._release(job_id, attempt, why)
            return f"http {exc.code}", self._refuse(
                job_id, attempt, _refusal(config.invoke_url, exc)
            )
        except TimeoutError:
            # urllib raises a bare timeout only while waiting for the response:
            # the request went out and the handler may be running for minutes.
            # Its lease guards it.
            return "sent", None
        except OSError as exc:
            # Refused, unreachable, or timed out connecting or sending (urllib
            # wraps those in URLError): the run never started. Releasing it is
            # safe even if the request did arrive: only one start can win, and a
            # released job's attempt is no longer startable.
            reason = getattr(exc, "reason", exc)
            why = f"could not reach {config.invoke_url}: {reason}"
            return "refused", self._release(job_id, attempt, why)

    def _refuse(self, job_id: str, attempt: int, reason: str) -> Failed | None:
        """Record a definite refusal; a failed delivery unless the attempt had
        started or finished elsewhere (our own endpoint's 404 or 409 then)."""
        try:
            outcome = refuse_delivery(self.state, job_id, attempt, reason)
        except Exception:
            log.exception("flask_queue: could not record the refusal of job %s", job_id)
        else:
            if outcome == "ignored":
                return None
        return self.state.deliveries.failed(reason)

    def _release(self, job_id: str, attempt: int, why: str) -> Failed | None:
        """Give the run back for the next produce; a failed delivery unless the
        run had started after all (then its lease guards it)."""
        log.warning(
            "flask_queue: dispatch of job %s failed (%s); released for retry",
            job_id,
            clipped(why, LOG_LINE - 100),
        )
        try:
            with self.state.app.app_context():
                if not self.state.store.release(job_id, attempt):
                    return None
        except Exception:
            log.exception("flask_queue: could not release job %s; its lease will", job_id)
        return self.state.deliveries.failed(why)


class WorkerExecutor(Executor):
    """Runs nothing in this process: ``flask queue work`` processes run the jobs.

    For a web app with workers beside it. Enqueue only stores the job; one
    enqueued as due wakes the idle workers at once (PostgreSQL NOTIFY, sent
    after the commit), and elsewhere the workers find it at their next poll.
    ``produce`` here claims nothing (it still syncs crons and purges history).
    """

    name = "worker"
    runs_jobs = False
    notifies = True

    def dispatch(self, job_id: str) -> None:
        self._notify()

    def dispatch_many(self, job_ids: list[str]) -> None:
        self._notify()

    def _notify(self) -> None:
        try:
            self.state.store.notify()
        except Exception as exc:  # noqa: BLE001 - the job is stored; workers poll for it
            log.warning("flask_queue: could not wake the workers (%s); they will poll", exc)

    def capacity(self) -> int:
        return 0


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx status


def _refusal(url: str | None, exc: urllib.error.HTTPError) -> str:
    where = exc.headers.get("Location") if 300 <= exc.code < 400 else None
    hint = {
        400: "a CSRF check or a body the endpoint could not read",
        401: "the signature was refused: QUEUE_SECRET differs between sender and app",
        403: "the signature was refused, or a guard in front of the app blocked it",
        404: "no invoke endpoint there: check QUEUE_URL_PREFIX and the base URL",
        405: "the URL does not accept POST: check QUEUE_INVOKE_URL",
    }.get(exc.code, "the request was refused")
    moved = f" (redirect to {where}, not followed)" if where else ""
    return f"The invoke request to {url} was refused with HTTP {exc.code}{moved}: {hint}."


def _ours(body: bytes, job_id: str) -> bool:
    """Whether a 2xx body is the invoke endpoint's JSON answer for this job."""
    try:
        answer = json.loads(body)
    except ValueError:
        return False
    return isinstance(answer, dict) and answer.get("id") == job_id


def make_executor(state: QueueState, name: str | None = None) -> Executor:
    kind = name or state.config.executor
    if kind == "inline":
        return InlineExecutor(state)
    if kind == "thread":
        return ThreadExecutor(state)
    if kind == "worker":
        return WorkerExecutor(state)
    return HttpExecutor(state)


__all__ = ["Executor", "HttpExecutor", "InlineExecutor", "ThreadExecutor", "WorkerExecutor"]
