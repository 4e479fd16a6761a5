"""The marketing job, end to end under the service: Tryton is the source of truth, a
marketing platform (PostgreSQL) gets its people, and two rules — a form submitted, a score
that becomes >= 50 — each sync a record to the CRM now, writing back only the fields the
CRM allows, and only for records whose sync flag is on. The party's kind reaches the
marketing platform through a pick list; a kind the list does not cover is rejected with
its reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dbs import fresh_database
from trytonenv import TrytonServer

from crmsync.config.secrets import clear_secrets
from crmsync.service.context import ServiceContext
from crmsync.service.scheduler import Scheduler
from crmsync.service.worker import Worker
from crmsync.state.store import utcnow

pytestmark = pytest.mark.postgresql

CONFIG = """\
state: sqlite:///{state}
systems:
  crm:
    connector: tryton
    url: {url}
    database: {db}
    password: ${{TRYTON_PASSWORD}}
    objects:
      person: {{}}
  mkt:
    connector: sql
    url: {mkt}
    objects:
      contact: {{table: contact, key: id, updated_at: updated_at, lookback: 0}}
links:
  people:                               # the CRM is the source of truth
    source: crm.person
    target: mkt.contact
    schedule: 5m
    match: {{email: email}}
    fields:
      - {{source: name, target: name}}
      - {{source: email, target: email}}
      - {{source: category, target: lifecycle, values: {{Lead: lead, Customer: customer}}}}
  to_crm:                               # only when a rule says so, only flagged records
    source: mkt.contact
    target: crm.person
    create: false
    match: {{email: email}}
    filter: {{field: sync_to_crm, op: is_true}}
    fields:                             # the allowlist: what the CRM takes back
      - {{source: phone, target: phone}}
rules:
  form_submitted:
    on: mkt.contact
    schedule: 5m
    when: {{field: form_submitted_at, op: changed}}
    then:
      - sync: to_crm
  hot_lead:
    on: mkt.contact
    schedule: 5m
    when: {{field: score, op: becomes, value: {{op: ge, value: 50}}}}
    then:
      - sync: to_crm
