"""`crmsync token|retry|status` in a subprocess, against the same state as a live API."""

from __future__ import annotations

import subprocess
import sys

import httpx
from apiservice import Service

from crmsync.state.store import utcnow

LINK = "customers"


def crmsync(service: Service, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crmsync", *args, "-c", str(service.config_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_token_create_list_revoke(service: Service) -> None:
    r = crmsync(service, "token", "create", "--role", "admin", "--name", "ops")
    assert r.returncode == 0, r.stderr
    token = r.stdout.rstrip("\n").splitlines()[-1]
    assert token.startswith("csk_") and " " not in token
    assert r.stdout.endswith(token + "\n")  # alone on the last line, nothing after
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {token}"}) as c:
        assert c.post(f"/api/links/{LINK}/enable").status_code == 200
        assert c.get("/api/audit").json()[0]["actor"] == "ops"

    r = crmsync(service, "token", "create", "--role", "admin", "--name", "ops")
    assert r.returncode == 2 and "exists already" in r.stderr
    r = crmsync(service, "token", "create", "--role", "root")
    assert r.returncode == 2 and "--role" in r.stderr

    listing = crmsync(service, "token", "list")
    assert listing.returncode == 0
    assert "ops" in listing.stdout and "admin" in listing.stdout
    assert token not in listing.stdout and token[4:12] not in listing.stdout

    r = crmsync(service, "token", "revoke", "ops")
    assert r.returncode == 0, r.stderr
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {token}"}) as c:
        assert c.get("/api/links").status_code == 401
    assert crmsync(service, "token", "revoke", "ops").returncode == 2  # no such token
    actions = [a["action"] for a in service.ctx.state.audit_rows(10)]
    assert "token.create" in actions and "token.revoke" in actions


def test_viewer_token_from_cli(service: Service) -> None:
    r = crmsync(service, "token", "create", "--role", "viewer")
    token = r.stdout.splitlines()[-1]
    with httpx.Client(base_url=service.url, headers={"Authorization": f"Bearer {token}"}) as c:
        assert c.get("/api/links").status_code == 200
        assert c.post(f"/api/links/{LINK}/disable").status_code == 403


def _fail(service: Service, record_id: str) -> int:
    st = service.ctx.state
    with st.begin() as c:
        st.add_failed(c, LINK, "source", record_id, "refused", max_attempts=1,
                      available_at=utcnow())
    return next(
        m["id"] for m in st.list_messages(status="failed") if m["record_id"] == record_id
    )


def test_retry_cli(service: Service) -> None:
    one = _fail(service, "C00031")
    r = crmsync(service, "retry", "--id", str(one))
    assert r.returncode == 0, r.stderr
    assert "1 failed message(s) back in the queue" in r.stdout
    assert crmsync(service, "retry", "--id", str(one)).returncode == 1  # pending now
    _fail(service, "C00032")
    _fail(service, "C00033")
    r = crmsync(service, "retry", "--link", LINK)
    assert r.returncode == 0 and "2 failed message(s)" in r.stdout
    assert not service.ctx.state.list_messages(status="failed")
    assert crmsync(service, "retry", "--link", "nosuchlink").returncode == 2
    audit = service.ctx.state.audit_rows(2)
    assert [(a["actor"], a["action"]) for a in audit] == [
        ("cli", "messages.retry"), ("cli", "message.retry")
    ]


def test_status_cli(service: Service) -> None:
    _fail(service, "C00035")
    r = crmsync(service, "status")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert LINK in out and "systems" in out and "erp" in out and "crm" in out
    assert "migration ok" in out  # last run
    assert "oldest" in out and "waiting" in out
    r = crmsync(service, "status", "--link", LINK)
    assert r.returncode == 0 and LINK in r.stdout
    assert crmsync(service, "status", "--link", "nosuchlink").returncode == 2
    assert service.scenario.erp_url not in out
