"""Deep links and GDPR erasure across ERP -> CRM -> marketing (+ a push-only form tool).

Real SQLite systems, a real state database (SQLite, and PostgreSQL), the real
engine and CLI: a person is synced everywhere, found from any of its records,
erased, and never comes back.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dbs import fresh_database
from typer.testing import CliRunner

from crmsync.cli import app
from crmsync.config.loader import load_config
from crmsync.connectors import build_connectors
from crmsync.connectors.webhook import WebhookConnector
from crmsync.engine.deeplinks import deep_links, record_url
from crmsync.engine.erase import ERASED_ENTRY, ERASED_TEXT, NothingToAnonymize, erase
from crmsync.engine.graph import linked_records
from crmsync.engine.runner import Engine
from crmsync.errors import UnknownRecordType
from crmsync.model import RecordRef
from crmsync.state import schema as S
from crmsync.state.store import StateStore, utcnow

CONFIG = """\
state: {state}
systems:
  erp:
    connector: sql
    url: sqlite:///{d}/erp.db
    links_to: https://erp.example/{{system}}/{{object}}/{{id}}
    objects:
      person:
        table: person
        key: id
        updated_at: updated_at
        lookback: 0
        anonymize: {{name: Erased, email: null, phone: null}}
  crm:
    connector: sql
    url: sqlite:///{d}/crm.db
    links_to: "https://crm.example/#/{{object}}/{{id}}"
    objects:
      contact:
        table: contact
        key: id
        updated_at: updated_at
        lookback: 0
        anonymize: {{full_name: Erased person, email: null, phone: null, note: null}}
  mkt:
    connector: sql
    url: sqlite:///{d}/mkt.db
    objects:
      subscriber:
        table: subscriber
        key: id
        updated_at: updated_at
        lookback: 0
        anonymize: {{name: "-", email: erased@invalid.example}}
  forms:
    connector: webhook
    webhook_secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
    objects:
      signup:
        fields: {{email: string, note: string}}
        anonymize: {{email: null, note: null}}
links:
  people:
    source: erp.person
    target: crm.contact
    match: {{id: erp_no}}
    fields:
      - {{source: name, target: full_name}}
      - {{source: email, target: email}}
      - {{source: phone, target: phone}}
      - {{source: city, target: city}}
  marketing:
    source: crm.contact
    target: mkt.subscriber
    match: {{id: crm_id}}
    fields:
      - {{source: full_name, target: name}}
      - {{source: email, target: email}}
  signups:
    source: forms.signup
    target: crm.contact
    match: {{email: email}}
    create: false
    trigger:
      when: {{field: email, op: is_not_empty}}
    fields:
      - {{source: note, target: note}}
