"""Deep links and GDPR erasure over the HTTP API (real HTTP on loopback, SQLite systems)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from apiservice import LiveServer, Service
from dbs import fresh_database
from scenario import Scenario

from crmsync.api.auth import create_token
from crmsync.service.context import ServiceContext

# Active, created in the CRM by the first sync (not one of the pre-existing companies).
CNO = "C00016"
PERSONAL = ("Customer 16", "c16@erp.example")


def _with_links_and_anonymize(text: str) -> str:
    edits = [
        ("  erp:\n    connector: sql\n",
         "  erp:\n    connector: sql\n    links_to: https://erp.example/{object}/{id}\n"),
        ("        lookback: 2\n",
         "        lookback: 2\n        anonymize: {name: Erased, email: null}\n"),
        ("  crm:\n    connector: sql\n",
         '  crm:\n    connector: sql\n    links_to: "https://crm.example/#/{object}/{id}"\n'),
        ("lookback: 2}\n", "lookback: 2, anonymize: {name: Erased company, email: null}}\n"),
    ]
    for old, new in edits:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def erasable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Like ``service``, with ``links_to`` on both systems and ``anonymize`` on both objects."""
    tmp = tmp_path_factory.mktemp("erase")
    with pytest.MonkeyPatch.context() as mp, fresh_database("sqlite", tmp, "state") as state:
        sc = Scenario(tmp, f"sqlite:///{tmp / 'erp.db'}", f"sqlite:///{tmp / 'crm.db'}",
                      monkeypatch=mp, state_url=state)
        sc.config_path.write_text(_with_links_and_anonymize(sc.config_path.read_text()))
        sc.seed(n=40, crm_existing=5)
        sc.sync()
        ctx = ServiceContext.open(sc.config_path)
        server = LiveServer(ctx)
        server.start()
        admin = create_token(ctx.state, "admin", "test-admin")
        viewer = create_token(ctx.state, "viewer", "test-viewer")
        try:
            yield Service(sc, ctx, server, admin, viewer)
        finally:
            server.stop()
            ctx.close()
            sc.close()


def _crm_id(s: Service) -> str:
    return str(s.scenario.crm_rows()[CNO]["id"])


def _erased(s: Service) -> list[str]:
    with s.ctx.state.connect() as c:
        return [r[0] for r in c.execute(sa.text("SELECT record_ref FROM crmsync_erased"))]


def test_links_from_either_record(erasable: Service) -> None:
    viewer = erasable.client(erasable.viewer)
    crm_id = _crm_id(erasable)
    erp_link = {"system": "erp", "object": "customer", "id": CNO,
                "url": f"https://erp.example/customer/{CNO}"}
    crm_link = {"system": "crm", "object": "company", "id": crm_id,
                "url": f"https://crm.example/#/company/{crm_id}"}
    r = viewer.get(f"/api/records/erp/customer/{CNO}/links")
    assert r.status_code == 200, r.text
    assert r.json() == [erp_link, crm_link]
    r = viewer.get(f"/api/records/crm/company/{crm_id}/links")
    assert r.json() == [crm_link, erp_link]
    # a record crmsync never paired: itself alone, its id quoted in the URL
    r = viewer.get("/api/records/erp/customer/A%26B C%3F/links")
    assert r.json() == [{"system": "erp", "object": "customer", "id": "A&B C?",
                         "url": "https://erp.example/customer/A%26B%20C%3F"}]


def test_links_need_a_token_and_a_known_object(erasable: Service) -> None:
    assert erasable.client().get(f"/api/records/erp/customer/{CNO}/links").status_code == 401
    viewer = erasable.client(erasable.viewer)
    r = viewer.get("/api/records/nope/customer/1/links")
    assert r.status_code == 404 and r.json()["detail"].startswith("no system named 'nope'")
    r = viewer.get("/api/records/crm/person/1/links")
    assert r.status_code == 404
    assert r.json()["detail"] == "system 'crm' has no object 'person' (objects: company)"


