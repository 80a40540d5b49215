"""flask_queue side by side with Procrastinate and RQ, on PostgreSQL, on this machine.

    make -f bench/peers.mk bench-peers    # its own .bench-venv, then the line below
    .bench-venv/bin/python -m bench.peers [--jobs 5000] [--rounds 3] [--smoke]
                                          [--only drain,latency,enqueue,http]

The peers come from ``bench/peers-requirements.txt`` into ``.bench-venv`` only; they are
no dependency of flask_queue. A peer whose package cannot be imported is skipped with a
printed reason; anything else that goes wrong (PostgreSQL or Redis down, a worker that
fails) is an error. ``--smoke`` (40 jobs, 1 round, short timeouts) checks that every
measure runs, in well under a minute; its figures mean nothing.

Where things live: PostgreSQL at ``--pg`` (default ``postgresql://postgres@127.0.0.1:5432``),
in a database ``bench_peers`` created if missing (so the test suite's ``test`` database is
never touched), in a schema of this run's own (``peers_<hex>``, every connection's
``search_path``) that is dropped at the end with everything in it, Procrastinate's tables
included. Redis at ``--redis`` (default ``redis://127.0.0.1:6379/0``): every key this run
makes carries a ``peersbench-<hex>`` tag and is deleted at the end. Every subprocess
(workers, gunicorn) runs in a process group of its own and is killed at the end whatever
happens; every wait has a deadline (``--timeout``, 600 s; a drain past it is reported as
"timeout", not waited for).

Rounds alternate between systems (A B C A B C ...) so that none gets a quiet moment of the
machine to itself; each figure is the median over rounds, and each ratio is
flask_queue / peer measured in the same run. For rates (jobs/s) a ratio above 1 means
flask_queue is faster; for times (latency, ms per job) above 1 means flask_queue is slower.
Every system uses its own defaults except where a line below says otherwise.

1. Worker drain. N no-op jobs are made due before the worker starts, then each system's
   own CLI is started as a subprocess and exits by itself once the queue is empty:
   ``flask --app bench.peer_app queue work --max-jobs N`` (CLI defaults: 4 threads, 1 s
   idle poll) and the same with ``--concurrency 1``; ``procrastinate worker --one-shot``
   with ``--concurrency 8`` and a sync task, with ``--concurrency 8`` and an async task,
   and with ``--concurrency 1`` and the sync task; ``rq worker --burst -w
   rq.worker.SimpleWorker --quiet`` (RQ logs two lines per job at its default INFO level;
   ``--quiet`` makes it log no more than the others, which log nothing per job).
   Figure: jobs/s = (N - 1) / (last handler start - first handler start), both taken by
   ``time.time()`` in the no-op handler itself (``bench/peer_probe.py``: the handler's only
   statement; the times are kept in memory and written out at exit). This is the same
   clock at the same point for every system, independent of what timestamps each one
   keeps, and it leaves out what differs for reasons other than the queue: interpreter
   start, imports, connecting, and shutdown. What it also leaves out is the write of
   the last outcome(s) after the last handler start (one statement for Procrastinate
   and RQ; for flask_queue, whose worker writes outcomes in batches, the final batch's
   one statement at shutdown: its "worker stopped" line came 3-6 ms after the last
   handler here, 2026-11-29); so two more figures stand beside it: jobs/s from the first handler
   start until the parent sees the process exit — every outcome written, but also each
   system's shutdown and interpreter teardown (for ``flask`` about 0.15 s after its last
   atexit hook, a fixed cost that weighs on small N) — and the process's whole wall time
   (spawn to exit, startup included). Before each round the system's table is
   TRUNCATEd (RQ gets a fresh queue), then seeded and ANALYZEd, so every round of every
   system starts from the same state. Seeding never runs a job: flask_queue's rows are enqueued with
   ``delay="1h"`` and made due by a plain UPDATE (as ``bench.common.seed_due``), with
   ``QUEUE_KEEP_COMPLETED`` left at its default (completed rows deleted — no timestamps
   are read from rows); Procrastinate's and RQ's are deferred as due with no worker
   running. After each drain the run is checked: N handler calls, and the queue empty
   (flask_queue: no rows left; Procrastinate: N rows ``succeeded``; RQ: queue empty, N
   finished).

2. enqueue->start latency, worker mode. Each system's worker runs idle (flask_queue:
   ``flask queue work`` with CLI defaults; Procrastinate: ``procrastinate worker`` with its
   defaults — concurrency 1, LISTEN/NOTIFY on, 5 s fallback poll — and the sync task; RQ:
   ``rq worker --quiet``, its default forking worker, and ``-w rq.worker.SimpleWorker``;
   the forking worker cannot keep up with one job per 10 ms here, so its figure is a
   backlog's, not a latency floor).
   A warm-up job proves it is up; then this process enqueues one job every 10 ms, each
   carrying ``time.time()`` taken just before its enqueue call, and the handler records
   ``time.time() - that`` at its start. p50 and p99 per round, median over rounds. The
   enqueuing side of flask_queue is the web process of a "web + worker" deployment,
   ``QUEUE_EXECUTOR="worker"``: enqueue stores the job and, on PostgreSQL, NOTIFYs the
   idle workers after the commit; the worker LISTENs between its polls.

3. Enqueue throughput, N jobs, from this process, each into an empty table (TRUNCATE
   before each case, outside the timer). One per call, each its own commit:
   flask_queue ``queue.enqueue(..., delay="1h")`` (a delay, because a due job would be
   dispatched and run by the thread executor: the delay keeps it a pure store), against
   Procrastinate ``task.defer()`` (due: nothing runs it, and it is Procrastinate's
   common path; a scheduled defer fires one more trigger), RQ ``queue.enqueue`` (Redis, a
   queue no worker reads) and the baseline: a raw SQLAlchemy Core single-row INSERT on an
   autocommit connection taken from the pool per call, into a table of the same shape as
   flask_queue's (``bench.common.raw_table``). Batch: ``enqueue_many`` against
   ``batch_defer``, RQ ``enqueue_many`` (one pipeline) and a raw executemany INSERT in
   one transaction.

4. HTTP path floor. ``bench.peer_app`` under gunicorn ``-w 2`` (sync workers) with
   ``QUEUE_EXECUTOR=http``. flask_queue: N due jobs drained by calling ``queue.produce()``
   in this process until the table is empty; its http executor sends from a pool of 4
   threads (``HttpExecutor``: ``max(4, QUEUE_THREADS)``). Floor: 4 client threads send N
   POSTs to ``/floor/<id>`` on the same server, each doing two primary-key UPDATEs (each
   its own transaction) on a table of the job table's shape — the SQL of a start and a
   finish, without the queue. Same client library (urllib, a new connection per request)
   on both sides. Also single-threaded: the median time of one ``HttpExecutor.send``
   (sign, POST, verify, start, run, finish) for claimed jobs, against one floor POST.

All of this runs on the same 2 cores as PostgreSQL and Redis: the benchmark process,
the worker and the database compete for them alike in every system's rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import itertools
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.common import median, percentile, print_table, raw_table

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DATABASE = "bench_peers"
UTC = timezone.utc
PEERS = {"procrastinate": ("procrastinate", "psycopg"), "rq": ("rq", "redis")}


# -- processes ---------------------------------------------------------------------

_procs: list[subprocess.Popen[bytes]] = []


def _command(script: str, module: str) -> list[str]:
    """The venv's console script when it exists, else ``python -m``."""
    path = BIN / script
    return [str(path)] if path.exists() else [sys.executable, "-m", module]


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed whole, children too
        )
    _procs.append(proc)
    return proc


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
    # Whatever is left of the group (a forked child of a worker that exited).
    _signal_group(proc, signal.SIGKILL)


