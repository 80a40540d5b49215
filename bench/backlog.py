"""One claim of 100 with a due backlog of 1,000, 20,000 and 100,000 jobs.

    python -m bench.backlog [--db postgresql --db mysql --db sqlite] [--sizes 1000,20000,100000]

A queue that falls behind must not claim slower the further behind it is: the
claim walks (status, priority DESC, run_at) and stops at its limit. Prints the
median of five claims per size and its ratio to the smallest backlog.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import timedelta

import sqlalchemy as sa

from bench.common import bench_app, database_url, make_queue, median, print_table, seed_due


def claim_ms(url: str, due: int) -> float:
    queue = make_queue()
    with bench_app(url, queue) as app, app.app_context():
        seed_due(queue, due)
        store = queue.store
        if store.dialect == "postgresql":  # as autovacuum would have by then
            with store.engine.begin() as c:
                c.execute(sa.text(f"ANALYZE {store.table.name}"))
        times = []
        for _ in range(5):
            started = time.perf_counter()
            claimed = store.claim_started(100, timedelta(minutes=1))
            times.append((time.perf_counter() - started) * 1000)
            assert len(claimed) == 100
        return median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", action="append", choices=["postgresql", "mysql", "sqlite"])
    parser.add_argument("--sizes", default="1000,20000,100000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.db or ["postgresql", "mysql", "sqlite"]:
            first = None
            for due in sizes:
                ms = claim_ms(database_url(kind, tmp), due)
                first = first or ms
                rows.append([kind, f"{due:,}", f"{ms:,.1f} ms", f"{ms / first:.2f}x"])
    print_table(
        "one claim of 100 (claim_started), by due backlog; median of 5",
        ["database", "due jobs", "claim", "vs smallest"],
        rows,
    )


if __name__ == "__main__":
    main()
