"""Issue 17: bad input and bad config end in one clear QueueError / one ``Error:`` line.

Enqueue input the Python API refused with a raw Python error, CLI arguments that
reached the database undecoded, durations the CLI read two ways, config errors
shown as tracebacks by ``flask``, misleading messages, and kilobyte log lines.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_queue import (
    ConfigError,
    InvalidOptionError,
    InvalidPayloadError,
    InvalidScheduleError,
    Job,
    Queue,
    QueueError,
)
from tests.conftest import AppFactory, Clock, all_databases, row_snapshot

HUGE = 10**4999  # 5,000 digits: over CPython's int <-> str conversion limit


def _deep(depth: int) -> list[Any]:
    nested: list[Any] = []
    for _ in range(depth):
        nested = [nested]
    return nested


def one_error_line(result: Any) -> str:
    """A refused command as the README promises it: one ``Error:`` line, non-zero
    exit, and no traceback."""
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


# -- 1. enqueue input that raised a raw Python error ------------------------------------


@all_databases
@pytest.mark.parametrize(
    ("options", "error", "named"),
    [
        ({"id": "a\udc80"}, InvalidOptionError, r"'a\udc80'"),
        (
            {"run_at": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))},
            InvalidOptionError,
            "0001-01-01T00:00:00+05:00",
        ),
        ({"payload": HUGE}, InvalidPayloadError, "(5000 digits)"),
        ({"payload": {"total": [1, HUGE]}}, InvalidPayloadError, "(5000 digits)"),
        ({"payload": _deep(100_000)}, InvalidPayloadError, "[[[["),
        ({"priority": HUGE}, InvalidOptionError, "(5000 digits)"),
        ({"every": "1h", "times": HUGE}, InvalidScheduleError, "(5000 digits)"),
        ({"retry": HUGE}, QueueError, "(5000 digits)"),
        ({"delay": HUGE}, QueueError, "(5000 digits)"),
        ({"delay": -HUGE}, QueueError, "(5000 digits)"),
    ],
    ids=[
        "surrogate-id",
        "run_at-before-year-1",
        "huge-int-payload",
        "nested-huge-int",
        "deep-payload",
        "huge-priority",
        "huge-times",
        "huge-retry",
        "huge-delay",
        "huge-negative-delay",
    ],
)
def test_bad_enqueue_input_is_a_queue_error_naming_the_value(
    app: Flask, queue: Queue, options: dict[str, Any], error: type[QueueError], named: str
) -> None:
    options = dict(options)  # the parameters are shared by every database's run
    payload = options.pop("payload", "p")
    with pytest.raises(error) as info:
        queue.enqueue("echo", payload, **options)
    message = str(info.value)
    assert named in message, message
    assert len(message) < 400, message  # the value shortened, not 5,000 digits
    if "id" not in options:  # enqueue_many takes no custom id
        with pytest.raises(error):
            queue.enqueue_many("echo", ["fine", payload], **options)
    assert row_snapshot(app) == []


@pytest.mark.parametrize("name", ["q\udc80", "\ud800"])
def test_a_queue_name_that_is_not_unicode_text_is_refused_at_registration(name: str) -> None:
    with pytest.raises(InvalidOptionError, match="not valid Unicode"):
        Queue().handler(name)


# -- 2. CLI arguments that are not UTF-8, and a huge integer payload ----------------------


@all_databases
@pytest.mark.parametrize(
    "args",
    [
        ["show", "\udcff"],
        ["delete", "\udcff"],
        ["retry", "job-\udcff"],
        ["list", "--queue", "\udcff"],
        ["enqueue", "echo", "1", "--id", "\udcff"],
        ["enqueue", "echo", '"\udcff"'],
        ["pause", "\udcff"],
    ],
)
def test_cli_arguments_that_are_not_utf8_are_one_error_line(
    app: Flask, queue: Queue, args: list[str]
) -> None:
    queue.enqueue("echo", "kept", delay="1h", id="c1")
    before = row_snapshot(app)
    result = app.test_cli_runner().invoke(args=["queue", *args])
    line = one_error_line(result)
    assert "UTF-8" in line and r"\xff" in line, line
    assert row_snapshot(app) == before


@pytest.mark.parametrize(
    ("payload", "named"),
    [("9" * 5000, "more than 4,300 digits"), ("[" * 100_000 + "]" * 100_000, "nested too deeply")],
    ids=["huge-int", "deep-list"],
)
def test_cli_payload_that_json_cannot_read_is_one_error_line(
    app: Flask, queue: Queue, payload: str, named: str
) -> None:
    result = app.test_cli_runner().invoke(args=["queue", "enqueue", "echo", payload])
    line = one_error_line(result)
    assert "PAYLOAD" in line and named in line, line
    assert len(line) < 400, line
    assert row_snapshot(app) == []


# -- 3. one duration grammar for every CLI option ------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("60", timedelta(seconds=60)),
        ("1.5", timedelta(seconds=1.5)),
        ("10s", timedelta(seconds=10)),
        ("5 minutes", timedelta(minutes=5)),
        ("1.5h", timedelta(hours=1.5)),
        ("250ms", timedelta(milliseconds=250)),
    ],
)
def test_cli_delay_and_every_read_a_bare_number_as_seconds(
    app: Flask, queue: Queue, clock: Clock, text: str, expected: timedelta
) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(args=["queue", "enqueue", "echo", "1", "--delay", text, "--id", "d"])
    assert result.exit_code == 0, result.output
    delayed = queue.get_by_custom_id("d")
    assert delayed is not None and delayed.run_at - clock.now == expected
    result = runner.invoke(args=["queue", "enqueue", "echo", "1", "--every", text, "--id", "e"])
    assert result.exit_code == 0, result.output
    repeating = queue.get_by_custom_id("e")
    assert repeating is not None and repeating.run_at - clock.now == expected


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10", 10.0), ("0.25", 0.25), ("10s", 10.0), ("250ms", 0.25), ("2 minutes", 120.0)],
)
def test_cli_loop_intervals_take_the_same_grammar(
    app: Flask, monkeypatch: pytest.MonkeyPatch, text: str, seconds: float
) -> None:
    import flask_queue.worker

    seen: list[float] = []
    monkeypatch.setattr(flask_queue.worker, "work", lambda q, **kw: seen.append(kw["interval"]))
    monkeypatch.setattr(flask_queue.worker, "produce_loop", lambda q, i, **kw: seen.append(i))
    runner = app.test_cli_runner()
    for args in (["work"], ["produce", "--loop"]):
        result = runner.invoke(args=["queue", *args, "--interval", text])
        assert result.exit_code == 0, result.output
    assert seen == [seconds, seconds]


@pytest.mark.parametrize(
    ("command", "option"),
    [
        ("enqueue", "--delay"),
        ("enqueue", "--every"),
        ("work", "--interval"),
        ("produce", "--interval"),
    ],
)
def test_every_cli_duration_option_uses_one_type_and_says_so(
    app: Flask, command: str, option: str
) -> None:
    from flask_queue.cli import Duration, queue_cli

    cmd = queue_cli.commands[command]
    (param,) = [p for p in cmd.params if option in p.opts]
    assert isinstance(param.type, Duration)
    result = app.test_cli_runner().invoke(args=["queue", command, "--help"])
    # click wraps help text: compare with the line breaks taken out.
    assert "a bare number is seconds" in " ".join(result.output.split()), result.output


def test_no_other_cli_option_is_a_duration_in_disguise() -> None:
    # Every option whose help speaks of time uses the duration type.
    import click

    from flask_queue.cli import Duration, queue_cli

    for cmd in queue_cli.commands.values():
        for param in cmd.params:
            help_text = (getattr(param, "help", None) or "").lower()
            timed = any(w in help_text for w in ("second", "interval", "delay", "duration"))
            if isinstance(param, click.Option) and timed:
                assert isinstance(param.type, Duration), (cmd.name, param.opts)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["enqueue", "echo", "1", "--delay", "banana"], "'banana'"),
        (["enqueue", "echo", "1", "--every", "0"], "'0'"),
        (["enqueue", "echo", "1", "--delay", "9000y"], "'9000y'"),
        (["work", "--interval", "10 parsecs"], "'10 parsecs'"),
        (["produce", "--loop", "--interval", "0s"], "'0s'"),
    ],
)
def test_cli_bad_durations_are_one_clear_line(
    app: Flask, queue: Queue, args: list[str], named: str
) -> None:
    line = one_error_line(app.test_cli_runner().invoke(args=["queue", *args]))
    assert named in line and line.count("Invalid") == 1, line
    assert row_snapshot(app) == []


# -- 4. bad configuration --------------------------------------------------------------------


APP_MODULE = """
import json, os
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from flask_queue import Queue