def stop_all() -> None:
    for proc in _procs:
        stop(proc, grace=3.0)
    _procs.clear()


def tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the run's context ---------------------------------------------------------------


@dataclass
class Ctx:
    jobs: int
    rounds: int
    timeout: float
    latency_jobs: int
    latency_interval: float
    single: int
    pg: str  # server URL, no database
    redis_url: str
    tmp: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    secret: str = field(default_factory=lambda: "peers-" + uuid.uuid4().hex)
    peers: dict[str, str | None] = field(default_factory=dict)  # name -> skip reason

    @property
    def schema(self) -> str:
        return f"peers_{self.tag}"

    @property
    def fq_table(self) -> str:
        return "peer_job"

    @property
    def raw_table(self) -> str:
        return "peer_raw"

    @property
    def floor_table(self) -> str:
        return "peer_floor"

    @property
    def conninfo(self) -> str:
        return f"{self.pg}/{DATABASE}?options=-csearch_path%3D{self.schema}"

    @property
    def sa_url(self) -> str:
        return "postgresql+psycopg://" + self.conninfo.split("://", 1)[1]

    def has(self, peer: str) -> bool:
        return self.peers.get(peer) is None

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        path = env.get("PYTHONPATH")
        env.update(
            PYTHONPATH=str(REPO) + (os.pathsep + path if path else ""),
            PYTHONUNBUFFERED="1",
            PEER_DB_URL=self.sa_url,
            PEER_TABLE=self.fq_table,
            PEER_SECRET=self.secret,
            PEER_FLOOR_TABLE=self.floor_table,
            PEER_PG_CONNINFO=self.conninfo,
            PEER_EXECUTOR="thread",
        )
        env.pop("FLASK_APP", None)
        env.update(extra)
        return env

    def log(self, name: str) -> Path:
        return self.tmp / f"{name}.log"


def check_peers() -> dict[str, str | None]:
    """None for an importable peer, else why it is skipped."""
    found: dict[str, str | None] = {}
    for name, modules in PEERS.items():
        found[name] = None
        for module in modules:
            try:
                importlib.import_module(module)
            except Exception as exc:  # noqa: BLE001 - any import failure means "skip"
                found[name] = f"{module} is not importable ({type(exc).__name__}: {exc})"
                break
    return found


def ensure_database(pg: str) -> None:
    admin = sa.create_engine(
        "postgresql+psycopg://" + pg.split("://", 1)[1] + "/postgres",
        isolation_level="AUTOCOMMIT",
    )
    try:
        with admin.connect() as c:
            exists = c.scalar(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": DATABASE}
            )
            if not exists:
                try:
                    c.execute(sa.text(f"CREATE DATABASE {DATABASE}"))
                except sa.exc.ProgrammingError as exc:  # created meanwhile by another run
                    if "already exists" not in str(exc):
                        raise
    finally:
        admin.dispose()


