"""A producer process for the race test: claims until nothing is due, prints ids."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from flask_queue.models import job_table
from flask_queue.store import JobStore


def main(url: str, table_name: str, batch: int, start_file: str) -> None:
    import os
    import time

    engine = sa.create_engine(url)
    store = JobStore(
        lambda: engine, job_table(sa.MetaData(), table_name), lambda: datetime.now(timezone.utc)
    )
    store.engine.connect().close()
    # Ready (imported, connected): the test starts everyone together only then.
    open(f"{start_file}.ready.{os.getpid()}", "w").close()
    while not os.path.exists(start_file):  # all processes start claiming together
        time.sleep(0.005)
    ids: list[str] = []
    while True:
        jobs = store.claim(batch, timedelta(minutes=10))
        if not jobs:
            break
        ids.extend(j.id for j in jobs)
    sys.stdout.write("\n".join(ids))
    engine.dispose()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
