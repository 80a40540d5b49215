"""Build the package as a user would get it, install it where the checkout is out of
reach, and run the example app from that install (issue 21, item 2).

``python -m build`` makes the sdist and builds the wheel *from the sdist*, so a file
the sdist forgets is missing from the wheel too. The wheel goes into a fresh
virtualenv with its dependencies from the index (no editable hook, no PYTHONPATH);
the example app is copied next to nothing but itself, started with ``flask run``,
and must serve its dashboard with the stylesheet and run a job.

Run by ``make package-smoke`` (CI). Exits non-zero, saying what was wrong.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
import venv
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# What must be inside the installed package for the dashboard and for mypy users.
SHIPPED = [
    "flask_queue/py.typed",
    "flask_queue/templates/flask_queue/base.html",
    "flask_queue/templates/flask_queue/job.html",
    "flask_queue/static/queue.css",
]


def fail(message: str) -> None:
    print(f"package-smoke: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def run(*args: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        fail(
            f"{' '.join(map(str, args))} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        )
    return result  # type: ignore[no-any-return]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: The example's dashboard outside debug mode is closed without a guard.
AUTH = ("smoke", "smoke-pw")


def get(url: str, data: bytes | None = None) -> tuple[int, str, str]:
    token = base64.b64encode(":".join(AUTH).encode()).decode()
    request = urllib.request.Request(url, data=data, headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read().decode()
        return response.status, response.headers.get("Content-Type", ""), body


def build(out: Path) -> tuple[Path, Path]:
    run(sys.executable, "-m", "build", "--outdir", out, REPO)
    (sdist,) = out.glob("flask_queue-*.tar.gz")
    (wheel,) = out.glob("flask_queue-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    missing = [name for name in SHIPPED if name not in names]
    if missing:
        fail(f"the wheel lacks {missing}")
    with tarfile.open(sdist) as archive:
        members = archive.getnames()
    for needed in ("templates/flask_queue/base.html", "static/queue.css", "flask_queue/py.typed"):
        if not any(m.endswith(needed) for m in members):
            fail(f"the sdist lacks {needed}")
    print(f"package-smoke: built {sdist.name} and {wheel.name} ({len(names)} files in the wheel)")
    return sdist, wheel


def install(wheel: Path, env_dir: Path) -> Path:
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    # [scheduler]: the example app produces with the in-process APScheduler.
    # pip's compile step reports a module that does not compile only as a
    # warning: ``check_modules_and_cli`` imports every one.
    run(python, "-m", "pip", "install", "--quiet", f"{wheel}[scheduler]")
    where = run(python, "-c", "import flask_queue; print(flask_queue.__file__)", cwd=env_dir)
    if not Path(where.stdout.strip()).is_relative_to(env_dir):
        fail(f"flask_queue imported from {where.stdout.strip()}, not from the fresh virtualenv")
    return python


def serve_example(python: Path, workdir: Path) -> None:
    shutil.copytree(
        REPO / "example_app", workdir / "example_app", ignore=shutil.ignore_patterns("__pycache__")
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "PATH": f"{python.parent}:/usr/bin:/bin",
        "HOME": str(workdir),
        "EXAMPLE_QUEUE_DASHBOARD_AUTH": ":".join(AUTH),
    }
    log = open(workdir / "server.log", "w")  # noqa: SIM115 - the server's life, closed below
    server = subprocess.Popen(
        [str(python.parent / "flask"), "--app", "example_app", "run", "--port", str(port)],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        for _ in range(100):
            try:
                get(f"{base}/")
                break
            except OSError:
                if server.poll() is not None:
                    break
                time.sleep(0.2)
        else:
            fail("the example app did not answer within 20 s")
        if server.poll() is not None:
            fail(f"the example app exited:\n{(workdir / 'server.log').read_text()}")

        status, _, page = get(f"{base}/_queue/")
        if status != 200 or "flask_queue" not in page:
            fail(f"GET /_queue/ answered {status}")
        sheets = re.findall(r'<link[^>]+rel="stylesheet"[^>]+href="([^"]+)"', page)
        sheets += re.findall(r'<link[^>]+href="([^"]+\.css[^"]*)"', page)
        if not sheets:
            fail("the dashboard page links no stylesheet")
        status, kind, css = get(urllib.parse.urljoin(f"{base}/_queue/", sheets[0]))
        if status != 200 or "text/css" not in kind or len(css) < 1000:
            fail(
                f"the dashboard's stylesheet {sheets[0]} answered {status} {kind!r}, {len(css)} bytes"
            )
        print(f"package-smoke: dashboard renders with {sheets[0]} ({len(css):,} bytes of CSS)")

        # A booking enqueues chargeCard in the same commit; the in-process scheduler
        # produces it and the thread executor runs it.
        get(f"{base}/bookings", data=urllib.parse.urlencode({"guest": "smoke"}).encode())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            runs = json.loads(get(f"{base}/runs")[2])
            charged = [r for r in runs if r["queue"] in {"chargeCard", "bookingFlow"}]
            if charged:
                print(f"package-smoke: a job ran: {charged[0]}")
                return
            time.sleep(0.5)
        fail(f"no job ran within 60 s:\n{(workdir / 'server.log').read_text()}")
    finally:
        server.terminate()
        server.wait(10)
        log.close()


#: Every module of the installed package imports (the example app's requests do
#: not reach the worker, the CLI's commands or the pytest plugin).
IMPORT_ALL = """
import importlib, pkgutil, flask_queue
names = [m.name for m in pkgutil.walk_packages(flask_queue.__path__, "flask_queue.")]
for name in names:
    importlib.import_module(name)
print(len(names))
"""


def check_modules_and_cli(python: Path, workdir: Path) -> None:
    count = run(python, "-c", IMPORT_ALL, cwd=workdir).stdout.strip()
    print(f"package-smoke: all {count} modules of the installed package import")
    env = {"PATH": f"{python.parent}:/usr/bin:/bin", "HOME": str(workdir)}
    flask = python.parent / "flask"
    run(flask, "--app", "example_app", "queue", "--help", cwd=workdir, env=env)
    # The worker of the installed package runs a job of its own.
    run(
        flask, "--app", "example_app", "queue", "enqueue", "record", '"smoke"', cwd=workdir, env=env
    )
    out = run(
        flask, "--app", "example_app", "queue", "work", "--max-jobs", "1", cwd=workdir, env=env
    ).stdout
    if "worker stopped after 1 job(s)" not in out:
        fail(f"flask queue work --max-jobs 1 did not run a job:\n{out}")
    print("package-smoke: flask queue work ran a job")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="flask_queue_package_") as tmp:
        root = Path(tmp)
        _, wheel = build(root / "dist")
        python = install(wheel, root / "venv")
        (root / "app").mkdir()
        serve_example(python, root / "app")
        check_modules_and_cli(python, root / "app")
    print("package-smoke: ok")


if __name__ == "__main__":
    os.environ.pop("PYTHONPATH", None)
    main()
