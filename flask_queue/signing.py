"""Signing the invoke request and deriving the produce token.

Security reasoning:

* The invoke body is an itsdangerous timed token over ``{"id", "attempt"}`` with a
  salt of its own, so a signature made for anything else the app signs with
  ``SECRET_KEY`` (sessions, CSRF) is never valid here.
* The token is verified over the exact bytes received — nothing parses or
  re-encodes the body first — and a token has one accepted spelling: only the
  URL-safe alphabet and a signature in itsdangerous' own encoding pass.
  base64 decoding alone ignores stray characters (``token + "="``) and the
  unused bits of the last character; only surrounding ASCII whitespace (a
  trailing newline from an HTTP tool) is tolerated.
* A body over ``MAX_INVOKE_BODY`` is refused; the view refuses it before reading.
* The age limit bounds how long a captured request is usable at all; the attempt
  number makes it single-use: the store starts a run only for the job's current,
  not-yet-started attempt, so a replay inside the age window runs nothing.
* Key rotation: itsdangerous signs with the newest key and verifies against every
  key in ``QUEUE_SECRET_FALLBACKS`` + ``QUEUE_SECRET``.
* The produce token is derived from the secret with its own salt (never the
  secret itself), and compared in constant time.
"""

from __future__ import annotations

import functools
import hmac
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from itsdangerous import BadData, BadSignature, SignatureExpired, URLSafeTimedSerializer
from itsdangerous.encoding import base64_decode, base64_encode
from itsdangerous.signer import Signer

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import QueueConfig

INVOKE_SALT = "flask_queue.invoke"
PRODUCE_SALT = "flask_queue.produce-token"
#: The largest invoke body accepted. A token is about 100 bytes (a job id of at most 32
#: characters, an attempt number, a timestamp, a signature); anything much larger is
#: not ours, and refusing it unread keeps a stranger from making us buffer it.
MAX_INVOKE_BODY = 4 * 1024
BODY_TOO_LARGE = f"Body too large: a signed invoke body is under {MAX_INVOKE_BODY} bytes."
_TOKEN = re.compile(rb"[A-Za-z0-9_\-.]+")


class InvokeRefused(Exception):
    """The invoke request is not one we signed (or no longer valid)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class InvokeRequest:
    job_id: str
    attempt: int


def _serializer(secret_keys: list[str]) -> URLSafeTimedSerializer:
    return _cached_serializer(tuple(secret_keys))


@functools.lru_cache(maxsize=16)
def _cached_serializer(secret_keys: tuple[str, ...]) -> URLSafeTimedSerializer:
    # One per set of keys, not one per request: a serializer holds only its
    # keys and salt (each sign and verify derives its signers anew), so sharing
    # one between threads is safe, and it saves ~4 us on each side of a delivery.
    return URLSafeTimedSerializer(list(secret_keys), salt=INVOKE_SALT)


def sign_invoke(secret_keys: list[str], job_id: str, attempt: int) -> bytes:
    return _serializer(secret_keys).dumps({"id": job_id, "attempt": attempt}).encode()


def verify_invoke(secret_keys: list[str], body: bytes, max_age: timedelta) -> InvokeRequest:
    """Check a raw invoke body; raise :class:`InvokeRefused` with the HTTP status."""
    if len(body) > MAX_INVOKE_BODY:
        raise InvokeRefused(413, BODY_TOO_LARGE)
    body = body.strip()
    if not body:
        raise InvokeRefused(401, "Missing signed body.")
    if not _TOKEN.fullmatch(body):
        raise InvokeRefused(400, "Body is not a flask_queue token.")
    text = body.decode("ascii")
    try:
        data = _serializer(secret_keys).loads(text, max_age=int(max_age.total_seconds()))
    except SignatureExpired:
        raise InvokeRefused(403, "Signature expired.") from None
    except BadSignature as exc:
        # BadPayload (a subclass) would mean our own signature over garbage:
        # impossible without the key, so it is treated like any other forgery.
        raise InvokeRefused(403, "Bad signature.") from exc
    except BadData:
        raise InvokeRefused(400, "Body is not a flask_queue token.") from None
    signature = body.rpartition(b".")[2]
    if base64_encode(base64_decode(signature)) != signature:
        # The same signature spelled differently: a mutated body, not ours.
        raise InvokeRefused(403, "Bad signature.")
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("id"), str)
        or not isinstance(data.get("attempt"), int)
        or isinstance(data.get("attempt"), bool)
    ):
        raise InvokeRefused(400, "Signed body does not name a job id and attempt.")
    return InvokeRequest(job_id=data["id"], attempt=data["attempt"])


def produce_token(secret: str) -> str:
    """The bearer token ``/produce`` accepts when ``QUEUE_PRODUCE_TOKEN`` is unset."""
    return Signer(secret, salt=PRODUCE_SALT).derive_key().hex()


def produce_token_for(config: QueueConfig) -> str:
    """The bearer token ``/produce`` accepts under ``config``: ``QUEUE_PRODUCE_TOKEN``,
    else derived from the signing secret."""
    if config.produce_token:
        return str(config.produce_token)
    if not config.secret:
        raise ConfigError(
            "No produce token: set QUEUE_PRODUCE_TOKEN, or QUEUE_SECRET/SECRET_KEY to"
            " derive one from."
        )
    return produce_token(config.secret)


def tokens_equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