# -- flask_queue in this process -----------------------------------------------------


class Flaskq:
    """flask_queue apps in this process: the enqueuer (``QUEUE_EXECUTOR="worker"``:
    the web side of "web + worker") and, for the HTTP measure, an http-executor app."""

    def __init__(self, ctx: Ctx) -> None:
        from bench import peer_app

        self.ctx = ctx
        self.peer_app = peer_app
        self.queue = peer_app.queue
        self.app = self._app(QUEUE_EXECUTOR="worker")
        with self.app.app_context():
            peer_app.db.create_all()
        self.engine: sa.Engine = self.app.extensions["queue"].store.engine
        meta = sa.MetaData()
        self.raw = raw_table(meta, ctx.raw_table)
        self.floor = raw_table(meta, ctx.floor_table)
        meta.create_all(self.engine)
        self.autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")

    def _app(self, **overrides: Any) -> Any:
        ctx = self.ctx
        return self.peer_app.create_app(
            SQLALCHEMY_DATABASE_URI=ctx.sa_url,
            QUEUE_TABLE_NAME=ctx.fq_table,
            SECRET_KEY=ctx.secret,
            PEER_FLOOR_TABLE=ctx.floor_table,
            **overrides,
        )

    def http_app(self, base_url: str) -> Any:
        return self._app(QUEUE_EXECUTOR="http", QUEUE_BASE_URL=base_url)

    def sql(self, statement: str) -> None:
        with self.autocommit.connect() as c:
            c.execute(sa.text(statement))

    def reset(self, table: str | None = None) -> None:
        self.sql(f"TRUNCATE {table or self.ctx.fq_table}")

    def count(self) -> int:
        with self.engine.connect() as c:
            return int(c.scalar(sa.text(f"SELECT count(*) FROM {self.ctx.fq_table}")) or 0)

    def seed_due(self, n: int, app: Any = None) -> None:
        from bench.common import seed_due

        with (app or self.app).app_context():
            seed_due(self.queue, n)
        self.sql(f"ANALYZE {self.ctx.fq_table}")

    def seed_raw(self, table: sa.Table, n: int) -> list[str]:
        from bench.run_path import _raw_row

        rows = [_raw_row(i) for i in range(n)]
        self.sql(f"TRUNCATE {table.name}")
        with self.engine.begin() as c:
            c.execute(sa.insert(table), rows)
        self.sql(f"ANALYZE {table.name}")
        return [r["id"] for r in rows]

    def worker_cmd(self, *args: str) -> list[str]:
        return [*_command("flask", "flask"), "--app", "bench.peer_app", "queue", "work", *args]

    def dispose(self) -> None:
        with contextlib.suppress(Exception):
            self.app.extensions["queue"].executor.shutdown(wait=False)
        with contextlib.suppress(Exception), self.app.app_context():
            self.peer_app.db.session.remove()
            self.peer_app.db.engine.dispose()


class Procrastinate:
    def __init__(self, ctx: Ctx, fq: Flaskq) -> None:
        os.environ["PEER_PG_CONNINFO"] = ctx.conninfo  # read when the module is imported
        from bench import peer_procrastinate

        self.ctx = ctx
        self.mod = peer_procrastinate
        self.app = peer_procrastinate.app
        self.app.open()
        self.app.schema_manager.apply_schema()
        self.sql = fq.sql  # same database and schema; plain statements
        self.engine = fq.engine

    def reset(self) -> None:
        self.sql("TRUNCATE procrastinate_jobs RESTART IDENTITY CASCADE")

    def seed_due(self, n: int, task: Any) -> None:
        for start in range(0, n, 5000):
            task.batch_defer(*({} for _ in range(start, min(n, start + 5000))))
        self.sql("ANALYZE procrastinate_jobs")

    def succeeded(self) -> int:
        with self.engine.connect() as c:
            return int(
                c.scalar(
                    sa.text("SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'")
                )
                or 0
            )

    def worker_cmd(self, *args: str) -> list[str]:
        return [
            *_command("procrastinate", "procrastinate"),
            "--app",
            "bench.peer_procrastinate.app",
            "worker",
            *args,
        ]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.app.close()


