"""The floor: what an at-least-once drain costs in raw SQL, beside ``flask queue work``.

    python -m bench.floor [--jobs 20000] [--db postgresql|mysql|sqlite] [--rounds 3]

On the same job table (flask_queue's, with its indexes) and the same backlog of due
no-op jobs, alternating rounds:

- **raw**: one connection, a loop that does only what an at-least-once drain must:
  claim up to 100 due jobs in one committed transaction (marking them RUNNING), then
  ``json.loads`` each payload and call a no-op, then delete the batch in one
  committed statement. PostgreSQL: ``UPDATE ... WHERE id IN (SELECT ... ORDER BY
  priority DESC, run_at LIMIT 100 FOR UPDATE SKIP LOCKED) RETURNING id, payload``.
  MariaDB (no ``UPDATE ... RETURNING``): pick-then-lock, ``SELECT id, payload ...
  FOR UPDATE SKIP LOCKED`` then ``UPDATE ... WHERE id IN (...)`` by primary key, one
  transaction. SQLite: ``UPDATE ... RETURNING``.
- **worker**: ``work(concurrency=4, interval=1.0)``, the CLI's defaults, every promise
  on (heartbeats, history, signals, the app context per run, limits checks).

Prints each median and worker / raw. The README's figures come from
``make bench-floor``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from bench.common import bench_app, database_url, make_queue, median, print_table, seed_due
from flask_queue.worker import work

BATCH = 100


def noop(payload: Any) -> None:
    return None


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def raw_drain(engine: sa.Engine, table: sa.Table, jobs: int) -> float:
    """The floor's loop; returns jobs/s. Asserts it drained exactly ``jobs``."""
    name = table.name
    kind = engine.dialect.name
    if kind == "postgresql":
        claim = sa.text(
            f"UPDATE {name} SET status = 'RUNNING', attempt = attempt + 1,"
            " lease_until = :lease, started_at = :now"
            f" WHERE id IN (SELECT id FROM {name} WHERE status = 'SCHEDULED'"
            " AND run_at <= :now ORDER BY priority DESC, run_at LIMIT :n"
            " FOR UPDATE SKIP LOCKED) RETURNING id, payload"
        )
        delete = sa.text(f"DELETE FROM {name} WHERE id = ANY(:ids)")
    elif kind == "sqlite":
        claim = sa.text(
            f"UPDATE {name} SET status = 'RUNNING', attempt = attempt + 1,"
            " lease_until = :lease, started_at = :now"
            f" WHERE id IN (SELECT id FROM {name} WHERE status = 'SCHEDULED'"
            " AND run_at <= :now ORDER BY priority DESC, run_at LIMIT :n)"
            " RETURNING id, payload"
        )
        delete = sa.text(f"DELETE FROM {name} WHERE id IN :ids").bindparams(
            sa.bindparam("ids", expanding=True)
        )
    else:
        pick = sa.text(
            f"SELECT id, payload FROM {name} WHERE status = 'SCHEDULED' AND run_at <= :now"
            " ORDER BY priority DESC, run_at LIMIT :n FOR UPDATE SKIP LOCKED"
        )
        mark = sa.text(
            f"UPDATE {name} SET status = 'RUNNING', attempt = attempt + 1,"
            " lease_until = :lease, started_at = :now WHERE id IN :ids"
        ).bindparams(sa.bindparam("ids", expanding=True))
        delete = sa.text(f"DELETE FROM {name} WHERE id IN :ids").bindparams(
            sa.bindparam("ids", expanding=True)
        )
    done = 0
    started = time.perf_counter()
    with engine.connect() as c:
        while True:
            now = _now()
            params = {"now": now, "lease": now + timedelta(minutes=1), "n": BATCH}
            with c.begin():
                if kind == "mysql":
                    rows = c.execute(pick, params).all()
                    if rows:
                        c.execute(mark, {**params, "ids": [r[0] for r in rows]})
                else:
                    rows = c.execute(claim, params).all()
            if not rows:
                break
            for _, payload in rows:
                noop(json.loads(payload))
            with c.begin():
                c.execute(delete, {"ids": [r[0] for r in rows]})
            done += len(rows)
    elapsed = time.perf_counter() - started
    assert done == jobs, f"the raw loop drained {done} of {jobs}"
    return jobs / elapsed


def one_round(url: str, jobs: int, which: str) -> float:
    queue = make_queue()
    with bench_app(url, queue) as app, app.app_context():
        seed_due(queue, jobs)
        if which == "raw":
            return raw_drain(queue.store.engine, queue.store.table, jobs)
        started = time.perf_counter()
        ran = work(queue, concurrency=4, interval=1.0, max_jobs=jobs, report=lambda _: None)
        assert ran == jobs
        return jobs / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--db", action="append", choices=["postgresql", "mysql", "sqlite"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.db or ["postgresql", "mysql", "sqlite"]:
            raw: list[float] = []
            worker: list[float] = []
            for _ in range(args.rounds):  # alternating: the machine's noise hits both
                raw.append(one_round(database_url(kind, tmp), args.jobs, "raw"))
                worker.append(one_round(database_url(kind, tmp), args.jobs, "worker"))
                print(f"{kind}: raw {raw[-1]:,.0f}  worker {worker[-1]:,.0f} jobs/s", flush=True)
            floor, ours = median(raw), median(worker)
            rows.append(
                [
                    kind,
                    f"{args.jobs:,}",
                    f"{floor:,.0f} jobs/s",
                    f"{ours:,.0f} jobs/s",
                    f"{ours / floor:.2f}x",
                    f"{1e6 / ours - 1e6 / floor:,.0f} µs",
                ]
            )
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print_table(
        f"drain of due no-op jobs, median of {args.rounds} alternating rounds; {stamp}",
        ["database", "jobs", "raw floor", "flask queue work", "worker / floor", "ours per job"],
        rows,
    )


if __name__ == "__main__":
    main()
