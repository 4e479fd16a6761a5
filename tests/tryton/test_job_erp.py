"""Job 2 end to end: migrate a MariaDB ERP into a real Tryton CRM, then mirror it.

The ERP holds 2,000 customers, 40% with an active contract; Tryton already
holds 300 companies carrying the customer number in the party ``code``. One
link (erp.customer -> crm.company, one-way, only active contracts, matched on
``customer_no = code``) migrates, then mirrors edits in order, waits out a
Tryton outage without losing or spending anything, archives on an ERP delete,
erases a person everywhere (Tryton, the ERP and crmsync's own state), and
links each record to its twin in the other system.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dbs import fresh_database
from trytonenv import TrytonServer
from typer.testing import CliRunner

from crmsync.cli import app
from crmsync.config.loader import load_config
from crmsync.connectors import build_connectors
from crmsync.connectors.tryton import TrytonRPC
from crmsync.engine.deeplinks import deep_links
from crmsync.engine.runner import Engine, LinkReport
from crmsync.model import RecordRef
from crmsync.service.context import ServiceContext
from crmsync.service.worker import Worker
from crmsync.state import schema as S
from crmsync.state.store import StateStore, utcnow

pytestmark = pytest.mark.mariadb

LINK = "erp_customers"
CUSTOMERS = 2000
EXISTING = 300  # companies already in Tryton: customers C00001..C00300
ZELDA_NO = "C01001"  # an active customer created by the migration, later erased
ZELDA = {
    "name": "Zelda Quixotebright",
    "email": "zelda.quixotebright@private.example",
    "city": "Bergen",
}
PERSONAL = ("zelda", "quixotebright")

CONFIG = """\
state: sqlite:///{d}/state.db
systems:
  erp:
    connector: sql
    url: {erp_url}
    links_to: "http://erp.example/#/{{object}}/{{id}}"
    objects:
      customer:
        table: customer
        key: customer_no
        updated_at: updated_at
        deleted: {{field: deleted, value: true}}
        anonymize: {{name: Erased, email: null}}
  crm:
    connector: tryton
    url: {crm_url}
    database: {database}
    user: {user}
    password: ${{CRM_TRYTON_PASSWORD}}
    timeout: 10
    links_to: "http://crm.example/#/{{object}}/{{id}}"
    objects:
      company:
        anonymize: {{name: Erased customer, email: null, city: null}}
links:
  {link}:
    source: erp.customer
    target: crm.company
    direction: forward
    match: {{customer_no: code}}
    filter:
      all:
        - {{field: has_active_contract, op: is_true}}
    fields:
      - {{source: name, target: name}}
      - {{source: email, target: email}}
      - {{source: city, target: city}}
    on_delete: {{set: {{active: false}}}}
    batch_size: 200
