"""A wheel built from the repo carries the templates and static files inside the
installed package, and serves the dashboard from a non-editable install."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHECK = r"""
import json, pathlib, flask_queue
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from flask_queue import Queue
from flask_queue.views import asset_dir

pkg = pathlib.Path(flask_queue.__file__).parent
app = Flask("wheel_check")
app.config.update(SQLALCHEMY_DATABASE_URI="sqlite://", SECRET_KEY="k", QUEUE_EXECUTOR="inline")
app.debug = True
SQLAlchemy(app)
Queue(app)
with app.app_context():
    app.extensions["sqlalchemy"].create_all()
client = app.test_client()
page = client.get("/_queue/")
css = client.get("/_queue/static/queue.css")
print(json.dumps({
    "package": str(pkg),
    "templates": asset_dir("templates"),
    "static": asset_dir("static"),
    "files": sorted(str(p.relative_to(pkg)) for p in pkg.rglob("*") if p.suffix in {".html", ".css", ".js", ".svg", ".typed"}),
    "page": page.status_code,
    "page_has_title": b"flask_queue" in page.data,
    "css": css.status_code,
}))
"""


def test_wheel_ships_templates_and_static(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(REPO)],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("flask_queue-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
    )
    # Dependencies come from the test environment's site-packages by PYTHONPATH;
    # .pth files there (the editable install's hook) are not processed from
    # PYTHONPATH, so only the wheel's flask_queue can be imported.
    deps = sysconfig.get_paths()["purelib"]
    result = subprocess.run(
        [str(python), "-c", CHECK],
        cwd=str(tmp_path),
        env={"PYTHONPATH": deps, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    print(json.dumps(report, indent=2))
    package = Path(report["package"])
    assert package.is_relative_to(env_dir)
    assert report["templates"] == str(package / "templates")
    assert report["static"] == str(package / "static")
    assert "templates/flask_queue/base.html" in report["files"]
    assert "static/queue.css" in report["files"]
    assert "py.typed" in report["files"]
    assert report["page"] == 200 and report["page_has_title"]
    assert report["css"] == 200
