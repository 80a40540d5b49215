"""The invoke endpoint under attack: oversized bodies, and fuzzed bodies and headers.

Nothing but the untouched token the queue signed for a job's current attempt
may run anything. The fuzz budget is ``QUEUE_FUZZ_EXAMPLES`` requests in all
(default 20,000, about 40 s on two cores); raise it for a longer hunt.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from itsdangerous.encoding import base64_decode

from flask_queue import Queue
from flask_queue.signing import INVOKE_SALT, MAX_INVOKE_BODY, sign_invoke
from flask_queue.store import Claimed
from tests.conftest import Clock, Recorder, row_snapshot

URL = "/_queue/invoke"
#: URL-safe base64, what itsdangerous tokens are written in (with ".").
ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@dataclass
class Live:
    """Claimed jobs, each with the one body that may run it."""

    jobs: list[Claimed]
    tokens: list[bytes]


@pytest.fixture
def live(app: Flask, queue: Queue, clock: Clock) -> Live:
    for n in range(3):
        queue.enqueue("echo", f"job {n}", delay="1s")
    clock.advance(1)
    jobs = app.extensions["queue"].store.claim(3, timedelta(minutes=5))
    assert len(jobs) == 3
    keys = app.extensions["queue"].config.secret_keys
    return Live(jobs, [sign_invoke(keys, job.id, job.attempt) for job in jobs])


class EndlessBody:
    """A request body that never ends, counting what the app reads of it."""

    def __init__(self, refuse_after: int = 1 << 20) -> None:
        self.read_bytes = 0
        self.refuse_after = refuse_after

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = 1 << 16
        self.read_bytes += size
        if self.read_bytes > self.refuse_after:
            raise AssertionError(f"the app read {self.read_bytes} bytes of an endless body")
        return b"A" * size


def _streamed(body: Any) -> dict[str, Any]:
    # What a server that handles chunked requests hands the app: no
    # Content-Length, and a stream the server promises to end.
    return {
        "wsgi.input": body,
        "wsgi.input_terminated": True,
        "HTTP_TRANSFER_ENCODING": "chunked",
    }


def test_the_real_token_is_accepted(
    app: Flask, client: Any, live: Live, recorder: Recorder
) -> None:
    # Without this the refusals below could pass against an endpoint that runs nothing.
    assert len(live.tokens[0]) < 200
    before = row_snapshot(app)
    response = client.post(URL, data=live.tokens[0])
    assert response.status_code == 200
    assert response.json["outcome"] == "completed"
    assert recorder.calls == [("echo", "job 0")]
    assert row_snapshot(app) != before


def test_oversized_body_is_413_before_reading_it(
    app: Flask, client: Any, live: Live, recorder: Recorder
) -> None:
    before = row_snapshot(app)
    stream = EndlessBody()
    response = client.post(
        URL,
        environ_overrides={"wsgi.input": stream, "CONTENT_LENGTH": str(MAX_INVOKE_BODY + 1)},
    )
    assert response.status_code == 413
    assert response.is_json and "too large" in response.json["error"]
    assert stream.read_bytes == 0
    # A valid token padded past the cap is refused too: nothing looks inside.
    padded = live.tokens[0] + b" " * MAX_INVOKE_BODY
    assert client.post(URL, data=padded).status_code == 413
    assert client.post(URL, data=b"x" * (1 << 20)).status_code == 413
    assert recorder.calls == [] and row_snapshot(app) == before


def test_endless_chunked_body_is_read_only_up_to_the_cap(
    app: Flask, client: Any, live: Live, recorder: Recorder
) -> None:
    before = row_snapshot(app)
    stream = EndlessBody()
    response = client.post(URL, environ_overrides=_streamed(stream))
    assert response.status_code == 413
    assert stream.read_bytes <= MAX_INVOKE_BODY + 1
    assert recorder.calls == [] and row_snapshot(app) == before


class Trickle:
    """A stream that hands out a few bytes per read, as a socket may."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, size: int | None = -1) -> bytes:
        size = len(self.data) if size is None or size < 0 else min(size, 7)
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk


def test_short_reads_still_deliver_the_whole_token(
    client: Any, live: Live, recorder: Recorder
) -> None:
    response = client.post(URL, environ_overrides=_streamed(Trickle(live.tokens[1])))
    assert response.status_code == 200
    assert recorder.calls == [("echo", "job 1")]