class Rq:
    def __init__(self, ctx: Ctx) -> None:
        import redis
        import rq

        from bench import peer_rq

        self.ctx = ctx
        self.rq = rq
        self.noop = peer_rq.noop
        self.redis = redis.Redis.from_url(ctx.redis_url)
        self.redis.ping()
        self.serial = 0
        self.jobs = itertools.count()

    def job_id(self, q: Any) -> str:
        """Every key of this run carries the run's tag: cleanup finds them by it."""
        return f"{q.name}-{next(self.jobs)}"

    def name(self, what: str) -> str:
        self.serial += 1
        return f"peersbench-{self.ctx.tag}-{what}{self.serial}"

    def queue(self, what: str) -> Any:
        return self.rq.Queue(self.name(what), connection=self.redis)

    def seed_due(self, q: Any, n: int) -> None:
        for start in range(0, n, 5000):
            q.enqueue_many(
                [
                    q.prepare_data(self.noop, job_id=self.job_id(q))
                    for _ in range(start, min(n, start + 5000))
                ]
            )

    def worker_cmd(self, q: Any, *args: str) -> list[str]:
        return [
            *_command("rq", "rq.cli"),
            "worker",
            "--url",
            self.ctx.redis_url,
            "--quiet",
            "--name",
            self.name("worker"),
            *args,
            q.name,
        ]

    def cleanup(self) -> None:
        tag = f"peersbench-{self.ctx.tag}"
        keys = list(self.redis.scan_iter(match=f"*{tag}*", count=1000))
        for start in range(0, len(keys), 1000):
            self.redis.delete(*keys[start : start + 1000])
        for registry in (b"rq:queues", b"rq:workers"):
            members = [m for m in self.redis.smembers(registry) if tag.encode() in m]
            if members:
                self.redis.srem(registry, *members)


@dataclass
class Systems:
    fq: Flaskq
    proc: Procrastinate | None
    rq: Rq | None


# -- formatting ----------------------------------------------------------------------


def rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} jobs/s"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}x"


def med(values: list[float]) -> float | None:
    return median(values) if values else None


# -- 1. worker drain -------------------------------------------------------------------


@dataclass
class DrainCase:
    key: str
    label: str
    prepare: Callable[[int], Callable[[], list[str]]]  # seeds; returns the command maker
    verify: Callable[[int], str | None]
    rates: list[float] = field(default_factory=list)
    to_exit: list[float] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def drain_cases(ctx: Ctx, s: Systems) -> list[DrainCase]:
    fq = s.fq
    cases: list[DrainCase] = []

    def fq_case(key: str, label: str, *flags: str) -> DrainCase:
        def prepare(n: int) -> Callable[[], list[str]]:
            fq.reset()
            fq.seed_due(n)
            return lambda: fq.worker_cmd("--max-jobs", str(n), *flags)

        def verify(n: int) -> str | None:
            left = fq.count()
            return f"{left} row(s) left in the table" if left else None

        return DrainCase(key, label, prepare, verify)

    cases.append(fq_case("fq4", "flask_queue: queue work (CLI defaults: -c 4)"))
    cases.append(fq_case("fq1", "flask_queue: queue work --concurrency 1", "--concurrency", "1"))

    if s.proc is not None:
        proc = s.proc

        def proc_case(key: str, label: str, task: Any, concurrency: int) -> DrainCase:
            def prepare(n: int) -> Callable[[], list[str]]:
                proc.reset()
                proc.seed_due(n, task)
                return lambda: proc.worker_cmd("--concurrency", str(concurrency), "--one-shot")

            def verify(n: int) -> str | None:
                done = proc.succeeded()
                return None if done == n else f"{done}/{n} jobs succeeded"

            return DrainCase(key, label, prepare, verify)

        cases.append(
            proc_case("p8s", "procrastinate: worker -c 8, sync task", proc.mod.noop_sync, 8)
        )
        cases.append(
            proc_case("p8a", "procrastinate: worker -c 8, async task", proc.mod.noop_async, 8)
        )
        cases.append(
            proc_case("p1s", "procrastinate: worker -c 1, sync task", proc.mod.noop_sync, 1)
        )

    if s.rq is not None:
        rqs = s.rq
        current: dict[str, Any] = {}

        def rq_prepare(n: int) -> Callable[[], list[str]]:
            q = current["q"] = rqs.queue("drain")
            rqs.seed_due(q, n)
            return lambda: rqs.worker_cmd(q, "--burst", "-w", "rq.worker.SimpleWorker")

        def rq_verify(n: int) -> str | None:
            q = current["q"]
            left, done = q.count, q.finished_job_registry.count
            return None if not left and done == n else f"{left} queued, {done}/{n} finished"

        cases.append(DrainCase("rq", "rq: SimpleWorker --burst", rq_prepare, rq_verify))
    return cases


def drain_once(ctx: Ctx, case: DrainCase, round_: int) -> None:
    n = ctx.jobs
    probe = ctx.tmp / f"drain-{case.key}-{round_}.json"
    log = ctx.log(f"drain-{case.key}-{round_}")
    command = case.prepare(n)()
    started = time.monotonic()
    proc = spawn(command, ctx.env(PEER_PROBE_MODE="drain", PEER_PROBE_FILE=str(probe)), log)
    try:
        proc.wait(ctx.timeout)
    except subprocess.TimeoutExpired:
        case.failures.append("timeout")
        print(f"  {case.label}: timeout after {ctx.timeout:.0f} s", flush=True)
        return
    finally:
        stop(proc)
    wall, exited = time.monotonic() - started, time.time()
    if proc.returncode != 0:
        case.failures.append(f"exit {proc.returncode}")
        print(f"  {case.label}: exit {proc.returncode}\n{tail(log)}", flush=True)
        return
    try:
        seen = json.loads(probe.read_text())
    except (OSError, ValueError):
        seen = {"count": 0}
    problem = case.verify(n)
    if seen["count"] != n:
        problem = f"{seen['count']}/{n} handler calls" + (f"; {problem}" if problem else "")
    if problem:
        case.failures.append(problem)
        print(f"  {case.label}: incomplete: {problem}\n{tail(log)}", flush=True)
        return
    window = seen["last"] - seen["first"]
    case.rates.append((n - 1) / window if window > 0 else float("inf"))
    case.to_exit.append(n / (exited - seen["first"]))
    case.walls.append(wall)
    print(
        f"  round {round_ + 1} {case.label}: {case.rates[-1]:,.0f} jobs/s"
        f" ({case.to_exit[-1]:,.0f} to exit), wall {wall:.1f} s",
        flush=True,
    )


