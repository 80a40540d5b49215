"""What a ``Queue`` declares, the same for every app it serves: handlers, crons,
their limits, the dashboard guard and the clock.

Nothing here touches an app or a database; ``state.py`` holds what each app has.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast

from .durations import Duration
from .errors import ConfigError, InvalidOptionError, UnknownQueueError, shown
from .job import Job
from .planning import (
    MAX_NAME,
    EnqueueOptions,
    RetryPolicy,
    check_event_name,
    check_key,
    check_priority,
    check_text,
    check_timeout,
    parse_rate,
)
from .scheduling import retry_delays, validate_cron, zone
from .store.crons import CRON_ID_PREFIX
from .store.queues import DeclaredLimits

if TYPE_CHECKING:
    from typing_extensions import Unpack

T = TypeVar("T")
R = TypeVar("R")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class Limits:
    """What a queue may run at once and how fast, across every process."""

    #: At most this many of the queue's jobs RUNNING at any instant (1: exclusive).
    concurrency: int | None = None
    #: At most ``rate[0]`` runs start in any window of ``rate[1]``.
    rate: tuple[int, timedelta] | None = None
    #: Due jobs are claimed round-robin across keys.
    fair: bool = False

    @classmethod
    def declare(cls, *, concurrency: int | None, exclusive: bool, rate: str | None) -> Limits:
        if exclusive and concurrency not in (None, 1):
            raise InvalidOptionError(
                f"exclusive=True runs one job at a time; it contradicts concurrency={shown(concurrency)}."
            )
        if exclusive:
            concurrency = 1
        if concurrency is not None and (
            isinstance(concurrency, bool)
            or not isinstance(concurrency, int)
            or not 1 <= concurrency <= 10_000
        ):
            raise InvalidOptionError(
                f"Invalid concurrency {shown(concurrency)}: use an int from 1 to 10000."
            )
        return cls(concurrency=concurrency, rate=parse_rate(rate) if rate is not None else None)

    def __bool__(self) -> bool:
        return self.concurrency is not None or self.rate is not None or self.fair


class Enqueuer(Protocol):
    """What a ``Handler`` calls to enqueue: the ``Queue`` that registered it.

    A protocol, not ``Queue``, so the registry sits below the facade that
    composes it (LAYOUT.md: a field typed ``Queue`` drew a 14-module circle)."""

    def enqueue(self, name: str, payload: Any, **options: Any) -> Job[Any]: ...
    def enqueue_many(
        self, name: str, payloads: Iterable[Any], **options: Any
    ) -> list[Job[Any]]: ...


class Handler(Generic[T, R]):
    """A registered handler: callable like the function it wraps, plus
    ``enqueue`` typed against the handler's ``Job[T]``."""

    def __init__(
        self,
        queue: Enqueuer,
        name: str,
        func: Callable[[Job[T]], R],
        retry: list[timedelta] | None,
        *,
        priority: int = 0,
        limits: Limits | None = None,
        timeout: timedelta | None = None,
        key: Callable[[T], str] | None = None,
        events: tuple[str, ...] = (),
    ) -> None:
        self.queue = queue
        #: The event names whose ``queue.emit`` enqueues a job of this queue.
        self.events = events
        #: The key of a job enqueued without ``key=``: a function of its payload.
        self.key = key
        #: A run still going after this long fails (and is retried by its policy).
        self.timeout = timeout
        self.name = name
        self.func = func
        self.retry = retry
        #: The priority of this queue's jobs unless ``enqueue(priority=)`` says otherwise.
        self.priority = priority
        #: Concurrency and rate limits, enforced by every claim in every process.
        self.limits = limits or Limits()
        self.__doc__ = func.__doc__
        self.__name__ = getattr(func, "__name__", name)
        self.__wrapped__ = func
        #: An ``async def`` handler: each run gets an event loop of its own.
        self.is_async = inspect.iscoroutinefunction(func)

    def __call__(self, job: Job[T]) -> R:
        return self.func(job)

    def key_of(self, payload: T) -> str | None:
        """The key of a job of this payload: the handler's key function's, checked
        (None without one). One that raises or returns anything but a str is an
        ``InvalidOptionError`` naming it, and the enqueue stores nothing."""
        if self.key is None:
            return None
        name = getattr(self.key, "__qualname__", repr(self.key))
        try:
            key = self.key(payload)
        except Exception as exc:
            raise InvalidOptionError(
                f"The key function {name} of queue {self.name!r} raised {exc!r}"
                f" for the payload {shown(payload)}."
            ) from exc
        return check_key(key, f" from the key function {name} of queue {self.name!r}")

    def run(self, job: Job[T]) -> Any:
        """Run the handler to completion, as the runner does. An ``async def``
        handler runs in ``asyncio.run`` on the runner's thread (each runner
        thread has no loop of its own), so it may await I/O but shares nothing
        with other runs; the app context the runner pushed is current inside."""
        if self.is_async:
            control = job.__dict__.get("_control")
            if control is not None:  # a cancel or the timeout cancels the task
                return control.run_async(self.func(job))
            return asyncio.run(self.func(job))  # type: ignore[arg-type]
        return self.func(job)

    def __repr__(self) -> str:
        return f"<Handler {self.name!r}>"

    def enqueue(self, payload: T, **options: Unpack[EnqueueOptions]) -> Job[T]:
        """``queue.enqueue(name, payload, **options)``, typed against ``Job[T]``."""
        return self.queue.enqueue(self.name, payload, **options)

    def enqueue_many(
        self, payloads: Iterable[T], **options: Unpack[EnqueueOptions]
    ) -> list[Job[T]]:
        return self.queue.enqueue_many(self.name, payloads, **options)


