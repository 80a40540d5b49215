"""Must fail type-checking: the payload does not match the handler's Job[str]."""

from __future__ import annotations

from flask_queue import Job, Queue

queue = Queue()


@queue.handler("bookingReminder")
def booking_reminder(job: Job[str]) -> None:
    print(job.payload)


booking_reminder.enqueue(42)  # error: int is not str


@queue.handler("fetch")
async def fetch(job: Job[list[str]]) -> None:
    print(job.payload)


fetch.enqueue("https://example.com")  # error: str is not list[str]
