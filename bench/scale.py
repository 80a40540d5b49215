"""Scale-out figures: jobs/s drained by 1, 2, 4 app hosts and by 1, 4, 16 concurrent
worker processes on one database, and what each job costs the database.

    python -m bench.scale [--db postgresql] [--db mysql] [--host-jobs 3000]
                          [--worker-jobs 20000] [--hosts 1,2,4] [--producers 1,4,16]

(``make scale`` runs it on PostgreSQL and MariaDB.) Needs root and ``ip netns``.

Hosts: each host is a network namespace (tests/multihost.py) running the app
(``tests.multihost_app``, a no-op handler) under gunicorn (2 gthread workers x 4
threads) with a producer pinging its own ``/_queue/produce`` every 0.2 s; the
http executor delivers every job by a signed POST to the host's own invoke
endpoint. The database listens on 127.0.0.1 and is reached over the veth network
through a forwarder on the bridge.

Producers: N ``flask queue work -c 4`` processes (claim and run in the process,
outcomes written in batches), straight to 127.0.0.1.

Each run: the jobs are enqueued due while their queue is paused, every process
is started and ready, then the queue is resumed; the rate is measured from the
first job to leave the table to the last (the table is counted every 50 ms).
The per-job cost comes from two sides: the statements the app processes sent
(counted by an SQLAlchemy event in each process, by verb) and the database's own
counters over the run — PostgreSQL's pg_stat_database for a database made for
the benchmark (transactions, rows inserted/updated/deleted), MariaDB's SHOW
GLOBAL STATUS (server-wide: anything else running on the server shows up too).
The benchmark's own polls are subtracted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from bench.common import URLS, print_table
from tests import multihost_app
from tests.faultproxy import FaultProxy
from tests.multihost import REPO, Host, Network

PG_COUNTERS = ["xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted"]
MY_COUNTERS = [
    "Com_select",
    "Com_insert",
    "Com_update",
    "Com_delete",
    "Com_commit",
    "Com_rollback",
    "Handler_write",
    "Handler_update",
    "Handler_delete",
    "Handler_read_key",
    "Handler_read_next",
    "Innodb_row_lock_waits",
]


@dataclass
class Result:
    what: str
    processes: int
    jobs: int
    seconds: float
    statements: Counter[str] = field(default_factory=Counter)
    server: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds if self.seconds else float("nan")


@contextmanager
def bench_database(kind: str) -> Iterator[tuple[str, sa.Engine, str]]:
    """A database of the benchmark's own (so PostgreSQL's per-database counters
    see nothing else), an autocommit admin engine, and the database's name."""
    base = URLS[kind]
    assert base
    name = f"qscale_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name}"))
    try:
        yield base.rsplit("/", 1)[0] + f"/{name}", admin, name
    finally:
        drop = f"DROP DATABASE {name}" + (" WITH (FORCE)" if kind == "postgresql" else "")
        with admin.connect() as conn:
            conn.execute(sa.text(drop))
        admin.dispose()


def server_counters(kind: str, admin: sa.Engine, name: str) -> dict[str, float]:
    with admin.connect() as conn:
        if kind == "postgresql":
            conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
            row = conn.execute(
                sa.text(
                    f"SELECT {', '.join(PG_COUNTERS)} FROM pg_stat_database WHERE datname = :d"
                ),
                {"d": name},
            ).one()
            return {k: float(v) for k, v in zip(PG_COUNTERS, row, strict=True)}
        rows = conn.execute(sa.text("SHOW GLOBAL STATUS")).all()
        return {k: float(v) for k, v in rows if k in MY_COUNTERS}


def client_statements(folder: Path) -> Counter[str]:
    total: Counter[str] = Counter()
    for path in folder.glob("*.json"):
        with contextlib.suppress(OSError, ValueError):  # being replaced: read again later
            total.update(json.loads(path.read_text()))
    return total


@dataclass
class Seeded:
    app: Flask
    db: SQLAlchemy
    table: str
    secret: str


def seed(url: str, jobs: int) -> Seeded:
    """The job table with ``jobs`` due no-op jobs, their queue paused."""
    table = f"scale_{uuid.uuid4().hex[:8]}"
    secret = "scale-" + uuid.uuid4().hex
    app = Flask("scale")
    app.config.update(
        SQLALCHEMY_DATABASE_URI=url,
        SECRET_KEY=secret,
        QUEUE_EXECUTOR="worker",  # enqueue only stores the jobs
        QUEUE_TABLE_NAME=table,
    )
    db = SQLAlchemy()
    db.init_app(app)
    multihost_app.queue.init_app(app)
    with app.app_context():
        db.create_all()
        multihost_app.queue.pause("mh_work")
        for start in range(0, jobs, 10_000):
            multihost_app.queue.enqueue_many(
                "mh_work", list(range(start, min(jobs, start + 10_000)))
            )
        db.engine.dispose()  # its backend exits and reports its statistics now
    return Seeded(app, db, table, secret)