db = SQLAlchemy()
queue = Queue()

def create_app():
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI="sqlite://", SECRET_KEY="k")
    app.config.update(json.loads(os.environ["BAD_CONFIG"]))
    db.init_app(app)
    queue.init_app(app)
    return app
"""


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"QUEUE_EXECUTOR": "bogus"}, ["QUEUE_EXECUTOR", "'bogus'"]),
        ({"QUEUE_LEASE": "forever"}, ["QUEUE_LEASE", "'forever'"]),
        ({"QUEUE_EXECUTOR": "http"}, ["QUEUE_EXECUTOR", "'http'", "QUEUE_BASE_URL"]),
        ({"QUEUE_BASE_URL": 443}, ["QUEUE_BASE_URL", "443"]),
    ],
)
def test_bad_config_is_one_error_line_from_the_flask_command(
    tmp_path: Path, config: dict[str, Any], named: list[str]
) -> None:
    (tmp_path / "badapp.py").write_text(textwrap.dedent(APP_MODULE))
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "badapp", "queue", "stats"],
        cwd=tmp_path,
        env={"BAD_CONFIG": json.dumps(config), "PATH": "/usr/bin:/bin", "PYTHONPATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output, output
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:"), output
    assert all(n in lines[0] for n in named), lines[0]


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("QUEUE_EXECUTOR", "bogus", "'bogus'"),
        ("QUEUE_LEASE", "forever", "'forever'"),
        ("QUEUE_LEASE", HUGE, "(5000 digits)"),
        ("QUEUE_PRODUCE_INTERVAL", 10**400, "0000..."),
        ("QUEUE_BASE_URL", 443, "443"),
        ("QUEUE_INVOKE_URL", ["https://x"], "['https://x']"),
        ("QUEUE_SECRET_FALLBACKS", 5, "got int"),  # a secret's type, never its value
    ],
    ids=["executor", "lease", "huge-lease", "huge-interval", "base-url", "invoke-url", "fallbacks"],
)
def test_an_app_with_bad_config_does_not_start(
    make_app: AppFactory, key: str, value: object, named: str
) -> None:
    with pytest.raises(ConfigError) as info:
        make_app(Queue(), **{key: value})
    message = str(info.value)
    assert key in message and named in message, message
    assert len(message) < 400, message


# -- 5. messages that misled ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "says"),
    [
        ("61 * * * *", "minute 61 is out of range 0-59"),
        ("0,60 * * * *", "minute 60 is out of range 0-59"),
        ("1-70 * * * *", "minute 70 is out of range 0-59"),
        ("0 24 * * *", "hour 24 is out of range 0-23"),
        ("0 9 0 * *", "day of month 0 is out of range 1-31"),
        ("0 9 32 * *", "day of month 32 is out of range 1-31"),
        ("0 9 * 13 *", "month 13 is out of range 1-12"),
        ("0 9 * * 8", "day of week 8 is out of range 0-7"),
        ("x 9 * * *", "minute field 'x' is not valid"),
        ("0 9 * FOO *", "month field 'FOO' is not valid"),
        ("*/0 9 * * *", "minute field '*/0' is not valid"),
        ("0 9 * *", "it has 4 fields"),
        ("0 9 * * * *", "it has 6 fields"),
    ],
)
def test_a_bad_cron_names_the_field_and_its_range(
    app: Flask, queue: Queue, cron: str, says: str
) -> None:
    with pytest.raises(InvalidScheduleError) as info:
        queue.enqueue("echo", 1, cron=cron)
    message = str(info.value)
    assert says in message and repr(cron) in message, message
    if len(cron.split()) == 5:
        assert "five fields" not in message, message
    with pytest.raises(InvalidScheduleError, match=says.replace("*", r"\*")):
        queue.cron(cron)


def test_a_bad_duration_is_said_once(app: Flask, queue: Queue) -> None:
    with pytest.raises(QueueError) as info:
        queue.enqueue("echo", 1, delay="banana")
    assert str(info.value) == (
        "Invalid delay 'banana': use a form like '10s', '5 minutes', '1.5h' or '2 days'."
    )
    with pytest.raises(QueueError) as info:
        queue.enqueue("echo", 1, every="3 fortnights")
    assert str(info.value) == (
        "Invalid every '3 fortnights': unknown unit 'fortnights'"
        " (use ms, s, m, h, d, w, y or their long forms)."
    )


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--override"], "--override needs --id"),
        (["--tz", "Europe/Paris"], "--tz needs --cron"),
        (["--times", "3"], "--times needs --cron or --every"),
        (["--cron", "0 9 * * *", "--every", "1h"], "--cron and --every"),
    ],
)
def test_cli_option_mistakes_are_said_in_flags(
    app: Flask, queue: Queue, options: list[str], says: str
) -> None:
    result = app.test_cli_runner().invoke(args=["queue", "enqueue", "echo", "1", *options])
    line = one_error_line(result)
    assert says in line and "=" not in line, line
    assert row_snapshot(app) == []


# -- 6. one capped log line per failure -------------------------------------------------------


@all_databases
def test_a_failure_logs_one_capped_line(
    make_app: AppFactory, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    from flask_queue.history import LOG_LINE

    q = Queue(clock=clock)

    @q.handler("loud", retry=["10s"])
    def loud(job: Job[Any]) -> None:
        raise RuntimeError("first line\n" + "x" * 5000)

    app = make_app(q)
    with app.app_context(), caplog.at_level(logging.WARNING, logger="flask_queue"):
        job = q.enqueue("loud", None)
        clock.advance(10)
        q.produce()
        lines = [r.getMessage() for r in caplog.records if job.id in r.getMessage()]
        stored = q.get(job.id)
    assert len(lines) == 2, lines
    for line in lines:
        assert len(line) <= LOG_LINE, len(line)
        assert "\n" not in line and "RuntimeError" in line and line.count("x") < 400, line
        assert "…" in line, line
    assert "retrying at" in lines[0] and "giving up" in lines[1], lines
    assert stored is not None and "x" * 5000 in (stored.reason or "")


def test_an_outage_logs_one_capped_line(caplog: pytest.LogCaptureFixture) -> None:
    from flask_queue.errors import StorageError
    from flask_queue.history import LOG_LINE
    from flask_queue.worker import _Outage

    error = StorageError("Could not claim jobs:\n[SQL: SELECT " + "col, " * 1000 + "]")
    with caplog.at_level(logging.WARNING, logger="flask_queue"):
        _Outage(1.0, 30.0).failed(error)
    (line,) = [r.getMessage() for r in caplog.records]
    assert len(line) <= LOG_LINE and "\n" not in line and "StorageError" in line, line