def bench_drain(ctx: Ctx, s: Systems) -> None:
    cases = drain_cases(ctx, s)
    print(f"\n[1/4] worker drain: {ctx.jobs:,} jobs x {ctx.rounds} round(s)", flush=True)
    for r in range(ctx.rounds):
        for case in cases:
            drain_once(ctx, case, r)
    by_key = {c.key: c for c in cases}
    fq4, fq1 = med(by_key["fq4"].rates), med(by_key["fq1"].rates)
    rows = []
    for case in cases:
        value = med(case.rates)
        spread = ", ".join(f"{v:,.0f}" for v in case.rates) or "-"
        if case.failures:
            spread += f" ({len(case.failures)} failed: {', '.join(sorted(set(case.failures)))})"
        rows.append(
            [
                case.label,
                rate(value) if value is not None else (case.failures or ["-"])[0],
                spread,
                rate(med(case.to_exit)),
                f"{med(case.walls):.1f} s" if case.walls else "-",
                ratio(fq4, value),
                ratio(fq1, value),
            ]
        )
    print_table(
        f"Worker drain: {ctx.jobs:,} due no-op jobs, first to last handler start "
        f"(median of {ctx.rounds}; ratio = flask_queue jobs/s / this, >1 = flask_queue faster)",
        [
            "system: worker",
            "drain",
            "rounds (jobs/s)",
            "first start -> exit",
            "process wall",
            "fq -c 4 / this",
            "fq -c 1 / this",
        ],
        rows,
    )


# -- 2. enqueue -> start latency -------------------------------------------------------


@dataclass
class LatencyCase:
    key: str
    label: str
    command: Callable[[], list[str]]
    enqueue: Callable[[float], None]
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    worst: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


def latency_once(ctx: Ctx, case: LatencyCase, round_: int) -> None:
    probe = ctx.tmp / f"latency-{case.key}-{round_}.txt"
    log = ctx.log(f"latency-{case.key}-{round_}")
    proc = spawn(
        case.command(), ctx.env(PEER_PROBE_MODE="latency", PEER_PROBE_FILE=str(probe)), log
    )
    try:
        # Warm-up: one job, until it has run the worker is up and has polled once.
        deadline = time.monotonic() + min(ctx.timeout, 60)
        case.enqueue(0.0)
        while "warm" not in _lines(probe):
            if proc.poll() is not None or time.monotonic() > deadline:
                why = f"exit {proc.returncode}" if proc.poll() is not None else "no warm-up run"
                case.failures.append(why)
                print(f"  {case.label}: {why}\n{tail(log)}", flush=True)
                return
            time.sleep(0.02)
        time.sleep(0.2)  # idle again
        t0 = time.monotonic()
        for i in range(ctx.latency_jobs):
            pause = t0 + i * ctx.latency_interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            case.enqueue(time.time())
        deadline = time.monotonic() + min(ctx.timeout, 30)
        while True:
            got = [float(x) for x in _lines(probe) if x != "warm"]
            if len(got) >= ctx.latency_jobs or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    finally:
        stop(proc)
    if len(got) < ctx.latency_jobs:
        case.failures.append(f"{len(got)}/{ctx.latency_jobs} ran")
        print(f"  {case.label}: only {len(got)}/{ctx.latency_jobs} ran\n{tail(log)}", flush=True)
        return
    case.p50.append(median(got))
    case.p99.append(percentile(got, 99))
    case.worst.append(max(got))
    print(
        f"  round {round_ + 1} {case.label}: p50 {case.p50[-1] * 1000:.1f} ms,"
        f" p99 {case.p99[-1] * 1000:.1f} ms",
        flush=True,
    )


def latency_cases(ctx: Ctx, s: Systems) -> list[LatencyCase]:
    fq = s.fq

    def fq_enqueue(t: float) -> None:
        with fq.app.app_context():
            fq.queue.enqueue("noop", {"t": t})

    cases = [
        LatencyCase(
            "fq",
            "flask_queue: queue work (CLI defaults)",
            lambda: fq.worker_cmd(),
            fq_enqueue,
        )
    ]
    if s.proc is not None:
        task = s.proc.mod.noop_sync
        cases.append(
            LatencyCase(
                "proc",
                "procrastinate: worker (defaults), sync task",
                lambda: s.proc.worker_cmd() if s.proc else [],
                lambda t: task.defer(t=t),
            )
        )
    if s.rq is not None:
        rqs = s.rq
        for key, label, flags in (
            ("rqf", "rq: worker (default, fork per job)", ()),
            ("rqs", "rq: worker -w SimpleWorker", ("-w", "rq.worker.SimpleWorker")),
        ):
            q = rqs.queue("latency")
            cases.append(
                LatencyCase(
                    key,
                    label,
                    (lambda q=q, flags=flags: rqs.worker_cmd(q, *flags)),
                    (lambda t, q=q: q.enqueue(rqs.noop, t, job_id=rqs.job_id(q))),
                )
            )
    return cases


