"""Values a database holds but cannot hand over as the column's type (issue 10).

Real shapes per backend: SQLite keeps any text in any column (type affinity);
PostgreSQL has 'infinity'/'-infinity' dates and timestamps and NaN in NUMERIC;
MariaDB keeps zero dates ('0000-00-00') and, with ALLOW_INVALID_DATES, dates
like '2027-02-30'. On every backend a text column may hold a non-number mapped
to a numeric target. None of them may stop a link: the field is rejected with
its reason, the rest of the record is applied, the run goes on.

Writing: a value the target refuses (a CHECK constraint, a unique key, a
NUMERIC overflow) is a rejected field of a written record, never `updated`.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from crmsync.config.loader import load_config
from crmsync.config.models import ObjectConfig
from crmsync.connectors import build_connectors
from crmsync.connectors.sql import SqlConnector
from crmsync.engine.check import check_config
from crmsync.engine.runner import Engine, LinkReport
from crmsync.state.store import StateStore

md = sa.MetaData()
people = sa.Table(
    "people",
    md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(50), nullable=False),
    sa.Column("amount", sa.Numeric(12, 2)),
    sa.Column("born", sa.Date),
    sa.Column("photo", sa.LargeBinary),
    sa.Column("qty", sa.String(20)),
    sa.Column("code", sa.String(10)),
    sa.Column("changed_at", sa.DateTime),
    sa.Index("ix_people_changed", "changed_at", "id"),
    sa.CheckConstraint("code IS NULL OR code <> 'BAD'", name="code_not_bad"),
)
contact = sa.Table(
    "contact",
    md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ext", sa.Integer, unique=True),
    sa.Column("name", sa.String(50)),
    sa.Column("amount", sa.Numeric(7, 2)),
    sa.Column("born", sa.Date),
    sa.Column("photo", sa.LargeBinary),
    sa.Column("qty", sa.Integer),
    sa.Column("code", sa.String(10), unique=True),
    sa.Column("seen_at", sa.DateTime),
    sa.Column("updated_at", sa.DateTime),
    sa.CheckConstraint("qty >= 0", name="qty_not_negative"),
)

CONFIG = """\
state: sqlite:///{state}
systems:
  src:
    connector: sql
    url: {url}
    objects:
      person: {{table: people, key: id, updated_at: changed_at}}
  dst:
    connector: sql
    url: {url}
    objects:
      contact: {{table: contact, key: id, updated_at: updated_at}}
links:
  people:
    source: src.person
    target: dst.contact
    match: {{id: ext}}
    fields:
{fields}
"""
FIELDS = [
    ("name", "name"),
    ("amount", "amount"),
    ("born", "born"),
    ("photo", "photo"),
    ("qty", "qty"),
    ("code", "code"),
    ("changed_at", "seen_at"),  # the cursor column is a mapped field too
]

# (column, SQL literal the database stores, the reason the field is rejected with)
DIRTY: dict[str, list[tuple[str, str, str]]] = {
    "sqlite": [
        ("amount", "'abc'", "expected a number, got 'abc'"),
        ("born", "'31/12/1999'", "expected a date (YYYY-MM-DD), got '31/12/1999'"),
        ("photo", "'text'", "expected binary data (bytes), got 'text'"),
        ("changed_at", "'not a date'", "got 'not a date'"),
        ("qty", "'many'", "expected a number, got 'many'"),
    ],
    "postgresql": [
        ("amount", "'NaN'", "expected a number, got NaN"),
        ("born", "'infinity'", "expected a date (YYYY-MM-DD), got 'infinity'"),
        ("born", "'0044-03-15 BC'", "got '0044-03-15 BC'"),
        ("changed_at", "'-infinity'", "got '-infinity'"),
        ("qty", "'twelve'", "expected a number, got 'twelve'"),
    ],
    "mariadb": [
        ("born", "'0000-00-00'", "expected a date (YYYY-MM-DD), got '0000-00-00'"),
        ("born", "'2019-02-30'", "got '2019-02-30'"),
        ("changed_at", "'0000-00-00 00:00:00'", "got '0000-00-00 00:00:00'"),
        ("qty", "'1,5'", "expected a number, got '1,5'"),
    ],
}


def raw_update(db: sa.Engine, backend: str, pid: int, **sql: str) -> None:
    """Store values the column's type cannot hand over (SQL literals of this file)."""
    sets = ", ".join(f"{col} = {lit}" for col, lit in sql.items())
    with db.begin() as c:
        if backend == "mariadb":
            # Zero and invalid dates are refused by the default strict mode.
            c.exec_driver_sql("SET SESSION sql_mode = 'ALLOW_INVALID_DATES'")
        c.exec_driver_sql(f"UPDATE people SET {sets} WHERE id = {int(pid)}")


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


