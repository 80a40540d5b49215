"""Procrastinate app of ``bench.peers``:
``procrastinate --app bench.peer_procrastinate.app worker ...``.

The connection string comes from ``PEER_PG_CONNINFO`` (the benchmark's database and
schema). Two no-op tasks, a sync one and an async one, each only calling the probe.
"""

from __future__ import annotations

import os

from procrastinate import App, PsycopgConnector

from bench.peer_probe import ran

app = App(
    connector=PsycopgConnector(
        conninfo=os.environ.get(
            "PEER_PG_CONNINFO", "postgresql://postgres@127.0.0.1:5432/bench_peers"
        )
    )
)


@app.task(name="noop_sync")
def noop_sync(t: float | None = None) -> None:
    ran(t)


@app.task(name="noop_async")
async def noop_async(t: float | None = None) -> None:
    ran(t)
