"""Payloads encrypted at rest (opt-in: ``QUEUE_ENCRYPTION_KEYS``).

Why Fernet (``cryptography``'s, through ``MultiFernet``): it is authenticated
encryption (AES-128-CBC with HMAC-SHA256), so a row edited or swapped in the
database fails to decrypt instead of handing a handler altered data; it has a
key-rotation story built in (encrypt with the first key, decrypt with any);
and its keys are one url-safe base64 string each, easy to keep in an
environment variable. ``Fernet.generate_key()`` makes one.

What it protects: the payload column, in the database and in its backups and
replicas. Queue names, custom ids, errors and tracebacks stay plain (the
dashboard and the claim need them); a handler that puts a payload's secret in
its exception message puts it in ``reason``.

A stored payload is either JSON text or a Fernet token. A token is url-safe
base64 of a version byte 0x80, so it always starts with ``gAAAAA``; JSON text
never starts with ``g``. So rows written before encryption was turned on stay
readable, and ``flask queue rotate-keys`` encrypts them in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import ConfigError, UnreadablePayloadError

#: How every Fernet token starts (version byte 0x80, then the timestamp's zeros).
TOKEN_PREFIX = "gAAAAA"


def is_sealed(text: str) -> bool:
    return text.startswith(TOKEN_PREFIX)


class PayloadCipher:
    """Seals payload text with the newest key; opens it with any of the keys."""

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        try:
            from cryptography.fernet import Fernet, MultiFernet
        except ImportError:
            raise ConfigError(
                "QUEUE_ENCRYPTION_KEYS needs the cryptography package:"
                " pip install 'flask-queue[encryption]'."
            ) from None
        if not keys:
            raise ConfigError("QUEUE_ENCRYPTION_KEYS is empty: give at least one key.")
        fernets = []
        for position, key in enumerate(keys):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError):
                # The key's position, never the key: this message may be logged.
                raise ConfigError(
                    f"QUEUE_ENCRYPTION_KEYS[{position}] is not a Fernet key (32 url-safe"
                    " base64-encoded bytes; make one with"
                    " cryptography.fernet.Fernet.generate_key())."
                ) from None
        self._newest = fernets[0]
        self._all = MultiFernet(fernets)

    def seal(self, text: str) -> str:
        return self._all.encrypt(text.encode("utf-8")).decode("ascii")

    def open(self, text: str) -> str:
        if not is_sealed(text):
            return text  # written before encryption was turned on
        from cryptography.fernet import InvalidToken

        try:
            return self._all.decrypt(text.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError):
            raise UnreadablePayloadError(
                "this job's payload is encrypted with a key that is not in"
                " QUEUE_ENCRYPTION_KEYS (or was altered in the database)"
            ) from None

    def resealed(self, text: str) -> str | None:
        """The payload sealed with the newest key, or None if it already is."""
        if is_sealed(text):
            from cryptography.fernet import InvalidToken

            try:
                self._newest.decrypt(text.encode("ascii"))
                return None
            except InvalidToken:
                pass
        return self.seal(self.open(text))


def read_keys(value: Any) -> list[str] | None:
    """``QUEUE_ENCRYPTION_KEYS`` as a list, newest first: a list, or one string
    of keys separated by commas or spaces (what an environment variable holds)."""
    if value in (None, "", [], ()):
        return None
    if isinstance(value, (str, bytes)):
        text = value.decode() if isinstance(value, bytes) else value
        return [k for k in text.replace(",", " ").split() if k]
    if isinstance(value, (list, tuple)):
        return [k.decode() if isinstance(k, bytes) else str(k) for k in value]
    raise ConfigError(
        f"QUEUE_ENCRYPTION_KEYS must be a list of keys (newest first), got {type(value).__name__}."
    )


def plain_open(text: str) -> str:
    """Reading payloads with no keys configured."""
    if is_sealed(text):
        raise UnreadablePayloadError(
            "this job's payload is encrypted, and QUEUE_ENCRYPTION_KEYS is not set"
        )
    return text