def bench_latency(ctx: Ctx, s: Systems) -> None:
    cases = latency_cases(ctx, s)
    print(
        f"\n[2/4] enqueue->start latency: {ctx.latency_jobs} jobs, one per"
        f" {ctx.latency_interval * 1000:.0f} ms, x {ctx.rounds} round(s)",
        flush=True,
    )
    s.fq.reset()
    if s.proc is not None:
        s.proc.reset()
    for r in range(ctx.rounds):
        for case in cases:
            latency_once(ctx, case, r)
    fq = cases[0]
    f50, f99 = med(fq.p50), med(fq.p99)
    rows = []
    for case in cases:
        p50, p99 = med(case.p50), med(case.p99)
        rows.append(
            [
                case.label,
                ms(p50) if p50 is not None else (case.failures or ["-"])[0],
                ms(p99),
                ms(max(case.worst) if case.worst else None),
                ratio(f50, p50),
                ratio(f99, p99),
            ]
        )
    print_table(
        f"enqueue->start latency, idle worker, 1 job / {ctx.latency_interval * 1000:.0f} ms"
        f" (median over {ctx.rounds} round(s) of each round's p50/p99; ratio = flask_queue"
        " / this, >1 = flask_queue slower)",
        ["system: worker", "p50", "p99", "max", "p50 fq / this", "p99 fq / this"],
        rows,
    )


# -- 3. enqueue throughput ------------------------------------------------------------


@dataclass
class EnqueueCase:
    mode: str
    label: str
    reset: Callable[[], None]
    run: Callable[[int], None]
    rates: list[float] = field(default_factory=list)


def enqueue_cases(ctx: Ctx, s: Systems) -> list[EnqueueCase]:
    from bench.run_path import _raw_row

    fq = s.fq
    insert = sa.insert(fq.raw)

    def fq_one(n: int) -> None:
        with fq.app.app_context():
            for i in range(n):
                fq.queue.enqueue("noop", {"i": i}, delay="1h")

    def fq_many(n: int) -> None:
        with fq.app.app_context():
            fq.queue.enqueue_many("noop", [{"i": i} for i in range(n)], delay="1h")

    def raw_one(n: int) -> None:
        for i in range(n):
            with fq.autocommit.connect() as c:
                c.execute(insert, _raw_row(i))

    def raw_many(n: int) -> None:
        with fq.engine.begin() as c:
            c.execute(insert, [_raw_row(i) for i in range(n)])

    one, many = "one per call", "batch"
    cases = [
        EnqueueCase(one, "flask_queue enqueue(delay=1h)", fq.reset, fq_one),
    ]
    if s.proc is not None:
        proc = s.proc
        task = proc.mod.noop_sync
        cases.append(
            EnqueueCase(
                one,
                "procrastinate defer()",
                proc.reset,
                lambda n: [task.defer(i=i) for i in range(n)] and None,
            )
        )
    if s.rq is not None:
        rqs = s.rq
        holder: dict[str, Any] = {}

        def rq_reset() -> None:
            holder["q"] = rqs.queue("enqueue")

        def rq_one(n: int) -> None:
            q = holder["q"]
            for i in range(n):
                q.enqueue(rqs.noop, i, job_id=rqs.job_id(q))

        def rq_many(n: int) -> None:
            q = holder["q"]
            q.enqueue_many([q.prepare_data(rqs.noop, (i,), job_id=rqs.job_id(q)) for i in range(n)])

        cases.append(EnqueueCase(one, "rq enqueue() (Redis)", rq_reset, rq_one))
    cases.append(
        EnqueueCase(one, "raw autocommit INSERT (baseline)", lambda: fq.reset("peer_raw"), raw_one)
    )
    cases.append(EnqueueCase(many, "flask_queue enqueue_many(delay=1h)", fq.reset, fq_many))
    if s.proc is not None:
        proc = s.proc
        task = proc.mod.noop_sync
        cases.append(
            EnqueueCase(
                many,
                "procrastinate batch_defer()",
                proc.reset,
                lambda n: task.batch_defer(*({"i": i} for i in range(n))) and None,
            )
        )
    if s.rq is not None:
        cases.append(EnqueueCase(many, "rq enqueue_many() (Redis pipeline)", rq_reset, rq_many))
    cases.append(
        EnqueueCase(
            many, "raw executemany INSERT (baseline)", lambda: fq.reset("peer_raw"), raw_many
        )
    )
    return cases


