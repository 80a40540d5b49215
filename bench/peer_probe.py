"""The one thing every system's no-op handler does in ``bench.peers``: note when it ran.

The handlers of flask_queue, Procrastinate and RQ all call :func:`ran` as their only
statement, so each system is timed by the same clock at the same point (its handler
starting), whatever timestamps its own tables or keys keep.

``PEER_PROBE_MODE=drain`` (default): count runs and keep the first and last
``time.time()`` in memory; at interpreter exit write them as JSON to
``PEER_PROBE_FILE``. The cost per run is a lock and two comparisons.

``PEER_PROBE_MODE=latency``: append one line per run to ``PEER_PROBE_FILE`` at once
(``time.time()`` at handler start minus the ``enqueued_at`` the job carries), opening
the file each time so that forked children (RQ's default worker) write safely.
"""

from __future__ import annotations

import atexit
import json
import os
import threading
import time

_FILE = os.environ.get("PEER_PROBE_FILE")
_MODE = os.environ.get("PEER_PROBE_MODE", "drain")
_lock = threading.Lock()
_count = 0
_first = float("inf")
_last = float("-inf")


def ran(enqueued_at: float | None = None) -> None:
    now = time.time()
    global _count, _first, _last
    if _MODE == "latency":
        if _FILE:
            # enqueued_at <= 0 marks a warm-up job: the worker is up and idle.
            line = f"{now - enqueued_at:.6f}\n" if enqueued_at and enqueued_at > 0 else "warm\n"
            with open(_FILE, "a") as f:
                f.write(line)
        return
    with _lock:
        _count += 1
        _first = min(_first, now)
        _last = max(_last, now)


@atexit.register
def _dump() -> None:
    if _MODE != "drain" or not _FILE or not _count:
        return
    with open(_FILE, "w") as f:
        json.dump({"count": _count, "first": _first, "last": _last, "pid": os.getpid()}, f)