def test_lying_content_length_reads_only_what_it_announced(
    client: Any, live: Live, recorder: Recorder
) -> None:
    # Shorter than the body: the app sees a truncated token and refuses it.
    short = {"CONTENT_LENGTH": str(len(live.tokens[0]) - 5)}
    assert client.post(URL, data=live.tokens[0], environ_overrides=short).status_code == 403
    # Longer than the body: the client went away mid-body; a 400, never a 500.
    long = {"CONTENT_LENGTH": str(len(live.tokens[0]) + 100)}
    assert client.post(URL, data=live.tokens[0], environ_overrides=long).status_code == 400
    assert recorder.calls == []


@pytest.mark.parametrize("limit", [16 * 1024 * 1024, None])
def test_a_larger_max_content_length_leaves_the_cap_in_charge(
    make_app: Any, queue: Queue, clock: Clock, recorder: Recorder, limit: int | None
) -> None:
    app = make_app(queue, MAX_CONTENT_LENGTH=limit)
    with app.app_context():
        queue.enqueue("echo", "ok", delay="1s")
        clock.advance(1)
        (job,) = app.extensions["queue"].store.claim(1, timedelta(minutes=5))
        client = app.test_client()
        assert client.post(URL, data=b"x" * (MAX_INVOKE_BODY + 1)).status_code == 413
        stream = EndlessBody()
        assert client.post(URL, environ_overrides=_streamed(stream)).status_code == 413
        assert stream.read_bytes <= MAX_INVOKE_BODY + 1
        body = sign_invoke(app.extensions["queue"].config.secret_keys, job.id, job.attempt)
        assert client.post(URL, data=body).status_code == 200
        assert recorder.calls == [("echo", "ok")]


def test_a_smaller_max_content_length_is_a_json_413(
    make_app: Any, queue: Queue, clock: Clock, recorder: Recorder
) -> None:
    # An app-wide limit below a token's size wins: it refuses even valid tokens,
    # as it would any other request that large.
    app = make_app(queue, MAX_CONTENT_LENGTH=40)
    with app.app_context():
        queue.enqueue("echo", "ok", delay="1s")
        clock.advance(1)
        (job,) = app.extensions["queue"].store.claim(1, timedelta(minutes=5))
        before = row_snapshot(app)
        body = sign_invoke(app.extensions["queue"].config.secret_keys, job.id, job.attempt)
        client = app.test_client()
        for response in (
            client.post(URL, data=body),
            client.post(URL, environ_overrides=_streamed(EndlessBody())),
        ):
            assert response.status_code == 413
            assert response.is_json and response.json["error"]
        assert recorder.calls == [] and row_snapshot(app) == before


def test_no_secret_is_still_503_before_anything_else(make_app: Any, queue: Queue) -> None:
    app = make_app(queue)
    # Unreachable through init_app (SECRET_KEY is required), so set on the state.
    state = app.extensions["queue"]
    state.config = replace(state.config, secret_keys=[])
    client = app.test_client()
    assert client.post(URL, data=b"x" * (MAX_INVOKE_BODY + 1)).status_code == 503
    assert client.post(URL, data=b"anything").status_code == 503


def _same_signature_respelled(token: bytes) -> bytes:
    # The last base64 character of a 20-byte signature carries two unused bits:
    # flipping one changes the text, not the decoded signature.
    respelled = token[:-1] + bytes([ALPHABET[ALPHABET.index(token[-1]) ^ 1]])
    signature, other = token.rpartition(b".")[2], respelled.rpartition(b".")[2]
    assert base64_decode(signature) == base64_decode(other) and respelled != token
    return respelled


@pytest.mark.parametrize(
    ("respell", "status"),
    [
        (lambda token: token + b"=", 400),
        (lambda token: token + b"==", 400),
        (lambda token: token + b"\x1c", 400),
        (lambda token: b"\x1f" + token, 400),
        (lambda token: token[:-1] + b"!" + token[-1:], 400),
        (_same_signature_respelled, 403),
    ],
    ids=[
        "pad",
        "pad2",
        "unicode-space-after",
        "unicode-space-before",
        "junk-in-sig",
        "unused-bits",
    ],
)
def test_a_token_has_one_spelling(
    app: Flask, client: Any, live: Live, recorder: Recorder, respell: Any, status: int
) -> None:
    # itsdangerous alone accepts all but junk-in-sig: base64 decoding skips
    # stray characters and the unused bits of the last one.
    before = row_snapshot(app)
    response = client.post(URL, data=respell(live.tokens[0]))
    assert response.status_code == status
    assert recorder.calls == [] and row_snapshot(app) == before