class Sys:
    """One database holding both systems' tables, a state database and a config."""

    def __init__(
        self, tmp: Path, url: str, backend: str, fields: list[tuple[str, ...]]
    ) -> None:
        self.tmp, self.url, self.backend = tmp, url, backend
        self.db = sa.create_engine(url)
        md.create_all(self.db)
        self.state_path = tmp / "state.db"
        self.config = tmp / "crmsync.yaml"
        lines = "\n".join(
            f"      - {{source: {f[0]}, target: {f[1]}"
            + (f", direction: {f[2]}}}" if len(f) > 2 else "}")
            for f in fields
        )
        self.config.write_text(CONFIG.format(state=self.state_path, url=url, fields=lines))

    def seed(self, n: int, stamp: datetime) -> None:
        rows = [
            {
                "id": i,
                "name": f"Person {i}",
                "amount": Decimal(100 + i) / 4,
                "born": date(1990, 1, 1) + timedelta(days=i),
                "photo": bytes([i, 0, 255]),
                "qty": str(i),
                "code": f"K{i:03d}",
                "changed_at": stamp,
            }
            for i in range(1, n + 1)
        ]
        with self.db.begin() as c:
            c.execute(people.insert(), rows)

    def raw(self, pid: int, **sql: str) -> None:
        raw_update(self.db, self.backend, pid, **sql)

    def edit(self, pid: int, stamp: datetime | str, **values: Any) -> None:
        with self.db.begin() as c:
            c.execute(people.update().where(people.c.id == pid).values(**values))
        self.raw(pid, changed_at=f"'{stamp}'")

    def target(self) -> dict[int, dict[str, Any]]:
        with self.db.connect() as c:
            return {r.ext: dict(r._mapping) for r in c.execute(contact.select())}

    @contextmanager
    def engine(self, *, readonly: bool = False) -> Iterator[Engine]:
        config = load_config(self.config)
        connectors = build_connectors(config)
        state = StateStore(config.state, readonly=readonly)
        state.migrate()
        try:
            yield Engine(config, state, connectors)
        finally:
            state.close()
            for conn in connectors.values():
                conn.close()

    def sync(self, *, full: bool = False) -> LinkReport:
        with self.engine() as e:
            (report,) = e.sync(full=full)
        assert report.status == "ok", report.error
        return report

    def plan(self) -> LinkReport:
        with self.engine(readonly=True) as e:
            (report,) = e.sync(dry_run=True)
        return report

    def log(self, **kw: Any) -> list[dict[str, Any]]:
        st = StateStore(f"sqlite:///{self.state_path}")
        try:
            return st.outcomes(limit=10_000, **kw)
        finally:
            st.close()

    def close(self) -> None:
        self.db.dispose()


@pytest.fixture
def sysdb(db_url: str, backend: str, tmp_path: Path) -> Iterator[Sys]:
    s = Sys(tmp_path, db_url, backend, FIELDS)
    yield s
    s.close()


def _field(outcome: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in outcome["fields"] if f["field"] == name)


# -- reading: migration (scan), incremental (read_changes), plan ------------------


