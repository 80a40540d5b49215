"""The deployment recipes in ``docs/deploy/``, checked as far as a validator exists here.

Each recipe's entry module is loaded the way ``flask --app ...`` loads it (Flask's
``ScriptInfo``), with the platform's environment variables set, and its app's
flask_queue config is compared with what ``docs/deploy/README.md`` says. Every
command a recipe runs (Procfile, fly.toml, systemd units, Compose, Cloud Run jobs)
is resolved through Flask's real CLI, option values included. External validators
run when they are installed: ``systemd-analyze verify``, ``cfn-lint``, ``bash -n``,
``jsonschema``, PyYAML, ``docker compose config``; a missing one skips its test
with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import sqlalchemy as sa
from croniter import croniter
from flask import Flask
from flask.cli import FlaskGroup, ScriptInfo

from flask_queue.config import DEFAULTS
from flask_queue.models import job_table, queue_table
from tests.conftest import MYSQL_URL, POSTGRES_URL

DEPLOY = Path(__file__).resolve().parent.parent / "docs" / "deploy"
PRODUCE_PATH = DEFAULTS["QUEUE_URL_PREFIX"] + "/produce"
#: Where the http executor may POST in these tests: connection refused at once.
NOWHERE = "http://127.0.0.1:9"

#: Every file of docs/deploy and the test that checks it: a new recipe file
#: fails test_every_recipe_file_is_checked until a test covers it.
CHECKED = {
    ".gitignore": "test_read_only_platforms_ship_the_instance_folder",
    "README.md": "test_readme_links_resolve, test_readme_table_matches_the_apps",
    "database.md": "test_database_sql_runs_on_postgresql, test_database_engine_options_*",
    "vercel/vercel.json": "test_vercel_json_*",
    "vercel/api/index.py": "test_vercel_app_*",
    "vercel/requirements.txt": "test_requirements_name_what_the_entry_imports",
    "vercel/instance/.gitkeep": "test_read_only_platforms_ship_the_instance_folder",
    "cloud-run/wsgi.py": "test_cloud_run_app",
    "cloud-run/Dockerfile": "test_dockerfiles_serve_the_entry_module",
    "cloud-run/deploy.sh": "test_cloud_run_deploy_script",
    "cloud-run/requirements.txt": "test_requirements_name_what_the_entry_imports",
    "aws-lambda/wsgi.py": "test_lambda_handler_*",
    "aws-lambda/template.yaml": "test_lambda_template_*",
    "aws-lambda/requirements.txt": "test_requirements_name_what_the_entry_imports",
    "aws-lambda/instance/.gitkeep": "test_read_only_platforms_ship_the_instance_folder",
    "procfile/Procfile": "test_procfile_commands",
    "procfile/fly.toml": "test_fly_toml",
    "procfile/wsgi.py": "test_worker_recipes_apps",
    "procfile/requirements.txt": "test_requirements_name_what_the_entry_imports",
    "systemd/wsgi.py": "test_worker_recipes_apps, test_systemd_timer_alternative",
    "systemd/env.example": "test_systemd_*",
    "systemd/flask-app-web.service": "test_systemd_units_verify, test_systemd_commands",
    "systemd/flask-app-worker.service": "test_systemd_units_verify, test_systemd_commands",
    "systemd/flask-app-produce.service": "test_systemd_*",
    "systemd/flask-app-produce.timer": "test_systemd_units_verify",
    "docker-compose/compose.yaml": "test_compose_*",
    "docker-compose/Dockerfile": "test_dockerfiles_serve_the_entry_module",
    "docker-compose/wsgi.py": "test_worker_recipes_apps",
    "docker-compose/requirements.txt": "test_requirements_name_what_the_entry_imports",
}


def recipe_files() -> list[str]:
    return sorted(
        p.relative_to(DEPLOY).as_posix()
        for p in DEPLOY.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )


def test_every_recipe_file_is_checked() -> None:
    assert recipe_files() == sorted(CHECKED)


# -- loading a recipe's app the way `flask --app` does -------------------------------


class Recipes:
    """Loads recipe entry modules with a platform's environment; cleans up after."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
        self.monkeypatch = monkeypatch
        self.tmp_path = tmp_path
        self.apps: list[Flask] = []
        self.contexts: list[click.Context] = []
        self.modules: set[str] = set()
        # Flask's prepare_import inserts the recipe folder into sys.path itself.
        monkeypatch.setattr(sys, "path", list(sys.path))
        # No __pycache__ folders among the files users copy.
        monkeypatch.setattr(sys, "dont_write_bytecode", True)

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "SECRET_KEY": "recipe-test-secret",
            "DATABASE_URL": f"sqlite:///{self.tmp_path / f'{uuid.uuid4().hex}.db'}",
            **extra,
        }

    def _enter(self, folder: str, import_path: str, env: dict[str, str]) -> None:
        for key in [k for k in os.environ if k.startswith("EXAMPLE_")]:
            self.monkeypatch.delenv(key)  # example_app reads EXAMPLE_* too
        for key in ("QUEUE_BASE_URL", "QUEUE_PRODUCE_TOKEN", "QUEUE_EXECUTOR", "CRON_SECRET"):
            self.monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            self.monkeypatch.setenv(key, value)
        self.monkeypatch.chdir(DEPLOY / folder)
        self._forget(import_path)

    def _forget(self, import_path: str) -> None:
        top = import_path.split(".")[0]
        for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
            del sys.modules[name]
        self.modules.add(top)

    def load(self, folder: str, import_path: str, env: dict[str, str]) -> tuple[Any, Flask]:
        """(module, app) as `flask --app IMPORT_PATH` in FOLDER would load them."""
        self._enter(folder, import_path, env)
        app = ScriptInfo(app_import_path=import_path).load_app()
        self.apps.append(app)
        return sys.modules[import_path], app

    def command(self, folder: str, argv: list[str], env: dict[str, str]) -> click.Context:
        """Resolve `flask ARGV` in FOLDER down to its command, parsing every option
        value (as running it would) without running it."""
        assert argv[:1] == ["--app"], argv
        self._enter(folder, argv[1], env)
        group = FlaskGroup()
        ctx = group.make_context("flask", list(argv))
        # FlaskGroup pushes the app's context on the context that resolves a
        # command; closing them pops it (else it leaks into later tests).
        self.contexts.append(ctx)
        cmd: click.Command = group
        rest = _rest(ctx)
        while isinstance(cmd, click.Group):
            name, sub, rest = cmd.resolve_command(ctx, rest)
            assert name is not None and sub is not None
            ctx = sub.make_context(name, rest, parent=ctx)
            self.contexts.append(ctx)
            cmd, rest = sub, _rest(ctx)
        info = ctx.find_object(ScriptInfo)
        assert info is not None
        self.apps.append(info.load_app())
        return ctx

    def close(self) -> None:
        for ctx in reversed(self.contexts):
            ctx.close()
        for app in self.apps:
            state = app.extensions["queue"]
            state.executor.shutdown(wait=True)
            with app.app_context():
                state.db.engine.dispose()
        for top in self.modules:
            self._forget(top)


