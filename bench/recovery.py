"""Recovery time after SIGKILL, worker mode and http mode, on PostgreSQL.

A job starts, its process is SIGKILLed mid-handler, and the clock runs until the
next attempt starts on a surviving runner: the figure the README quotes. Worker
mode: a second ``flask queue work`` is already running. http mode: gunicorn
(2 workers) serves the invoke endpoint; its master respawns the killed worker; a
pinger calls ``/produce`` every second (a platform cron pings every minute: add
up to that).

    python -m bench.recovery            # QUEUE_LEASE 1m (the default) and 10s
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import sqlalchemy as sa

from bench.common import URLS, print_table
from flask_queue.signing import produce_token

REPO = Path(__file__).resolve().parent.parent


def _wait_for(log: Path, attempt: int, timeout: float) -> tuple[float, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists():
            for line in log.read_text().splitlines():
                kind, n, at, pid = line.split()
                if kind == "start" and int(n) == attempt:
                    return float(at), int(pid)
        time.sleep(0.05)
    raise RuntimeError(f"attempt {attempt} did not start within {timeout}s")


def _spawn(args: list[str], env: dict[str, str], out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        env=env,
        cwd=str(REPO),
        stdout=out.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def measure(mode: str, lease: str, url: str, tmp: Path) -> float:
    table = f"crash_{uuid.uuid4().hex[:8]}"
    log = tmp / f"{table}.log"
    port = 18000 + int(uuid.uuid4().int % 1000)
    env = dict(os.environ)
    env.update(
        CRASH_DB_URL=url,
        CRASH_SECRET="crash-" + uuid.uuid4().hex,
        CRASH_TABLE=table,
        CRASH_LOG=str(log),
        CRASH_LEASE=lease,
        CRASH_EXECUTOR="http" if mode == "http" else "thread",
        CRASH_BASE_URL=f"http://127.0.0.1:{port}",
        FLASK_APP="bench.crash_app:create_app",
        PYTHONPATH=str(REPO),
    )
    procs: list[subprocess.Popen[bytes]] = []
    out = tmp / f"{table}.out"
    try:
        from bench.crash_app import create_app, db, queue

        os.environ.update({k: v for k, v in env.items() if k.startswith("CRASH_")})
        os.environ["CRASH_EXECUTOR"] = "thread"
        app = create_app()
        with app.app_context():
            # Only this run's tables: the module's metadata keeps every earlier
            # run's, which create_all would make again (and nothing would drop).
            mine = [t for n, t in db.metadata.tables.items() if n.startswith(table)]
            db.metadata.create_all(db.engine, tables=mine)
            queue.enqueue("slow", None, delay="2s")  # due once the runners are up
        if mode == "worker":
            procs = [_spawn(["flask", "queue", "work", "--interval", "0.5"], env, out)]
            procs.append(_spawn(["flask", "queue", "work", "--interval", "0.5"], env, out))
        else:
            procs = [
                _spawn(
                    [
                        "gunicorn",
                        "-w",
                        "2",
                        "-b",
                        f"127.0.0.1:{port}",
                        "bench.crash_app:create_app()",
                    ],
                    env,
                    out,
                )
            ]
        token = produce_token(env["CRASH_SECRET"])
        killed_at = 0.0
        started = time.monotonic()
        while time.monotonic() - started < 600:
            if mode == "http":
                try:
                    request = urllib.request.Request(
                        f"http://127.0.0.1:{port}/_queue/produce",
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    urllib.request.urlopen(request, timeout=5).read()
                except OSError:
                    pass
            if not killed_at:
                try:
                    _, pid = _wait_for(log, 1, 0.01)
                except RuntimeError:
                    time.sleep(0.2)
                    continue
                os.kill(pid, signal.SIGKILL)
                killed_at = time.time()
                continue
            try:
                at, _ = _wait_for(log, 2, 0.01)
                return at - killed_at
            except RuntimeError:
                time.sleep(1.0 if mode == "http" else 0.2)
        raise RuntimeError("no recovery within 600 s")
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        engine = sa.create_engine(url)
        with engine.begin() as c:
            for name in (table, f"{table}_queues", f"{table}_stats"):
                c.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", action="append", choices=["postgresql", "mysql"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.db or ["postgresql"]:
            url = URLS[kind]
            assert url is not None
            for lease in ("1m", "10s"):
                for mode in ("worker", "http"):
                    seconds = measure(mode, lease, url, Path(tmp))
                    rows.append([kind, mode, lease, f"{seconds:.1f} s"])
                    print(rows[-1], flush=True)
    print_table(
        "recovery after SIGKILL mid-handler",
        ["database", "mode", "QUEUE_LEASE", "kill -> next attempt starts"],
        rows,
    )


if __name__ == "__main__":
    main()