"""


def customer_no(i: int) -> str:
    return f"C{i:05d}"


def is_active(i: int) -> bool:
    return i % 5 < 2  # 40%


def erp_values(i: int) -> dict[str, Any]:
    if customer_no(i) == ZELDA_NO:
        return dict(ZELDA)
    return {"name": f"Customer {i} AS", "email": f"c{i}@erp.example", "city": f"City {i % 17}"}


ACTIVE = {customer_no(i) for i in range(1, CUSTOMERS + 1) if is_active(i)}
INACTIVE = {customer_no(i) for i in range(1, CUSTOMERS + 1)} - ACTIVE
PRE_ACTIVE = {customer_no(i) for i in range(1, EXISTING + 1) if is_active(i)}
PRE_INACTIVE = {customer_no(i) for i in range(1, EXISTING + 1)} - PRE_ACTIVE


def text_hits(db: Path, needles: tuple[str, ...] = PERSONAL) -> list[str]:
    """Every table, every column of a SQLite file: cells whose text holds a needle."""
    hits: list[str] = []
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as c:
        tables = [r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for t in tables:
            cur = c.execute(f'SELECT * FROM "{t}"')
            cols = [d[0] for d in cur.description]
            for row in cur:
                for col, v in zip(cols, row, strict=True):
                    if isinstance(v, bytes):
                        v = v.decode("utf-8", "replace")
                    text = str(v).lower() if v is not None else ""
                    hits += [f"{t}.{col}: {v!r}" for n in needles if n in text]
    return hits


class World:
    """The MariaDB ERP, the Tryton CRM, crmsync's config and state."""

    def __init__(self, d: Path, erp_url: str, tryton: TrytonServer) -> None:
        self.d = d
        self.tryton = tryton
        self.state_path = d / "state.db"
        self.state_url = f"sqlite:///{self.state_path}"
        self.config_path = d / "crmsync.yaml"
        self.config_path.write_text(
            CONFIG.format(
                d=d, erp_url=erp_url, crm_url=tryton.url, database=tryton.database,
                user=tryton.user, link=LINK,
            )
        )
        self.config = load_config(self.config_path)
        self.erp = sa.create_engine(erp_url)
        self.rpc: TrytonRPC = tryton.rpc()
        self.cat = tryton.category_company_id
        self._stamp = utcnow() - timedelta(days=1)

    # -- the ERP ---------------------------------------------------------------
    def next_stamp(self) -> datetime:
        """Strictly increasing stamps (microseconds), as the ERP's own clock would give."""
        self._stamp = max(self._stamp + timedelta(microseconds=1), utcnow())
        return self._stamp

    def seed_erp(self, n: int = CUSTOMERS) -> None:
        with self.erp.begin() as c:
            c.exec_driver_sql(
                "CREATE TABLE customer (customer_no VARCHAR(10) PRIMARY KEY,"
                " name VARCHAR(100) NOT NULL, email VARCHAR(120), city VARCHAR(80),"
                " has_active_contract BOOLEAN NOT NULL, deleted BOOLEAN NOT NULL DEFAULT 0,"
                " updated_at DATETIME(6) NOT NULL,"
                " KEY ix_customer_changed (updated_at, customer_no))"
            )
            base = self._stamp
            rows = [
                {"no": customer_no(i), **erp_values(i), "act": is_active(i),
                 "at": base + timedelta(microseconds=i)}
                for i in range(1, n + 1)
            ]
            c.execute(
                sa.text(
                    "INSERT INTO customer (customer_no, name, email, city, has_active_contract,"
                    " updated_at) VALUES (:no, :name, :email, :city, :act, :at)"
                ),
                rows,
            )
        self._stamp = base + timedelta(microseconds=n + 1)

    def erp_update(self, no: str, **values: Any) -> None:
        sets = ", ".join(f"{k} = :{k}" for k in values)
        with self.erp.begin() as c:
            n = c.execute(
                sa.text(f"UPDATE customer SET {sets}, updated_at = :at WHERE customer_no = :no"),
                {**values, "at": self.next_stamp(), "no": no},
            ).rowcount
        assert n == 1, no

    def erp_row(self, no: str) -> dict[str, Any] | None:
        with self.erp.connect() as c:
            r = c.execute(
                sa.text("SELECT * FROM customer WHERE customer_no = :no"), {"no": no}
            ).first()
        return dict(r._mapping) if r else None

    # -- Tryton --------------------------------------------------------------------
    def m(self, model: str, method: str, *args: Any) -> Any:
        return self.rpc.call(f"model.{model}.{method}", *args)

    def seed_crm(self) -> dict[str, int]:
        """The companies the CRM holds before crmsync: customer number in ``code``."""
        ids: dict[str, int] = {}
        nos = [customer_no(i) for i in range(1, EXISTING + 1)]
        for start in range(0, EXISTING, 150):
            chunk = nos[start : start + 150]
            vlist = [
                {
                    "name": f"CRM name {no}",
                    "code": no,
                    "categories": [["add", [self.cat]]],
                    "contact_mechanisms": [
                        ["create", [{"type": "email", "value": f"old.{no.lower()}@crm.example"}]]
                    ],
                    "addresses": [["create", [{"city": "Oldtown"}]]],
                }
                for no in chunk
            ]
            ids.update(zip(chunk, self.m("party.party", "create", vlist), strict=True))
        # A company with no ERP counterpart: never touched.
        [ids["X-1"]] = self.m(
            "party.party", "create",
            [{"name": "Unrelated Ltd", "code": "X-1", "categories": [["add", [self.cat]]]}],
        )
        return ids

    def companies(self, *, archived: bool = True) -> list[dict[str, Any]]:
        """Every company party with its name, code, email, first address' city, active."""
        domain: list[Any] = [["categories", "in", [self.cat]]]
        if archived:
            domain.append(["active", "in", [True, False]])
        rows = self.m(
            "party.party", "search_read", domain, 0, None, [["id", "ASC"]],
            ["code", "name", "email", "active", "addresses"],
        )
        first = [r["addresses"][0] for r in rows if r["addresses"]]
        city = {a["id"]: a["city"] for a in self.m("party.address", "read", first, ["city"])}
        for r in rows:
            r["city"] = city.get(r["addresses"][0]) if r["addresses"] else None
            r["email"] = r["email"] or None
            r["active"] = bool(r["active"])
        return rows

    def by_code(self, *, archived: bool = True) -> dict[str, dict[str, Any]]:
        rows = self.companies(archived=archived)
        codes = Counter(r["code"] for r in rows)
        dupes = {k: n for k, n in codes.items() if n > 1}
        assert not dupes, f"duplicate codes in Tryton: {dupes}"
        return {r["code"]: r for r in rows}

    def party(self, pid: int) -> dict[str, Any]:
        [row] = [r for r in self.companies() if r["id"] == pid]
        return row

    # -- crmsync -----------------------------------------------------------------------
    def state(self) -> StateStore:
        st = StateStore(self.state_url)
        st.migrate()
        return st

    def sync(self, *, expect: str = "ok") -> LinkReport:
        """One ``crmsync sync`` as its own process would run it: fresh connectors."""
        state = self.state()
        conns = build_connectors(self.config, state)
        try:
            [report] = Engine(self.config, state, conns).sync()
        finally:
            state.close()
            for c in conns.values():
                c.close()
        assert report.status == expect, (report.status, report.error)
        return report

    def messages(self) -> list[Any]:
        st = self.state()
        try:
            with st.connect() as c:
                return list(c.execute(sa.select(S.messages)).all())
        finally:
            st.close()

    def target_id(self, no: str) -> str:
        st = self.state()
        try:
            with st.connect() as c:
                ident = st.identities_by_source(c, LINK, [no])[no]
        finally:
            st.close()
        assert ident.target_id
        return str(ident.target_id)

    def cli(self, *args: str) -> Any:
        return CliRunner().invoke(app, [*args, "-c", str(self.config_path)])

    def close(self) -> None:
        self.erp.dispose()