def _rest(ctx: click.Context) -> list[str]:
    protected = ctx._protected_args if hasattr(ctx, "_protected_args") else ctx.protected_args
    return [*protected, *ctx.args]


@pytest.fixture
def recipes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Recipes]:
    r = Recipes(monkeypatch, tmp_path)
    yield r
    r.close()


def create_tables(app: Flask) -> None:
    """What `flask db upgrade` does for these recipes (example_app has no migrations)."""
    with app.app_context():
        app.extensions["queue"].db.create_all()


def produce_with(app: Flask, token: str) -> Any:
    return app.test_client().get(PRODUCE_PATH, headers={"Authorization": f"Bearer {token}"})


def flask_argv(command: str) -> list[str]:
    """The arguments after `flask` in a shell command line (no shell features)."""
    words = shlex.split(command)
    assert Path(words[0]).name == "flask", command
    return words[1:]


def check_flask_command(recipes: Recipes, folder: str, command: str) -> click.Context:
    return recipes.command(folder, flask_argv(command), recipes.env())


def check_gunicorn_command(
    recipes: Recipes, folder: str, command: str, env: dict[str, str] | None = None
) -> None:
    words = shlex.split(command.replace("$PORT", "8000"))
    assert Path(words[0]).name == "gunicorn", command
    targets = [w for w in words[1:] if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", w)]
    assert len(targets) == 1, command
    module_name, attr = targets[0].split(":")
    module, app = recipes.load(folder, module_name, env or recipes.env())
    assert getattr(module, attr) is app


# -- docs/deploy/README.md ---------------------------------------------------------------


def _slug(heading: str) -> str:
    # GitHub's anchors: lower case, punctuation dropped, spaces to hyphens.
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(markdown: str) -> set[str]:
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", markdown, re.MULTILINE)}


def test_readme_links_resolve() -> None:
    for doc in ("README.md", "database.md"):
        text = (DEPLOY / doc).read_text()
        links = re.findall(r"\]\(([^)\s]+)\)", text)
        assert links or doc != "README.md"
        for link in links:
            if link.startswith(("http://", "https://")):
                continue
            path, _, anchor = link.partition("#")
            target = (DEPLOY / path) if path else DEPLOY / doc
            assert target.exists(), f"{doc}: {link} -> {target} is missing"
            if anchor:
                assert anchor in _anchors(target.read_text()), f"{doc}: no #{anchor}"


def readme_table() -> list[dict[str, str]]:
    """The recipe table of docs/deploy/README.md, one dict per platform row."""
    text = (DEPLOY / "README.md").read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert re.fullmatch(r"\|(---\|)+", lines[1]), lines[1]
    rows = []
    for line in lines[2:]:
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == len(header):
            rows.append(dict(zip(header, cells, strict=True)))
    return rows


#: Per folder: the platform environment the table's row assumes.
ROW_ENV: dict[str, dict[str, str]] = {
    "vercel": {"CRON_SECRET": "cron-secret-value", "QUEUE_BASE_URL": NOWHERE},
    "cloud-run": {"QUEUE_PRODUCE_TOKEN": "scheduler-token", "QUEUE_BASE_URL": NOWHERE},
    "aws-lambda": {"QUEUE_BASE_URL": NOWHERE},
}


def test_readme_table_matches_the_apps(recipes: Recipes, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = readme_table()
    folders = {r["folder"].rstrip("/") for r in rows}
    assert folders == {"vercel", "cloud-run", "aws-lambda", "procfile", "systemd", "docker-compose"}
    fake_apig(monkeypatch)
    for row in rows:
        folder = row["folder"].rstrip("/")
        entry = row["entry"]
        import_path = entry.removesuffix(".py").replace("/", ".")
        assert (DEPLOY / folder / entry).is_file(), entry
        _, app = recipes.load(folder, import_path, recipes.env(**ROW_ENV.get(folder, {})))
        assert app.extensions["queue"].config.executor == row["QUEUE_EXECUTOR"], folder
        assert app.extensions["queue"].config.scheduler is False, folder


# -- Vercel -------------------------------------------------------------------------------

VERCEL_SCHEMA: dict[str, Any] = {
    # The keys this recipe uses, as https://openapi.vercel.sh/vercel.json defines them.
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "$schema": {"type": "string"},
        "functions": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"maxDuration": {"type": "integer", "minimum": 1, "maximum": 900}},
            },
        },
        "rewrites": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["source", "destination"],
                "properties": {"source": {"type": "string"}, "destination": {"type": "string"}},
            },
        },
        "crons": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["path", "schedule"],
                "properties": {
                    "path": {"type": "string", "pattern": "^/"},
                    "schedule": {"type": "string"},
                },
            },
        },
    },
}


