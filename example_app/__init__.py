"""A small booking app that uses every flask_queue feature.

Run it with ``make demo`` (SQLite, in-process scheduler, dashboard at /_queue).
Settings come from ``EXAMPLE_*`` environment variables, e.g.
``EXAMPLE_QUEUE_EXECUTOR=http EXAMPLE_QUEUE_BASE_URL=http://127.0.0.1:5000``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import random
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from flask import Flask, Response, abort, redirect, render_template, request, url_for
from flask_sqlalchemy import SQLAlchemy

from flask_queue import Job, Queue

db = SQLAlchemy()
queue = Queue()


class Booking(db.Model):  # type: ignore[name-defined,misc]
    id = sa.Column(sa.Integer, primary_key=True)
    guest = sa.Column(sa.String(100), nullable=False)
    created_at = sa.Column(sa.DateTime, nullable=False, default=lambda: datetime.now(timezone.utc))


class JobRun(db.Model):  # type: ignore[name-defined,misc]
    """What the handlers did: the demo page shows it, the end-to-end tests read it."""

    id = sa.Column(sa.Integer, primary_key=True)
    queue = sa.Column(sa.String(50), nullable=False)
    payload = sa.Column(sa.Text, nullable=False)
    event = sa.Column(sa.String(20), nullable=False, default="done")
    at = sa.Column(sa.DateTime, nullable=False, default=lambda: datetime.now(timezone.utc))


def _log(job: Job[Any], event: str = "done") -> None:
    db.session.add(JobRun(queue=job.queue, payload=repr(job.payload), event=event))
    db.session.commit()


@queue.handler("bookingReminder")
def booking_reminder(job: Job[int]) -> None:
    """Reminds the guest of booking ``job.payload`` (delayed at booking time)."""
    booking = db.session.get(Booking, job.payload)
    print(f"BOOKING reminder for {booking.guest if booking else job.payload}")
    _log(job)


@queue.handler("bookingFlow", retry=["2s", "5s", "10s"])
def booking_flow(job: Job[dict[str, Any]]) -> str:
    """A booking made of durable steps: charge (a database step, recorded in
    the same commit as its write, so it happens once), wait up to
    ``confirm_within`` ("1d") for the ``booking.confirmed`` event of this
    booking (the run ends: no thread, connection or request waits), then sleep
    until a day before the stay (``starts_at``, ISO 8601; two days after the
    booking by default) and send the reminder. Unconfirmed in time: refund.
    A retry or the run after the wait or the sleep replays the handler and
    skips the steps that completed."""
    booking = job.payload.get("booking", 0)

    def charge() -> str:
        db.session.add(JobRun(queue=job.queue, payload=repr(job.payload), event="charged"))
        return f"charge-{booking}"

    receipt = job.step("charge", charge, session=db.session)
    confirmed = job.wait_for_event(
        "confirmation",
        "booking.confirmed",
        match={"booking": booking},
        timeout=job.payload.get("confirm_within", "1d"),
    )
    if confirmed is None:
        job.step("refund", lambda: _log(job, "refunded"))
        return f"refunded-{booking}"
    # From the payload and the job's creation only: the code between steps
    # runs again at every replay, so it must decide the same way each time.
    starts = job.payload.get("starts_at")
    made = job.created_at or job.run_at
    stay = datetime.fromisoformat(starts) if starts else made + timedelta(days=2)
    job.sleep_until("until-reminder", stay - timedelta(days=1))
    job.step("remind", lambda: _log(job, "reminded"))
    return receipt


@queue.handler("confirmationMail", events=["booking.confirmed"])
def confirmation_mail(job: Job[dict[str, Any]]) -> None:
    """Started by every ``booking.confirmed`` event (its data is the payload)."""
    _log(job, "mailed")


@queue.handler("chargeCard", retry=["2s", "5s", "10s"])
def charge_card(job: Job[int]) -> None:
    """A handler that fails sometimes: retried with growing delays, then FAILED."""
    _charge(job)


def _charge(job: Job[Any]) -> None:
    if random.random() < float(os.environ.get("EXAMPLE_FAILURE_RATE", "0.4")):
        raise ConnectionError(f"payment gateway timed out for booking {job.payload}")
    _log(job)


@queue.cron("* * * * *", name="digest", tz="Europe/Paris")
def digest(job: Job[None]) -> None:
    """A declared cron: one row, runs every minute, counts today's bookings."""
    total = db.session.scalar(sa.select(sa.func.count()).select_from(Booking))
    print(f"DIGEST {total} booking(s)")
    _log(job)


@queue.handler("record")
def record(job: Job[Any]) -> None:
    """Logs its payload; the end-to-end tests enqueue it in every form."""
    _log(job)


@queue.handler("slow")
def slow(job: Job[float]) -> None:
    """Sleeps ``job.payload`` seconds on its first attempt: long enough for the
    crash test to kill the server mid-run and watch the lease bring it back."""
    _log(job, f"started#{job.attempt}")
    if job.attempt == 1:
        time.sleep(job.payload)
    _log(job)


@queue.handler("export", timeout="1h")
def export(job: Job[dict[str, Any]]) -> dict[str, int]:
    """Exports ``rows`` rows ``pause`` seconds apart, reporting its progress; a
    cancel (dashboard, ``flask queue cancel``) stops it at its next report. What
    it returns is kept as the job's result."""
    rows, pause = int(job.payload.get("rows", 20)), float(job.payload.get("pause", 0.5))
    for i in range(rows):
        job.progress(i / rows, f"row {i + 1} of {rows}")  # raises JobCancelled once cancelled
        time.sleep(pause)
    _log(job)
    return {"rows": rows}