@pytest.fixture
def world(
    request: pytest.FixtureRequest,
    tryton: TrytonServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[World]:
    """The ERP seeded with CUSTOMERS customers (``indirect`` parametrize: fewer)."""
    monkeypatch.setenv("CRM_TRYTON_PASSWORD", tryton.password)
    with fresh_database("mariadb", tmp_path, "erp") as erp_url:
        w = World(tmp_path, erp_url, tryton)
        try:
            w.seed_erp(getattr(request, "param", CUSTOMERS))
            yield w
        finally:
            w.close()


def wait_out(worker: Worker, seconds: float) -> int:
    """Run worker passes for ``seconds`` while Tryton is down; messages delivered.

    Asserts the link was paused at least once (test_worker_stays_paused_while_tryton_is_down
    says why not at every instant)."""
    delivered = 0
    paused = False
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        delivered += worker.run_once()
        paused = paused or LINK in worker.paused
        time.sleep(0.05)
    assert paused
    return delivered


def _migrate(w: World) -> dict[str, int]:
    """Seed the CRM, migrate, and check the result; returns the pre-existing party ids."""
    before = w.seed_crm()
    started = time.monotonic()
    report = w.sync()
    took = time.monotonic() - started
    assert report.kind == "migration"
    assert report.counts["matched"] == len(PRE_ACTIVE) == 120
    assert report.counts["created"] == len(ACTIVE - PRE_ACTIVE) == 680
    assert report.counts["failed"] == 0 and report.counts["rejected"] == 0
    assert took < 60, f"migration of 800 records took {took:.1f} s"

    # exactly the 800 active customers, found by category and code
    count = w.m(
        "party.party", "search_count",
        [["categories", "in", [w.cat]], ["code", "in", sorted(ACTIVE)]],
    )
    assert count == 800
    crm = w.by_code()  # also: no code twice
    assert set(crm) == ACTIVE | PRE_INACTIVE | {"X-1"}
    assert not (set(crm) & (INACTIVE - PRE_INACTIVE))  # inactive customers not created
    for i in range(1, CUSTOMERS + 1):
        no = customer_no(i)
        if no in ACTIVE:
            got = crm[no]
            assert (got["name"], got["email"], got["city"]) == tuple(
                erp_values(i)[k] for k in ("name", "email", "city")
            ), no
            assert got["active"], no
    for no in PRE_ACTIVE:  # matched and overwritten, not duplicated
        assert crm[no]["id"] == before[no]
    for no in PRE_INACTIVE:  # not active in the ERP: left as they were
        assert (crm[no]["id"], crm[no]["name"], crm[no]["city"]) == (
            before[no], f"CRM name {no}", "Oldtown",
        )
        assert crm[no]["email"] == f"old.{no.lower()}@crm.example"
    assert crm["X-1"]["name"] == "Unrelated Ltd"
    return before


def test_migrate_mirror_outage_and_delete(world: World) -> None:
    w = world
    before = _migrate(w)

    # -- 2. successive ERP edits arrive, the last values win -----------------------------
    w.erp_update("C00001", name="First rename")
    w.erp_update("C00001", name="Second rename", city="Trondheim")
    w.erp_update("C00001", name="Third rename", email="third@erp.example")
    w.erp_update("C00006", email="six@erp.example")
    w.erp_update("C00500", city="Stavanger")  # 500 % 5 == 0: active, created
    w.erp_update("C00002", name="Not synced")  # no active contract: filtered out
    report = w.sync()
    assert report.kind == "incremental"
    assert report.counts["updated"] == 3
    assert report.counts["created"] == 0
    crm = w.by_code()
    c1 = crm["C00001"]
    assert (c1["id"], c1["name"], c1["email"], c1["city"]) == (
        before["C00001"], "Third rename", "third@erp.example", "Trondheim",
    )
    assert crm["C00006"]["email"] == "six@erp.example"
    assert crm["C00500"]["city"] == "Stavanger"
    assert crm["C00002"]["name"] == "CRM name C00002"
    assert all(m.status != "failed" for m in w.messages())

    # -- 3. Tryton down: messages wait, unspent; then all arrive, in order ----------------
    ctx = ServiceContext.open(w.config_path)  # the service, running before the outage
    try:
        worker = Worker(ctx, probe_initial_s=0.2, probe_cap_s=0.5)
        assert worker.run_once() == 0  # nothing waiting
        w.tryton.stop()
        w.erp_update("C00011", name="Outage one")
        w.erp_update("C00016", city="Outage city")
        w.erp_update("C00001", name="Outage rename 1")
        # the scheduler's pass captures from the ERP: it needs only the ERP
        report = ctx.engine.capture_link(LINK)
        assert (report.status, report.error) == ("ok", None)
        assert report.counts["captured"] >= 3
        assert wait_out(worker, 1.0) == 0  # tried, found Tryton down, paused
        w.erp_update("C00001", name="Outage rename 2")  # a newer change while waiting
        w.erp_update("C00021", email="outage@erp.example")
        assert ctx.engine.capture_link(LINK).status == "ok"  # the next scheduled pass
        assert wait_out(worker, 2.5) == 0  # past the messages' retry time: tried again
        msgs = w.messages()
        waiting = {m.record_id for m in msgs if m.status in ("pending", "running")}
        assert {"C00001", "C00011", "C00016", "C00021"} <= waiting
        assert all(m.attempts == 0 for m in msgs), [(m.record_id, m.attempts) for m in msgs]
        assert all(m.status == "pending" for m in msgs), [(m.record_id, m.status) for m in msgs]
        # one message per record: the newer change joined the waiting one
        assert Counter(m.record_id for m in msgs)["C00001"] == 1
        # `crmsync status` (and GET /api/links) show the link paused, with the reason.
        with ctx.state.connect() as c:
            paused = ctx.state.waiting_unreachable(c)
        assert paused[LINK][0] == len(msgs) and "unreachable" in paused[LINK][1], paused
        r = w.cli("status")
        assert r.exit_code == 0, r.output
        assert f"paused: {LINK}: {len(msgs)} message(s) wait, attempts unspent" in r.output

        w.tryton.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            worker.run_once()
            with ctx.state.connect() as c:
                if not ctx.state.queue_counts(c):
                    break
            time.sleep(0.1)
        with ctx.state.connect() as c:
            assert ctx.state.queue_counts(c) == {}
            assert ctx.state.waiting_unreachable(c) == {}
        assert LINK not in worker.paused
    finally:
        ctx.close()
    crm = w.by_code()
    assert crm["C00001"]["name"] == "Outage rename 2"
    assert crm["C00011"]["name"] == "Outage one"
    assert crm["C00016"]["city"] == "Outage city"
    assert crm["C00021"]["email"] == "outage@erp.example"
    assert len(crm) == 800 + len(PRE_INACTIVE) + 1  # nothing created twice
    st = w.state()
    try:
        log = st.outcomes(record="erp.customer:C00001", limit=20)  # newest first
    finally:
        st.close()
    names = [f["new"] for o in reversed(log) for f in o["fields"]
             if f["field"] == "name" and f["status"] == "updated"]
    assert names[-2:] == ["Third rename", "Outage rename 2"]

    # -- 4. an ERP delete archives the company, never deletes it --------------------------
    w.erp_update("C00005", deleted=True)  # the soft-delete marker
    with w.erp.begin() as c:  # and a hard delete, handed over by id
        c.exec_driver_sql("DELETE FROM customer WHERE customer_no = 'C00010'")
    report = w.sync()
    assert report.counts["deleted"] == 1
    r = w.cli("sync", "--record", "erp.customer:C00010")
    assert r.exit_code == 0, r.output
    crm = w.by_code()
    for no in ("C00005", "C00010"):
        assert crm[no]["id"] == before[no]
        assert crm[no]["active"] is False, no
    visible = w.by_code(archived=False)
    assert "C00005" not in visible and "C00010" not in visible
    assert len(crm) == 800 + len(PRE_INACTIVE) + 1
    st = w.state()
    try:
        for no in ("C00005", "C00010"):
            assert st.outcomes(record=f"erp.customer:{no}", limit=1)[0]["action"] == "deleted"
    finally:
        st.close()


def test_erase_and_deep_links(world: World) -> None:
    w = world
    _migrate(w)
    # a change, so the log and the CRM's notes hold old -> new values of Zelda
    w.erp_update(ZELDA_NO, name="Zelda Q. Quixotebright")
    w.sync()
    pid = w.target_id(ZELDA_NO)
    assert w.party(int(pid))["name"] == "Zelda Q. Quixotebright"
    assert text_hits(w.state_path)  # the state holds Zelda's values before the erasure

    # -- 6. deep links, both ways --------------------------------------------------------
    other = "C00006"
    other_pid = w.target_id(other)
    expected = {
        RecordRef("erp", "customer", other): f"http://erp.example/#/customer/{other}",
        RecordRef("crm", "company", other_pid): f"http://crm.example/#/company/{other_pid}",
    }
    st = w.state()
    try:
        for start in expected:
            links = deep_links(w.config, st, start)
            assert links[0].ref == start
            assert {d.ref: d.url for d in links} == expected
    finally:
        st.close()
    r = w.cli("open", f"crm.company:{other_pid}")
    assert r.exit_code == 0, r.output
    assert [x.split() for x in r.output.splitlines()] == [
        [f"crm.company:{other_pid}", f"http://crm.example/#/company/{other_pid}"],
        [f"erp.customer:{other}", f"http://erp.example/#/customer/{other}"],
    ]
    r = w.cli("open", f"erp.customer:{ZELDA_NO}")
    assert r.exit_code == 0, r.output
    assert f"http://crm.example/#/company/{pid}" in r.output

    # -- 5. erasure -------------------------------------------------------------------------
    def zelda_notes() -> list[str]:
        notes = w.m(
            "ir.note", "search_read", [["resource", "=", f"party.party,{pid}"]], 0, None,
            None, ["message"],
        )
        return [n["message"] for n in notes if any(p in n["message"].lower() for p in PERSONAL)]

    assert len(zelda_notes()) == 2  # crmsync's timeline: created, then renamed
    # crmsync's own timeline tells the same, rendered from the outcomes: the rows
    # kept for the notes hold their delivery, not the text
    st = w.state()
    try:
        timeline = st.activities(f"crm.company:{pid}")
        with st.connect() as c:
            stored = c.execute(sa.select(S.activities.c.text, S.activities.c.outcome_id).where(
                S.activities.c.record_ref == f"crm.company:{pid}")).all()
    finally:
        st.close()
    assert [a["kind"] for a in timeline] == ["updated", "created"]
    assert sorted(a["text"] for a in timeline) == sorted(zelda_notes())
    assert all(a["delivered_at"] is not None for a in timeline)
    assert len(stored) == 2 and all(t == "" and o is not None for t, o in stored)
    r = w.cli("erase", f"erp.customer:{ZELDA_NO}", "--by", "dpo@example.com", "--yes")
    assert r.exit_code == 0, r.output
    erp = w.erp_row(ZELDA_NO)
    assert erp is not None and (erp["name"], erp["email"]) == ("Erased", None)
    got = w.party(int(pid))
    assert (got["name"], got["email"], got["city"]) == ("Erased customer", None, None)
    cms = w.m(
        "party.contact_mechanism", "search_read",
        [["party", "=", int(pid)], ["active", "in", [True, False]]], 0, None, None,
        ["type", "value"],
    )
    assert not [c for c in cms if "zelda" in str(c["value"]).lower()], cms
    assert zelda_notes() == [], "crmsync's notes on the party still quote the erased values"
    st = w.state()
    try:
        timeline = st.activities(f"crm.company:{pid}")
    finally:
        st.close()
    assert [a["kind"] for a in timeline] == ["erased", "updated", "created"]
    assert all(a["text"].startswith("erased (GDPR)") for a in timeline)
    # nothing personal in any table of Tryton's database (notes, contacts, addresses, ...)
    assert text_hits(w.tryton.db_path) == []
    assert text_hits(w.state_path) == []
    # the others are untouched
    assert w.by_code()[other]["email"] == "c6@erp.example"

    # a stale ERP brings Zelda back: nothing flows to Tryton again
    w.erp_update(ZELDA_NO, **ZELDA)
    report = w.sync()
    assert report.counts["erased"] == 1 and report.counts["updated"] == 0
    got = w.party(int(pid))
    assert (got["name"], got["email"], got["city"]) == ("Erased customer", None, None)
    assert text_hits(w.state_path) == []


# -- the CRM down: capture goes on, sync pauses (exit 3), the worker stays paused ----------
SMALL = 50  # customers; 20 with an active contract


def _small_migration(w: World) -> None:
    report = w.sync()
    assert report.counts["created"] == 20
    assert w.m("party.party", "search_count", [["categories", "in", [w.cat]]]) == 20


@pytest.mark.parametrize("world", [SMALL], indirect=True)
def test_a_sync_while_tryton_is_down_captures_and_pauses(world: World) -> None:
    """Engine.sync (what `crmsync sync` runs) with the CRM down: the ERP's changes are
    captured and wait, the run reports ``paused``."""
    w = world
    _small_migration(w)
    w.tryton.stop()
    w.erp_update("C00001", name="Renamed while down")
    report = w.sync(expect="paused")
    assert report.counts["captured"] >= 1
    # Rows stamped at the migration's high-water mark are read again (and then
    # applied quietly): C00001 is among the waiting, none has spent an attempt.
    msgs = w.messages()
    assert "C00001" in {m.record_id for m in msgs}
    assert {(m.status, m.attempts) for m in msgs} == {("pending", 0)}


@pytest.mark.parametrize("world", [SMALL], indirect=True)
def test_cli_sync_while_tryton_is_down_exits_3_and_captures(world: World) -> None:
    """README: `crmsync sync` exits 3 when a system was unreachable (messages wait)."""
    w = world
    _small_migration(w)
    w.tryton.stop()
    w.erp_update("C00001", name="Renamed while down")
    r = w.cli("sync")
    assert r.exit_code == 3, r.output
    assert "C00001" in {m.record_id for m in w.messages()}
    w.tryton.start()
    r = w.cli("sync")
    assert r.exit_code == 0, r.output
    assert w.by_code()["C00001"]["name"] == "Renamed while down"


@pytest.mark.parametrize("world", [SMALL], indirect=True)
def test_worker_stays_paused_while_tryton_is_down(world: World) -> None:
    """A paused link stays paused until Tryton answers, probing with a doubling delay."""
    w = world
    _small_migration(w)
    ctx = ServiceContext.open(w.config_path)
    try:
        worker = Worker(ctx, probe_initial_s=0.2, probe_cap_s=0.8)
        worker.run_once()
        w.tryton.stop()
        w.erp_update("C00001", name="Renamed while down")
        assert ctx.engine.capture_link(LINK).status == "ok"
        states: list[tuple[bool, float | None]] = []
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            worker.run_once()
            pause = worker.paused.get(LINK)
            states.append((pause is not None, pause.delay if pause else None))
            time.sleep(0.05)
        first = next(i for i, (p, _) in enumerate(states) if p)
        assert all(p for p, _ in states[first:]), "the pause was lifted while Tryton was down"
        # Each failed probe doubles the delay (0.2, 0.4, ...); it never resets while down.
        delays = [d for _, d in states if d is not None]
        assert delays == sorted(delays) and max(delays) >= 0.4, delays
    finally:
        ctx.close()