def vercel_json() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((DEPLOY / "vercel" / "vercel.json").read_text())
    return data


def test_vercel_json_matches_schema() -> None:
    jsonschema = pytest.importorskip(
        "jsonschema", reason="jsonschema is not installed in .venv (not a dependency)"
    )
    jsonschema.validate(vercel_json(), VERCEL_SCHEMA)


def test_vercel_json_routes_cron_and_duration(recipes: Recipes) -> None:
    config = vercel_json()
    assert config["crons"] == [{"path": PRODUCE_PATH, "schedule": "* * * * *"}]
    assert all(croniter.is_valid(c["schedule"]) for c in config["crons"])
    for function in config["functions"]:
        assert (DEPLOY / "vercel" / function).is_file(), function
    # Every path (the cron's, /_queue/invoke, the app's) reaches api/index.py.
    for rewrite in config["rewrites"]:
        assert re.fullmatch(rewrite["source"].replace("(.*)", ".*"), PRODUCE_PATH)
        assert (DEPLOY / "vercel" / (rewrite["destination"].lstrip("/") + ".py")).is_file()
    _, app = recipes.load("vercel", "api.index", recipes.env(**ROW_ENV["vercel"]))
    budget = app.extensions["queue"].config.produce_budget.total_seconds()
    assert budget < config["functions"]["api/index.py"]["maxDuration"]


