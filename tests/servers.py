"""Real servers for end-to-end tests: the example app under waitress in a
subprocess, on a database schema of its own."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def isolated_database(url: str, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database of this test's own: a SQLite file, a PostgreSQL
    schema, or a MariaDB database, dropped afterwards."""
    if url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / f'e2e_{uuid.uuid4().hex[:8]}.db'}"
        return
    name = f"qe2e_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    if url.startswith("postgresql"):
        with engine.connect() as c:
            c.execute(sa.text(f"CREATE SCHEMA {name}"))
        isolated = f"{url}?options=-csearch_path%3D{name}"
        drop = f"DROP SCHEMA {name} CASCADE"
    else:
        with engine.connect() as c:
            c.execute(sa.text(f"CREATE DATABASE {name}"))
        isolated = url.rsplit("/", 1)[0] + f"/{name}"
        drop = f"DROP DATABASE {name}"
    try:
        yield isolated
    finally:
        with engine.connect() as c:
            c.execute(sa.text(drop))
        engine.dispose()


class Server:
    """``example_app:create_app`` served by waitress on 127.0.0.1."""

    def __init__(self, db_url: str, port: int | None = None, **settings: Any) -> None:
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.secret = "e2e-" + uuid.uuid4().hex
        self.env = dict(os.environ)
        self.env.update(
            {
                "EXAMPLE_SQLALCHEMY_DATABASE_URI": db_url,
                "EXAMPLE_SECRET_KEY": self.secret,
                "EXAMPLE_QUEUE_EXECUTOR": "http",
                "EXAMPLE_QUEUE_BASE_URL": self.base,
                "EXAMPLE_QUEUE_SCHEDULER": "false",
                "EXAMPLE_FAILURE_RATE": "0",
                "PYTHONPATH": str(REPO),
            }
        )
        for key, value in settings.items():
            self.env[f"EXAMPLE_{key}"] = value if isinstance(value, str) else json.dumps(value)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = (
            Path(os.environ.get("TMPDIR", "/tmp"))
            / f"waitress-{self.port}-{uuid.uuid4().hex[:6]}.log"
        )

    def start(self) -> Server:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "waitress",
                "--host=127.0.0.1",
                f"--port={self.port}",
                "--threads=8",
                "--call",
                "example_app:create_app",
            ],
            env=self.env,
            cwd=str(REPO),
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            try:
                self.request("GET", "/runs")
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL: no cleanup, no graceful shutdown, as when a host dies."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.base + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def enqueue(self, name: str, payload: Any, **options: Any) -> dict[str, Any]:
        status, body = self.request(
            "POST", f"/enqueue/{name}", {"payload": payload, "options": options}
        )
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    def emit(self, event: str, data: Any, event_id: str | None = None) -> dict[str, Any]:
        status, body = self.request("POST", f"/emit/{event}", {"data": data, "id": event_id})
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    def ping(self) -> dict[str, Any]:
        """What a cron pinger does: GET /_queue/produce with the bearer token."""
        from flask_queue.signing import produce_token

        status, body = self.request(
            "GET",
            "/_queue/produce",
            headers={"Authorization": f"Bearer {produce_token(self.secret)}"},
        )
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    def runs(self) -> list[dict[str, str]]:
        return self.request("GET", "/runs")[1]  # type: ignore[no-any-return]

    def wait_for_runs(self, predicate: Any, timeout: float = 15) -> list[dict[str, str]]:
        deadline = time.monotonic() + timeout
        while True:
            runs = self.runs()
            if predicate(runs) or time.monotonic() > deadline:
                return runs
            time.sleep(0.1)