def test_surrounding_ascii_whitespace_is_still_tolerated(
    client: Any, live: Live, recorder: Recorder
) -> None:
    assert client.post(URL, data=b" " + live.tokens[0] + b"\r\n").status_code == 200
    assert recorder.calls == [("echo", "job 0")]


# -- fuzzing ------------------------------------------------------------------------

#: Requests sent by the fuzz tests below, split between them by the weights in FUZZ.
FUZZ_BUDGET = int(os.environ.get("QUEUE_FUZZ_EXAMPLES") or 20_000)
FUZZ = {"random": 0.25, "mutated": 0.35, "headers": 0.2, "forged": 0.12, "not_current": 0.08}
#: Every status a request without the queue's signature may get.
REFUSED = {400, 401, 403, 413}
SIGNING_WINDOW = 300  # QUEUE_INVOKE_MAX_AGE's default, in seconds


def _examples(name: str) -> int:
    return max(10, int(FUZZ_BUDGET * FUZZ[name]))


def _fuzz(name: str) -> settings:
    return settings(
        max_examples=_examples(name),
        deadline=None,
        database=None,  # no example database left in the shared working tree
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
        ],
    )


def _signed_at(keys: list[str], payload: Any, when: int, salt: str = INVOKE_SALT) -> bytes:
    """A token whose itsdangerous timestamp is ``when``: the age check reads the
    wall clock (``time.time``), not the queue's frozen clock."""

    class At(TimestampSigner):
        def get_timestamp(self) -> int:
            return when

    return URLSafeTimedSerializer(keys, salt=salt, signer=At).dumps(payload).encode()


def _payload_segment(payload: Any) -> bytes:
    return URLSafeTimedSerializer("unused", salt=INVOKE_SALT).dump_payload(payload)


def _keys(app: Flask) -> list[str]:
    return list(app.extensions["queue"].config.secret_keys)


huge_bodies = st.tuples(
    st.integers(MAX_INVOKE_BODY + 1, 1 << 20), st.binary(min_size=1, max_size=3)
).map(lambda t: (t[1] * t[0])[: t[0]])
token_shaped = st.lists(
    st.binary(max_size=60).map(lambda b: bytes(ALPHABET[c % 64] for c in b)),
    min_size=1,
    max_size=5,
).map(b".".join)
random_bodies = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=80).map(str.encode),
    token_shaped,
    huge_bodies,
)


edits = st.sampled_from(
    ["flip", "set", "truncate", "append", "prepend", "insert", "delete", "splice", "swap", "twice"]
)
junk = st.one_of(
    st.binary(min_size=1, max_size=20),
    st.sampled_from([b"=", b"==", b".", b"\n", b"\x1c", b"\x00", b" ", b"A", b"_"]),
)


