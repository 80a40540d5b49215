"""The read-only JSON API under the dashboard's guard (issue 21, item 6):
``GET <prefix>/api/jobs?status=&queue=`` in keyset pages, ``GET <prefix>/api/jobs/<id>``."""

from __future__ import annotations

import base64
from typing import Any

from flask_queue import Job, Queue
from tests.conftest import AppFactory, Clock, all_databases


def _auth(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(user.encode()).decode()}


@all_databases
def test_pages_of_jobs_and_one_job_in_full(make_app: AppFactory, clock: Clock) -> None:
    queue = Queue(clock=clock)

    @queue.handler("mail")
    def mail(job: Job[Any]) -> None: ...

    app = make_app(queue, QUEUE_DASHBOARD_AUTH="admin:pw")
    client = app.test_client()
    with app.app_context():
        jobs = [
            queue.enqueue("mail", {"n": i, "api_key": "s3cret"}, delay=f"{i + 1}m")
            for i in range(5)
        ]
    seen: list[str] = []
    after = None
    while True:
        query = {
            "status": "scheduled",
            "queue": "mail",
            "limit": "2",
            **({"after": after} if after else {}),
        }
        page = client.get("/_queue/api/jobs", query_string=query, headers=_auth("admin:pw"))
        assert page.status_code == 200 and page.mimetype == "application/json"
        body = page.get_json()
        assert all("payload" not in j for j in body["jobs"])
        seen += [j["id"] for j in body["jobs"]]
        after = body["next"]
        if after is None:
            break
    assert seen == [j.id for j in jobs]  # soonest first, each once
    one = client.get(f"/_queue/api/jobs/{jobs[0].id}", headers=_auth("admin:pw")).get_json()
    assert one["payload"] == {"n": 0, "api_key": "••••••"} and one["status"] == "SCHEDULED"
    assert one["queue"] == "mail" and one["run_at"] == jobs[0].run_at.isoformat()


@all_databases
def test_the_api_is_guarded_and_says_what_is_wrong_in_json(
    make_app: AppFactory, clock: Clock
) -> None:
    queue = Queue(clock=clock)
    app = make_app(queue, QUEUE_DASHBOARD_AUTH="admin:pw")
    client = app.test_client()
    assert client.get("/_queue/api/jobs?status=failed").status_code == 401
    ok = _auth("admin:pw")
    bad = client.get("/_queue/api/jobs?status=nope", headers=ok)
    assert bad.status_code == 400 and "Pass status= one of" in bad.get_json()["error"]
    worse = client.get("/_queue/api/jobs?status=failed&limit=999", headers=ok)
    assert worse.status_code == 400 and "limit=" in worse.get_json()["error"]
    key = client.get("/_queue/api/jobs?status=failed&after=x~y", headers=ok)
    assert key.status_code == 400 and "Invalid page key" in key.get_json()["error"]
    missing = client.get("/_queue/api/jobs/nope", headers=ok)
    assert missing.status_code == 404 and missing.get_json() == {"error": "No job with id 'nope'."}
    closed = make_app(Queue(clock=clock)).test_client()  # no auth, not debug: closed
    shut = closed.get("/_queue/api/jobs?status=failed")
    assert shut.status_code == 403 and "closed" in shut.get_json()["error"]
