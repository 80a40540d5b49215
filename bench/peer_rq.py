"""RQ's job function for ``bench.peers`` (``rq worker`` imports it by name)."""

from __future__ import annotations

from bench.peer_probe import ran


def noop(t: float | None = None) -> None:
    ran(t)