def drain(seeded: Seeded, jobs: int) -> tuple[float, int]:
    """Resume the queue; return (seconds from the first job gone to the last, polls)."""
    app = seeded.app
    queue = multihost_app.queue
    engine = sa.create_engine(
        app.config["SQLALCHEMY_DATABASE_URI"], isolation_level="AUTOCOMMIT", pool_size=1
    )
    table = sa.table(seeded.table, sa.column("queue"))
    count = sa.select(sa.func.count()).select_from(table).where(sa.column("queue") == "mh_work")
    polls = 0
    first: tuple[float, int] | None = None
    deadline = time.monotonic() + 600
    with app.app_context():
        queue.resume("mh_work")
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            left = int(conn.execute(count).scalar_one())
            polls += 1
            now = time.monotonic()
            if first is None and left < jobs:
                first = (now, left)
            if left == 0:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"{left} jobs still left after 600 s")
    engine.dispose()
    assert first is not None
    t_first, left_first = first
    # From the first observed drop: the jobs gone by then were drained in less time
    # than we count, so scale the remainder only.
    seconds = (now - t_first) * jobs / max(left_first, 1)
    return seconds, polls


def cleanup(seeded: Seeded) -> None:
    with seeded.app.app_context():
        seeded.db.drop_all()
        seeded.db.engine.dispose()


def run_hosts(kind: str, url: str, admin: sa.Engine, name: str, hosts: int, jobs: int) -> Result:
    seeded = seed(url, jobs)
    target = urlsplit(url)
    with tempfile.TemporaryDirectory() as tmp, Network(hosts) as network:
        stats = Path(tmp) / "stats"
        stats.mkdir()
        with FaultProxy(
            target.hostname or "127.0.0.1",
            target.port or 0,
            listen_host=network.bridge_ip,
            max_connections=1000,
        ) as fwd:
            procs = [
                Host(
                    f"h{i}",
                    ns,
                    ip,
                    fwd.forwarded_url(url),
                    secret=seeded.secret,
                    table=seeded.table,
                    logdir=Path(tmp),
                    interval=0.2,
                    MH_SLEEP="0",
                    MH_STATS_DIR=str(stats),
                    MH_LEASE="1m",
                    MH_PRE_PING="0",
                )
                for i, (ns, ip) in enumerate(zip(network.namespaces, network.ips, strict=True))
            ]
            try:
                for host in procs:
                    host.start()
                for host in procs:
                    host.wait_ready()
                for host in procs:  # touch each worker: the app is loaded lazily
                    for _ in range(4):
                        host.get("/mh/health")
                time.sleep(1.5)
                before_c, before_s = client_statements(stats), server_counters(kind, admin, name)
                seconds, polls = drain(seeded, jobs)
                time.sleep(1.0)  # the last stats dump
                after_c = client_statements(stats)
            finally:
                for host in procs:
                    host.stop()
    time.sleep(1.5)  # PostgreSQL backends report their counters as they exit
    after_s = server_counters(kind, admin, name)
    cleanup(seeded)
    return Result(
        "hosts (gunicorn + pinger, http executor)",
        hosts,
        jobs,
        seconds,
        after_c - before_c,
        _server_delta(kind, before_s, after_s, polls),
    )


def run_workers(
    kind: str, url: str, admin: sa.Engine, name: str, workers: int, jobs: int
) -> Result:
    seeded = seed(url, jobs)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "stats"
        stats.mkdir()
        env = dict(os.environ)
        env.update(
            MH_DB_URL=url,
            MH_SECRET=seeded.secret,
            MH_BASE_URL="http://127.0.0.1:9",  # unused: workers run their jobs
            MH_TABLE=seeded.table,
            MH_HOST="worker",
            MH_EXECUTOR="worker",
            MH_SLEEP="0",
            MH_STATS_DIR=str(stats),
            MH_LEASE="1m",
            MH_PRE_PING="0",
            # 16 processes under PostgreSQL's 100 connections.
            MH_POOL_SIZE="2",
            MH_MAX_OVERFLOW="2",
            PYTHONPATH=str(REPO),
        )
        log = (Path(tmp) / "workers.log").open("wb")
        try:
            for _ in range(workers):
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "flask",
                            "--app",
                            "tests.multihost_app:create_app",
                            "queue",
                            "work",
                            "-c",
                            "4",
                            "--interval",
                            "0.5",
                        ],
                        env=env,
                        cwd=str(REPO),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            deadline = time.monotonic() + 120
            while len(list(stats.glob("*.json"))) < workers:
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise RuntimeError((Path(tmp) / "workers.log").read_text()[-3000:])
                time.sleep(0.2)
            time.sleep(2.0)  # past the app's creation: into the worker's idle poll
            before_c, before_s = client_statements(stats), server_counters(kind, admin, name)
            seconds, polls = drain(seeded, jobs)
            time.sleep(1.0)
            after_c = client_statements(stats)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            log.close()
    time.sleep(1.5)
    after_s = server_counters(kind, admin, name)
    cleanup(seeded)
    return Result(
        "producers (flask queue work -c 4)",
        workers,
        jobs,
        seconds,
        after_c - before_c,
        _server_delta(kind, before_s, after_s, polls),
    )


