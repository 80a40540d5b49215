"""Where a draining worker's time goes: py-spy samples every thread of this
process while ``work()`` (CLI defaults) drains a due backlog of no-op jobs.

    python -m bench.profile_drain [--jobs 20000] [--db postgresql] [--out bench/profile.txt]

Seeds first, then attaches ``py-spy record`` (pip install py-spy; root, or
ptrace allowed) to its own pid for the drain only, and prints the top of the
profile: samples per function, by self time and by inclusive time, of the
thread holding the GIL (``--gil``: CPU on the interpreter, which is what a
no-op drain is short of; waits on the database are not in it). ``make bench-profile`` writes bench/profile-<db>.txt.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import bench_app, database_url, make_queue, seed_due
from flask_queue.worker import work

#: Frames that are a thread waiting, not working: reported apart.
IDLE = ("wait (threading.py", "_wait_for_tstate_lock", "select (selectors.py", "acquire")


def summarize(raw: Path, top: int) -> str:
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        if not frames:
            continue
        total += n
        leaf = frames[-1]
        if any(sign in leaf for sign in IDLE):
            idle += n
            continue
        self_time[_short(leaf)] += n
        for name in {_short(f) for f in frames}:
            inclusive[name] += n
    busy = total - idle
    out = [f"{total:,} samples, {busy:,} busy ({busy / max(total, 1):.0%}), {idle:,} waiting"]
    out.append("")
    out.append(f"top {top} by self time (share of busy samples)")
    for name, n in self_time.most_common(top):
        out.append(f"{n / max(busy, 1):6.1%}  {name}")
    out.append("")
    out.append(f"top {top} by inclusive time (share of busy samples)")
    for name, n in inclusive.most_common(top):
        out.append(f"{n / max(busy, 1):6.1%}  {name}")
    return "\n".join(out)


def _short(frame: str) -> str:
    """``func (path/to/module.py:123)`` -> ``func (module.py)``: lines merged."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if "flask_queue" in parts else Path(path).name
    return f"{name} ({short})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--db", default="postgresql", choices=["postgresql", "mysql", "sqlite"])
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(spy):
        sys.exit("bench.profile_drain needs py-spy: pip install py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "drain.txt"
        queue = make_queue()
        with bench_app(database_url(args.db, tmp), queue) as app, app.app_context():
            seed_due(queue, args.jobs)
            recorder = subprocess.Popen(
                [
                    *(spy, "record", "--pid", str(os.getpid()), "--rate", str(args.rate)),
                    *("--format", "raw", "--output", str(raw), "--nonblocking", "--gil"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            time.sleep(1.0)  # py-spy attaches
            started = time.perf_counter()
            ran = work(
                queue, concurrency=4, interval=1.0, max_jobs=args.jobs, report=lambda _: None
            )
            elapsed = time.perf_counter() - started
            recorder.send_signal(signal.SIGINT)
            recorder.wait(60)
        assert ran == args.jobs
        head = (
            f"work(concurrency=4, interval=1.0) draining {args.jobs:,} due no-op jobs on"
            f" {args.db}: {args.jobs / elapsed:,.0f} jobs/s ({elapsed * 1e6 / args.jobs:,.0f} µs"
            f" per job) while sampled at {args.rate}/s (sampling slows it a little)"
        )
        report = head + "\n" + summarize(raw, args.top)
    print(report)
    if args.out:
        args.out.write_text(report + "\n")


if __name__ == "__main__":
    main()
