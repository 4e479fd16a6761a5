"""Job 1, end to end: a signed contract reaches the CRM (Tryton) once, with its related records.

A push-only e-sign system sends signed webhooks over real HTTP to the crmsync
API as a contract is edited and signed; the link fires only when the document
becomes ``signed``, then updates the Deal, the Deal's Company (street, city)
and its contact Person (email) in a real Tryton server, and leaves a note.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from standardwebhooks import Webhook
from trytonenv import TrytonServer
from webhooks.hookenv import Server, new_secret

from crmsync.api.app import create_app
from crmsync.api.auth import create_token
from crmsync.config.secrets import clear_secrets
from crmsync.connectors.tryton import TrytonRPC
from crmsync.engine.erase import erase
from crmsync.model import RecordRef
from crmsync.service.context import ServiceContext
from crmsync.state import schema as S
from crmsync.state.store import utcnow

CONFIG = """\
state: sqlite:///{state}
systems:
  esign:
    connector: webhook
    webhook_secret: ${{ESIGN_SECRET}}
    objects:
      document:
        fields:
          deal_ref: string
          status: string
          amount: decimal
          probability: string
          billing_street: string
          billing_city: string
          signer_email: string
  crm:
    connector: tryton
    url: {url}
    database: {db}
    user: admin
    password: ${{TRYTON_PASSWORD}}
    objects:
      company: {{}}
      person: {{anonymize: {{name: Erased person, email: erased@invalid.example}}}}
      deal: {{}}
links:
  contracts:
    source: esign.document
    target: crm.deal
    direction: forward
    create: false
    match: {{deal_ref: reference}}
    trigger:
      when: {{field: status, op: changed_to, value: signed}}
    fields:
      - {{source: amount, target: amount}}
      - {{source: probability, target: conversion_probability}}
      - {{source: billing_street, target: company.street}}
      - {{source: billing_city, target: company.city}}
      - {{source: signer_email, target: contact.email}}