"""


class Job:
    def __init__(self, d: Path, tryton: TrytonServer, mkt_url: str) -> None:
        self.rpc = tryton.rpc()
        self.tryton = tryton
        self.mkt = sa.create_engine(mkt_url)
        with self.mkt.begin() as c:
            c.exec_driver_sql(
                "CREATE TABLE contact (id SERIAL PRIMARY KEY, email TEXT, name TEXT, phone TEXT,"
                " lifecycle TEXT, score INTEGER DEFAULT 0, form_submitted_at TIMESTAMP,"
                " sync_to_crm BOOLEAN DEFAULT false,"
                " updated_at TIMESTAMP DEFAULT (now() AT TIME ZONE 'utc'))"
            )
        cfg = d / "crmsync.yaml"
        cfg.write_text(CONFIG.format(state=d / "state.db", url=tryton.url, db=tryton.database,
                                     mkt=mkt_url))
        self.cats = {n: self.m("party.category", "create", [{"name": n}])[0]
                     for n in ("Lead", "Customer", "Partner")}
        self.ctx = ServiceContext.open(cfg)
        self.scheduler = Scheduler(self.ctx)
        self.worker = Worker(self.ctx)

    def m(self, model: str, method: str, *args: Any) -> Any:
        return self.rpc.call(f"model.{model}.{method}", *args)

    def person(self, name: str, email: str, kind: str) -> int:
        [p] = self.m("party.party", "create", [{
            "name": name,
            "categories": [["add", [self.tryton.category_person_id, self.cats[kind]]]],
            "contact_mechanisms": [["create", [{"type": "email", "value": email}]]],
        }])
        return int(p)

    def crm(self, pid: int) -> dict[str, Any]:
        [row] = self.m("party.party", "read", [pid], ["name", "phone"])
        return row

    def contacts(self) -> dict[str, tuple[Any, ...]]:
        with self.mkt.connect() as c:
            return {r[0]: tuple(r[1:]) for r in c.exec_driver_sql(
                "SELECT email, name, phone, lifecycle FROM contact")}

    def edit(self, email: str, **values: Any) -> None:
        values["updated_at"] = utcnow()
        sets = ", ".join(f"{k} = :{k}" for k in values)
        with self.mkt.begin() as c:
            c.execute(sa.text(f"UPDATE contact SET {sets} WHERE email = :email"),
                      {"email": email, **values})

    def run(self, *, due: bool = True) -> None:
        """One scheduler pass (everything due now) and the workers until the queues are dry."""
        if due:
            with self.ctx.state.begin() as c:
                for name in ("people", "rule:form_submitted", "rule:hot_lead"):
                    self.ctx.state.request_run(c, name, now=self.ctx.clock())
        self.scheduler.run_once()
        for _ in range(20):
            if self.worker.run_once() == 0:
                break

    def fired(self) -> dict[str, int]:
        with self.ctx.state.connect() as c:
            return self.ctx.state.firing_counts(c)

    def outcomes(self, link: str) -> list[dict[str, Any]]:
        return self.ctx.state.outcomes(link=link, limit=100)


@pytest.fixture
def job(tryton: TrytonServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Job]:
    monkeypatch.setenv("TRYTON_PASSWORD", tryton.password)
    with fresh_database("postgresql", tmp_path, "mkt") as url:
        j = Job(tmp_path, tryton, url)
        try:
            yield j
        finally:
            j.ctx.close()
            j.mkt.dispose()
            clear_secrets()


def test_rules_sync_flagged_records_to_the_crm_now_and_only_allowed_fields(job: Job) -> None:
    ann = job.person("Ann Lead", "ann@x.test", "Lead")
    bob = job.person("Bob Buyer", "bob@x.test", "Customer")
    job.person("Pat Partner", "pat@x.test", "Partner")
    job.run()
    got = job.contacts()
    assert got["ann@x.test"] == ("Ann Lead", None, "lead")
    assert got["bob@x.test"] == ("Bob Buyer", None, "customer")
    # A kind the pick list does not cover: the field is rejected with its reason.
    assert got["pat@x.test"] == ("Pat Partner", None, None)
    pat = [o for o in job.outcomes("people") if o["source_ref"] == "crm.person:"
           + str(job.m("party.party", "search", [["name", "=", "Pat Partner"]], 0, 1, None)[0])]
    assert "'Partner' has no entry in values" in str(pat[0]["fields"]), pat
    assert job.fired() == {}  # the rules' baseline

    # A form submitted by a flagged contact: its phone reaches the CRM now, its name
    # (the CRM's to own) does not.
    job.edit("ann@x.test", form_submitted_at=utcnow(), phone="+1 555 0100", sync_to_crm=True,
             name="Ann from the form")
    job.run()
    assert job.fired() == {"form_submitted": 1}
    assert job.crm(ann)["phone"] == "+1 555 0100"
    assert job.crm(ann)["name"] == "Ann Lead"

    # A score crossing 50 for an unflagged contact fires, but the flag holds it back.
    job.edit("bob@x.test", score=40, phone="+1 555 0200")
    job.run()
    assert job.fired() == {"form_submitted": 1}
    job.edit("bob@x.test", score=60)
    job.run()
    assert job.fired() == {"form_submitted": 1, "hot_lead": 1}
    assert job.crm(bob)["phone"] in (None, "")
    held = [o for o in job.outcomes("to_crm") if o["source_ref"] and "contact" in o["source_ref"]]
    assert any(o["action"] == "filtered" for o in held), held
    # Flagged now, still above 50: no new crossing, nothing fires; a new form does.
    job.edit("bob@x.test", sync_to_crm=True, score=70)
    job.run()
    assert job.fired() == {"form_submitted": 1, "hot_lead": 1}
    assert job.crm(bob)["phone"] in (None, "")
    job.edit("bob@x.test", form_submitted_at=utcnow())
    job.run()
    assert job.fired() == {"form_submitted": 2, "hot_lead": 1}
    assert job.crm(bob)["phone"] == "+1 555 0200"

    # Quiet passes (re-reads, crmsync's own writes in both systems) fire nothing more.
    for _ in range(2):
        job.run()
    assert job.fired() == {"form_submitted": 2, "hot_lead": 1}