@dataclass
class Cron:
    """A ``@queue.cron`` declaration: kept in the table as exactly one row."""

    name: str
    expr: str
    tz: str
    retry: list[timedelta] | None


class Registry:
    """Handlers, crons and the dashboard guard that a ``Queue`` declares.

    ``Queue`` extends it with the per-app calls; code below the facade
    (state, runner, producer, views) sees only this."""

    def __init__(self, *, clock: Callable[[], datetime] | None = None) -> None:
        #: Returns the current time (aware UTC). Tests swap it for a frozen clock.
        self.clock: Callable[[], datetime] = clock or utcnow
        self.handlers: dict[str, Handler[Any, Any]] = {}
        self.crons: dict[str, Cron] = {}
        self.dashboard_auth_callback: Callable[[], bool] | None = None

    def handler(
        self,
        name: str,
        *,
        retry: RetryPolicy | None = None,
        priority: int = 0,
        concurrency: int | None = None,
        exclusive: bool = False,
        rate: str | None = None,
        timeout: Duration | None = None,
        key: Callable[[Any], str] | None = None,
        fair: bool = False,
        events: Iterable[str] = (),
    ) -> Callable[[Callable[[Job[T]], R]], Handler[T, R]]:
        """Register the decorated function as the handler of queue ``name``.

        ``priority`` is its jobs' default (higher runs first). ``concurrency=N``:
        never more than N of this queue's jobs RUNNING at once, across every
        process; ``exclusive=True`` is ``concurrency=1``. ``rate="10/s"``: no
        more than 10 runs start in any second, across every process.
        ``timeout="30s"``: a run still going then is a failed attempt (an async
        handler is cancelled; a sync one is asked to stop, see ``job.check``).

        ``key=lambda payload: payload["tenant"]``: each job's key, unless
        ``enqueue(key=)`` names one; the limits then hold per key ("one sync per
        tenant at a time"), and jobs without a key share one group. ``fair=True``:
        due jobs are claimed round-robin across keys, so one key's backlog does
        not hold the others back.

        ``events=["booking.created"]``: every ``queue.emit("booking.created",
        data)`` enqueues a job of this queue with ``data`` as its payload.
        """
        # NUL as for custom ids: PostgreSQL cannot store it, and the dashboard can
        # then answer a NUL in a queue filter as "no such queue" on every database.
        if not isinstance(name, str) or not name or len(name) > 255 or "\x00" in name:
            raise InvalidOptionError(
                f"Invalid queue name {shown(name)}: use a non-empty string of at most 255"
                " characters, without NUL."
            )
        check_text(name, "queue name")
        delays = retry_delays(retry) if retry is not None else None
        check_priority(priority)
        limits = Limits.declare(concurrency=concurrency, exclusive=exclusive, rate=rate)
        limit = check_timeout(timeout)
        if key is not None and not callable(key):
            raise InvalidOptionError(
                f"Invalid key {shown(key)} for queue {name!r}: pass a function of the"
                " payload that returns a str, or enqueue(key=...) per job."
            )
        if not isinstance(fair, bool):
            raise InvalidOptionError(f"Invalid fair {shown(fair)}: use True or False.")
        limits = dataclasses.replace(limits, fair=fair)
        if isinstance(events, str) or not isinstance(events, Iterable):
            raise InvalidOptionError(
                f"Invalid events {shown(events)} for queue {name!r}: pass a list of event"
                " names, e.g. events=['booking.created']."
            )
        subscribed = tuple(dict.fromkeys(check_event_name(e) for e in events))

        def decorator(func: Callable[[Job[T]], R]) -> Handler[T, R]:
            if name in self.handlers:
                raise ConfigError(f"Queue {name!r} already has a handler.")
            # The Queue that extends this registry is what its handlers enqueue through.
            handle: Handler[T, R] = Handler(
                cast(Enqueuer, self),
                name,
                func,
                delays,
                priority=priority,
                limits=limits,
                timeout=limit,
                key=key,
                events=subscribed,
            )
            self.handlers[name] = handle
            return handle

        return decorator

    def cron(
        self,
        expr: str,
        *,
        name: str | None = None,
        tz: str = "UTC",
        retry: RetryPolicy | None = None,
    ) -> Callable[[Callable[[Job[None]], R]], Handler[None, R]]:
        """Declare a repeating job: kept as exactly one row, synced at each produce.

        Removing the declaration removes the row at the next sync; changing the
        expression or timezone updates it.
        """
        validate_cron(expr)
        zone(tz)
        if name is not None:
            _check_cron_name(name)

        def decorator(func: Callable[[Job[None]], R]) -> Handler[None, R]:
            cron_name = name or func.__name__
            _check_cron_name(cron_name)
            handle: Handler[None, R] = self.handler(cron_name, retry=retry)(func)
            self.crons[cron_name] = Cron(cron_name, expr, tz, handle.retry)
            return handle

        return decorator

    def dashboard_auth(self, func: Callable[[], bool]) -> Callable[[], bool]:
        """Register the callback that guards the dashboard: return True to allow."""
        self.dashboard_auth_callback = func
        return func

    def known(self, name: str) -> str:
        """``name``, when a handler is registered for it."""
        if name not in self.handlers:
            known = ", ".join(sorted(self.handlers)) or "none"
            raise UnknownQueueError(f"Unknown queue {shown(name)} (registered: {known}).")
        return name

    def priority_of(self, name: str, priority: int | None) -> int:
        """``priority``, or the handler's default when None."""
        if priority is not None:
            return priority
        handler = self.handlers.get(name)
        return handler.priority if handler is not None else 0

    def declared_limits(self) -> dict[str, DeclaredLimits]:
        """Each queue's (concurrency, rate, fair), as the store keeps them."""
        return {
            n: (h.limits.concurrency, h.limits.rate, h.limits.fair)
            for n, h in self.handlers.items()
        }


def _check_cron_name(name: str) -> None:
    # The cron's row is found by the custom id prefix + name, stored in a
    # 255-character column: refuse here what the database would refuse later.
    room = MAX_NAME - len(CRON_ID_PREFIX)
    if not isinstance(name, str) or not name or len(name) > room:
        raise InvalidOptionError(
            f"Invalid cron name {shown(name)}: use a non-empty string of at most {room} characters."
        )
    check_text(name, "cron name")