def bench_enqueue(ctx: Ctx, s: Systems) -> None:
    cases = enqueue_cases(ctx, s)
    n = ctx.jobs
    print(f"\n[3/4] enqueue throughput: {n:,} jobs x {ctx.rounds} round(s)", flush=True)
    for _ in range(ctx.rounds):
        for case in cases:
            case.reset()
            started = time.perf_counter()
            case.run(n)
            case.rates.append(n / (time.perf_counter() - started))
    s.fq.reset()
    s.fq.reset("peer_raw")
    if s.proc is not None:
        s.proc.reset()
    rows = []
    for mode in ("one per call", "batch"):
        group = [c for c in cases if c.mode == mode]
        ours = med(group[0].rates)
        for case in group:
            value = med(case.rates)
            rows.append(
                [
                    mode,
                    case.label,
                    rate(value),
                    ", ".join(f"{v:,.0f}" for v in case.rates),
                    ratio(ours, value),
                ]
            )
    print_table(
        f"Enqueue throughput, {n:,} jobs from one thread (median of {ctx.rounds};"
        " ratio = flask_queue jobs/s / this, >1 = flask_queue faster)",
        ["mode", "system: call", "jobs/s", "rounds", "fq / this"],
        rows,
    )


# -- 4. HTTP path floor -----------------------------------------------------------------


def _post(opener: Any, url: str) -> None:
    request = urllib.request.Request(url, data=b"", method="POST")
    with opener.open(request, timeout=10) as response:
        response.read()


def bench_http(ctx: Ctx, s: Systems) -> None:
    fq = s.fq
    n, single = ctx.jobs, min(ctx.single, ctx.jobs)
    print(f"\n[4/4] HTTP path: {n:,} jobs x {ctx.rounds} round(s), gunicorn -w 2", flush=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = ctx.log("gunicorn")
    server = spawn(
        [
            *_command("gunicorn", "gunicorn"),
            "-w",
            "2",
            "-b",
            f"127.0.0.1:{port}",
            "bench.peer_app:create_app()",
        ],
        ctx.env(PEER_EXECUTOR="http", PEER_BASE_URL=base),
        log,
    )
    opener = urllib.request.build_opener()
    deadline = time.monotonic() + 30
    while True:
        try:
            with opener.open(base + "/peer-health", timeout=2) as r:
                r.read()
            break
        except OSError as exc:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn did not start ({exc}):\n{tail(log)}") from None
            time.sleep(0.1)

    app = fq.http_app(base)
    state = app.extensions["queue"]
    executor = state.executor
    results: dict[str, list[float]] = {"fq": [], "floor": [], "fq1": [], "floor1": []}
    failures: dict[str, list[str]] = {k: [] for k in results}

    def fq_drain() -> None:
        fq.reset()
        fq.seed_due(n, app)
        started = time.monotonic()
        deadline = started + ctx.timeout
        with app.app_context():
            while time.monotonic() < deadline:
                got = fq.queue.produce()
                if not got.claimed:
                    executor.flush(max(0.0, deadline - time.monotonic()))
                    if not fq.count():
                        break
                    time.sleep(0.01)
            else:
                failures["fq"].append("timeout")
                return
        results["fq"].append(n / (time.monotonic() - started))

    def floor_drain() -> None:
        ids = iter(fq.seed_raw(fq.floor, n))
        lock = threading.Lock()
        errors: list[str] = []

        def sender() -> None:
            while True:
                with lock:
                    job_id = next(ids, None)
                if job_id is None:
                    return
                try:
                    _post(opener, f"{base}/floor/{job_id}")
                except OSError as exc:
                    errors.append(str(exc))
                    return

        threads = [threading.Thread(target=sender, daemon=True) for _ in range(4)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, started + ctx.timeout - time.monotonic()))
        if any(t.is_alive() for t in threads) or errors:
            failures["floor"].append(errors[0] if errors else "timeout")
            return
        results["floor"].append(n / (time.monotonic() - started))

    def fq_single() -> None:
        fq.reset()
        fq.seed_due(single, app)
        with app.app_context():
            jobs = state.store.claim(single, timedelta(minutes=5))
        times = []
        for job in jobs:
            t0 = time.perf_counter()
            executor.send(job.id, job.attempt)
            times.append(time.perf_counter() - t0)
        if len(times) < single or fq.count():
            failures["fq1"].append(f"{len(times)}/{single} sent, {fq.count()} left")
            return
        results["fq1"].append(median(times))

    def floor_single() -> None:
        times = []
        for job_id in fq.seed_raw(fq.floor, single):
            t0 = time.perf_counter()
            _post(opener, f"{base}/floor/{job_id}")
            times.append(time.perf_counter() - t0)
        results["floor1"].append(median(times))

    labels = {
        "fq": "flask_queue produce() drain",
        "floor": "floor drain",
        "fq1": "flask_queue send(), 1 sender",
        "floor1": "floor POST, 1 sender",
    }
    try:
        for r in range(ctx.rounds):
            for name, step in (
                ("fq", fq_drain),
                ("floor", floor_drain),
                ("fq1", fq_single),
                ("floor1", floor_single),
            ):
                step()
                if results[name]:
                    value = results[name][-1]
                    shown = f"{value * 1000:.2f} ms" if name.endswith("1") else rate(value)
                else:
                    shown = (failures[name] or ["-"])[-1]
                print(f"  round {r + 1} {labels[name]}: {shown}", flush=True)
    finally:
        executor.shutdown(wait=False)
        stop(server)
    fq.reset()
    fq.reset("peer_floor")

    def cell(key: str, fmt: Callable[[float | None], str]) -> str:
        value = med(results[key])
        return fmt(value) if value is not None else (failures[key] or ["-"])[0]

    rows = [
        [
            f"drain {n:,} due jobs, 4 senders",
            cell("fq", rate),
            cell("floor", rate),
            ratio(med(results["fq"]), med(results["floor"])),
            "jobs/s; >1 = flask_queue faster",
        ],
        [
            f"per job, 1 sender (median of {single:,})",
            cell("fq1", lambda v: "-" if v is None else f"{v * 1000:.2f} ms"),
            cell("floor1", lambda v: "-" if v is None else f"{v * 1000:.2f} ms"),
            ratio(med(results["fq1"]), med(results["floor1"])),
            "ms per job; >1 = flask_queue slower",
        ],
    ]
    print_table(
        "HTTP path vs its floor: gunicorn -w 2 (sync), QUEUE_EXECUTOR=http; floor = bare"
        f" Flask POST doing 2 PK UPDATEs (median of {ctx.rounds})",
        ["measure", "flask_queue (http)", "floor", "fq / floor", "unit"],
        rows,
    )