def test_migration_rejects_each_dirty_field_and_applies_the_rest(sysdb: Sys) -> None:
    dirty = DIRTY[sysdb.backend]
    sysdb.seed(len(dirty) + 3, now() - timedelta(days=1))
    for i, (col, lit, _why) in enumerate(dirty, start=1):
        sysdb.raw(i, **{col: lit})

    plan = sysdb.plan()  # the dry run reads the same rows: no traceback either
    assert plan.counts["created"] == len(dirty) + 3
    assert plan.counts["rejected"] == len(dirty)
    assert not sysdb.state_path.exists()

    r = sysdb.sync()
    assert r.kind == "migration"
    assert r.counts["created"] == len(dirty) + 3
    assert r.counts["rejected"] == len(dirty)
    tgt = sysdb.target()
    for i, (col, _lit, why) in enumerate(dirty, start=1):
        target_col = dict(FIELDS)[col]
        row = tgt[i]
        assert row[target_col] is None, (col, row)
        assert row["name"] == f"Person {i}" and row["code"] == f"K{i:03d}"  # the rest applied
        (o,) = sysdb.log(record=f"src.person:{i}")
        assert o["action"] == "created" and o["status"] == "rejected"
        f = _field(o, target_col)
        assert f["status"] == "rejected" and why in f["reason"], f
    clean = len(dirty) + 1
    assert tgt[clean]["amount"] == Decimal(100 + clean) / 4
    assert tgt[clean]["photo"] == bytes([clean, 0, 255])
    assert tgt[clean]["qty"] == clean
    assert len(sysdb.log(status="rejected")) == len(dirty)  # every count is in the log


def test_incremental_dirty_values_reject_the_field_only(sysdb: Sys) -> None:
    dirty = [d for d in DIRTY[sysdb.backend] if d[0] != "changed_at"]
    sysdb.seed(len(dirty) + 1, now() - timedelta(days=1))
    sysdb.sync()
    later = now() + timedelta(seconds=5)
    for i, (col, lit, _why) in enumerate(dirty, start=1):
        with sysdb.db.begin() as c:
            c.execute(people.update().where(people.c.id == i).values(name=f"Renamed {i}"))
        sysdb.raw(i, **{col: lit}, changed_at=f"'{later}'")
    r = sysdb.sync()
    assert r.kind == "incremental"
    assert r.counts["updated"] == len(dirty)
    assert r.counts["rejected"] == len(dirty)
    tgt = sysdb.target()
    for i, (col, _lit, why) in enumerate(dirty, start=1):
        target_col = dict(FIELDS)[col]
        assert tgt[i]["name"] == f"Renamed {i}"
        o = sysdb.log(record=f"src.person:{i}")[0]
        assert o["action"] == "updated" and o["status"] == "rejected"
        assert _field(o, "name")["status"] == "updated"
        f = _field(o, target_col)
        assert f["status"] == "rejected" and why in f["reason"], f
        # The target keeps what it had: the dirty value was not written.
        seeded = {"amount": Decimal(100 + i) / 4, "born": date(1990, 1, 1) + timedelta(days=i),
                  "photo": bytes([i, 0, 255]), "qty": i}[col]
        assert tgt[i][target_col] == seeded
    # Unchanged since: the next run is quiet (the rejection was already told).
    before = len(sysdb.log())
    r = sysdb.sync()
    assert r.counts["updated"] == r.counts["rejected"] == 0
    assert len(sysdb.log()) == before