@st.composite
def mutants(draw: st.DrawFn, live: Live, others: list[bytes]) -> bytes:
    """A real token changed by one to three edits. ``others`` are tokens the
    queue did not sign for these attempts, to splice pieces from."""
    body = bytearray(draw(st.sampled_from(live.tokens)))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(edits)
        at = draw(st.integers(0, max(len(body) - 1, 0)))
        if kind == "flip" and body:
            body[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and body:
            body[at] = draw(st.sampled_from(ALPHABET + b"=.+/"))
        elif kind == "truncate":
            body = body[:at]
        elif kind == "append":
            body += draw(junk)
        elif kind == "prepend":
            body = bytearray(draw(junk)) + body
        elif kind == "insert":
            body[at:at] = draw(junk)
        elif kind == "delete":
            del body[at : at + draw(st.integers(1, 10))]
        elif kind == "splice":
            # One of payload / timestamp / signature taken from another token.
            mine = bytes(body).rsplit(b".", 2)
            theirs = draw(st.sampled_from(others)).rsplit(b".", 2)
            if len(mine) == 3 and len(theirs) == 3:
                part = draw(st.integers(0, 2))
                mine[part] = theirs[part]
                body = bytearray(b".".join(mine))
        elif kind == "swap":
            # The job id / attempt rewritten, the original timestamp and signature kept.
            pieces = bytes(body).rsplit(b".", 2)
            if len(pieces) == 3:
                job = draw(st.sampled_from(live.jobs))
                job_id = draw(st.sampled_from([job.id, live.jobs[0].id, "x" * 32]))
                attempt = job.attempt + draw(st.sampled_from([-1, 1, 0, 100]))
                payload = _payload_segment({"id": job_id, "attempt": attempt})
                body = bytearray(b".".join([payload, *pieces[1:]]))
        elif kind == "twice":
            body = body + body
    return bytes(body)


def _assert_refused(app: Flask, response: Any, before: Any, recorder: Recorder) -> None:
    assert response.status_code in REFUSED, (response.status_code, response.data[:200])
    assert recorder.calls == []
    assert row_snapshot(app) == before


def _assert_ran(name: str, sent: list[bytes]) -> None:
    # Hypothesis stops early when it runs out of new inputs; that would be a
    # strategy too narrow to be worth its budget.
    print(f"fuzz {name}: {len(sent)} requests, {len(set(sent))} distinct bodies")
    assert len(sent) >= _examples(name)


def _assert_live_token_still_runs(client: Any, live: Live, recorder: Recorder) -> None:
    # The fuzzing aimed at attempts that really were runnable.
    response = client.post(URL, data=live.tokens[0])
    assert response.status_code == 200
    assert recorder.calls == [("echo", "job 0")]


def test_fuzz_random_bodies_are_refused(
    app: Flask, client: Any, live: Live, recorder: Recorder
) -> None:
    before = row_snapshot(app)

    sent: list[bytes] = []

    @_fuzz("random")
    @given(body=random_bodies)
    def check(body: bytes) -> None:
        assume(body.strip() not in live.tokens)
        sent.append(body)
        _assert_refused(app, client.post(URL, data=body), before, recorder)

    check()
    _assert_ran("random", sent)
    _assert_live_token_still_runs(client, live, recorder)


def test_fuzz_mutated_tokens_are_refused(
    app: Flask, client: Any, live: Live, recorder: Recorder
) -> None:
    before = row_snapshot(app)
    job = live.jobs[0]
    others = [
        sign_invoke(["another key"], job.id, job.attempt),
        _signed_at(_keys(app), {"id": job.id, "attempt": job.attempt}, int(time.time()) - 3600),
        *live.tokens,
    ]

    sent: list[bytes] = []

    @_fuzz("mutated")
    @given(body=mutants(live, others))
    def check(body: bytes) -> None:
        # Whitespace around the token is tolerated (HTTP tools add a newline):
        # such a body is the token itself, not a mutant of it.
        assume(body.strip() not in live.tokens)
        sent.append(body)
        _assert_refused(app, client.post(URL, data=body), before, recorder)

    check()
    _assert_ran("mutated", sent)
    _assert_live_token_still_runs(client, live, recorder)


header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
content_types = st.one_of(
    st.sampled_from(
        [
            "text/plain",
            "application/octet-stream",
            "application/json",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "text/plain; charset=utf-16",
        ]
    ),
    header_text,
)
extra_headers = st.dictionaries(
    st.sampled_from(
        [
            "Transfer-Encoding",
            "Content-Encoding",
            "Expect",
            "Authorization",
            "X-CSRFToken",
            "Cookie",
            "Content-Range",
        ]
    ),
    st.one_of(st.sampled_from(["chunked", "gzip", "100-continue", "identity"]), header_text),
    max_size=3,
)
content_lengths = st.one_of(
    st.integers(-5, 10**15).map(str), header_text, st.sampled_from(["", " 1", "1e3", "0x10"])
)


def test_fuzz_headers_and_framing_are_refused(
    app: Flask, client: Any, live: Live, recorder: Recorder
) -> None:
    before = row_snapshot(app)
    keys = _keys(app)
    job = live.jobs[0]
    forged = [
        sign_invoke(["another key"], job.id, job.attempt),
        _signed_at(keys, {"id": job.id, "attempt": job.attempt}, int(time.time()) - 3600),
    ]
    # A lying Content-Length may cut the body short: no body may hold a live
    # token anywhere, or a cut could turn it back into the token.
    bodies = st.one_of(
        random_bodies, st.sampled_from(forged), mutants(live, forged + live.tokens)
    ).filter(lambda body: not any(token in body for token in live.tokens))

    sent: list[bytes] = []

    @_fuzz("headers")
    @given(
        body=bodies,
        content_type=st.none() | content_types,
        extra=extra_headers,
        framing=st.sampled_from(["honest", "content-length", "chunked"]),
        length=content_lengths,
    )
    def check(
        body: bytes, content_type: str | None, extra: dict[str, str], framing: str, length: str
    ) -> None:
        headers = dict(extra)
        if content_type is not None:
            headers["Content-Type"] = content_type
        environ: dict[str, Any] = {}
        if framing == "content-length":
            environ["CONTENT_LENGTH"] = length
        elif framing == "chunked":
            environ.update(_streamed(io.BytesIO(body)))
        sent.append(body)
        response = client.post(URL, data=body, headers=headers, environ_overrides=environ)
        _assert_refused(app, response, before, recorder)

    check()
    _assert_ran("headers", sent)
    _assert_live_token_still_runs(client, live, recorder)


def test_fuzz_forged_signatures_for_live_attempts_are_403(
    app: Flask, client: Any, live: Live, recorder: Recorder
) -> None:
    """Each body names a live (job, attempt), the very thing that would run:
    signed with another key or salt, outside the age window, or carrying a
    signature lifted from another token."""
    before = row_snapshot(app)
    keys = _keys(app)
    now = int(time.time())

    @st.composite
    def forgeries(draw: st.DrawFn) -> bytes:
        job = draw(st.sampled_from(live.jobs))
        payload = {"id": job.id, "attempt": job.attempt}
        how = draw(st.sampled_from(["key", "salt", "expired", "future", "segments"]))
        if how == "key":
            key = draw(st.text(min_size=1, max_size=30).filter(lambda k: k not in keys))
            return _signed_at([key], payload, now)
        if how == "salt":
            salt = draw(
                st.sampled_from(["cookie-session", "flask_queue.produce-token", "itsdangerous"])
                | st.text(max_size=20).filter(lambda s: s != INVOKE_SALT)
            )
            return _signed_at(keys, payload, now, salt=salt)
        if how == "expired":
            # Leeway for the seconds the run itself takes.
            age = draw(st.integers(SIGNING_WINDOW + 120, now))
            return _signed_at(keys, payload, now - age)
        if how == "future":
            return _signed_at(keys, payload, now + draw(st.integers(3600, 10**10)))
        # A fresh payload+timestamp with a signature lifted from a real token.
        fresh = _signed_at(keys, payload, now - draw(st.integers(1, 60))).rsplit(b".", 1)[0]
        signature = draw(st.sampled_from(live.tokens)).rsplit(b".", 1)[1]
        return fresh + b"." + signature

    sent: list[bytes] = []

    @_fuzz("forged")
    @given(body=forgeries())
    def check(body: bytes) -> None:
        assume(body not in live.tokens)
        sent.append(body)
        response = client.post(URL, data=body)
        assert response.status_code == 403, response.data
        _assert_refused(app, response, before, recorder)

    check()
    _assert_ran("forged", sent)
    _assert_live_token_still_runs(client, live, recorder)


def test_fuzz_validly_signed_but_not_current_runs_nothing(
    app: Flask, client: Any, live: Live, recorder: Recorder
) -> None:
    """Signed by the queue yet not a current attempt (unknown, stale, future,
    malformed): refused by the store, which must not touch the row either."""
    before = row_snapshot(app)
    keys = _keys(app)
    live_pairs = {(job.id, job.attempt) for job in live.jobs}
    ids = st.sampled_from([job.id for job in live.jobs]) | st.text(
        st.characters(min_codepoint=33, max_codepoint=126), max_size=40
    )
    attempts = st.integers(-(2**31), 2**31)
    shapes = st.one_of(
        st.fixed_dictionaries({"id": ids, "attempt": attempts}),
        st.fixed_dictionaries(
            {"id": ids | st.integers() | st.none(), "attempt": st.booleans() | st.text(max_size=3)}
        ),
        st.none() | st.integers() | st.text(max_size=10) | st.lists(st.integers(), max_size=3),
    )

    sent: list[bytes] = []

    @_fuzz("not_current")
    @given(payload=shapes)
    def check(payload: Any) -> None:
        if isinstance(payload, dict) and type(payload["attempt"]) is int:
            assume((payload["id"], payload["attempt"]) not in live_pairs)
        body = URLSafeTimedSerializer(keys, salt=INVOKE_SALT).dumps(payload).encode()
        sent.append(body)
        response = client.post(URL, data=body)
        assert response.status_code in {400, 404, 409}, response.data
        assert recorder.calls == []
        assert row_snapshot(app) == before

    check()
    _assert_ran("not_current", sent)
    _assert_live_token_still_runs(client, live, recorder)
