"""Background jobs for Flask apps that need nothing but their own SQL database and HTTP."""

from ._version import __version__ as __version__
from .errors import (
    ConfigError,
    InvalidDurationError,
    InvalidOptionError,
    InvalidPayloadError,
    InvalidResultError,
    InvalidRetryError,
    InvalidScheduleError,
    InvalidStatusError,
    InvalidStepError,
    JobCancelled,
    JobNotFoundError,
    JobTimeoutError,
    QueueError,
    StorageError,
    UnknownQueueError,
    UnreadablePayloadError,
)
from .extension import Handler, ProduceResult, Queue
from .job import Event, Job, JobStatus
from .scheduling import ScheduleType

__all__ = [
    "ConfigError",
    "Event",
    "Handler",
    "InvalidDurationError",
    "InvalidOptionError",
    "InvalidPayloadError",
    "InvalidResultError",
    "InvalidRetryError",
    "InvalidScheduleError",
    "InvalidStatusError",
    "InvalidStepError",
    "Job",
    "JobCancelled",
    "JobNotFoundError",
    "JobStatus",
    "JobTimeoutError",
    "ProduceResult",
    "Queue",
    "QueueError",
    "ScheduleType",
    "StorageError",
    "UnknownQueueError",
    "UnreadablePayloadError",
]
