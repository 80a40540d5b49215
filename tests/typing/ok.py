"""Type-checks clean: payloads match their handlers' ``Job[T]``."""

from __future__ import annotations

from typing import TypedDict

from flask_queue import Job, Queue

queue = Queue()


class Reminder(TypedDict):
    booking_id: int
    email: str


@queue.handler("bookingReminder")
def booking_reminder(job: Job[str]) -> None:
    print(job.payload.upper())


@queue.handler("remind")
def remind(job: Job[Reminder]) -> int:
    return job.payload["booking_id"]


@queue.handler("fetch")
async def fetch(job: Job[list[str]]) -> int:
    return len(job.payload)


@queue.cron("0 9 * * *", name="digest")
def digest(job: Job[None]) -> None:
    pass


def use() -> None:
    job: Job[str] = booking_reminder.enqueue("payload", delay="10s")
    booking_reminder.enqueue("x", cron="0 9 * * *", tz="Europe/Paris", times=3)
    remind.enqueue({"booking_id": 1, "email": "a@b.c"}, retry=["10s", "1m"], id="r-1")
    result: int = remind(
        Job(
            id="1",
            queue="remind",
            payload={"booking_id": 1, "email": ""},
            run_at=job.run_at,
            status=job.status,
        )
    )
    fetch.enqueue(["https://example.com"], delay="1s")  # async handlers are typed alike
    queue.enqueue("anything", object())  # the untyped form accepts any payload
    print(result)
