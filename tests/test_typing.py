"""mypy over the package and over tests/typing: typed handles catch wrong payloads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TYPING = Path(__file__).parent / "typing"
REPO = Path(__file__).resolve().parent.parent


def _mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--strict", *args],
        capture_output=True,
        text=True,
        cwd=str(REPO),
    )


def test_package_and_correct_usage_type_check() -> None:
    result = _mypy("flask_queue", str(TYPING / "ok.py"))
    assert result.returncode == 0, result.stdout


def test_wrong_payload_type_is_reported() -> None:
    result = _mypy(str(TYPING / "bad.py"))
    assert result.returncode == 1
    assert (
        'bad.py:15: error: Argument 1 to "enqueue" of "Handler" has incompatible type "int"; expected "str"'
        in result.stdout
    ), result.stdout
    assert (
        'bad.py:23: error: Argument 1 to "enqueue" of "Handler" has incompatible type "str";'
        ' expected "list[str]"' in result.stdout
    ), result.stdout  # an async handler's payload is checked the same way