def test_vercel_app_takes_the_produce_token_from_cron_secret(recipes: Recipes) -> None:
    env = recipes.env(CRON_SECRET="s3cr3t-from-vercel", VERCEL_PROJECT_PRODUCTION_URL="my.app")
    module, app = recipes.load("vercel", "api.index", env)
    config = app.extensions["queue"].config
    assert config.executor == "http"
    assert config.produce_token == "s3cr3t-from-vercel"
    assert config.invoke_url == "https://my.app/_queue/invoke"
    assert module.database_url("postgres://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert module.engine_options("postgresql+psycopg://h/db")["connect_args"] == {
        "prepare_threshold": None
    }


def test_vercel_app_accepts_the_cron_request(recipes: Recipes) -> None:
    # What Vercel Cron sends: GET /_queue/produce, "Authorization: Bearer $CRON_SECRET".
    env = recipes.env(CRON_SECRET="s3cr3t-from-vercel", QUEUE_BASE_URL=NOWHERE)
    _, app = recipes.load("vercel", "api.index", env)
    create_tables(app)
    assert produce_with(app, "wrong").status_code == 401
    answer = produce_with(app, "s3cr3t-from-vercel")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.get_json()["crons"]["created"] == 1  # example_app's declared cron


def test_read_only_platforms_ship_the_instance_folder() -> None:
    # example_app creates instance/ at start; Vercel and Lambda cannot write there.
    kept = [DEPLOY / folder / "instance" / ".gitkeep" for folder in ("vercel", "aws-lambda")]
    assert all(path.is_file() for path in kept)
    # The repository ignores instance/ folders; docs/deploy/.gitignore lets these in.
    git = shutil.which("git")
    if git is None or not (DEPLOY.parent.parent / ".git").exists():
        pytest.skip("not in a git checkout")
    ignored = subprocess.run(
        [git, "check-ignore", *map(str, kept)], cwd=DEPLOY, capture_output=True, text=True
    )
    assert ignored.returncode == 1, ignored.stdout  # 1: none of them is ignored


# -- Cloud Run -----------------------------------------------------------------------------


