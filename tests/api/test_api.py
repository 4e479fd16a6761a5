"""The HTTP API over real HTTP on loopback: roles, links, sync, queue, retry, outcomes, metrics."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from apiservice import STATE_BACKENDS, Service

from crmsync.api.auth import create_token, revoke_token, verify
from crmsync.state.schema import SCHEMA_VERSION
from crmsync.state.store import utcnow

pytestmark = pytest.mark.parametrize("service", STATE_BACKENDS, indirect=True, scope="module")

LINK = "customers"

# Every admin route, with a body where it takes one.
ADMIN_ROUTES = [
    ("POST", f"/api/links/{LINK}/enable", None),
    ("POST", f"/api/links/{LINK}/disable", None),
    ("POST", f"/api/links/{LINK}/sync", {"records": ["C00001"]}),
    ("POST", "/api/messages/1/retry", None),
    ("POST", "/api/messages/retry", None),
    ("GET", "/api/audit", None),
    ("POST", "/api/records/erp/customer/C00001/erase", None),
]
VIEWER_ROUTES = [
    "/api/links",
    "/api/runs",
    "/api/messages",
    "/api/messages?status=failed",
    "/api/quotas",
    "/api/records/erp/customer/C00001/outcomes",
    "/api/records/erp/customer/C00001/links",
    "/api/records/erp/customer/C00001/activity",
]


def test_health_needs_no_token(service: Service) -> None:
    r = service.client().get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "schema_version": SCHEMA_VERSION}


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_ROUTES)
def test_admin_routes_refuse_no_token_and_viewer(
    service: Service, method: str, path: str, body: dict | None
) -> None:
    before = service.ctx.state.audit_rows(1000)
    r = service.client().request(method, path, json=body)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert "detail" in r.json()
    r = service.client("csk_not-a-token").request(method, path, json=body)
    assert r.status_code == 401
    r = service.client(service.viewer).request(method, path, json=body)
    assert r.status_code == 403, r.text
    assert "detail" in r.json()
    assert service.ctx.state.audit_rows(1000) == before  # refused: nothing recorded


@pytest.mark.parametrize("path", VIEWER_ROUTES)
def test_viewer_reads(service: Service, path: str) -> None:
    assert service.client().get(path).status_code == 401
    r = service.client(service.viewer).get(path)
    assert r.status_code == 200, r.text
    assert isinstance(r.json(), list | dict)


def test_links_show_config_queue_and_last_run(service: Service) -> None:
    (link,) = service.client(service.viewer).get("/api/links").json()
    assert link["name"] == LINK
    assert (link["source"], link["target"], link["direction"]) == (
        "erp.customer", "crm.company", "forward"
    )
    assert link["enabled"] is True
    assert set(link["queue"]) == {"pending", "running", "failed"}
    assert link["last_run"]["status"] == "ok"
    assert link["last_run"]["counts"]["created"] > 0


def test_enable_disable_round_trip_is_audited(service: Service) -> None:
    admin = service.client(service.admin)
    r = admin.post(f"/api/links/{LINK}/disable")
    assert r.status_code == 200 and r.json()["enabled"] is False
    assert r.json()["enabled_changed_by"] == "test-admin"
    assert service.client(service.viewer).get("/api/links").json()[0]["enabled"] is False
    assert service.ctx.state.link_enabled_overrides() == {LINK: False}
    # a disabled link takes no sync request
    assert admin.post(f"/api/links/{LINK}/sync").status_code == 409
    r = admin.post(f"/api/links/{LINK}/enable")
    assert r.json()["enabled"] is True
    assert service.ctx.state.link_enabled_overrides() == {LINK: True}
    audit = admin.get("/api/audit").json()
    assert [a["action"] for a in audit[:2]] == ["link.enable", "link.disable"]
    assert {a["actor"] for a in audit[:2]} == {"test-admin"}
    assert audit[0]["target"] == f"link:{LINK}"
    assert admin.post("/api/links/nosuchlink/enable").status_code == 404


def test_sync_with_records_queues_them(service: Service) -> None:
    admin = service.client(service.admin)
    # active customers (they pass the link's filter); skipped ones: test_request_outcomes
    r = admin.post(f"/api/links/{LINK}/sync", json={"records": ["C00005", "C00006", "C00005"]})
    assert r.status_code == 202
    body = r.json()
    assert (body["queued"], body["run_requested"]) == (2, False)
    assert [x["status"] for x in body["records"]] == ["queued", "queued"]
    msgs = admin.get("/api/messages", params={"status": "pending", "link": LINK}).json()
    mine = {m["record_id"]: m for m in msgs}
    assert {"C00005", "C00006"} <= set(mine)
    assert mine["C00005"]["side"] == "source" and mine["C00005"]["op"] == "upsert"
    assert mine["C00005"]["attempts"] == 0
    assert admin.get("/api/audit").json()[0]["action"] == "link.sync"


def test_sync_without_records_requests_a_run(service: Service) -> None:
    r = service.client(service.admin).post(f"/api/links/{LINK}/sync")
    assert r.status_code == 202
    assert r.json() == {
        "queued": 0, "run_requested": True, "skipped": 0, "not_found": 0, "records": None
    }
    st = service.ctx.state.link_states()[LINK]
    assert st["next_run_at"] is not None
    assert abs(st["next_run_at"] - utcnow()) < timedelta(minutes=1)


def test_sync_bad_input_is_4xx(service: Service) -> None:
    admin = service.client(service.admin)
    assert admin.post("/api/links/nosuchlink/sync").status_code == 404
    assert admin.post(f"/api/links/{LINK}/sync", json={"records": "C1"}).status_code == 422
    assert admin.post(f"/api/links/{LINK}/sync", json={"records": [""]}).status_code == 422
    assert admin.post(f"/api/links/{LINK}/sync", json={"other": 1}).status_code == 422
    assert admin.post("/api/links/bad%20name/sync").status_code == 422


def _failed_message(service: Service, record_id: str) -> int:
    st = service.ctx.state
    with st.begin() as c:
        st.add_failed(c, LINK, "source", record_id, "write refused: boom",
                      max_attempts=1, available_at=utcnow())
    (m,) = [m for m in st.list_messages(status="failed") if m["record_id"] == record_id]
    return int(m["id"])


def test_retry_one_failed_message(service: Service) -> None:
    mid = _failed_message(service, "C00011")
    viewer, admin = service.client(service.viewer), service.client(service.admin)
    failed = viewer.get("/api/messages", params={"status": "failed"}).json()
    assert any(m["id"] == mid and m["last_error"] == "write refused: boom" for m in failed)
    r = admin.post(f"/api/messages/{mid}/retry")
    assert r.status_code == 200 and r.json() == {"retried": 1}
    (m,) = [m for m in viewer.get("/api/messages").json() if m["id"] == mid]
    assert (m["status"], m["attempts"]) == ("pending", 0)
    assert admin.post(f"/api/messages/{mid}/retry").status_code == 409  # not failed now
    assert admin.post("/api/messages/999999/retry").status_code == 404
    assert admin.post("/api/messages/0/retry").status_code == 422
    audit = admin.get("/api/audit").json()[0]
    assert (audit["action"], audit["target"]) == ("message.retry", f"message:{mid}")


def test_retry_all_failed(service: Service) -> None:
    ids = [_failed_message(service, r) for r in ("C00021", "C00022")]
    admin = service.client(service.admin)
    assert admin.post("/api/messages/retry", params={"link": "nosuchlink"}).status_code == 404
    r = admin.post("/api/messages/retry", params={"link": LINK})
    assert r.status_code == 200 and r.json()["retried"] >= 2
    assert not admin.get("/api/messages", params={"status": "failed"}).json()
    pending = {m["id"] for m in admin.get("/api/messages", params={"status": "pending"}).json()}
    assert set(ids) <= pending


def test_record_outcomes(service: Service) -> None:
    viewer = service.client(service.viewer)
    rows = viewer.get("/api/records/erp/customer/C00001/outcomes").json()
    assert rows and rows[0]["source_ref"] == "erp.customer:C00001"
    assert rows[0]["action"] in ("created", "matched", "updated")
    assert any(f["field"] == "name" for f in rows[0]["fields"])
    # the same record seen from the target side
    target = rows[0]["target_ref"]
    system_object, _, rid = target.partition(":")
    sysname, _, obj = system_object.partition(".")
    again = viewer.get(f"/api/records/{sysname}/{obj}/{rid}/outcomes").json()
    assert [x["id"] for x in again] == [x["id"] for x in rows]
    assert viewer.get("/api/records/erp/customer/NOPE/outcomes").json() == []
    assert viewer.get("/api/records/nosys/customer/C00001/outcomes").status_code == 404
    assert viewer.get("/api/records/erp/noobj/C00001/outcomes").status_code == 404


def test_runs_and_quotas(service: Service) -> None:
    viewer = service.client(service.viewer)
    runs = viewer.get("/api/runs", params={"link": LINK, "limit": 5}).json()
    assert runs and runs[0]["link"] == LINK
    assert viewer.get("/api/runs", params={"limit": 0}).status_code == 422
    q = viewer.get("/api/quotas").json()
    assert q["quotas"] == []
    assert {c["system"] for c in q["calls"]} == {"erp", "crm"}


def test_metrics(service: Service) -> None:
    r = service.client().get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    for name in (
        "crmsync_queue_messages",
        "crmsync_queue_oldest_age_seconds",
        "crmsync_outcomes_total",
        "crmsync_connector_calls_total",
    ):
        assert name in r.text
    assert f'crmsync_queue_messages{{link="{LINK}",status="pending"}}' in r.text


def test_tokens_verify_and_revoke(service: Service) -> None:
    st = service.ctx.state
    token = create_token(st, "viewer", "short-lived")
    assert token.startswith("csk_")
    p = verify(st, token)
    assert p is not None and (p.name, p.role) == ("short-lived", "viewer")
    with pytest.raises(ValueError, match="exists already"):
        create_token(st, "viewer", "short-lived")
    assert service.client(token).get("/api/links").status_code == 200
    assert revoke_token(st, "short-lived") == 1
    assert verify(st, token) is None
    assert service.client(token).get("/api/links").status_code == 401
    # only the hash is stored
    with st.connect() as c:
        import sqlalchemy as sa

        from crmsync.state import schema as S

        stored = [tuple(r) for r in c.execute(sa.select(S.tokens))]
    assert not any(token in str(v) for row in stored for v in row)


def test_token_never_in_logs_or_responses(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    admin = service.client(service.admin)
    bodies = [
        admin.get("/api/links").text,
        admin.post(f"/api/links/{LINK}/enable").text,
        admin.post(f"/api/links/{LINK}/sync", json={"records": ["C00005"]}).text,
        admin.get("/api/audit").text,
        service.client(service.viewer).post("/api/messages/retry").text,
        service.client(service.admin + "x").get("/api/links").text,
        admin.get("/metrics").text,
    ]
    for secret in (service.admin, service.viewer, service.admin[4:20]):
        assert not any(secret in b for b in bodies)
        assert secret not in caplog.text
    erp_url = service.scenario.erp_url  # a ${VAR} secret of the config
    assert not any(erp_url in b for b in bodies)
    assert any(getattr(r, "action", None) == "link.sync" for r in caplog.records)


def test_unexpected_error_is_redacted_json_500(
    service: Service, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def boom() -> dict:
        raise RuntimeError("cannot reach postgresql://app:hunter2secret@db.example/x")

    monkeypatch.setattr(service.ctx.state, "link_states", boom)
    caplog.set_level(logging.DEBUG)
    r = service.client(service.viewer).get("/api/links")
    assert r.status_code == 500 and r.json() == {"detail": "internal error"}
    assert "hunter2secret" not in r.text and "hunter2secret" not in caplog.text
    assert "RuntimeError" in caplog.text


def test_health_503_when_state_unreachable(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlalchemy.exc

    def down() -> int:
        raise sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("unable to open"))

    monkeypatch.setattr(service.ctx.state, "ping", down)
    r = service.client().get("/health")
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "schema_version": None}
    monkeypatch.setattr(service.ctx.state, "link_states", down)
    r = service.client(service.viewer).get("/api/links")
    assert r.status_code == 503 and "unavailable" in r.json()["detail"]