# -- main ------------------------------------------------------------------------------


def _versions(ctx: Ctx, s: Systems) -> str:
    import flask_queue

    parts = [f"flask_queue {flask_queue.__version__}"]
    for name in PEERS:
        if ctx.has(name):
            module = importlib.import_module(name)
            parts.append(f"{name} {getattr(module, '__version__', '?')}")
        else:
            parts.append(f"{name} skipped")
    with s.fq.engine.connect() as c:
        pg = c.scalar(sa.text("SHOW server_version"))
    parts.append(f"PostgreSQL {pg}")
    if s.rq is not None:
        parts.append(f"Redis {s.rq.redis.info('server').get('redis_version', '?')}")
    parts.append(f"Python {platform.python_version()}, {os.cpu_count()} CPU(s)")
    parts.append(_load())
    return "; ".join(parts)


def _load() -> str:
    """The machine's load: a figure taken while something else ran is worth less."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


@contextlib.contextmanager
def _terminated_cleanly() -> Iterator[None]:
    """SIGTERM (a CI timeout, a kill) unwinds like Ctrl-C, so every finally runs."""

    def raise_exit(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--jobs", type=int, default=5000, help="N (default 5000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per system (default 3)")
    parser.add_argument("--smoke", action="store_true", help="40 jobs, 1 round: does it run?")
    parser.add_argument("--timeout", type=float, default=600.0, help="per drain, seconds")
    parser.add_argument("--only", default="drain,latency,enqueue,http")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args(argv)
    if args.smoke:
        args.jobs, args.rounds, args.timeout = 40, 1, 60.0
    if args.jobs < 2 or args.rounds < 1:
        parser.error("--jobs must be at least 2 and --rounds at least 1")
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    unknown = only - {"drain", "latency", "enqueue", "http"}
    if unknown:
        parser.error(f"--only: unknown measure(s) {', '.join(sorted(unknown))}")

    began = time.monotonic()
    with (
        _terminated_cleanly(),
        tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp,
    ):
        ctx = Ctx(
            jobs=args.jobs,
            rounds=args.rounds,
            timeout=args.timeout,
            latency_jobs=20 if args.smoke else 200,
            latency_interval=0.01,
            single=20 if args.smoke else 1000,
            pg=args.pg.rstrip("/"),
            redis_url=args.redis,
            tmp=Path(tmp),
            peers=check_peers(),
        )
        for name, reason in ctx.peers.items():
            if reason:
                print(f"SKIPPED {name}: {reason}", flush=True)
        ensure_database(ctx.pg)
        schema_engine = sa.create_engine(
            "postgresql+psycopg://" + ctx.pg.split("://", 1)[1] + f"/{DATABASE}",
            isolation_level="AUTOCOMMIT",
        )
        with schema_engine.connect() as c:
            c.execute(sa.text(f"CREATE SCHEMA {ctx.schema}"))
        fq: Flaskq | None = None
        proc: Procrastinate | None = None
        rqs: Rq | None = None
        try:
            fq = Flaskq(ctx)
            proc = Procrastinate(ctx, fq) if ctx.has("procrastinate") else None
            rqs = Rq(ctx) if ctx.has("rq") else None
            systems = Systems(fq, proc, rqs)
            print(
                f"bench.peers {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: N={ctx.jobs:,},"
                f" rounds={ctx.rounds}{' (smoke)' if args.smoke else ''};"
                f" {_versions(ctx, systems)}; database {DATABASE}, schema {ctx.schema}",
                flush=True,
            )
            steps = [
                ("drain", bench_drain),
                ("latency", bench_latency),
                ("enqueue", bench_enqueue),
                ("http", bench_http),
            ]
            for name, step in steps:
                if name in only:
                    step(ctx, systems)
        finally:
            stop_all()
            if proc is not None:
                proc.close()
            if rqs is not None:
                with contextlib.suppress(Exception):
                    rqs.cleanup()
            if fq is not None:
                fq.dispose()
            with schema_engine.connect() as c:
                c.execute(sa.text("SET lock_timeout = '30s'"))
                c.execute(sa.text(f"DROP SCHEMA IF EXISTS {ctx.schema} CASCADE"))
            schema_engine.dispose()
    print(f"\nbench.peers done in {time.monotonic() - began:.0f} s; {_load()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