def _server_delta(
    kind: str, before: dict[str, float], after: dict[str, float], polls: int
) -> dict[str, float]:
    delta = {k: after[k] - before[k] for k in before}
    # The drain's own polls: one autocommit SELECT count(*) each (and the resume).
    if kind == "postgresql":
        delta["xact_commit"] -= polls
    else:
        delta["Com_select"] -= polls
    return delta


def _per_job(n: float, jobs: int) -> str:
    return f"{n / jobs:.2f}"


def report(kind: str, results: list[Result]) -> None:
    rows = []
    for group in dict.fromkeys(r.what for r in results):
        mine = [r for r in results if r.what == group]
        base = mine[0].rate
        for r in mine:
            statements = sum(v for k, v in r.statements.items() if k != "commit()")
            s = r.server
            if kind == "postgresql":
                db_cols = [
                    _per_job(s["xact_commit"] + s["xact_rollback"], r.jobs),
                    _per_job(s["tup_inserted"], r.jobs),
                    _per_job(s["tup_updated"], r.jobs),
                    _per_job(s["tup_deleted"], r.jobs),
                ]
            else:
                db_cols = [
                    _per_job(s["Com_commit"] + s["Com_rollback"], r.jobs),
                    _per_job(s["Handler_write"], r.jobs),
                    _per_job(s["Handler_update"], r.jobs),
                    _per_job(s["Handler_delete"], r.jobs),
                ]
            rows.append(
                [
                    group,
                    str(r.processes),
                    f"{r.jobs:,}",
                    f"{r.seconds:.1f}",
                    f"{r.rate:,.0f}",
                    f"{r.rate / base:.2f}x",
                    _per_job(statements, r.jobs),
                    *db_cols,
                ]
            )
    txn = "xacts/job" if kind == "postgresql" else "COMMITs/job (server)"
    print_table(
        f"{kind}: jobs drained, vs the first row of each group (same run)",
        [
            "scenario",
            "n",
            "jobs",
            "seconds",
            "jobs/s",
            "vs n=1",
            "stmts/job (client)",
            txn,
            "rows ins/job",
            "rows upd/job",
            "rows del/job",
        ],
        rows,
    )
    verbs = sorted({k for r in results for k in r.statements})
    print_table(
        f"{kind}: statements per job sent by the app processes, by verb",
        ["scenario", "n", *verbs],
        [
            [r.what, str(r.processes), *(_per_job(r.statements.get(v, 0), r.jobs) for v in verbs)]
            for r in results
        ],
    )
    if kind == "mysql":
        print_table(
            "mysql: server-wide SHOW GLOBAL STATUS deltas per job",
            ["scenario", "n", *MY_COUNTERS],
            [
                [r.what, str(r.processes), *(_per_job(r.server[c], r.jobs) for c in MY_COUNTERS)]
                for r in results
            ],
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", action="append", choices=["postgresql", "mysql"])
    parser.add_argument("--host-jobs", type=int, default=3000)
    parser.add_argument("--worker-jobs", type=int, default=20000)
    parser.add_argument("--hosts", default="1,2,4")
    parser.add_argument("--producers", default="1,4,16")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench.scale makes network namespaces: run it as root")
    print(f"bench.scale on {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}")
    for kind in args.db or ["postgresql"]:
        results = []
        with bench_database(kind) as (url, admin, name):
            for n in map(int, args.hosts.split(",")):
                results.append(run_hosts(kind, url, admin, name, n, args.host_jobs))
                print(f"  {kind} hosts={n}: {results[-1].rate:,.0f} jobs/s", flush=True)
            for n in map(int, args.producers.split(",")):
                results.append(run_workers(kind, url, admin, name, n, args.worker_jobs))
                print(f"  {kind} producers={n}: {results[-1].rate:,.0f} jobs/s", flush=True)
        report(kind, results)


if __name__ == "__main__":
    main()