def test_erase_is_admin_only(erasable: Service) -> None:
    path = f"/api/records/erp/customer/{CNO}/erase"
    before = erasable.ctx.state.audit_rows(1000)
    assert erasable.client().post(path).status_code == 401
    r = erasable.client(erasable.viewer).post(path)
    assert r.status_code == 403 and "admin" in r.json()["detail"]
    assert _erased(erasable) == []
    assert erasable.scenario.crm_rows()[CNO]["name"] == PERSONAL[0]
    assert erasable.ctx.state.audit_rows(1000) == before


def test_erase_anonymizes_both_systems_and_the_log(erasable: Service) -> None:
    admin = erasable.client(erasable.admin)
    crm_id = _crm_id(erasable)
    assert admin.post("/api/records/erp/nothing/1/erase").status_code == 404

    r = admin.post(f"/api/records/crm/company/{crm_id}/erase")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["record"] == f"crm.company:{crm_id}" and body["by"] == "test-admin"
    assert [(x["record"], x["result"]) for x in body["records"]] == [
        (f"crm.company:{crm_id}", "anonymized"), (f"erp.customer:{CNO}", "anonymized"),
    ]
    assert body["erased_at"].endswith("Z") or body["erased_at"].endswith("+00:00")
    erp, crm = erasable.scenario.erp_rows()[CNO], erasable.scenario.crm_rows()[CNO]
    assert (erp["name"], erp["email"]) == ("Erased", None)
    assert (crm["name"], crm["email"]) == ("Erased company", None)
    assert sorted(_erased(erasable)) == [f"crm.company:{crm_id}", f"erp.customer:{CNO}"]

    viewer = erasable.client(erasable.viewer)
    outcomes = viewer.get(f"/api/records/erp/customer/{CNO}/outcomes").json()
    assert outcomes[0]["action"] == "erased"
    assert {o["action"] for o in outcomes} == {"created", "erased"}
    text = json.dumps(outcomes)
    assert not [p for p in PERSONAL if p in text]
    audit = admin.get("/api/audit").json()[0]
    assert (audit["action"], audit["actor"], audit["target"]) == (
        "record.erase", "test-admin", f"crm.company:{crm_id}"
    )
    assert not [p for p in PERSONAL if p in json.dumps(audit)]

    # a stale ERP edit is not synced; the erasure can run again
    erasable.scenario.erp_update(CNO, name="Customer 16", email="c16@erp.example")
    erasable.scenario.sync()
    assert erasable.scenario.crm_rows()[CNO]["name"] == "Erased company"
    r = admin.post(f"/api/records/erp/customer/{CNO}/erase")
    assert r.status_code == 200, r.text
    assert [x["result"] for x in r.json()["records"]] == ["anonymized", "already anonymized"]
    assert erasable.scenario.erp_rows()[CNO]["name"] == "Erased"


def test_openapi_describes_the_new_routes(erasable: Service) -> None:
    doc = erasable.client().get("/openapi.json").json()
    erase = doc["paths"]["/api/records/{system}/{object}/{id}/erase"]["post"]
    assert "GDPR" in erase["summary"] + erase.get("description", "")
    assert {"200", "401", "403", "404", "409", "502", "503"} <= set(erase["responses"])
    links = doc["paths"]["/api/records/{system}/{object}/{id}/links"]["get"]
    assert {"200", "401", "404"} <= set(links["responses"])


def test_without_anonymize_nothing_is_erased(service: Service) -> None:
    """The stock scenario declares no `anonymize:` and no `links_to`."""
    admin = service.client(service.admin)
    r = admin.post("/api/records/erp/customer/C00001/erase")
    assert r.status_code == 409
    assert "nothing to erase" in r.json()["detail"]
    assert _erased(service) == []
    links = service.client(service.viewer).get("/api/records/erp/customer/C00001/links").json()
    assert [x["url"] for x in links] == [None, None]