"""


class Job:
    def __init__(self, ctx: ServiceContext, url: str, secret: str, rpc: TrytonRPC) -> None:
        self.ctx = ctx
        self.url = url
        self.secret = secret
        self.rpc = rpc
        self.http = httpx.Client(timeout=30)
        self.sent: list[tuple[str, bytes]] = []

    def post(self, wid: str, body: bytes) -> httpx.Response:
        now = utcnow()
        sig = Webhook(self.secret).sign(wid, now, body.decode())
        headers = {
            "webhook-id": wid,
            "webhook-timestamp": str(int(now.replace(tzinfo=UTC).timestamp())),
            "webhook-signature": sig,
            "content-type": "application/json",
        }
        return self.http.post(f"{self.url}/hooks/esign", content=body, headers=headers)

    def push(self, op: str, **values: Any) -> None:
        wid = f"msg_{len(self.sent) + 1}"
        body = json.dumps(
            {"object": "document", "id": "DOC-17", "op": op, "values": values}
        ).encode()
        r = self.post(wid, body)
        assert r.status_code in (200, 202), r.text
        self.sent.append((wid, body))

    def sync(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for rep in self.ctx.engine.sync():
            assert rep.status == "ok", rep.error
            for k, v in rep.counts.items():
                counts[k] = counts.get(k, 0) + v
        return counts

    def read(self, model: str, rid: int, fields: list[str]) -> dict[str, Any]:
        [row] = self.rpc.call(f"model.{model}.read", [rid], fields)
        return row

    def notes(self, model: str, rid: int) -> list[str]:
        rows = self.rpc.call(
            "model.ir.note.search_read", [["resource", "=", f"{model},{rid}"]], 0, None,
            [["id", "ASC"]], ["message"],
        )
        return [r["message"] for r in rows]


@pytest.fixture
def job(
    tryton: TrytonServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Job, dict[str, int]]]:
    rpc = tryton.rpc()
    m = "model."
    [acme] = rpc.call(m + "party.party.create", [{
        "name": "Acme Corp",
        "categories": [["add", [tryton.category_company_id]]],
        "addresses": [["create", [{"street": "1 Old Street", "city": "Oldtown"}]]],
    }])
    [pat] = rpc.call(m + "party.party.create", [{
        "name": "Pat Signer",
        "categories": [["add", [tryton.category_person_id]]],
        "contact_mechanisms": [["create", [{"type": "email", "value": "pat@old.test"}]]],
    }])
    [cm] = rpc.call(m + "party.contact_mechanism.search", [["party", "=", pat]], 0, None, None)
    [deal] = rpc.call(m + "sale.opportunity.create", [{
        "description": "Acme subscription", "reference": "D-17", "party": acme, "contact": cm,
        "amount": Decimal("100.00"),
    }])
    rpc.call(m + "sale.opportunity.opportunity", [deal])
    secret = new_secret()
    monkeypatch.setenv("ESIGN_SECRET", secret)
    monkeypatch.setenv("TRYTON_PASSWORD", tryton.password)
    cfg = tmp_path / "crmsync.yaml"
    cfg.write_text(CONFIG.format(state=tmp_path / "state.db", url=tryton.url, db=tryton.database))
    ctx = ServiceContext.open(cfg)
    try:
        with Server(create_app(ctx)) as srv:
            j = Job(ctx, f"http://127.0.0.1:{srv.port}", secret, rpc)
            yield j, {"acme": acme, "pat": pat, "deal": deal}
            j.http.close()
    finally:
        ctx.close()
        clear_secrets()


def test_signed_contract_reaches_the_deal_and_its_related_records_once(
    job: tuple[Job, dict[str, int]],
) -> None:
    j, ids = job
    deal, acme, pat = ids["deal"], ids["acme"], ids["pat"]
    deal_fields = ["amount", "conversion_probability", "last_modified_at"]
    before = j.read("sale.opportunity", deal, deal_fields)

    # Drafting and partial signing: nothing reaches Tryton.
    doc = {"deal_ref": "D-17", "amount": "1000.00", "probability": "0.4",
           "billing_street": "2 Draft Road", "billing_city": "Draftville",
           "signer_email": "pat@draft.test"}
    j.push("created", status="draft", **doc)
    j.sync()
    j.push("updated", status="sent", **{**doc, "amount": "1200.00"})
    j.push("updated", status="partially_signed", **{**doc, "amount": "1250.00"})
    counts = j.sync()
    assert counts.get("updated", 0) == 0
    assert j.read("sale.opportunity", deal, deal_fields) == before
    assert j.read("party.address", j.read("party.party", acme, ["addresses"])["addresses"][0],
                  ["city"])["city"] == "Oldtown"
    assert j.notes("sale.opportunity", deal) == []

    # Fully signed: the final values land on the Deal, its Company and its Person.
    # "high" is no number: conversion_probability is not updated, and the note says so.
    final = {**doc, "amount": "1500.50", "probability": "high",
             "billing_street": "99 Signed Avenue", "billing_city": "Newcity",
             "signer_email": "pat@signed.test"}
    j.push("updated", status="signed", **final)
    counts = j.sync()
    assert counts.get("matched") == 1, counts  # the first signing pairs the deal by key
    got = j.read("sale.opportunity", deal, deal_fields)
    assert got["amount"] == Decimal("1500.50")
    assert got["conversion_probability"] == before["conversion_probability"]
    [addr] = j.read("party.party", acme, ["addresses"])["addresses"]
    assert j.read("party.address", addr, ["street", "city"]) == {
        "id": addr, "street": "99 Signed Avenue", "city": "Newcity"}
    assert j.read("party.party", pat, ["email"])["email"] == "pat@signed.test"

    [note] = j.notes("sale.opportunity", deal)
    assert note.startswith("Sync completed")
    assert "amount = 1500.5" in note
    assert "Fields not updated: conversion_probability" in note or (
        "Fields not updated: probability" in note), note
    assert "high" in note.split("Fields not updated:")[1]
    assert f"Related company {acme} (company) updated: " in note
    assert "street = 99 Signed Avenue" in note and "city = Newcity" in note
    assert f"Related person {pat} (contact) updated: email = pat@signed.test" in note

    # crmsync keeps the same timeline, delivered, and the API shows it.
    token = create_token(j.ctx.state, "viewer", "job-viewer")
    r = j.http.get(f"{j.url}/api/records/crm/deal/{deal}/activity",
                   headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    [act] = r.json()
    assert act["text"] == note and act["delivered_at"] is not None

    # Re-delivery: the same webhook ids are replays; the same content under new
    # ids is taken in, and changes nothing.
    stamp = j.read("sale.opportunity", deal, ["last_modified_at"])
    for wid, body in j.sent:
        assert j.post(wid, body).status_code in (200, 409)
    for n, (_, body) in enumerate(j.sent):
        assert j.post(f"again_{n}", body).status_code in (200, 202)
    counts = j.sync()
    assert counts.get("updated", 0) == 0 and counts.get("failed", 0) == 0, counts
    assert j.read("sale.opportunity", deal, ["last_modified_at"]) == stamp
    assert len(j.notes("sale.opportunity", deal)) == 1


def test_erasing_the_signer_reaches_through_the_deal(job: tuple[Job, dict[str, int]]) -> None:
    """The person was only ever written through the deal's ``contact.`` ref: erasing
    them still removes their values from Tryton's notes and crmsync's state, and a
    later signing never writes them back."""
    j, ids = job
    deal, pat = ids["deal"], ids["pat"]
    doc = {"deal_ref": "D-17", "amount": "900.00", "probability": "0.9",
           "billing_street": "1 Sign Street", "billing_city": "Signcity",
           "signer_email": "pat@signed.test"}
    j.push("created", status="sent", **doc)
    j.push("updated", status="signed", **doc)
    j.sync()
    assert j.read("party.party", pat, ["email"])["email"] == "pat@signed.test"
    assert len(j.notes("sale.opportunity", deal)) == 1

    rep = erase(j.ctx.config, j.ctx.state, j.ctx.connectors,
                RecordRef("crm", "person", str(pat)), "dpo@example.com")
    assert [r.result for r in rep.records] == ["anonymized"]
    got = j.read("party.party", pat, ["name", "email"])
    assert (got["name"], got["email"]) == ("Erased person", "erased@invalid.example")
    assert j.notes("sale.opportunity", deal) == []  # it named the person's email
    with j.ctx.state.connect() as c:
        for table in (S.identities, S.outcomes, S.activities, S.messages):
            dump = " ".join(str(v) for row in c.execute(sa.select(table)) for v in row)
            assert "pat@signed.test" not in dump, table.name

    # The e-sign system still has the old document: a new signing round updates
    # the deal but never writes the erased person's email back.
    j.push("updated", status="sent", **{**doc, "amount": "950.00"})
    j.sync()  # the trigger sees it leave "signed" ...
    j.push("updated", status="signed", **{**doc, "amount": "950.00"})  # ... and enter again
    counts = j.sync()
    assert counts.get("updated") == 1, counts
    assert j.read("sale.opportunity", deal, ["amount"])["amount"] == Decimal("950.00")
    assert j.read("party.party", pat, ["email"])["email"] == "erased@invalid.example"
    [note] = j.notes("sale.opportunity", deal)
    assert f"contact.email: the related record crm.person:{pat} was erased (GDPR)" in note
    assert "pat@signed.test" not in note