def test_cloud_run_app(recipes: Recipes) -> None:
    with pytest.raises(KeyError, match="QUEUE_BASE_URL"):
        recipes.load("cloud-run", "wsgi", recipes.env(QUEUE_PRODUCE_TOKEN="t"))
    _, app = recipes.load("cloud-run", "wsgi", recipes.env(**ROW_ENV["cloud-run"]))
    assert app.extensions["queue"].config.executor == "http"
    create_tables(app)
    assert produce_with(app, "scheduler-token").status_code == 200
    assert produce_with(app, recipes.env()["SECRET_KEY"]).status_code == 401


def test_cloud_run_deploy_script(recipes: Recipes) -> None:
    script = DEPLOY / "cloud-run" / "deploy.sh"
    bash = shutil.which("bash")
    if bash is not None:
        checked = subprocess.run([bash, "-n", str(script)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
    text = script.read_text()
    # The scheduler's header carries the secret the service reads as QUEUE_PRODUCE_TOKEN.
    pairs = re.search(r'SECRETS="([^"]+)"', text)[1].split(",")  # type: ignore[index]
    secrets = dict(pair.partition("=")[::2] for pair in pairs)
    secret_name = secrets["QUEUE_PRODUCE_TOKEN"].split(":")[0]
    assert f"--secret {secret_name})" in text
    assert '--uri "$URL' + PRODUCE_PATH + '"' in text
    assert '--headers "Authorization=Bearer $TOKEN"' in text
    # Each one-off job runs a real `flask` command of the image's wsgi.py.
    jobs = re.findall(r'^run_job [\w-]+ "([^"]+)"', text, re.MULTILINE)
    assert len(jobs) == 2
    names = []
    for job in jobs:
        ctx = recipes.command("cloud-run", job.split(","), recipes.env(**ROW_ENV["cloud-run"]))
        names.append(ctx.command_path)
    assert names == ["flask db upgrade", "flask queue sync-crons"]


def test_dockerfiles_serve_the_entry_module(recipes: Recipes) -> None:
    for folder in ("cloud-run", "docker-compose"):
        text = (DEPLOY / folder / "Dockerfile").read_text()
        cmd = re.search(r"^CMD (.+)$", text, re.MULTILINE)[1]  # type: ignore[index]
        if cmd.startswith("["):
            command = shlex.join(json.loads(cmd))
        else:
            command = cmd.removeprefix("exec ").replace('":${PORT:-8080}"', ":8080")
        check_gunicorn_command(recipes, folder, command, recipes.env(**ROW_ENV.get(folder, {})))
        assert "COPY requirements.txt" in text


def test_requirements_name_what_the_entry_imports() -> None:
    for folder in ("vercel", "cloud-run", "aws-lambda", "procfile", "docker-compose"):
        lines = (DEPLOY / folder / "requirements.txt").read_text().splitlines()
        names = {ln.split("[")[0].strip().lower() for ln in lines if ln and ln[0] != "#"}
        assert {"flask_queue", "flask-migrate"} <= names, folder
        served_by_gunicorn = folder in ("cloud-run", "procfile", "docker-compose")
        assert ("gunicorn" in names) == served_by_gunicorn, folder
        assert ("apig-wsgi" in names) == (folder == "aws-lambda"), folder
        # Every recipe talks to PostgreSQL through psycopg (flask_queue[postgres]).
        assert any(ln.startswith("flask_queue[postgres]") for ln in lines), folder


# -- AWS Lambda ------------------------------------------------------------------------------


def fake_apig(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    """apig-wsgi is not a dependency of the tests: a stand-in that records what the
    recipe wraps and what reaches it."""
    seen: list[tuple[Any, Any]] = []
    module = types.ModuleType("apig_wsgi")

    def make_lambda_handler(app: Any, **_: Any) -> Callable[[Any, Any], Any]:
        seen.append(("app", app))

        def handler(event: Any, context: Any) -> Any:
            seen.append(("event", event))
            return {"statusCode": 200}

        return handler

    module.make_lambda_handler = make_lambda_handler  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "apig_wsgi", module)
    return seen


def test_lambda_handler_routes_schedule_and_http(
    recipes: Recipes, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = fake_apig(monkeypatch)
    module, app = recipes.load("aws-lambda", "wsgi", recipes.env(**ROW_ENV["aws-lambda"]))
    assert seen == [("app", app)]
    assert app.extensions["queue"].config.executor == "http"
    create_tables(app)
    # The EventBridge schedule's input runs the producer in the invocation.
    result = module.handler(dict(module.PRODUCE_EVENT), None)
    assert set(result) >= {"claimed", "more", "crons"}
    assert result["crons"]["created"] == 1
    # Anything else is an API Gateway request for the WSGI app.
    event = {"version": "2.0", "rawPath": "/_queue/invoke", "requestContext": {}}
    assert module.handler(event, None) == {"statusCode": 200}
    assert seen[-1] == ("event", event)


def test_lambda_template_wires_handler_and_schedule(
    recipes: Recipes, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (DEPLOY / "aws-lambda" / "template.yaml").read_text()
    handler = re.search(r"^\s+Handler: ([\w.]+)$", text, re.MULTILINE)[1]  # type: ignore[index]
    module_name, function = handler.rsplit(".", 1)
    schedule_input = re.search(r"^\s+Input: '(.+)'$", text, re.MULTILINE)[1]  # type: ignore[index]
    fake_apig(monkeypatch)
    module, _ = recipes.load("aws-lambda", module_name, recipes.env(**ROW_ENV["aws-lambda"]))
    assert callable(getattr(module, function))
    assert json.loads(schedule_input) == module.PRODUCE_EVENT
    # The variables settings() reads without a default are all set by the template.
    for var in ("SECRET_KEY", "DATABASE_URL", "QUEUE_BASE_URL"):
        assert re.search(rf"^\s+{var}:$", text, re.MULTILINE), var


def test_lambda_template_parses_as_yaml() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed in .venv")
    template = yaml.safe_load((DEPLOY / "aws-lambda" / "template.yaml").read_text())
    function = template["Resources"]["App"]["Properties"]
    assert function["Events"]["Produce"]["Type"] == "Schedule"
    assert function["Events"]["Http"]["Type"] == "HttpApi"


def test_lambda_template_passes_cfn_lint() -> None:
    cfn_lint = shutil.which("cfn-lint")
    if cfn_lint is None:
        pytest.skip("cfn-lint is not installed")
    checked = subprocess.run(
        [cfn_lint, "template.yaml"],
        cwd=DEPLOY / "aws-lambda",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


# -- Procfile platforms ------------------------------------------------------------------------


def procfile() -> dict[str, str]:
    lines = (DEPLOY / "procfile" / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def test_procfile_commands(recipes: Recipes) -> None:
    processes = procfile()
    assert set(processes) == {"release", "web", "worker"}
    check_gunicorn_command(recipes, "procfile", processes["web"])
    assert check_flask_command(recipes, "procfile", processes["worker"]).command_path == (
        "flask queue work"
    )
    assert check_flask_command(recipes, "procfile", processes["release"]).command_path == (
        "flask db upgrade"
    )


def test_fly_toml() -> None:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    fly = tomllib.loads((DEPLOY / "procfile" / "fly.toml").read_text())
    processes = procfile()
    # The same commands as the Procfile; Fly sets no $PORT, so the port is fixed.
    assert fly["processes"]["worker"] == processes["worker"]
    assert fly["processes"]["web"] == processes["web"].replace("$PORT", "8080")
    assert fly["deploy"]["release_command"] == processes["release"]
    assert fly["http_service"]["internal_port"] == 8080
    assert fly["http_service"]["processes"] == ["web"]
    assert fly["kill_signal"] == "SIGTERM"


@pytest.mark.parametrize("folder", ["procfile", "systemd", "docker-compose"])
def test_worker_recipes_apps(recipes: Recipes, folder: str) -> None:
    module, app = recipes.load(folder, "wsgi", recipes.env())
    config = app.extensions["queue"].config
    assert config.executor == "worker"
    assert config.scheduler is False
    if hasattr(module, "database_url"):
        assert module.database_url("postgres://h/db") == "postgresql+psycopg://h/db"


# -- systemd -------------------------------------------------------------------------------------

UNITS = sorted(p.name for p in (DEPLOY / "systemd").iterdir() if p.suffix in (".service", ".timer"))


def unit_value(unit: str, key: str) -> str:
    text = (DEPLOY / "systemd" / unit).read_text()
    return re.search(rf"^{key}=(.+)$", text, re.MULTILINE)[1]  # type: ignore[index]


def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that each ExecStart binary exists: the app's virtualenv is not
    # on this machine, so its two programs become stubs in a temporary directory.
    stubs = tmp_path / "bin"
    stubs.mkdir()
    for name in ("gunicorn", "flask"):
        (stubs / name).write_text("#!/bin/sh\n")
        (stubs / name).chmod(0o755)
    for unit in UNITS:
        text = (DEPLOY / "systemd" / unit).read_text()
        (tmp_path / unit).write_text(text.replace("/srv/flask-app/.venv/bin/", f"{stubs}/"))
    checked = subprocess.run(
        [analyze, "verify", "--man=no", *(f"./{u}" for u in UNITS)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    # Unknown keys are only warned about: any output at all fails the test.
    assert checked.returncode == 0 and not (checked.stdout + checked.stderr).strip(), (
        checked.stdout + checked.stderr
    )


def test_systemd_commands(recipes: Recipes) -> None:
    check_gunicorn_command(recipes, "systemd", unit_value("flask-app-web.service", "ExecStart"))
    worker = unit_value("flask-app-worker.service", "ExecStart")
    assert check_flask_command(recipes, "systemd", worker).command_path == "flask queue work"
    for unit in ("flask-app-web.service", "flask-app-worker.service"):
        assert unit_value(unit, "WorkingDirectory") == "/srv/flask-app"
        assert unit_value(unit, "EnvironmentFile") == "/etc/flask-app/env"


def env_example() -> dict[str, str]:
    lines = (DEPLOY / "systemd" / "env.example").read_text().splitlines()
    return dict(ln.split("=", 1) for ln in lines if ln and not ln.startswith("#"))


def test_systemd_timer_alternative(recipes: Recipes) -> None:
    # The env file's executor is the worker's; the timer serves QUEUE_EXECUTOR=thread.
    env = env_example()
    assert env["QUEUE_EXECUTOR"] == "worker"
    env.update(QUEUE_EXECUTOR="thread", DATABASE_URL=recipes.env()["DATABASE_URL"])
    _, app = recipes.load("systemd", "wsgi", env)
    assert app.extensions["queue"].config.executor == "thread"
    create_tables(app)
    curl = shlex.split(unit_value("flask-app-produce.service", "ExecStart"))
    url = curl[-1]
    header = curl[curl.index("-H") + 1]
    bind = re.search(r"--bind (\S+)", unit_value("flask-app-web.service", "ExecStart"))[1]  # type: ignore[index]
    assert url == f"http://{bind}{PRODUCE_PATH}"
    # systemd expands ${QUEUE_PRODUCE_TOKEN} from the EnvironmentFile.
    sent = header.replace("${QUEUE_PRODUCE_TOKEN}", env["QUEUE_PRODUCE_TOKEN"])
    name, value = sent.split(": ", 1)
    answer = app.test_client().get(PRODUCE_PATH, headers={name: value})
    assert answer.status_code == 200, answer.get_data(as_text=True)


# -- Docker Compose -----------------------------------------------------------------------------


def compose_text() -> str:
    return (DEPLOY / "docker-compose" / "compose.yaml").read_text()


def test_compose_commands(recipes: Recipes) -> None:
    # Each service's command is written as a JSON array (valid YAML flow sequence).
    commands = {
        m[0]: json.loads(m[1])
        for m in re.findall(
            r"^  (\w+):\n(?:    .*\n)*?    command: (\[.+\])$", compose_text(), re.MULTILINE
        )
    }
    assert set(commands) == {"migrate", "web", "worker"}
    check_gunicorn_command(recipes, "docker-compose", shlex.join(commands["web"]))
    for service, path in (("migrate", "flask db upgrade"), ("worker", "flask queue work")):
        argv = commands[service]
        assert argv[0] == "flask"
        assert recipes.command("docker-compose", argv[1:], recipes.env()).command_path == path
    assert "stop_grace_period: 5m" in compose_text()


def test_compose_parses_as_yaml() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed in .venv")
    services = yaml.safe_load(compose_text())["services"]
    assert set(services) == {"db", "migrate", "web", "worker"}
    for name in ("web", "worker"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }


def test_compose_config() -> None:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("docker is not installed")
    version = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
    if version.returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    checked = subprocess.run(
        [docker, "compose", "config", "--quiet"],
        cwd=DEPLOY / "docker-compose",
        env={**os.environ, "SECRET_KEY": "x"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stderr


# -- database.md ----------------------------------------------------------------------------------


def code_blocks(language: str) -> list[str]:
    """The fenced blocks of database.md in ``language``, list-item indentation removed."""
    text = (DEPLOY / "database.md").read_text()
    found = re.findall(rf"^( *)```{language}\n(.*?)^\1```$", text, re.MULTILINE | re.DOTALL)
    return [textwrap.dedent(body) for _, body in found]


def engine_options(marker: str) -> dict[str, Any]:
    """SQLALCHEMY_ENGINE_OPTIONS from the python block of database.md that mentions
    ``marker``."""
    [block] = [b for b in code_blocks("python") if marker in b]
    namespace: dict[str, Any] = {}
    exec(block, namespace)
    options: dict[str, Any] = namespace["SQLALCHEMY_ENGINE_OPTIONS"]
    return options


def test_database_sql_runs_on_postgresql() -> None:
    if not POSTGRES_URL:
        pytest.skip("QUEUE_TEST_POSTGRES_URL is not set")
    blocks = code_blocks("sql")
    assert blocks
    schema = f"deploy_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
            conn.execute(sa.text(f"SET search_path TO {schema}"))
            metadata = sa.MetaData()
            job_table(metadata)
            queue_table(metadata)
            metadata.create_all(conn)
            for block in blocks:
                sql = "\n".join(ln for ln in block.splitlines() if not ln.startswith("--"))
                for statement in sql.split(";"):
                    if statement.strip():
                        conn.execute(sa.text(statement))
            options = conn.execute(
                sa.text("SELECT reloptions FROM pg_class WHERE oid = 'queue_job'::regclass")
            ).scalar_one()
            assert "autovacuum_vacuum_scale_factor=0" in options
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        engine.dispose()


def test_database_engine_options_for_transaction_pooling() -> None:
    options = engine_options("prepare_threshold")
    assert options["connect_args"] == {"prepare_threshold": None}
    if not POSTGRES_URL:
        pytest.skip("QUEUE_TEST_POSTGRES_URL is not set")
    engine = sa.create_engine(POSTGRES_URL, **options)
    try:
        with engine.connect() as conn:
            driver = conn.connection.driver_connection
            assert driver is not None and driver.prepare_threshold is None
    finally:
        engine.dispose()


def test_database_engine_options_for_mysql_lock_wait() -> None:
    options = engine_options("innodb_lock_wait_timeout")
    if not MYSQL_URL:
        pytest.skip("QUEUE_TEST_MYSQL_URL is not set")
    engine = sa.create_engine(MYSQL_URL, **options)
    try:
        with engine.connect() as conn:
            wait = conn.execute(sa.text("SELECT @@SESSION.innodb_lock_wait_timeout")).scalar()
            assert wait == 10
    finally:
        engine.dispose()
