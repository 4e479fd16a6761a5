"""Refused deliveries: the right status, and nothing queued, recorded or pushed."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest
from hookenv import Env, new_secret

GOOD = {"object": "document", "id": "D-1", "op": "created",
        "values": {"amount": "1.5", "status": "signed", "city": "Oslo"}}
EMPTY = {"crmsync_messages": 0, "crmsync_webhook_deliveries": 0, "crmsync_pushed_records": 0}


def _raw(env: Env, body: bytes, headers: dict[str, Any], system: str = "esign") -> httpx.Response:
    return env.client.post(f"{env.url}/hooks/{system}", content=body, headers=headers)


def _body(payload: Any = GOOD) -> bytes:
    return json.dumps(payload).encode()


def _tamper(h: dict[str, str]) -> dict[str, str]:
    return h | {"webhook-signature": "v1," + "A" * 43 + "="}


CASES: dict[str, tuple[Callable[[Env], httpx.Response], int, Any]] = {
    "bad signature": (lambda e: _raw(e, _body(), _tamper(e.headers(_body()))), 401, None),
    "signed with another secret": (lambda e: e.post(GOOD, secret=new_secret()), 401, None),
    "body changed after signing": (
        lambda e: _raw(e, _body(GOOD | {"id": "D-2"}), e.headers(_body())), 401, None),
    "missing webhook-id": (
        lambda e: _raw(e, _body(), {k: v for k, v in e.headers(_body()).items()
                                    if k != "webhook-id"}), 401, None),
    "missing webhook-timestamp": (
        lambda e: _raw(e, _body(), {k: v for k, v in e.headers(_body()).items()
                                    if k != "webhook-timestamp"}), 401, None),
    "missing webhook-signature": (
        lambda e: _raw(e, _body(), {k: v for k, v in e.headers(_body()).items()
                                    if k != "webhook-signature"}), 401, None),
    "no headers at all": (lambda e: _raw(e, _body(), {}), 401, None),
    "timestamp too old": (
        lambda e: e.post(GOOD, ts=e.clock() - timedelta(seconds=301)), 401,
        "timestamp outside tolerance"),
    "timestamp too new": (
        lambda e: e.post(GOOD, ts=e.clock() + timedelta(seconds=301)), 401,
        "timestamp outside tolerance"),
    "malformed JSON": (lambda e: e.post(b'{"object": "document", "id": '), 400, None),
    "not UTF-8": (lambda e: _raw(e, b'"\xff\xfe"', e.headers(b"x")), 400, "UTF-8"),
    "NaN is not JSON": (lambda e: e.post(b'{"object":"document","id":"x","op":"created",'
                                        b'"values":{"amount":NaN}}'), 400, None),
    "unknown op": (lambda e: e.post(GOOD | {"op": "merged"}), 422, "op"),
    "missing id": (lambda e: e.post({k: v for k, v in GOOD.items() if k != "id"}), 422, "id"),
    "extra key": (lambda e: e.post(GOOD | {"colour": "red"}), 422, "colour"),
    "position in a batch": (
        lambda e: e.post({"changes": [GOOD, GOOD, GOOD, GOOD | {"op": "nope"}]}), 422,
        "changes[3].op"),
    "extra key at the top": (lambda e: e.post({"changes": [GOOD], "more": 1}), 422, "more"),
    "empty batch": (lambda e: e.post({"changes": []}), 422, "changes"),
    "not an object": (lambda e: e.post([GOOD]), 422, "body"),
    "bool id": (lambda e: e.post(GOOD | {"id": True}), 422, "id"),
    "id too long": (lambda e: e.post(GOOD | {"id": "x" * 256}), 422, "id"),
    "wrong value type": (
        lambda e: e.post(GOOD | {"values": {"amount": "lots"}}), 422, "values.amount"),
    "wrong type in a batch": (
        lambda e: e.post({"changes": [GOOD, GOOD | {"values": {"amount": [1]}}]}), 422,
        "changes[1].values.amount"),
    "unknown field": (lambda e: e.post(GOOD | {"values": {"colour": "red"}}), 422,
                      "values.colour"),
    "bad version": (lambda e: e.post(GOOD | {"version": "yesterday"}), 422, "version"),
    "float version": (lambda e: e.post(GOOD | {"version": 1.5}), 422, "version"),
    "unknown object": (lambda e: e.post(GOOD | {"object": "invoice"}), 422, "object"),
    "one bad change refuses all": (
        lambda e: e.post({"changes": [GOOD, GOOD | {"id": "D-2", "values": {"amount": "x"}}]}),
        422, "changes[1].values.amount"),
    "unknown system": (lambda e: e.post(GOOD, system="nosuch"), 404, None),
    "system without a secret": (lambda e: e.post(GOOD, system="crm"), 404, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refused_and_nothing_written(env: Env, case: str) -> None:
    send, status, where = CASES[case]
    r = send(env)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    if where is not None:
        assert where in json.dumps(detail), detail
    if status == 422:
        assert all({"loc", "msg"} <= set(p) for p in detail)
    assert env.counts() == EMPTY


def test_error_detail_names_the_field_and_what_was_expected(env: Env) -> None:
    r = env.post(GOOD | {"values": {"amount": "lots"}})
    assert r.json() == {"detail": [
        {"loc": "values.amount", "msg": "expected a number, got 'lots'"}]}


def test_tolerance_is_configurable_and_uses_the_injected_clock(env: Env) -> None:
    env.ctx.webhook_tolerance_s = 10
    old = env.clock() - timedelta(seconds=11)
    assert env.post(GOOD, ts=old).status_code == 401
    env.clock.now -= timedelta(seconds=11)  # the service's clock, not the wall clock
    assert env.post(GOOD, ts=old).status_code == 202


def test_replayed_id_is_refused_and_queues_nothing(env: Env) -> None:
    assert env.post(GOOD, "msg_once").status_code == 202
    before = env.counts()
    # the same id again: a verbatim replay, and one with other content re-signed
    r = env.post(GOOD, "msg_once")
    assert r.status_code == 409 and "replay" in r.json()["detail"]
    assert env.post(GOOD | {"id": "D-9"}, "msg_once").status_code == 409
    assert env.counts() == before
    with env.ctx.state.connect() as c:
        assert env.ctx.state.pending_ids(c, "contracts", "source") == ["D-1"]


def test_refused_batch_leaves_no_replay_row_so_a_fixed_resend_is_accepted(env: Env) -> None:
    assert env.post(GOOD | {"values": {"amount": "x"}}, "msg_fix").status_code == 422
    assert env.post(GOOD, "msg_fix").status_code == 202


def test_oversized_body_configured_limit(env: Env) -> None:
    env.ctx.max_body_bytes = 200
    small = GOOD
    big = GOOD | {"values": {"city": "x" * 300}}
    assert env.post(big).status_code == 413
    assert env.counts() == EMPTY

    # chunked: no Content-Length, counted while streaming
    body = json.dumps(big).encode()
    h = env.headers(body)

    def stream():
        for i in range(0, len(body), 50):
            yield body[i : i + 50]

    r = env.client.post(f"{env.url}/hooks/esign", content=stream(), headers=h)
    assert r.status_code == 413
    assert env.counts() == EMPTY
    assert env.post(small).status_code == 202


def test_oversized_body_default_one_mib(env: Env) -> None:
    assert env.ctx.max_body_bytes == 1024 * 1024
    pad = "x" * int(1.1 * 1024 * 1024)
    r = env.post(GOOD | {"values": {"city": pad}})
    assert r.status_code == 413
    assert env.counts() == EMPTY
    # just under the limit passes the size check
    r = env.post(GOOD | {"values": {"city": "x" * (1024 * 1024 - 200)}})
    assert r.status_code == 202


def _socket_post(env: Env, headers: dict[str, str | bytes], body: bytes) -> int | None:
    """A request httpx would refuse to send; the status, or None if the server hung up."""
    port = int(env.url.rsplit(":", 1)[1])
    lines = [b"POST /hooks/esign HTTP/1.1", b"host: 127.0.0.1", b"connection: close"]
    for k, v in headers.items():
        lines.append(k.encode() + b": " + (v if isinstance(v, bytes) else v.encode()))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    if not data:
        return None
    return int(data.split(b" ", 2)[1])


@pytest.mark.parametrize("value", ["-5", "abc", "99999999999999999999999", "10, 10"])
def test_invalid_content_length_is_refused(env: Env, value: str) -> None:
    body = _body()
    h = env.headers(body) | {"content-length": value}
    status = _socket_post(env, h, body)
    assert status is None or 400 <= status < 500
    assert env.counts() == EMPTY


def test_whitespace_only_signature_is_refused(env: Env) -> None:
    body = _body()
    h = env.headers(body) | {"webhook-signature": "    ", "content-length": str(len(body))}
    assert _socket_post(env, h, body) == 401
    assert env.counts() == EMPTY


HOSTILE: dict[str, Callable[[dict[str, str]], dict[str, Any]]] = {
    "signature not base64": lambda h: h | {"webhook-signature": "v1,!!!not*base64!!!"},
    "signature no comma": lambda h: h | {"webhook-signature": "v1"},
    "signature many commas": lambda h: h | {"webhook-signature": "v1,a,b,c"},
    "signature bad padding": lambda h: h | {"webhook-signature": "v1,abc"},
    "signature other version": lambda h: h | {"webhook-signature": "v2," + h[
        "webhook-signature"][3:]},
    "signature many entries": lambda h: h | {"webhook-signature": " ".join(["v1,AAAA"] * 5000)},
    "signature space separated junk": lambda h: h | {"webhook-signature": "v1,AA  v1,"},
    "timestamp not a number": lambda h: h | {"webhook-timestamp": "soon"},
    "timestamp float": lambda h: h | {"webhook-timestamp": "1e10"},
    "timestamp negative": lambda h: h | {"webhook-timestamp": "-1"},
    "timestamp huge": lambda h: h | {"webhook-timestamp": "9" * 400},
    "id huge": lambda h: h | {"webhook-id": "i" * 60_000},
    "id with spaces": lambda h: h | {"webhook-id": "a b"},
    "id unicode": lambda h: h | {"webhook-id": "ünïcødé✓".encode()},
    "signature unicode": lambda h: h | {"webhook-signature": "v1,ÿÿÿÿ✓".encode()},
    "timestamp unicode": lambda h: h | {"webhook-timestamp": "١٢٣".encode()},
    "signature huge": lambda h: h | {"webhook-signature": "v1," + "A" * 200_000},
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_headers_get_4xx(env: Env, case: str) -> None:
    body = _body()
    try:
        r = _raw(env, body, HOSTILE[case](env.headers(body)))
    except (httpx.RemoteProtocolError, httpx.ReadError):
        # The HTTP server itself may drop a request whose headers exceed its limits:
        # not a 5xx, and nothing reached the handler.
        assert case.endswith("huge")
    else:
        assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert env.counts() == EMPTY


def test_the_secret_never_appears_in_logs_or_answers(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    answers = []
    for send, _, _ in CASES.values():
        answers.append(send(env).text)
    for make in HOSTILE.values():
        body = _body()
        try:
            answers.append(_raw(env, body, make(env.headers(body))).text)
        except (httpx.RemoteProtocolError, httpx.ReadError):
            pass
    answers.append(env.post(GOOD).text)
    answers.append(env.post(GOOD, "msg_1").text)
    raw = env.secret.removeprefix("whsec_")
    logs = caplog.text + " ".join(repr(r.__dict__) for r in caplog.records)
    assert "webhook refused" in logs and "webhook accepted" in logs
    for text in [logs, *answers]:
        assert raw not in text
    # nor the body the sender pushed
    assert "Oslo" not in logs
