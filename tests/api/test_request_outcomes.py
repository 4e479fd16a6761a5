"""Every record named in a sync request gets an outcome, in the answer and in the log;
erasing an id that exists nowhere is a 404 that marks nothing.

Real HTTP on loopback, SQLite systems, state on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from apiservice import STATE_BACKENDS, Service
from typer.testing import CliRunner

from crmsync.cli import app
from crmsync.state import schema as S
from crmsync.state.store import utcnow

pytestmark = pytest.mark.parametrize("service", STATE_BACKENDS, indirect=True, scope="module")

LINK = "customers"
# Scenario.seed: customer i is active (passes the filter) when i % 5 < 2.
ACTIVE, INACTIVE, MISSING = "C00011", "C00013", "NOPE-404"


def _pending(s: Service) -> set[str]:
    with s.ctx.state.connect() as c:
        q = sa.select(S.messages.c.record_id).where(S.messages.c.status == "pending")
        return set(c.execute(q).scalars())


def _log(s: Service, *args: str) -> list[dict[str, object]]:
    r = CliRunner().invoke(app, ["log", "-c", str(s.config_path), "--json", *args])
    assert r.exit_code == 0, r.output
    return [json.loads(line) for line in r.output.splitlines() if line.strip()]


def test_each_record_gets_an_outcome_in_the_answer_and_the_log(service: Service) -> None:
    admin = service.client(service.admin)
    with service.ctx.state.begin() as c:  # an erased record is never synced again
        service.ctx.state.mark_erased(c, ["erp.customer:C00016"], by="test", now=utcnow())
    ids = [ACTIVE, INACTIVE, MISSING, "C00016", ACTIVE]
    r = admin.post(f"/api/links/{LINK}/sync", json={"records": ids})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["records"] == [
        {"id": ACTIVE, "status": "queued", "reason": None},
        {"id": INACTIVE, "status": "skipped", "reason": "does not pass the link's filter"},
        {"id": MISSING, "status": "not found", "reason": f"no record {MISSING} in erp.customer"},
        {"id": "C00016", "status": "skipped", "reason": "erased (GDPR): never synced again"},
    ]
    assert (body["queued"], body["skipped"], body["not_found"]) == (1, 2, 1)
    assert body["run_requested"] is False
    pending = _pending(service)
    assert ACTIVE in pending and not {INACTIVE, MISSING, "C00016"} & pending
    # in the log, by record and by link, with who asked
    for rid, action, status in ((ACTIVE, "queued", "ok"), (INACTIVE, "skipped", "skipped"),
                                (MISSING, "not found", "skipped"), ("C00016", "skipped",
                                                                    "skipped")):
        (row,) = _log(service, "--record", f"erp.customer:{rid}", "--limit", "1")
        assert (row["action"], row["status"], row["link"]) == (action, status, LINK)
        assert "sync requested by test-admin" in str(row["message"])
    by_link = {(row["source_ref"], row["action"]) for row in _log(service, "--link", LINK)}
    assert (f"erp.customer:{MISSING}", "not found") in by_link
    audit = admin.get("/api/audit").json()[0]
    assert audit["action"] == "link.sync"
    assert audit["detail"] == {"records": 4, "queued": 1, "skipped": 2, "not_found": 1}


def test_only_unknown_records_queue_nothing(service: Service) -> None:
    before = _pending(service)
    r = service.client(service.admin).post(
        f"/api/links/{LINK}/sync", json={"records": ["X-1", "X-2"]}
    )
    assert r.status_code == 202
    assert (r.json()["queued"], r.json()["not_found"]) == (0, 2)
    assert _pending(service) == before
    r = service.client(service.admin).post(f"/api/links/{LINK}/sync", json={"records": []})
    assert r.status_code == 202 and r.json()["records"] == [] and r.json()["queued"] == 0


def test_openapi_documents_the_outcomes(service: Service) -> None:
    doc = service.client().get("/openapi.json").json()
    out = doc["components"]["schemas"]["SyncOut"]["properties"]
    assert {"queued", "run_requested", "skipped", "not_found", "records"} <= set(out)
    rec = doc["components"]["schemas"]["RecordOutcomeOut"]["properties"]
    assert rec["status"]["enum"] == ["queued", "skipped", "not found"]
    links = doc["components"]["schemas"]["LinkOut"]["properties"]
    assert {"quota_waiting", "quota_resets_at"} <= set(links)
    erase = doc["paths"]["/api/records/{system}/{object}/{id}/erase"]["post"]["responses"]
    assert "404" in erase


def test_erasing_a_missing_id_is_404_and_marks_nothing(service: Service) -> None:
    admin = service.client(service.admin)
    # The sync request above left a "not found" trace of MISSING in the log: a request's
    # trace does not make a record known, so this is still refused.
    service.client(service.admin).post(f"/api/links/{LINK}/sync", json={"records": [MISSING]})
    r = admin.post(f"/api/records/erp/customer/{MISSING}/erase")
    assert r.status_code == 404, r.text
    assert "does not exist" in r.json()["detail"]
    r = admin.post("/api/records/crm/company/987654/erase")
    assert r.status_code == 404
    with service.ctx.state.connect() as c:
        refs = set(c.execute(sa.select(S.erased.c.record_ref)).scalars())
    assert not {f"erp.customer:{MISSING}", "crm.company:987654"} & refs
    audit = admin.get("/api/audit").json()[0]
    assert audit["action"] == "record.erase" and audit["detail"]["status"] == "refused"
    # unknown object: still a clear 404; an existing record without anonymize: still 409
    r = admin.post("/api/records/erp/nosuch/1/erase")
    assert r.status_code == 404 and "no object 'nosuch'" in r.json()["detail"]
    assert admin.post(f"/api/records/erp/customer/{ACTIVE}/erase").status_code == 409
