"""The dashboard at ``/_queue/``: closed by default, server-rendered, no JS needed.

Views are thin: they read the request, call the store, render a template. Every
state change is a POST form carrying a CSRF token (Flask-WTF's helpers, keyed to
the app's session); nothing changes on GET.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections import Counter
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_wtf.csrf import CSRFError, generate_csrf, validate_csrf
from wtforms import ValidationError

from . import actions, present
from .errors import (
    InvalidStatusError,
    JobNotFoundError,
    UnknownQueueError,
    UnreadablePayloadError,
)
from .history import HISTORY_SIZE
from .job import JobStatus
from .signing import tokens_equal
from .state import current_state

if TYPE_CHECKING:
    from .state import QueueState

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'self';"
    " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
log = logging.getLogger("flask_queue")
PAGE_SIZE = 50
#: Rows per page on a phone (at 640 px or less): 50 cards made a page 10,800 px long.
PHONE_PAGE = 20
#: Jobs a search lists when its words begin more than one id or custom id.
SEARCH_LIMIT = 20
#: Counts stop here and show "10,000+": a count never reads more index entries
#: (at 100,000 per status and 10,000 per queue cell, the overview's counts alone
#: took 70 ms on PostgreSQL and 216 ms on MariaDB with a million jobs).
TOTAL_CAP = 10_000
CELL_CAP = 1_000
#: Failures are grouped over this many of the most recent ones.
FAILURE_SAMPLE = 1_000
STATUSES = [s.value for s in JobStatus]
#: Lists of finished jobs read newest first; upcoming ones soonest first.
NEWEST_FIRST = {JobStatus.FAILED.value, JobStatus.COMPLETED.value, JobStatus.CANCELLED.value}
OPTIONAL_TABS = {JobStatus.COMPLETED.value, JobStatus.CANCELLED.value, JobStatus.BLOCKED.value}
PUBLIC_ENDPOINTS = {"queue.invoke", "queue.produce", "queue.metrics", "queue.static"}


def access(state: QueueState) -> str | None:
    """``"write"``, ``"read"`` or None (no access). Open in debug mode;
    otherwise only through the app's guard, which returns True (or ``"write"``)
    for full access, ``"read"`` to see everything and change nothing, and
    anything false for none."""
    callback = state.queue.dashboard_auth_callback
    auth = state.config.dashboard_auth
    if callback is not None:
        granted: Any = callback()
    elif callable(auth):
        granted = auth()
    elif isinstance(auth, str):
        granted = _basic_auth_ok(auth)
    else:
        granted = current_app.debug
    # Fail closed: only True or "write" may change anything. A role name the
    # guard invented ("readonly", "viewer", "none") is no access, and says so.
    if granted is True or granted == "write":
        return "write"
    if granted == "read":
        return "read"
    if granted:
        log.warning(
            "flask_queue: the dashboard guard returned %r; it may return True or"
            ' "write" (full access), "read" (read-only) or False. No access given.',
            granted,
        )
    return None


def _basic_auth_ok(expected: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        given = base64.b64decode(encoded, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return False
    return tokens_equal(given, expected)


def _page_key(value: str | None) -> tuple[datetime, str] | None:
    """A page key (``run_at~id``, as the pagers write them) as the store reads
    it, in UTC; a 400 for one that names no possible row.

    The time is converted here, where a bad one is the request's fault: an
    offset can carry a valid date past year 9999 or before year 1 in UTC, which
    overflowed in the store (a 500 on every database).
    """
    if not value or "~" not in value:
        return None
    stamp, _, job_id = value.partition("~")
    try:
        when = datetime.fromisoformat(stamp)
        if when.tzinfo is not None:
            when = when.astimezone(timezone.utc)
        if _unstorable(job_id):
            raise ValueError("an id with NUL")
    except (ValueError, OverflowError) as exc:
        abort(400, f"Invalid page key {value!r} ({exc}): start again from the first page.")
    return when.replace(tzinfo=timezone.utc), job_id


def _unstorable(value: str | None) -> bool:
    """Whether no job's id, custom id or queue can be ``value``: none holds NUL
    (ids are generated; custom ids and queue names refuse it), and PostgreSQL
    refuses NUL in a text parameter, so such a value is not looked up at all."""
    return value is not None and "\x00" in value


def _key(job: Any) -> str:
    return f"{job.run_at.isoformat()}~{job.id}"


def _pager(rows: list[Any], start: int, end: int, earlier: bool, later: bool) -> dict[str, Any]:
    """The links of a pager that shows ``rows[start:end]``: keys of the pages
    before and after it (None: none there), and whether to offer the first."""
    shown = rows[start:end]
    previous = _key(shown[0]) if shown and (start > 0 or earlier) else None
    following = _key(shown[-1]) if shown and (end < len(rows) or later) else None
    return {
        "first": previous is not None or (earlier and not shown),
        "previous": previous,
        "next": following,
    }


def _same_site(target: str | None) -> str | None:
    """``target`` if it is a path on this site, else None: no open redirect.

    Browsers read a backslash as a slash and drop tabs and newlines, so
    ``/\\evil.example`` and ``/\\t/evil.example`` mean ``//evil.example``, another host.
    """
    if not target or not target.startswith("/") or target.startswith("//"):
        return None
    if "\\" in target or any(c.isspace() or not c.isprintable() for c in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target


def _status_arg(status: str) -> str:
    value = status.upper()
    if value not in STATUSES:
        abort(404, f"No status {status!r}.")
    return value


def _state() -> QueueState:
    """The current app's state: one Queue can serve several apps, each with its
    own blueprint, so the views find theirs per request instead of closing over it."""
    return current_state()


def _queue_names(state: QueueState) -> list[str]:
    return sorted(state.queue.handlers)


def _job_or_none(state: QueueState, job_id: str) -> Any:
    return None if _unstorable(job_id) else actions.get(state, job_id)


def guard() -> Any:
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    state = _state()
    granted = access(state)
    g.flask_queue_access = granted
    if granted is None:
        if isinstance(state.config.dashboard_auth, str):
            return (
                "Authentication required.",
                401,
                {"WWW-Authenticate": 'Basic realm="flask_queue"'},
            )
        if state.queue.dashboard_auth_callback or callable(state.config.dashboard_auth):
            abort(403, "Not allowed to see the job dashboard.")
        abort(
            403,
            "The job dashboard is closed: it opens in debug mode, or set"
            " QUEUE_DASHBOARD_AUTH / @queue.dashboard_auth.",
        )
    if request.method == "POST":
        if granted != "write":
            abort(403, "Read-only access to the job dashboard: nothing was changed.")
        try:
            validate_csrf(request.form.get("csrf_token"))
        except (ValidationError, CSRFError) as exc:
            abort(400, f"Missing or invalid CSRF token: {exc}. Reload the page and retry.")
    return None


def headers(response: Any) -> Any:
    if request.endpoint not in PUBLIC_ENDPOINTS:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Cache-Control"] = "no-store"
    return response


def helpers() -> dict[str, Any]:
    if request.endpoint in PUBLIC_ENDPOINTS:
        return {}
    state = _state()
    now = state.queue.clock()
    totals = dict(
        zip(
            STATUSES,
            actions.counts_capped(state, TOTAL_CAP, [(s, None) for s in STATUSES]),
            strict=True,
        )
    )
    kept = bool(state.config.keep_completed)
    return {
        "csrf_token": generate_csrf,
        "can_write": g.get("flask_queue_access") == "write",
        "now": now,
        "relative": lambda when: present.relative(when, now),
        "present": present,
        "statuses": STATUSES,
        # The tabs: COMPLETED when kept or holding rows (results), CANCELLED when any.
        "tabs": [
            s
            for s in STATUSES
            if s not in OPTIONAL_TABS or totals[s] or (s == "COMPLETED" and kept)
        ],
        "queues": _queue_names(state),
        "totals": totals,
        "total_cap": TOTAL_CAP,
        "keep_completed": kept,
        "history_size": HISTORY_SIZE,
        "delivery_trouble": state.deliveries.failing(),
    }


#: The JSON endpoints: their errors are JSON too.
API_ENDPOINTS = frozenset({"queue.api_jobs", "queue.api_job"})


def error(exc: Any) -> Any:
    if request.endpoint in PUBLIC_ENDPOINTS:
        return exc
    if request.endpoint in API_ENDPOINTS:
        return _api_error(exc.code, exc.description)
    back = None
    if exc.code == 400 and request.endpoint == "queue.jobs" and request.view_args:
        # A bad page key: the way out is the list's first page, not the overview.
        status = str(request.view_args["status"]).lower()
        back = url_for("queue.jobs", status=status, queue=request.args.get("queue") or None)
    return render_template("flask_queue/error.html", error=exc, back=back), exc.code


def unreadable(exc: UnreadablePayloadError) -> Any:
    # A row whose payload no configured key opens: say so, not a bare 500.
    from werkzeug.exceptions import Conflict

    return error(Conflict(f"This job cannot be shown: {exc}."))


def forbidden(exc: Any) -> Any:
    if request.endpoint in API_ENDPOINTS:
        return _api_error(403, exc.description)
    # Plain text: a visitor who may not see the dashboard gets no page of it.
    return exc.description, 403, {"Content-Type": "text/plain; charset=utf-8"}


def index() -> Any:
    state = _state()
    cells = [(s, q) for q in _queue_names(state) for s in STATUSES]
    grid = dict(zip(cells, actions.counts_capped(state, CELL_CAP, cells), strict=True))
    failures = Counter(
        (q, present.error_type(r)) for q, r in actions.recent_failures(state, FAILURE_SAMPLE)
    )
    settings = actions.queue_settings(state)
    # Due but not claimed: what a pause or a limit holds back right now.
    held = [
        q
        for q, s in settings.items()
        if s["paused"] or s["concurrency"] is not None or s["rate"] is not None
    ]
    waiting = dict(
        zip(
            held,
            actions.counts_capped(state, CELL_CAP, [(None, q) for q in held], due=True),
            strict=True,
        )
    )
    now = state.queue.clock()
    hour_from, day_from = present.charts_since(now)
    charts = present.run_charts(
        actions.run_stats(state, hour_from),
        actions.run_stats(state, day_from, by_hour=True),
        now,
    )
    return render_template(
        "flask_queue/index.html",
        charts=charts,
        grid=grid,
        settings=settings,
        waiting=waiting,
        held_keys=actions.held_keys(state, CELL_CAP) if held else [],
        cell_cap=CELL_CAP,
        failures=failures.most_common(10),
        failure_sample=FAILURE_SAMPLE,
    )


def jobs(status: str) -> Any:
    state = _state()
    value = _status_arg(status)
    queue = request.args.get("queue") or None
    after = _page_key(request.args.get("after"))
    before = None if after else _page_key(request.args.get("before"))
    newest_first = value in NEWEST_FIRST
    unknown = _unstorable(queue)  # a queue nobody has: an empty list, as for any other
    # The page before a key is the page after it in the other order, turned round.
    backward = before is not None
    rows = (
        []
        if unknown
        else actions.page(
            state,
            status=value,
            queue=queue,
            limit=PAGE_SIZE + 1,
            after=before or after,
            newest_first=newest_first != backward,
        )
    )
    beyond = len(rows) > PAGE_SIZE  # more past the page, in the order it was read
    rows = rows[:PAGE_SIZE]
    if backward:
        rows.reverse()
    earlier, later = (beyond, True) if backward else (after is not None, beyond)
    # A phone shows PHONE_PAGE of the rows (the ones next to the key it came
    # from) and pages by them; the others are hidden there by the stylesheet.
    phone = (max(0, len(rows) - PHONE_PAGE), len(rows)) if backward else (0, PHONE_PAGE)
    return render_template(
        "flask_queue/jobs.html",
        status=value,
        rows=rows,
        queue=queue,
        phone=phone,
        pagers={
            "wide": _pager(rows, 0, len(rows), earlier, later),
            "phone": _pager(rows, *phone, earlier, later),
        },
        # Unfiltered, the count is the nav's total for this status: not counted twice.
        matching=(
            0 if unknown else actions.count_capped(state, TOTAL_CAP, status=value, queue=queue)
        )
        if queue
        else None,
    )


def search() -> Any:
    key = (request.args.get("q") or "").strip()
    if not key:
        return render_template("flask_queue/search.html", q=key, matches=[])
    if _unstorable(key):
        return render_template("flask_queue/search.html", q=key, matches=[]), 404
    state = _state()
    # An exact id, then an exact custom id, wins over the longer ones it begins.
    exact = actions.find(state, key)
    matches = [exact] if exact is not None else actions.search(state, key, SEARCH_LIMIT + 1)
    if len(matches) == 1:
        return redirect(url_for("queue.job", job_id=matches[0].id))
    return render_template(
        "flask_queue/search.html",
        q=key,
        matches=matches[:SEARCH_LIMIT],
        more=len(matches) > SEARCH_LIMIT,
    ), (200 if matches else 404)


def job(job_id: str) -> Any:
    found = _job_or_none(_state(), job_id)
    if found is None:
        abort(404, f"No job with id {job_id!r} (finished jobs are deleted unless kept).")
    steps = actions.steps(_state(), found)
    wait = actions.current_wait(_state(), found)
    parents, children = actions.links(_state(), found)
    return render_template(
        "flask_queue/job.html",
        job=found,
        steps=steps,
        wait=wait,
        parents=parents,
        children=children,
    )


#: Events the Events page lists (the newest).
EVENTS_SHOWN = 100


def events() -> Any:
    name = request.args.get("name") or None
    if name is not None and (_unstorable(name) or len(name) > 255):
        abort(404, f"No events named {name!r}.")
    shown = actions.events(_state(), name=name, limit=EVENTS_SHOWN)
    return render_template("flask_queue/events.html", events=shown, name=name, limit=EVENTS_SHOWN)


def job_payload(job_id: str) -> Any:
    found = _job_or_none(_state(), job_id)
    if found is None:
        abort(404, f"No job with id {job_id!r}.")
    # Masked like the page: the download is no way around the masking.
    body = present.pretty_payload(found.payload)
    return current_app.response_class(
        body,
        mimetype="application/json",
        headers={"Content-Disposition": f'attachment; filename="{job_id}-payload.json"'},
    )


def job_action(job_id: str, action: str) -> Any:
    if _unstorable(job_id):
        abort(404, f"No job with id {job_id!r}.")
    state = _state()
    try:
        if action == "run-now":
            actions.run_now(state, job_id)
            flash("The job is due now; the next produce runs it.", "ok")
        elif action == "retry":
            actions.retry(state, job_id)
            flash("The job is scheduled again, due now.", "ok")
        elif action == "cancel":
            cancelled = actions.cancel(state, job_id)
            if cancelled.status is JobStatus.CANCELLED:
                flash("Cancelled: the job will not run.", "ok")
            else:
                flash("Asked to stop: the run ends CANCELLED at its next heartbeat.", "ok")
        elif action == "delete":
            if not actions.delete(state, job_id):
                raise JobNotFoundError(f"No job with id {job_id!r}.")
            flash(f"Deleted job {job_id}.", "ok")
            target = _same_site(request.form.get("next")) or url_for("queue.index")
            return redirect(target, 303)
        else:
            abort(404, f"No action {action!r}.")
    except JobNotFoundError as exc:
        abort(404, str(exc))
    except InvalidStatusError as exc:
        abort(409, str(exc))
    return redirect(url_for("queue.job", job_id=job_id), 303)


def queue_action(name: str, action: str) -> Any:
    state = _state()
    try:
        if action == "pause":
            actions.pause(state, name)
            flash(f"Paused {name}: its jobs stay scheduled; running ones finish.", "ok")
        elif action == "resume":
            actions.resume(state, name)
            flash(f"Resumed {name}.", "ok")
        else:
            abort(404, f"No action {action!r}.")
    except UnknownQueueError as exc:
        abort(404, str(exc))
    return redirect(url_for("queue.index"), 303)


def bulk() -> Any:
    action = request.form.get("action")
    queue = request.form.get("queue") or None
    where = f" in queue {queue!r}" if queue else ""
    nothing = _unstorable(queue)
    if action == "retry":
        count = 0 if nothing else actions.retry_failed(_state(), queue)
        flash(f"Scheduled {count:,} failed job(s){where} again.", "ok")
    elif action == "delete":
        count = 0 if nothing else actions.delete_failed(_state(), queue)
        flash(f"Deleted {count:,} failed job(s){where}.", "ok")
    else:
        abort(400, f"No bulk action {action!r}.")
    return redirect(url_for("queue.jobs", status="failed", queue=queue), 303)


# -- read-only JSON, under the dashboard's guard -------------------------------------

#: Jobs one API page holds at most (``?limit=``, 50 by default).
API_PAGE_MAX = 200


def _api_job(job: Any, *, full: bool) -> dict[str, Any]:
    """A job as the API gives it: payload and result masked like the pages."""
    out: dict[str, Any] = job.as_dict()
    if full:
        out["payload"] = present.mask(job.payload)
        out["result"] = present.mask(job.result)
    else:
        out.pop("payload", None)
        out.pop("result", None)  # the list's rows are light; the job's URL has them
    return out


def _api_error(code: int, message: str) -> Any:
    return jsonify({"error": message}), code


def api_jobs() -> Any:
    """``GET <prefix>/api/jobs?status=FAILED&queue=mail&limit=50&after=KEY``: one
    keyset page of jobs of a status (as the dashboard's lists order them), and
    the key of the next page (``next``; None at the end)."""
    state = _state()
    status = (request.args.get("status") or "").upper()
    if status not in STATUSES:
        return _api_error(400, f"Pass status= one of {', '.join(STATUSES)} (got {status!r}).")
    queue = request.args.get("queue") or None
    try:
        limit = int(request.args.get("limit", "50"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= API_PAGE_MAX:
        return _api_error(400, f"Pass limit= a whole number from 1 to {API_PAGE_MAX}.")
    after = _page_key(request.args.get("after"))
    rows = (
        []
        if _unstorable(queue)
        else actions.page(
            state,
            status=status,
            queue=queue,
            limit=limit + 1,
            after=after,
            newest_first=status in NEWEST_FIRST,
        )
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return jsonify(
        {
            "jobs": [_api_job(j, full=False) for j in rows],
            "next": _key(rows[-1]) if more and rows else None,
        }
    )


def api_job(job_id: str) -> Any:
    """``GET <prefix>/api/jobs/<id>``: one job in full (payload and result masked)."""
    found = _job_or_none(_state(), job_id)
    if found is None:
        return _api_error(404, f"No job with id {job_id!r}.")
    return jsonify(_api_job(found, full=True))


def register_dashboard(bp: Blueprint, state: QueueState) -> None:
    """Put the dashboard on ``bp``, the blueprint of the app whose state is ``state``.

    The views read that state per request (``_state()``): init_app stores it in
    ``app.extensions`` before it registers ``bp``, so they find the same object.
    ``state`` itself is not needed here; taking it keeps views.py's call as it is.
    """
    bp.before_request(guard)
    bp.after_request(headers)
    bp.context_processor(helpers)
    for code in (400, 404, 409):
        bp.register_error_handler(code, error)
    bp.register_error_handler(UnreadablePayloadError, unreadable)
    bp.register_error_handler(403, forbidden)
    # Each endpoint is its view's name (queue.index, ...), as url_for names them.
    bp.add_url_rule("/", view_func=index, methods=["GET"])
    bp.add_url_rule("/jobs/<status>", view_func=jobs, methods=["GET"])
    bp.add_url_rule("/search", view_func=search, methods=["GET"])
    bp.add_url_rule("/events", view_func=events, methods=["GET"])
    bp.add_url_rule("/api/jobs", view_func=api_jobs, methods=["GET"])
    bp.add_url_rule("/api/jobs/<job_id>", view_func=api_job, methods=["GET"])
    bp.add_url_rule("/job/<job_id>", view_func=job, methods=["GET"])
    bp.add_url_rule("/job/<job_id>/payload.json", view_func=job_payload, methods=["GET"])
    bp.add_url_rule("/job/<job_id>/<action>", view_func=job_action, methods=["POST"])
    bp.add_url_rule("/queues/<name>/<action>", view_func=queue_action, methods=["POST"])
    bp.add_url_rule("/bulk", view_func=bulk, methods=["POST"])
