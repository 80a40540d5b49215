"""Every ``QUEUE_*`` key, its default, and the typed config read once per app."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from .crypto import read_keys
from .durations import to_timedelta
from .errors import ConfigError, QueueError, shown
from .scheduling import retry_delays
from .store.schema import DEFAULT_TABLE_NAME

log = logging.getLogger("flask_queue")

EXECUTORS = ("inline", "thread", "http", "worker")

#: The defaults ``init_app`` sets with ``setdefault``; the README lists the same.
DEFAULTS: dict[str, Any] = {
    "QUEUE_SECRET": None,  # falls back to SECRET_KEY
    "QUEUE_SECRET_FALLBACKS": [],  # older secrets still accepted on invoke (rotation)
    "QUEUE_BASE_URL": None,
    "QUEUE_INVOKE_URL": None,
    "QUEUE_URL_PREFIX": "/_queue",
    "QUEUE_EXECUTOR": "thread",
    "QUEUE_THREADS": 4,
    "QUEUE_SCHEDULER": False,
    "QUEUE_PRODUCE_INTERVAL": "10s",
    "QUEUE_PRODUCE_TOKEN": None,  # derived from the secret when unset
    "QUEUE_PRODUCE_BUDGET": "20s",
    "QUEUE_RETRY": ["10s", "1m", "10m"],
    "QUEUE_LEASE": "1m",  # extended by heartbeats while a handler runs
    "QUEUE_HANDLER_GRACE": "15m",  # a job whose handler this release lacks waits this long
    "QUEUE_BATCH_SIZE": 100,
    "QUEUE_KEEP_COMPLETED": 0,
    # A job whose handler returned a value stays COMPLETED this long with it.
    "QUEUE_KEEP_RESULTS": "1d",
    "QUEUE_KEEP_EVENTS": "7d",
    # Workers LISTEN for due jobs on PostgreSQL: "auto" checks that a NOTIFY
    # arrives (a transaction pooler drops them) and polls if not.
    "QUEUE_LISTEN": True,
    "QUEUE_LISTEN_URL": None,  # a direct URL for the LISTEN (the web's may be pooled)
    "QUEUE_DASHBOARD_AUTH": None,
    "QUEUE_TABLE_NAME": DEFAULT_TABLE_NAME,
    "QUEUE_INVOKE_MAX_AGE": "5m",
    "QUEUE_DISPATCH_TIMEOUT": "2s",
    "QUEUE_MAX_PAYLOAD": 1024 * 1024,  # bytes of JSON; None: no limit
    "QUEUE_ENCRYPTION_KEYS": None,  # Fernet keys, newest first: payloads encrypted at rest
    # OpenTelemetry spans and trace context (tracing.py): "auto" when
    # opentelemetry-api is installed; True insists on it; False turns it off.
    "QUEUE_TRACING": "auto",
}


@dataclass(frozen=True)
class QueueConfig:
    secret_keys: list[str]  # newest last, as itsdangerous wants them
    base_url: str | None
    invoke_url: str | None
    url_prefix: str
    executor: str
    threads: int
    scheduler: bool
    produce_interval: timedelta
    produce_token: str | None
    produce_budget: timedelta
    retry: list[timedelta]
    lease: timedelta
    handler_grace: timedelta
    batch_size: int
    keep_completed: timedelta
    keep_results: timedelta
    keep_events: timedelta
    listen: bool | str
    listen_url: str | None
    dashboard_auth: Callable[[], bool] | str | None
    table_name: str
    invoke_max_age: timedelta
    dispatch_timeout: timedelta
    max_payload: int | None
    encryption_keys: list[str] | None
    tracing: bool

    @property
    def secret(self) -> str | None:
        return self.secret_keys[-1] if self.secret_keys else None


def _positive_int(config: Mapping[str, Any], key: str) -> int:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} must be a positive int, got {shown(value)}.")
    return value


def _duration(config: Mapping[str, Any], key: str, *, allow_zero: bool = False) -> timedelta:
    value = config[key]
    if value in (None, False) and allow_zero:
        return timedelta(0)
    try:
        return to_timedelta(value, name=key, allow_zero=allow_zero)
    except QueueError as exc:
        raise ConfigError(str(exc)) from None


def _url(config: Mapping[str, Any], key: str) -> str | None:
    value = config[key]
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ConfigError(
            f"{key} must be a URL string like 'https://example.com', got"
            f" {type(value).__name__} {shown(value)}."
        )
    return value


def read_config(config: Mapping[str, Any]) -> QueueConfig:
    """Validate the app's ``QUEUE_*`` keys; every mistake names its key."""
    executor = config["QUEUE_EXECUTOR"]
    if executor not in EXECUTORS:
        raise ConfigError(f"QUEUE_EXECUTOR must be one of {EXECUTORS}, got {shown(executor)}.")
    secret = config["QUEUE_SECRET"] or config.get("SECRET_KEY")
    fallbacks = config["QUEUE_SECRET_FALLBACKS"] or []
    if isinstance(fallbacks, str):
        fallbacks = [fallbacks]
    if not isinstance(fallbacks, (list, tuple)):
        # The type only: the value may be a secret, and this message gets logged.
        raise ConfigError(
            "QUEUE_SECRET_FALLBACKS must be a list of older secrets (or one string),"
            f" got {type(fallbacks).__name__}."
        )
    secret_keys = [str(k) for k in fallbacks] + ([str(secret)] if secret else [])
    if executor == "http" and not secret:
        raise ConfigError(
            "QUEUE_EXECUTOR='http' signs every invoke request: set QUEUE_SECRET"
            " (or SECRET_KEY) to a long random string."
        )
    prefix = config["QUEUE_URL_PREFIX"]
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise ConfigError(f"QUEUE_URL_PREFIX must start with '/', got {shown(prefix)}.")
    prefix = prefix.rstrip("/")
    base_url = _url(config, "QUEUE_BASE_URL")
    invoke_url = _url(config, "QUEUE_INVOKE_URL") or (
        f"{base_url.rstrip('/')}{prefix}/invoke" if base_url else None
    )
    if executor == "http" and not invoke_url:
        raise ConfigError(
            "QUEUE_EXECUTOR='http' needs to know where to POST: set QUEUE_BASE_URL"
            " (e.g. 'https://example.com') or QUEUE_INVOKE_URL."
        )
    try:
        retry = retry_delays(config["QUEUE_RETRY"], name="QUEUE_RETRY")
    except QueueError as exc:
        raise ConfigError(str(exc)) from None
    listen = config["QUEUE_LISTEN"]
    if listen not in (True, False, "auto"):
        raise ConfigError(f"QUEUE_LISTEN must be 'auto', True or False, got {shown(listen)}.")
    listen_url = config["QUEUE_LISTEN_URL"]
    if listen_url is not None and not isinstance(listen_url, str):
        raise ConfigError(
            "QUEUE_LISTEN_URL must be a database URL string (a direct, unpooled one),"
            f" got {type(listen_url).__name__}."
        )
    tracing = _tracing(config["QUEUE_TRACING"])
    auth = config["QUEUE_DASHBOARD_AUTH"]
    if auth is not None and not callable(auth) and not (isinstance(auth, str) and ":" in auth):
        raise ConfigError(
            "QUEUE_DASHBOARD_AUTH must be a callable returning True to allow, or"
            " 'user:password' for HTTP Basic auth."
        )
    table_name = config["QUEUE_TABLE_NAME"]
    if not isinstance(table_name, str) or not table_name.isidentifier():
        raise ConfigError(f"QUEUE_TABLE_NAME must be a plain identifier, got {shown(table_name)}.")
    return QueueConfig(
        secret_keys=secret_keys,
        base_url=base_url,
        invoke_url=invoke_url,
        url_prefix=prefix,
        executor=executor,
        threads=_positive_int(config, "QUEUE_THREADS"),
        scheduler=bool(config["QUEUE_SCHEDULER"]),
        produce_interval=_duration(config, "QUEUE_PRODUCE_INTERVAL"),
        produce_token=config["QUEUE_PRODUCE_TOKEN"],
        produce_budget=_duration(config, "QUEUE_PRODUCE_BUDGET"),
        retry=retry,
        lease=_duration(config, "QUEUE_LEASE"),
        handler_grace=_duration(config, "QUEUE_HANDLER_GRACE", allow_zero=True),
        batch_size=_positive_int(config, "QUEUE_BATCH_SIZE"),
        keep_completed=_duration(config, "QUEUE_KEEP_COMPLETED", allow_zero=True),
        keep_results=_duration(config, "QUEUE_KEEP_RESULTS", allow_zero=True),
        keep_events=_duration(config, "QUEUE_KEEP_EVENTS", allow_zero=True),
        listen=listen,
        listen_url=listen_url,
        dashboard_auth=auth,
        table_name=table_name,
        invoke_max_age=_duration(config, "QUEUE_INVOKE_MAX_AGE"),
        dispatch_timeout=_duration(config, "QUEUE_DISPATCH_TIMEOUT"),
        max_payload=None
        if config["QUEUE_MAX_PAYLOAD"] is None
        else _positive_int(config, "QUEUE_MAX_PAYLOAD"),
        encryption_keys=read_keys(config["QUEUE_ENCRYPTION_KEYS"]),
        tracing=tracing,
    )


def _tracing(value: Any) -> bool:
    if value not in (True, False, "auto"):
        raise ConfigError(f"QUEUE_TRACING must be 'auto', True or False, got {shown(value)}.")
    from . import tracing

    if not value:
        return False
    problem = None if tracing.AVAILABLE else "it is not installed"
    if problem is None:
        try:
            tracing._otel()
        except Exception as exc:  # noqa: BLE001 - a broken install: say so, once
            problem = f"importing it failed ({type(exc).__name__}: {exc})"
    if problem is None:
        return True
    if value is True:
        raise ConfigError(
            f"QUEUE_TRACING=True needs OpenTelemetry's API, and {problem}: pip install"
            " 'flask_queue[otel]' (or set QUEUE_TRACING='auto' to trace only where it works)."
        )
    if tracing.AVAILABLE:
        log.warning("flask_queue: tracing is off: OpenTelemetry's API is installed but %s", problem)
    return False