def test_a_change_to_only_a_dirty_value_is_logged_counted_and_on_the_timeline(
    sys_nostamp: Sys,
) -> None:
    sysdb = sys_nostamp
    col, lit, why = next(d for d in DIRTY[sysdb.backend] if d[0] == "born")
    sysdb.seed(3, now() - timedelta(days=1))
    sysdb.sync()
    sysdb.raw(2, **{col: lit}, changed_at=f"'{now() + timedelta(seconds=5)}'")
    p = sysdb.plan()  # the incremental dry run reads it too, and says so
    assert p.counts["rejected"] == 1 and p.counts["updated"] == 0
    r = sysdb.sync()
    assert r.counts["rejected"] == 1 and r.counts["updated"] == 0
    (o,) = sysdb.log(status="rejected")  # the count is findable in the log
    assert o["source_ref"] == "src.person:2" and o["action"] == "rejected"
    f = _field(o, "born")
    assert f["status"] == "rejected" and why in f["reason"]
    assert sysdb.target()[2]["born"] == date(1990, 1, 3)  # kept, not overwritten
    st = StateStore(f"sqlite:///{sysdb.state_path}")
    try:
        entry, created = st.activities(f"dst.contact:{sysdb.target()[2]['id']}")
    finally:
        st.close()
    assert "record created" in created["text"]
    assert "nothing updated" in entry["text"]
    assert "Fields not updated: born: " in entry["text"] and why in entry["text"]
    # Re-read unchanged (a full pass): the same refusal is not told again.
    before = len(sysdb.log())
    r = sysdb.sync(full=True)
    assert r.counts["rejected"] == 0 and len(sysdb.log()) == before


# Stamps that cannot order a change: never the cursor, invisible to incremental.
UNORDERABLE = {
    "sqlite": "'not a date'",  # sorts after every digit
    "postgresql": "'infinity'",  # sorts after every time
    "mariadb": "'0000-00-00 00:00:00'",  # sorts before every time
}
# Stamps the database orders like a time but Python cannot read: reported, passed.
ORDERABLE = {"sqlite": "2027-02-30 10:00:00", "mariadb": "2027-02-30 10:00:00"}
# Where the unorderable stamp sorts after every time: found from the cursor on and
# reported once (a stamp before every time is behind any cursor: seen by scans only).
AFTER_TIME = {"sqlite", "postgresql"}


def test_rows_whose_cursor_cannot_be_read_are_reported_and_passed(sysdb: Sys) -> None:
    b = sysdb.backend
    sysdb.seed(6, now() - timedelta(days=1))
    sysdb.sync()
    sysdb.edit(1, "2027-01-10 10:00:00", name="Good before")
    with sysdb.db.begin() as c:
        c.execute(people.update().where(people.c.id == 2).values(name="Unorderable"))
    sysdb.raw(2, changed_at=UNORDERABLE[b])
    if b in ORDERABLE:
        sysdb.edit(3, ORDERABLE[b], name="Orderable but unreadable")
    sysdb.edit(4, "2027-03-05 10:00:00", name="Good after")
    p = sysdb.plan()  # the dry run sees the same: no traceback, counted
    assert p.counts["updated"] == 2
    reported = (b in ORDERABLE) + (b in AFTER_TIME)
    assert p.counts["skipped"] == reported
    r = sysdb.sync()
    tgt = sysdb.target()
    assert tgt[1]["name"] == "Good before" and tgt[4]["name"] == "Good after"
    assert tgt[2]["name"] == "Person 2"  # its change cannot be placed in time
    assert tgt[3]["name"] == "Person 3"
    assert r.counts["skipped"] == reported
    if b in AFTER_TIME:
        (o,) = sysdb.log(record="src.person:2")[:1]
        assert o["action"] == "skipped" and "not a time" in o["message"]
        assert "changed_at" in o["message"] and "not captured" in o["message"]
    if b in ORDERABLE:
        (o,) = sysdb.log(record="src.person:3")[:1]
        assert o["action"] == "skipped" and o["status"] == "skipped"
        assert "2027-02-30" in o["message"] and "changed_at" in o["message"]
        assert sysdb.log(status="skipped")[0]["run_id"] is not None
    # The cursor passed it: a quiet run reports nothing again, and a later
    # change (stamped after the bad row) is still captured.
    before = len(sysdb.log())
    r = sysdb.sync()
    assert r.counts["skipped"] == r.counts["updated"] == 0
    assert len(sysdb.log()) == before
    sysdb.edit(5, "2027-03-06 10:00:00", name="Later still")
    assert sysdb.sync().counts["updated"] == 1
    assert sysdb.target()[5]["name"] == "Later still"
    if b in ORDERABLE:
        # The cursor on an unreadable stamp (the last row): not reported again,
        # and what comes after it is captured.
        sysdb.edit(6, "2027-04-31 10:00:00", name="Last and unreadable")
        assert sysdb.sync().counts["skipped"] == 1
        assert sysdb.sync().counts["skipped"] == 0
        sysdb.edit(1, "2027-05-01 10:00:00", name="After the last bad one")
        assert sysdb.sync().counts["updated"] == 1
        # One second before a good row: the lookback re-read does not repeat it.
        sysdb.edit(3, "2027-06-31 23:59:59", name="Unreadable again")
        sysdb.edit(4, "2027-07-01 00:00:00", name="Good, one second later")
        r = sysdb.sync()
        assert r.counts["skipped"] == 1 and r.counts["updated"] == 1
        before = len(sysdb.log())
        assert sysdb.sync().counts["skipped"] == 0
        assert len(sysdb.log()) == before
        assert len(sysdb.log(record="src.person:3", status="skipped")) == 2
    # A full sync reads every row by key: the unorderable row's values arrive,
    # its stamp (mapped to seen_at) is the one rejected field.
    seen_before = sysdb.target()[2]["seen_at"]
    r = sysdb.sync(full=True)
    tgt = sysdb.target()
    assert tgt[2]["name"] == "Unorderable" and tgt[2]["seen_at"] == seen_before
    # (the capture after the rescan starts from a new position: it reports row 2 again)
    o = next(x for x in sysdb.log(record="src.person:2") if x["action"] != "skipped")
    assert o["action"] == "updated" and _field(o, "seen_at")["status"] == "rejected"


