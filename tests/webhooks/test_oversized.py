"""An oversized webhook gets its 413 even from a sender that writes the whole body
before it reads the answer (Python's http.client does), not a connection reset.

The senders say ``Connection: close``, as many webhook senders do: the server then
closes right after its answer, and any byte of the body it had not read made the
kernel answer the sender with a reset (before, from about 3 MB on)."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hookenv import Env

from crmsync.api.hooks import DRAIN_FACTOR

GOOD = {"object": "document", "id": "D-1", "op": "created",
        "values": {"amount": "1.5", "status": "signed", "city": "Oslo"}}
EMPTY = {"crmsync_messages": 0, "crmsync_webhook_deliveries": 0, "crmsync_pushed_records": 0}
LIMIT = 1024 * 1024


def _body(size: int) -> bytes:
    """A signed-looking change of exactly ``size`` bytes."""
    base = json.dumps(GOOD | {"values": {"city": ""}}).encode()
    return json.dumps(GOOD | {"values": {"city": "x" * (size - len(base))}}).encode()


def _post(env: Env, body: bytes, *, chunked: bool = False) -> tuple[int, dict[str, Any]]:
    """POST with http.client: the whole body goes out before the answer is read."""
    host, port = env.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        headers = env.headers(body) | {"Connection": "close"}
        if chunked:
            def pieces() -> Iterator[bytes]:
                for i in range(0, len(body), 16 * 1024):
                    yield body[i : i + 16 * 1024]

            conn.request("POST", "/hooks/esign", body=pieces(), headers=headers,
                         encode_chunked=True)
        else:
            conn.request("POST", "/hooks/esign", body=body, headers=headers)
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("size", "chunked"),
    [
        (LIMIT + 1, False),  # just over
        (6 * LIMIT, False),  # far over, within what is read and discarded
        (DRAIN_FACTOR * LIMIT, False),  # at the bound
        (LIMIT + 1, True),  # chunked, no Content-Length
        (6 * LIMIT, True),
    ],
    ids=["just-over", "6x", "at-bound", "chunked-just-over", "chunked-6x"],
)
def test_whole_body_sender_gets_413(env: Env, size: int, chunked: bool) -> None:
    assert env.ctx.max_body_bytes == LIMIT
    for _ in range(3):  # every time, not by luck of timing
        status, body = _post(env, _body(size), chunked=chunked)
        assert status == 413, body
        assert f"larger than {LIMIT} bytes" in body["detail"]
    assert env.counts() == EMPTY
    assert _post(env, _body(LIMIT))[0] == 202  # the limit itself is fine


def test_a_smaller_configured_limit_drains_by_its_own_bound(env: Env) -> None:
    env.ctx.max_body_bytes = 64 * 1024
    for chunked in (False, True):
        status, body = _post(env, _body(8 * 64 * 1024), chunked=chunked)
        assert status == 413, body
    assert env.counts() == EMPTY


def test_past_the_bound_the_server_reads_no_further_and_stays_up(env: Env) -> None:
    env.ctx.max_body_bytes = 64 * 1024
    for chunked in (False, True):
        try:
            status: int | None = _post(env, _body(64 * 64 * 1024), chunked=chunked)[0]
        except (ConnectionError, http.client.HTTPException):
            status = None  # the documented answer past the bound: the connection closes
        assert status in (413, None)
    assert env.counts() == EMPTY
    assert _post(env, _body(1000))[0] == 202