@queue.handler("syncTenant", exclusive=True, key=lambda payload: payload["tenant"])
def sync_tenant(job: Job[dict[str, Any]]) -> None:
    """One sync per tenant at a time (the key is the payload's tenant): other
    tenants' syncs run beside it, this tenant's next one waits for it."""
    for _ in range(int(float(job.payload.get("seconds", 1)) * 10)):
        job.check()  # stops at a cancel
        time.sleep(0.1)
    _log(job)


@queue.handler("noop")
def noop(job: Job[None]) -> None:
    """Does nothing: the benchmark measures delivery itself with it."""


def _basic_credentials() -> str | None:
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        return base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def dashboard_roles(writer: str | None, reader: str) -> Any:
    """A dashboard guard with two HTTP Basic users: ``writer`` ("user:password")
    gets full access, ``reader`` sees everything and changes nothing (its POSTs
    get 403). Anyone else is asked for credentials."""

    def guard() -> Any:
        given = _basic_credentials() or ""
        if writer and hmac.compare_digest(given.encode(), writer.encode()):
            return "write"
        if hmac.compare_digest(given.encode(), reader.encode()):
            return "read"
        abort(Response("Authentication required.", 401, {"WWW-Authenticate": 'Basic realm="jobs"'}))

    return guard


def create_app(**overrides: Any) -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    os.makedirs(app.instance_path, exist_ok=True)
    app.config.update(
        SECRET_KEY="dev-only-change-me",
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{os.path.join(app.instance_path, 'example.db')}",
        QUEUE_SCHEDULER=True,
        QUEUE_PRODUCE_INTERVAL="2s",
        QUEUE_EXECUTOR="thread",
        QUEUE_KEEP_COMPLETED="1 day",
    )
    app.config.from_prefixed_env("EXAMPLE")
    app.config.update(overrides)
    if app.config.get("DASHBOARD_READER"):
        # EXAMPLE_DASHBOARD_READER="viewer:pw": a read-only dashboard user
        # beside the full-access one of EXAMPLE_QUEUE_DASHBOARD_AUTH.
        app.config["QUEUE_DASHBOARD_AUTH"] = dashboard_roles(
            app.config.get("QUEUE_DASHBOARD_AUTH"), app.config["DASHBOARD_READER"]
        )
    # EXAMPLE_EXTRA_QUEUES='["name", ...]': more queues handled like chargeCard
    # (the browser tests use one with a 200-character name).
    for name in app.config.get("EXTRA_QUEUES", []):
        if name not in queue.handlers:
            queue.handler(name)(_charge)
    db.init_app(app)
    queue.init_app(app)
    try:
        from flask_migrate import Migrate
    except ImportError:  # optional: `flask db ...` then is not available
        pass
    else:
        Migrate(app, db)
    if app.config.get("CREATE_TABLES", True):
        # The demo creates its tables; an app with migrations sets
        # EXAMPLE_CREATE_TABLES=false and runs `flask db upgrade` instead.
        with app.app_context():
            db.create_all()

    @app.get("/")
    def index() -> str:
        bookings = db.session.scalars(sa.select(Booking).order_by(Booking.id.desc()).limit(20))
        runs = db.session.scalars(sa.select(JobRun).order_by(JobRun.id.desc()).limit(20))
        return render_template("example.html", bookings=list(bookings), runs=list(runs))

    @app.post("/bookings")
    def create_booking() -> Any:
        guest = (request.form.get("guest") or "").strip() or "Guest"
        booking = Booking(guest=guest[:100])
        db.session.add(booking)
        db.session.flush()
        # Both jobs commit with the booking, or not at all.
        booking_reminder.enqueue(booking.id, delay="10s", session=db.session)
        charge_card.enqueue(booking.id, session=db.session)
        booking_flow.enqueue({"booking": booking.id}, session=db.session)
        db.session.commit()
        return redirect(url_for("index"))

    @app.post("/bookings/<int:booking_id>/confirm")
    def confirm_booking(booking_id: int) -> Any:
        # The event's id makes a second click (or a webhook delivered twice)
        # one event: its flow wakes once, its mail goes once.
        queue.emit("booking.confirmed", {"booking": booking_id}, id=f"confirm-{booking_id}")
        return redirect(url_for("index"))

    @app.post("/enqueue/<name>")
    def enqueue(name: str) -> Any:
        """JSON API the end-to-end tests use: {"payload": ..., "options": {...}}."""
        body = request.get_json(force=True)
        job = queue.enqueue(name, body.get("payload"), **body.get("options", {}))
        return {"id": job.id, "status": job.status.value}

    @app.post("/emit/<event>")
    def emit(event: str) -> Any:
        """JSON API the end-to-end tests use: {"data": ..., "id": ...}."""
        body = request.get_json(force=True)
        emitted = queue.emit(event, body.get("data"), id=body.get("id"))
        return {"id": emitted.id, "started": list(emitted.started), "woke": list(emitted.woke)}

    @app.post("/healthz")
    def healthz() -> Any:
        """A no-op route: the benchmark's bare Flask round trip."""
        return ""

    @app.get("/runs")
    def runs() -> Any:
        rows = db.session.scalars(sa.select(JobRun).order_by(JobRun.id))
        return [{"queue": r.queue, "payload": r.payload, "event": r.event} for r in rows]

    return app