def test_connector_read_changes_from_the_start_with_dirty_stamps(
    db_url: str, backend: str
) -> None:
    db = sa.create_engine(db_url)
    md.create_all(db, tables=[people])
    try:
        with db.begin() as c:
            c.execute(people.insert(), [
                {"id": i, "name": f"P{i}", "changed_at": datetime(2026, 1, i)}
                for i in range(1, 6)
            ])
        raw_update(db, backend, 2, changed_at=UNORDERABLE[backend])
        if backend in ORDERABLE:
            raw_update(db, backend, 3, changed_at="'2026-02-30 10:00:00'")
        conn = SqlConnector(
            "src", db_url,
            {"person": ObjectConfig(table="people", key="id", updated_at="changed_at")},
        )
        try:
            seen, reported, cursor = [], {}, None
            for _ in range(10):  # bounded: pages of 2
                page = conn.read_changes("person", cursor, 2)
                seen += [r.id for r in page.records]
                reported.update(page.unreadable)
                cursor = page.cursor
                if not page.more:
                    break
            else:
                pytest.fail("read_changes never finished")
            bad_orderable = {"3"} if backend in ORDERABLE else set()
            # The zero date sorts first (reported once); 'not a date' and 'infinity'
            # sort after every time (reported from the last page's position).
            assert set(reported) == bad_orderable | {"2"}
            assert sorted(seen) == sorted({"1", "2", "3", "4", "5"} - {"2"} - bad_orderable)
            assert cursor is not None and "infinity" not in str(cursor["ts"])
            assert "not a date" not in str(cursor["ts"])
            # The high-water mark is never a stamp that cannot order a change.
            start = conn.start_cursor("person")
            highest = "2026-02-30" if backend in ORDERABLE else "2026-01-05"
            assert start is not None and start["ts"].startswith(highest), start
            # Every value is handed over, typed or raw, never an exception.
            assert set(conn.read("person", ["1", "2", "3"])) == {"1", "2", "3"}
        finally:
            conn.close()
    finally:
        db.dispose()


# -- writing: values the target refuses ----------------------------------------


@pytest.fixture
def sys_nostamp(db_url: str, backend: str, tmp_path: Path) -> Iterator[Sys]:
    """As ``sysdb`` without mapping the stamp, so an edit can change one field only."""
    s = Sys(tmp_path, db_url, backend, FIELDS[:-1])
    yield s
    s.close()


