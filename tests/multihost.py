"""Simulated app hosts on one machine: Linux network namespaces on a bridge.

``Network(n)`` creates a bridge in the root namespace (``10.77.X.1/24``, X picked
free at random) and ``n`` namespaces, each linked to it by a veth pair and given
``10.77.X.(i+2)``. ``tests.faultproxy.FaultProxy``, listening on the bridge
address, relays a database that listens on 127.0.0.1 only, so the hosts reach it over the veth network. ``Host``
runs one app host in its namespace: gunicorn serving ``tests.multihost_app``
plus a producer (a loop pinging its own ``/_queue/produce`` or
``flask queue produce --loop``), all in one process group, so ``kill()`` takes
the whole host down at once as a crashed machine would.

Everything is removed by ``Network.close()`` (and ``Host.stop()``), whatever
happened; namespaces left by a run that was itself SIGKILLed are removed by the
next run (their names carry the pid of the process that made them).

Also the processes a host runs: ``python -m tests.multihost host`` (the
supervisor) and ``python -m tests.multihost ping URL TOKEN INTERVAL``.

Kept free of pytest: bench/scale.py uses it too.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
#: Namespaces are named ``fqmh<pid>x<run>h<i>``: the pid lets a later run find
#: and remove what a killed run left behind.
NS_PREFIX = "fqmh"


class NamespaceError(RuntimeError):
    """The kernel or our permissions refuse network namespaces."""


def runs_table(name: str, metadata: sa.MetaData) -> sa.Table:
    """Where the multihost app records every handler run (start and done)."""
    return sa.Table(
        name,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("host", sa.String(32), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("queue", sa.String(64), nullable=False),
        sa.Column("occurrence", sa.String(40)),
        sa.Column("event", sa.String(8), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode:
        raise subprocess.CalledProcessError(
            done.returncode, ["ip", *args], done.stdout, done.stderr
        )
    return done.stdout


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_namespaces() -> list[str]:
    """Delete the namespaces (and their processes) of runs whose process is gone."""
    removed: list[str] = []
    try:
        listing = _ip("netns", "list")
    except (OSError, subprocess.CalledProcessError):
        return removed
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        match = re.fullmatch(rf"{NS_PREFIX}(\d+)x\w+", name)
        if not match or _pid_alive(int(match.group(1))):
            continue
        _delete_namespace(name)
        removed.append(name)
    return removed


def _delete_namespace(name: str) -> None:
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        for pid in _ip("netns", "pids", name).split():
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        _ip("netns", "del", name)  # its veth end goes with it, and so the pair


class Network:
    """A bridge and ``hosts`` namespaces linked to it; ``close()`` removes them."""

    def __init__(self, hosts: int) -> None:
        self.run = uuid.uuid4().hex[:5]
        self.bridge = f"fq{self.run}br"
        self.subnet = self._free_subnet()
        self.bridge_ip = f"{self.subnet}.1"
        self.namespaces: list[str] = []
        self.ips: list[str] = []
        self._bridge_made = False
        self._veths: list[str] = []
        remove_stale_namespaces()
        try:
            self._create(hosts)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _free_subnet() -> str:
        try:
            used = _ip("-4", "-o", "addr", "show")
        except FileNotFoundError:
            raise NamespaceError("iproute2's `ip` is not installed") from None
        for _ in range(100):
            subnet = f"10.77.{random.randint(1, 254)}"
            if f" {subnet}." not in used:
                return subnet
        raise NamespaceError("no free 10.77.X.0/24 subnet")

    def _create(self, hosts: int) -> None:
        first = f"{NS_PREFIX}{os.getpid()}x{self.run}h0"
        try:
            _ip("netns", "add", first)
        except subprocess.CalledProcessError as exc:
            raise NamespaceError(
                f"`ip netns add` refused: {exc.stderr.strip() or exc.returncode}"
            ) from None
        self.namespaces.append(first)
        _ip("link", "add", self.bridge, "type", "bridge")
        self._bridge_made = True
        _ip("addr", "add", f"{self.bridge_ip}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i in range(hosts):
            ns = f"{NS_PREFIX}{os.getpid()}x{self.run}h{i}"
            if i:
                _ip("netns", "add", ns)
                self.namespaces.append(ns)
            outer, inner = f"fq{self.run}v{i}", f"fq{self.run}n{i}"
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            self._veths.append(outer)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "master", self.bridge)
            _ip("link", "set", outer, "up")
            ip = f"{self.subnet}.{i + 2}"
            _ip("-n", ns, "addr", "add", f"{ip}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            self.ips.append(ip)

    def close(self) -> None:
        for ns in self.namespaces:
            _delete_namespace(ns)
        self.namespaces = []
        for veth in self._veths:  # gone with their namespace, unless it failed midway
            with contextlib.suppress(OSError, subprocess.CalledProcessError):
                _ip("link", "del", veth)
        self._veths = []
        if self._bridge_made:
            with contextlib.suppress(OSError, subprocess.CalledProcessError):
                _ip("link", "del", self.bridge)
            self._bridge_made = False

    def __enter__(self) -> Network:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Host:
    """One app host: gunicorn + a producer inside namespace ``ns``, one process group.

    ``producer`` is ``"ping"`` (a loop that GETs ``/_queue/produce`` with the bearer
    token, as a platform's cron would) or ``"cli"`` (``flask queue produce --loop``).
    """

    PORT = 8000

    def __init__(
        self,
        name: str,
        ns: str,
        ip: str,
        db_url: str,
        *,
        secret: str,
        table: str,
        logdir: Path,
        producer: str = "ping",
        interval: float = 0.5,
        workers: int = 2,
        threads: int = 4,
        **env: str,
    ) -> None:
        self.name = name
        self.ns = ns
        self.ip = ip
        self.base = f"http://{ip}:{self.PORT}"
        self.db_url = db_url
        self.secret = secret
        self.table = table
        self.logdir = logdir
        self.producer = producer
        self.interval = interval
        self.workers = workers
        self.threads = threads
        self.extra_env = env
        self.generation = -1
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def label(self) -> str:
        """Host name and boot number: what its runs are recorded under."""
        return f"{self.name}#{self.generation}"

    def start(self) -> Host:
        self.generation += 1
        env = dict(os.environ)
        env.update(
            MH_DB_URL=self.db_url,
            MH_SECRET=self.secret,
            MH_BASE_URL=self.base,
            MH_TABLE=self.table,
            MH_HOST=self.label,
            MH_BIND=f"{self.ip}:{self.PORT}",
            MH_PRODUCER=self.producer,
            MH_INTERVAL=str(self.interval),
            MH_WORKERS=str(self.workers),
            MH_THREADS=str(self.threads),
            PYTHONPATH=str(REPO),
            **self.extra_env,
        )
        log = self.logdir / f"{self.label}.log"
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-m", "tests.multihost", "host"],
            env=env,
            cwd=str(REPO),
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: kill() takes all of it
        )
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                break
            try:
                self.get("/mh/health")
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"host {self.label} did not start: {self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        log = self.logdir / f"{self.label}.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else ""

    def get(self, path: str, timeout: float = 10) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=timeout) as response:
            return response.read()

    def post(self, path: str, body: bytes, timeout: float = 30) -> bytes:
        request = urllib.request.Request(
            self.base + path,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return bytes(response.read())

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the host's whole process group: gunicorn, its workers, the producer."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, grace: float = 5) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        # The group may outlive its leader (a gunicorn worker finishing a request).
        self.kill()


# -- the processes inside a host ----------------------------------------------------


def _ping_main(url: str, token: str, interval: float) -> None:
    """What a platform's cron does, but every ``interval`` seconds."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    while not stop.is_set():
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
        except (urllib.error.URLError, OSError):
            pass  # the app is booting, or its database is away: the next ping goes on
        stop.wait(interval)


def _host_main() -> None:
    """Supervise one host: gunicorn and the producer; SIGTERM stops both."""
    from flask_queue.signing import produce_token

    env = os.environ
    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-k",
                "gthread",
                "-w",
                env["MH_WORKERS"],
                "--threads",
                env["MH_THREADS"],
                "-b",
                env["MH_BIND"],
                "--timeout",
                "60",
                "--graceful-timeout",
                "3",
                "tests.multihost_app:create_app()",
            ]
        )
    ]
    interval = env["MH_INTERVAL"]
    if env["MH_PRODUCER"] == "cli":
        producer = [
            sys.executable,
            "-m",
            "flask",
            "--app",
            "tests.multihost_app:create_app",
            "queue",
            "produce",
            "--loop",
            "--interval",
            interval,
        ]
    else:
        producer = [
            sys.executable,
            "-m",
            "tests.multihost",
            "ping",
            f"http://{env['MH_BIND']}/_queue/produce",
            produce_token(env["MH_SECRET"]),
            interval,
        ]
    children.append(subprocess.Popen(producer))

    def forward(signum: int, _frame: Any) -> None:
        for child in children:
            with contextlib.suppress(OSError):
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while all(child.poll() is None for child in children):
        time.sleep(0.2)
    forward(signal.SIGTERM, None)
    for child in children:
        try:
            child.wait(5)
        except subprocess.TimeoutExpired:
            child.kill()


if __name__ == "__main__":
    if sys.argv[1:2] == ["ping"]:
        _ping_main(sys.argv[2], sys.argv[3], float(sys.argv[4]))
    elif sys.argv[1:2] == ["host"]:
        _host_main()
    else:
        sys.exit("usage: python -m tests.multihost ping URL TOKEN INTERVAL | host")