"""

ZELDA = {
    "name": "Zelda Quixotebright",
    "email": "zelda.quixotebright@private.example",
    "phone": "+47 555 01234",
    "city": "Bergen",
}
OTTO = {
    "name": "Otto Normal",
    "email": "otto@example.org",
    "phone": "+47 555 99999",
    "city": "Oslo",
}
# Lower-case fragments of Zelda's personal values that must vanish.
PERSONAL = ("zelda", "quixotebright", "01234", "call me")


def stamp() -> str:
    return utcnow().strftime("%Y-%m-%d %H:%M:%S.%f")


class World:
    def __init__(self, d: Path, state_url: str) -> None:
        self.d = d
        self.config_path = d / "crmsync.yaml"
        self.config_path.write_text(CONFIG.format(d=d, state=state_url))
        self.state_url = state_url
        self.erp = sa.create_engine(f"sqlite:///{d}/erp.db")
        self.crm = sa.create_engine(f"sqlite:///{d}/crm.db")
        self.mkt = sa.create_engine(f"sqlite:///{d}/mkt.db")
        with self.erp.begin() as c:
            c.exec_driver_sql(
                "CREATE TABLE person (id TEXT PRIMARY KEY, name TEXT NOT NULL, email TEXT,"
                " phone TEXT, city TEXT, updated_at DATETIME)"
            )
        with self.crm.begin() as c:
            c.exec_driver_sql(
                "CREATE TABLE contact (id INTEGER PRIMARY KEY AUTOINCREMENT, erp_no TEXT UNIQUE,"
                " full_name TEXT, email TEXT, phone TEXT, city TEXT, note TEXT,"
                " updated_at DATETIME)"
            )
        with self.mkt.begin() as c:
            c.exec_driver_sql(
                "CREATE TABLE subscriber (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " crm_id TEXT UNIQUE, name TEXT, email TEXT, updated_at DATETIME)"
            )
        self.config = load_config(self.config_path)

    # -- systems -----------------------------------------------------------
    def erp_put(self, pid: str, values: dict[str, Any]) -> None:
        row = {"id": pid, **values, "updated_at": stamp()}
        cols = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        sets = ", ".join(f"{k} = excluded.{k}" for k in row if k != "id")
        with self.erp.begin() as c:
            c.execute(
                sa.text(
                    f"INSERT INTO person ({cols}) VALUES ({marks})"
                    f" ON CONFLICT (id) DO UPDATE SET {sets}"
                ),
                row,
            )

    def push_signup(self, sid: str, values: dict[str, Any]) -> None:
        state = StateStore(self.state_url)
        state.migrate()
        try:
            conn = WebhookConnector("forms", self.config.systems["forms"], state)  # type: ignore[arg-type]
            with state.begin() as c:
                conn.push(c, "signup", sid, values, "created")
        finally:
            state.close()

    def rows(self, engine: sa.Engine, table: str) -> list[dict[str, Any]]:
        with engine.connect() as c:
            return [dict(r._mapping) for r in c.exec_driver_sql(f"SELECT * FROM {table}")]

    def crm_by_erp(self) -> dict[str, dict[str, Any]]:
        return {r["erp_no"]: r for r in self.rows(self.crm, "contact")}

    def mkt_by_crm(self) -> dict[str, dict[str, Any]]:
        return {r["crm_id"]: r for r in self.rows(self.mkt, "subscriber")}

    # -- crmsync -------------------------------------------------------------
    def state(self) -> StateStore:
        st = StateStore(self.state_url)
        st.migrate()
        return st

    def sync(self, *, full: bool = False) -> dict[str, dict[str, int]]:
        state = self.state()
        conns = build_connectors(self.config, state)
        try:
            reports = Engine(self.config, state, conns).sync(full=full)
            for r in reports:
                assert r.status == "ok", (r.link, r.error)
            return {r.link: dict(r.counts) for r in reports}
        finally:
            state.close()
            for c in conns.values():
                c.close()

    def cli(self, *args: str, input: str | None = None) -> Any:
        return CliRunner().invoke(app, [*args, "-c", str(self.config_path)], input=input)

    def close(self) -> None:
        for e in (self.erp, self.crm, self.mkt):
            e.dispose()


def text_hits(url: str, needles: tuple[str, ...] = PERSONAL) -> list[str]:
    """Every table, every column: cells whose text holds one of ``needles``."""
    eng = sa.create_engine(url)
    md = sa.MetaData()
    md.reflect(eng)
    hits = []
    try:
        with eng.connect() as c:
            for t in md.sorted_tables:
                for row in c.execute(sa.select(t)):
                    for col, v in row._mapping.items():
                        text = str(v).lower() if v is not None else ""
                        hits += [f"{t.name}.{col}: {v!r}" for n in needles if n in text]
    finally:
        eng.dispose()
    return hits


STATE = [
    pytest.param("sqlite", id="sqlite-state"),
    pytest.param("postgresql", id="postgresql-state", marks=pytest.mark.postgresql),
]


@pytest.fixture(params=STATE)
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    with fresh_database(request.param, tmp_path, "state") as state_url:
        w = World(tmp_path, state_url)
        try:
            w.erp_put("P1", ZELDA)
            w.erp_put("P2", OTTO)
            w.sync()
            w.push_signup("S1", {"email": ZELDA["email"], "note": "Zelda: call me after 5"})
            w.push_signup("S2", {"email": OTTO["email"], "note": "hello"})
            # a change, so the log holds old -> new values of Zelda
            w.erp_put("P1", {**ZELDA, "name": "Zelda Q. Quixotebright"})
            w.sync()
            yield w
        finally:
            w.close()


def _refs(w: World) -> dict[str, RecordRef]:
    crm_id = str(w.crm_by_erp()["P1"]["id"])
    mkt_id = str(w.mkt_by_crm()[crm_id]["id"])
    return {
        "erp": RecordRef("erp", "person", "P1"),
        "crm": RecordRef("crm", "contact", crm_id),
        "mkt": RecordRef("mkt", "subscriber", mkt_id),
        "forms": RecordRef("forms", "signup", "S1"),
    }


def test_synced_everywhere_and_deep_links_from_each_record(world: World) -> None:
    w = world
    refs = _refs(w)
    assert w.crm_by_erp()["P1"]["full_name"] == "Zelda Q. Quixotebright"
    assert w.crm_by_erp()["P1"]["note"] == "Zelda: call me after 5"  # from the form
    assert w.mkt_by_crm()[refs["crm"].id]["email"] == ZELDA["email"]
    expected = {
        refs["erp"]: "https://erp.example/erp/person/P1",
        refs["crm"]: f"https://crm.example/#/contact/{refs['crm'].id}",
        refs["mkt"]: None,
        refs["forms"]: None,
    }
    state = w.state()
    try:
        for start in refs.values():
            links = deep_links(w.config, state, start)
            assert links[0].ref == start  # the record asked for comes first
            assert {d.ref: d.url for d in links} == expected
            # the order of the others does not depend on where one starts
            assert [d.ref for d in links if d.ref != start] == [
                r for r in expected if r != start
            ]
        # Otto's group is his own
        otto = linked_records(w.config, state, RecordRef("erp", "person", "P2"))
        assert len(otto) == 4 and not set(otto) & set(refs.values())
        # a record never synced is alone; an unknown system or object is an error
        assert linked_records(w.config, state, RecordRef("erp", "person", "P9")) == [
            RecordRef("erp", "person", "P9")
        ]
        with pytest.raises(UnknownRecordType, match="no system named 'nope'"):
            linked_records(w.config, state, RecordRef("nope", "person", "P1"))
        with pytest.raises(UnknownRecordType, match="has no object 'company'"):
            deep_links(w.config, state, RecordRef("crm", "company", "1"))
    finally:
        state.close()

    r = w.cli("open", f"mkt.subscriber:{refs['mkt'].id}")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].split() == [str(refs["mkt"]), "-"]
    assert [x.split() for x in lines[1:]] == [
        [str(refs["erp"]), "https://erp.example/erp/person/P1"],
        [str(refs["crm"]), f"https://crm.example/#/contact/{refs['crm'].id}"],
        [str(refs["forms"]), "-"],
    ]
    r = w.cli("open", "crm.company:1")
    assert r.exit_code == 2 and "has no object 'company'" in r.output
    r = w.cli("open", "crm-contact-1")
    assert r.exit_code == 2 and "SYSTEM.OBJECT:ID" in r.output


def test_ids_are_url_quoted_and_only_placeholders_replaced(world: World) -> None:
    url = record_url(world.config, RecordRef("erp", "person", "A/B C?x=1&{id}"))
    assert url == "https://erp.example/erp/person/A%2FB%20C%3Fx%3D1%26%7Bid%7D"


def _add_personal_traces(w: World, refs: dict[str, RecordRef]) -> None:
    """What other features leave in the state: a failed message quoting a value, a timeline."""
    st = w.state()
    try:
        with st.begin() as c:
            st.add_failed(
                c, "people", "source", "P1", f"duplicate email {ZELDA['email']}",
                max_attempts=1, available_at=utcnow(),
            )
            st.enqueue(c, "marketing", "source", [(refs["crm"].id, "upsert", None)])
            c.execute(
                sa.insert(S.activities).values(
                    link="people", record_ref=str(refs["crm"]), at=utcnow(), kind="sync",
                    text=f"sync completed: full_name {ZELDA['name']}", deliver=False,
                )
            )
    finally:
        st.close()


def test_erase_everywhere_keeps_nothing_personal_and_never_resyncs(world: World) -> None:
    w = world
    refs = _refs(w)
    _add_personal_traces(w, refs)
    assert text_hits(w.state_url)  # the state holds Zelda's values before the erasure

    # no --yes: asks first; "no" changes nothing
    r = w.cli("erase", "crm.contact:" + refs["crm"].id, input="n\n")
    assert r.exit_code == 1 and "nothing was erased" in r.output
    assert w.crm_by_erp()["P1"]["email"] == ZELDA["email"]

    r = w.cli("erase", str(refs["crm"]), "--by", "dpo@example.com", "--yes")
    assert r.exit_code == 0, r.output
    assert "anonymized" in r.output

    # every system holds the replacement values; Otto is untouched
    erp = {x["id"]: x for x in w.rows(w.erp, "person")}
    assert (erp["P1"]["name"], erp["P1"]["email"], erp["P1"]["phone"]) == ("Erased", None, None)
    assert erp["P1"]["city"] == "Bergen"  # not a field to anonymize
    crm = w.crm_by_erp()["P1"]
    assert (crm["full_name"], crm["email"], crm["phone"], crm["note"]) == (
        "Erased person", None, None, None,
    )
    mkt = w.mkt_by_crm()[refs["crm"].id]
    assert (mkt["name"], mkt["email"]) == ("-", "erased@invalid.example")
    assert erp["P2"]["name"] == OTTO["name"]
    assert w.crm_by_erp()["P2"]["email"] == OTTO["email"]
    assert WebhookRead(w).signup("S2")["note"] == "hello"
    assert WebhookRead(w).signup("S1") == {"id": "S1", "email": None, "note": None}

    # nothing personal anywhere in crmsync's state, nor in the systems written to
    assert text_hits(w.state_url) == []
    for db in ("erp", "crm", "mkt"):
        assert text_hits(f"sqlite:///{w.d}/{db}.db") == [], db

    # ... but the erasure itself is on record, ids only
    st = w.state()
    try:
        with st.connect() as c:
            erased = st.erased_rows(c, [str(x) for x in refs.values()])
            queued = st.list_messages()
        assert {x["record_ref"] for x in erased} == {str(x) for x in refs.values()}
        assert {x["erased_by"] for x in erased} == {"dpo@example.com"}
        (audit,) = [a for a in st.audit_rows() if a["action"] == "record.erase"]
        assert (audit["actor"], audit["target"]) == ("dpo@example.com", str(refs["crm"]))
        assert audit["detail"]["status"] == "done"
        logged = st.outcomes(record=str(refs["crm"]), limit=1000)
        assert {o["action"] for o in logged} >= {"created", "updated", "erased"}
        for o in logged:
            assert o["message"].startswith("erased (GDPR)")
            assert all(set(f) == {"field", "status"} and f["status"] == "erased"
                       for f in o["fields"])
        assert not [m for m in queued if m["record_id"] in {"P1", refs["crm"].id}]
        # the timeline, told from the scrubbed outcomes, keeps the entries but no values
        timeline = st.activities(str(refs["crm"]), limit=1000)
        assert {a["kind"] for a in timeline} >= {"created", "erased"}
        assert {a["text"] for a in timeline} == {ERASED_TEXT, ERASED_ENTRY}
    finally:
        st.close()

    # a stale source brings Zelda back in the ERP: nothing flows again
    crm_before, mkt_before = w.crm_by_erp()["P1"], w.mkt_by_crm()[refs["crm"].id]
    w.erp_put("P1", ZELDA)
    w.erp_put("P2", {**OTTO, "phone": "+47 555 11111"})  # others keep syncing
    counts = w.sync()
    assert counts["people"]["erased"] == 1 and counts["people"]["updated"] == 1
    full = w.sync(full=True)
    assert full["people"]["erased"] == 1 and "created" not in full["people"]
    assert full["marketing"]["erased"] == 1 and full["signups"]["erased"] == 1
    assert w.crm_by_erp()["P1"] == crm_before
    assert w.mkt_by_crm()[refs["crm"].id] == mkt_before
    assert w.crm_by_erp()["P2"]["phone"] == "+47 555 11111"
    assert text_hits(w.state_url) == []
    for db in ("crm", "mkt"):
        assert text_hits(f"sqlite:///{w.d}/{db}.db") == [], db

    # running it again is harmless: it anonymizes the stale source again, logs once
    r = w.cli("erase", str(refs["erp"]), "--by", "dpo@example.com", "--yes")
    assert r.exit_code == 0, r.output
    assert "already anonymized" in r.output
    assert {x["id"]: x for x in w.rows(w.erp, "person")}["P1"]["name"] == "Erased"
    assert w.crm_by_erp()["P1"] == crm_before
    st = w.state()
    try:
        with st.connect() as c:
            again = st.erased_rows(c, [str(x) for x in refs.values()])
        assert again == erased  # first erasure's time and actor kept
        erased_log = [o for o in st.outcomes(limit=1000) if o["action"] == "erased"]
        assert len(erased_log) == 3  # one per pair: people, marketing, signups
        assert {o["message"] for o in erased_log} == {ERASED_ENTRY}
        assert len([a for a in st.audit_rows() if a["action"] == "record.erase"]) == 2
    finally:
        st.close()
    assert text_hits(w.state_url) == []


class WebhookRead:
    """What crmsync keeps of a push-only system (read through its connector)."""

    def __init__(self, w: World) -> None:
        self.w = w

    def signup(self, sid: str) -> dict[str, Any] | None:
        st = w_state = self.w.state()
        try:
            conn = WebhookConnector("forms", self.w.config.systems["forms"], w_state)  # type: ignore[arg-type]
            rec = conn.read("signup", [sid]).get(sid)
            return None if rec is None else rec.values
        finally:
            st.close()


def test_failed_erasure_names_the_system_and_can_be_run_again(world: World) -> None:
    w = world
    with w.mkt.begin() as c:
        c.exec_driver_sql(
            "CREATE TRIGGER locked BEFORE UPDATE ON subscriber"
            " BEGIN SELECT RAISE(ABORT, 'subscriber rows are locked'); END"
        )
    r = w.cli("erase", "erp.person:P2", "--yes")
    assert r.exit_code == 1
    assert "system mkt refused" in r.output and "subscriber rows are locked" in r.output
    # the group is marked erased already: a sync meanwhile writes nothing back
    assert w.crm_by_erp()["P2"]["full_name"] == "Erased person"
    w.erp_put("P2", {**OTTO, "name": "Otto Stale"})
    assert w.sync()["people"]["erased"] == 1
    assert w.crm_by_erp()["P2"]["full_name"] == "Erased person"
    with w.mkt.begin() as c:
        c.exec_driver_sql("DROP TRIGGER locked")
    r = w.cli("erase", "erp.person:P2", "--yes")
    assert r.exit_code == 0, r.output
    crm_id = str(w.crm_by_erp()["P2"]["id"])
    assert w.mkt_by_crm()[crm_id]["email"] == "erased@invalid.example"
    assert text_hits(w.state_url, ("otto", "99999")) == []
    st = w.state()
    try:
        statuses = [a["detail"]["status"] for a in st.audit_rows() if a["action"] == "record.erase"]
        assert statuses == ["done", "failed"]  # newest first
    finally:
        st.close()


def test_nothing_to_anonymize_changes_nothing(world: World, tmp_path: Path) -> None:
    w = world
    text = w.config_path.read_text()
    for line in (
        "        anonymize: {name: Erased, email: null, phone: null}\n",
        "        anonymize: {full_name: Erased person, email: null, phone: null, note: null}\n",
        '        anonymize: {name: "-", email: erased@invalid.example}\n',
        "        anonymize: {email: null, note: null}\n",
    ):
        assert line in text
        text = text.replace(line, "")
    w.config_path.write_text(text)
    config = load_config(w.config_path)
    state = w.state()
    conns = build_connectors(config, state)
    try:
        with pytest.raises(NothingToAnonymize, match="declares anonymize"):
            erase(config, state, conns, RecordRef("erp", "person", "P1"), "dpo")
        with state.connect() as c:
            assert state.erased_rows(c, ["erp.person:P1"]) == []
    finally:
        state.close()
        for c in conns.values():
            c.close()
    assert w.crm_by_erp()["P1"]["email"] == ZELDA["email"]
    r = w.cli("erase", "erp.person:P1", "--yes")
    assert r.exit_code == 2 and "nothing to erase" in r.output