def test_values_the_target_refuses_are_rejected_fields_not_failed_records(
    sys_nostamp: Sys,
) -> None:
    sysdb = sys_nostamp
    sysdb.seed(4, now() - timedelta(days=1))
    sysdb.raw(1, qty="'-5'")  # CHECK (qty >= 0)
    sysdb.raw(3, code="'K002'")  # unique: record 2 has it already
    overflow = sysdb.backend != "sqlite"  # SQLite does not enforce NUMERIC(7,2)
    if overflow:
        sysdb.raw(4, amount="1234567.89")
    r = sysdb.sync()
    assert r.counts["created"] == 4 and r.counts["failed"] == 0
    assert r.counts["rejected"] == (3 if overflow else 2)
    tgt = sysdb.target()
    assert tgt[1]["qty"] is None and tgt[1]["name"] == "Person 1"
    assert tgt[3]["code"] is None and tgt[3]["name"] == "Person 3"
    assert tgt[2]["code"] == "K002"
    refused = [(1, "qty"), (3, "code")] + ([(4, "amount")] if overflow else [])
    for pid, col in refused:
        (o,) = sysdb.log(record=f"src.person:{pid}")
        assert o["action"] == "created" and o["status"] == "rejected"
        f = _field(o, col)
        assert f["status"] == "rejected" and f["reason"].startswith("refused by dst: "), f
        assert not [x for x in o["fields"] if x["field"] == col and x["status"] == "updated"]
    if overflow:
        assert tgt[4]["amount"] is None and tgt[4]["qty"] == 4

    # An update: the accepted field is written, the refused one is rejected.
    later = now() + timedelta(seconds=5)
    sysdb.raw(1, name="'Renamed'", qty="'-7'", changed_at=f"'{later}'")
    r = sysdb.sync()
    assert r.counts["updated"] == 1 and r.counts["failed"] == 0
    o = sysdb.log(record="src.person:1")[0]
    assert o["action"] == "updated" and o["status"] == "rejected"
    assert _field(o, "name")["status"] == "updated"
    assert _field(o, "qty")["status"] == "rejected"
    assert sysdb.target()[1]["name"] == "Renamed" and sysdb.target()[1]["qty"] is None

    # Only a refused value changed: nothing was written, the log does not say updated.
    sysdb.raw(1, qty="'-8'", changed_at=f"'{later + timedelta(seconds=5)}'")
    r = sysdb.sync()
    assert r.counts["updated"] == 0 and r.counts["failed"] == 0 and r.counts["rejected"] == 1
    o = sysdb.log(record="src.person:1")[0]
    assert o["action"] == "rejected" and o["status"] == "rejected"
    assert not [x for x in o["fields"] if x["status"] == "updated"]

    # A value the target takes goes through: the shadow never claimed the refused one.
    sysdb.raw(1, qty="'8'", changed_at=f"'{later + timedelta(seconds=10)}'")
    r = sysdb.sync()
    assert r.counts["updated"] == 1
    assert sysdb.target()[1]["qty"] == 8
    o = sysdb.log(record="src.person:1")[0]
    assert _field(o, "qty") == {
        "field": "qty", "status": "updated", "side": "target", "old": None, "new": 8
    }


def test_a_value_the_source_refuses_on_a_backward_field(
    db_url: str, backend: str, tmp_path: Path
) -> None:
    s = Sys(tmp_path, db_url, backend, [("name", "name"), ("code", "code", "backward")])
    try:
        s.seed(2, now() - timedelta(days=1))
        s.sync()
        with s.db.begin() as c:  # the CRM side sets a code the ERP's CHECK refuses
            c.execute(contact.update().where(contact.c.ext == 1).values(
                code="BAD", updated_at=now() + timedelta(seconds=5)))
        r = s.sync()
        assert r.counts["failed"] == 0 and r.counts["rejected"] == 1
        (o,) = s.log(record="src.person:1")[:1]
        assert o["action"] == "rejected" and o["status"] == "rejected"
        f = _field(o, "code")
        assert f["status"] == "rejected" and f["side"] == "source"
        assert f["reason"].startswith("refused by src: ") and "code_not_bad" in f["reason"].lower()
        with s.db.connect() as c:
            assert c.execute(sa.select(people.c.code).where(people.c.id == 1)).scalar() == "K001"
        # Re-read (lookback) unchanged: not sent again, nothing new in the log.
        before = len(s.log())
        r = s.sync()
        assert r.counts["rejected"] == 0 and len(s.log()) == before
        # A value the source takes goes back.
        with s.db.begin() as c:
            c.execute(contact.update().where(contact.c.ext == 1).values(
                code="K101", updated_at=now() + timedelta(seconds=10)))
        assert s.sync().counts["updated"] == 1
        with s.db.connect() as c:
            assert c.execute(sa.select(people.c.code).where(people.c.id == 1)).scalar() == "K101"
    finally:
        s.close()


def test_check_refuses_text_into_binary_and_accepts_binary(sysdb: Sys, tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    bad = Sys(tmp_path / "bad", sysdb.url, sysdb.backend, [("name", "photo"), ("photo", "name")])
    try:
        config = load_config(bad.config)
        connectors = build_connectors(config)
        try:
            problems = check_config(config, connectors, str(bad.config))
        finally:
            for c in connectors.values():
                c.close()
        msgs = [m for _loc, m in problems]
        assert len(msgs) == 2, msgs
        assert "cannot map string field 'name' to binary field 'photo'" in msgs[0] + msgs[1]
        assert any("binary field 'photo' to string field 'name'" in m for m in msgs)
        assert all("bytes" in m for m in msgs)
        good = load_config(sysdb.config)  # photo -> photo (and the rest) is fine
        connectors = build_connectors(good)
        try:
            assert check_config(good, connectors, str(sysdb.config)) == []
        finally:
            for c in connectors.values():
                c.close()
        # The CLI says the same, with exit 2 and no traceback.
        proc = subprocess.run(
            [sys.executable, "-m", "crmsync", "check", "-c", str(bad.config)],
            capture_output=True, text=True, timeout=60,
        )
        assert proc.returncode != 0, proc.stdout + proc.stderr
        assert "binary" in proc.stdout + proc.stderr
        assert "Traceback" not in proc.stdout + proc.stderr
    finally:
        bad.close()


@pytest.mark.parametrize("backend", sorted(AFTER_TIME))
def test_a_stamp_after_every_time_is_reported_once_per_value(sysdb: Sys) -> None:
    """'not a date' (SQLite) and 'infinity' (PostgreSQL) sort after every time: the row
    is reported once per bad value, quietly held while it stays, captured again once
    its stamp is a time, and reported again if it goes bad again."""
    b = sysdb.backend
    sysdb.seed(4, now() - timedelta(days=1))
    sysdb.sync()
    with sysdb.db.begin() as c:
        c.execute(people.update().where(people.c.id == 2).values(name="Hidden change"))
    sysdb.raw(2, changed_at=UNORDERABLE[b])
    assert sysdb.sync().counts["skipped"] == 1
    for _ in range(2):  # held: no new report, no new log row
        before = len(sysdb.log())
        assert sysdb.sync().counts["skipped"] == 0
        assert len(sysdb.log()) == before
    sysdb.edit(2, "2027-08-01 10:00:00", name="Fixed")  # a time again: captured
    r = sysdb.sync()
    assert r.counts["updated"] == 1 and r.counts["skipped"] == 0
    assert sysdb.target()[2]["name"] == "Fixed"
    sysdb.raw(2, changed_at=UNORDERABLE[b])  # bad again: told again
    assert sysdb.sync().counts["skipped"] == 1
    msgs = [o["message"] for o in sysdb.log(record="src.person:2", status="skipped")]
    assert len(msgs) == 2 and all("not a time" in m for m in msgs)
