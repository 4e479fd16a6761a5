"""Conformance of SqlConnector on real SQLite, PostgreSQL and MariaDB databases."""

from __future__ import annotations

import json
import socket
from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from crmsync.config.models import ObjectConfig
from crmsync.connectors.sql import SqlConnector
from crmsync.errors import SchemaError, SystemUnavailable
from crmsync.model import FieldType

T0 = datetime(2024, 3, 1, 10, 0, 0)


def _tables(md: sa.MetaData) -> dict[str, sa.Table]:
    return {
        "customers": sa.Table(
            "customers",
            md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("name", sa.String(20), nullable=False),
            sa.Column("email", sa.String(100)),
            sa.Column("active", sa.Boolean),
            sa.Column("revenue", sa.Numeric(12, 2)),
            sa.Column("founded", sa.Date),
            sa.Column("notes", sa.Text),
            sa.Column("updated_at", sa.DateTime, index=True),
        ),
        "codes": sa.Table(
            "codes",
            md,
            sa.Column("code", sa.String(20), primary_key=True, autoincrement=False),
            sa.Column("label", sa.String(50)),
            sa.Column("updated_at", sa.DateTime),
        ),
        "plain": sa.Table(
            "plain",
            md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("v", sa.String(20)),
            sa.Column("updated_at", sa.DateTime),
        ),
        "hostile": sa.Table(
            "Kund Ördér",
            md,
            sa.Column("order", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("select", sa.String(40)),
            sa.Column("from", sa.String(40)),
            sa.Column("Näme", sa.String(40)),
            sa.Column("updated_at", sa.DateTime),
        ),
    }


OBJECTS = {
    "customers": ObjectConfig(table="customers", key="id", updated_at="updated_at"),
    "codes": ObjectConfig(table="codes", key="code", updated_at="updated_at"),
    "plain": ObjectConfig(table="plain", key="id", updated_at="updated_at"),
    "hostile": ObjectConfig(table="Kund Ördér", key="order", updated_at="updated_at"),
}


@pytest.fixture
def db(db_url):
    engine = sa.create_engine(db_url)
    md = sa.MetaData()
    tables = _tables(md)
    md.create_all(engine)
    yield engine, tables
    engine.dispose()


@pytest.fixture
def conn(db, db_url):
    c = SqlConnector("crm", db_url, dict(OBJECTS))
    yield c
    c.close()


def insert(engine: sa.Engine, table: sa.Table, rows: list[dict]) -> None:
    with engine.begin() as c:
        c.execute(table.insert(), rows)


def all_changes(c: SqlConnector, obj: str, limit: int, cursor=None):
    out, pages = [], 0
    while True:
        page = c.read_changes(obj, cursor, limit)
        out.extend(page.records)
        cursor = page.cursor
        pages += 1
        if not page.more:
            return out, cursor
        assert pages < 1000


# -- describe ----------------------------------------------------------------
def test_describe_types(conn):
    spec = conn.describe("customers")
    f = spec.fields
    assert spec.key == "id" and spec.key_generated and spec.updated_at == "updated_at"
    assert f["id"].type is FieldType.INTEGER and f["id"].read_only
    assert f["name"].type is FieldType.STRING and f["name"].max_length == 20
    assert not f["name"].nullable and f["email"].nullable
    assert f["active"].type is FieldType.BOOLEAN
    assert f["revenue"].type is FieldType.DECIMAL and f["revenue"].scale == 2
    assert f["founded"].type is FieldType.DATE
    assert f["updated_at"].type is FieldType.DATETIME
    assert f["notes"].type is FieldType.STRING
    codes = conn.describe("codes")
    assert codes.key == "code" and not codes.key_generated
    if conn._dialect != "sqlite":  # on SQLite every INTEGER PRIMARY KEY is the rowid
        assert not conn.describe("plain").key_generated
    assert conn.describe("customers") is spec  # cached


def test_describe_enum_and_float(db, db_url):
    engine, _ = db
    md = sa.MetaData()
    sa.Table(
        "extra",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.Enum("lead", "customer", name="kind_enum")),
        sa.Column("score", sa.Float),
    ).create(engine)
    insert(engine, md.tables["extra"], [{"id": 1, "kind": "lead", "score": 0.1}])
    c = SqlConnector("crm", db_url, {"extra": ObjectConfig(table="extra", key="id")})
    try:
        spec = c.describe("extra")
        assert spec.fields["score"].type is FieldType.DECIMAL
        if engine.dialect.name != "sqlite":  # SQLite has no enum type
            assert spec.fields["kind"].type is FieldType.CHOICE
            assert spec.fields["kind"].choices == ("lead", "customer")
        (rec,) = c.scan("extra", None, 10)
        assert rec.values["score"] == Decimal("0.1") and rec.version is None
        assert c.start_cursor("extra") is None
    finally:
        c.close()


@pytest.mark.parametrize(
    ("cfg", "key", "fragment"),
    [
        (ObjectConfig(table="custmers", key="id"), "table", "table 'custmers' not found"),
        (ObjectConfig(table="customers", key="idd"), "key", "column 'idd' not found"),
        (
            ObjectConfig(table="customers", key="id", updated_at="changed"),
            "updated_at",
            "column 'changed' not found",
        ),
        (
            ObjectConfig(table="customers", key="id", deleted={"field": "gone"}),
            "deleted.field",
            "column 'gone' not found",
        ),
    ],
)
def test_describe_errors(db, db_url, cfg, key, fragment):
    c = SqlConnector("crm", db_url, {"x": cfg})
    try:
        with pytest.raises(SchemaError) as info:
            c.describe("x")
    finally:
        c.close()
    assert info.value.key == key
    msg = str(info.value)
    assert fragment in msg
    if key == "table":
        assert "tables: " in msg and "customers" in msg and "codes" in msg
    else:
        assert "columns: id, name, email" in msg


# -- scan / read / find --------------------------------------------------------
def test_scan_key_order_numeric_and_null_updated_at(db, conn):
    engine, t = db
    ids = [2, 10, 1, 33, 7]
    insert(
        engine,
        t["plain"],
        [{"id": i, "v": f"v{i}", "updated_at": None if i == 10 else T0} for i in ids],
    )
    seen, after = [], None
    while True:
        recs = conn.scan("plain", after, 2)
        if not recs:
            break
        seen.extend(r.id for r in recs)
        after = recs[-1].id
    assert seen == ["1", "2", "7", "10", "33"]  # numeric, not text order
    (r10,) = [r for r in conn.scan("plain", "7", 1)]
    assert r10.id == "10" and r10.version is None and r10.values["updated_at"] is None


def test_values_are_plain_python(db, conn):
    engine, t = db
    insert(
        engine,
        t["customers"],
        [
            {
                "name": "Acme",
                "active": True,
                "revenue": Decimal("12.50"),
                "founded": date(2001, 2, 3),
                "updated_at": T0,
            },
            {
                "name": "Beta",
                "active": False,
                "revenue": None,
                "founded": None,
                "updated_at": T0,
            },
        ],
    )
    recs = conn.scan("customers", None, 10)
    a, b = recs
    assert a.values["active"] is True and b.values["active"] is False
    assert a.values["revenue"] == Decimal("12.50") and isinstance(a.values["revenue"], Decimal)
    assert a.values["founded"] == date(2001, 2, 3)
    assert a.values["updated_at"] == T0 and a.version == T0
    assert a.values["updated_at"].tzinfo is None
    assert isinstance(a.values["id"], int) and a.id == str(a.values["id"])
    assert b.values["revenue"] is None and b.values["email"] is None


def test_read_many_ids_and_find(db, conn):
    engine, t = db
    insert(engine, t["plain"], [{"id": i, "v": f"v{i % 7}"} for i in range(1, 1301)])
    ids = [str(i) for i in range(1, 1301, 1)] + ["99999", "not-a-number"]
    got = conn.read("plain", ids)
    assert len(got) == 1300 and got["1300"].values["v"] == "v5"
    assert "99999" not in got
    found = conn.find("plain", "v", ["v3", "nope"])
    assert len(found) == len([i for i in range(1, 1301) if i % 7 == 3])
    assert {r.values["v"] for r in found} == {"v3"}
    assert conn.find("plain", "v", []) == []


# -- read_changes ---------------------------------------------------------------
def test_ties_across_pages_each_once(db, conn):
    engine, t = db
    insert(engine, t["plain"], [{"id": i, "v": "x", "updated_at": T0} for i in range(1, 6)])
    recs, _ = all_changes(conn, "plain", 2)
    assert [r.id for r in recs] == ["1", "2", "3", "4", "5"]


def test_changes_order_null_excluded_and_resume_after_json(db, conn):
    engine, t = db
    insert(
        engine,
        t["plain"],
        [
            {"id": 2, "v": "a", "updated_at": T0 + timedelta(seconds=2)},
            {"id": 10, "v": "b", "updated_at": T0 + timedelta(seconds=1)},
            {"id": 3, "v": "c", "updated_at": None},
            {"id": 9, "v": "d", "updated_at": T0 + timedelta(seconds=1)},
        ],
    )
    page = conn.read_changes("plain", None, 2)
    assert [r.id for r in page.records] == ["9", "10"] and page.more
    saved = json.loads(json.dumps(page.cursor))
    page2 = conn.read_changes("plain", saved, 2)
    assert [r.id for r in page2.records] == ["2"] and not page2.more
    # Nothing new: same cursor back, empty page.
    page3 = conn.read_changes("plain", json.loads(json.dumps(page2.cursor)), 2)
    assert page3.records == [] and not page3.more
    # A new row after the cursor is picked up; integer keys compare as integers.
    insert(engine, t["plain"], [{"id": 11, "v": "e", "updated_at": T0 + timedelta(seconds=2)}])
    page4 = conn.read_changes("plain", page2.cursor, 10)
    assert [r.id for r in page4.records] == ["11"]
    assert page4.records[0].version == T0 + timedelta(seconds=2)


def test_string_keys_tie_break(db, conn):
    engine, t = db
    insert(
        engine,
        t["codes"],
        [{"code": c, "label": c, "updated_at": T0} for c in ["b", "a", "c", "d"]],
    )
    recs, cursor = all_changes(conn, "codes", 3)
    assert [r.id for r in recs] == ["a", "b", "c", "d"]
    assert cursor["key"] == "d"


def test_lookback_rereads_overlap(db, conn):
    engine, t = db
    insert(
        engine,
        t["plain"],
        [{"id": i, "v": "x", "updated_at": T0 + timedelta(seconds=i)} for i in range(1, 6)],
    )
    _, cursor = all_changes(conn, "plain", 10)
    # A late commit with an older stamp: a plain cursor misses it, lookback finds it.
    insert(engine, t["plain"], [{"id": 99, "v": "late", "updated_at": T0 + timedelta(seconds=4)}])
    assert conn.read_changes("plain", cursor, 10).records == []
    page = conn.read_changes("plain", cursor, 10, lookback=2)
    assert {r.id for r in page.records} == {"3", "4", "5", "99"}


def test_start_cursor(db, conn):
    engine, t = db
    assert conn.start_cursor("plain") is None
    insert(
        engine,
        t["plain"],
        [
            {"id": 1, "v": "x", "updated_at": T0},
            {"id": 2, "v": "x", "updated_at": T0 + timedelta(seconds=5)},
            {"id": 3, "v": "x", "updated_at": T0 + timedelta(seconds=5)},
        ],
    )
    cur = conn.start_cursor("plain")
    assert cur is not None
    page = conn.read_changes("plain", json.loads(json.dumps(cur)), 10)
    # Rows at the high-water mark are read again, older ones are not.
    assert [r.id for r in page.records] == ["2", "3"]


def test_sqlite_text_formats(tmp_path):
    """Rows written by other software: no micros, ISO 'T' separator, mixed micros."""
    url = f"sqlite:///{tmp_path / 'ext.sqlite'}"
    engine = sa.create_engine(url)
    with engine.begin() as c:
        c.exec_driver_sql(
            "CREATE TABLE nomicro (id INTEGER PRIMARY KEY, v TEXT, updated_at DATETIME)"
        )
        c.exec_driver_sql(
            "CREATE TABLE isot (id INTEGER PRIMARY KEY, v TEXT, updated_at TIMESTAMP)"
        )
        for tbl in ("nomicro", "isot"):
            sep = "T" if tbl == "isot" else " "
            for i in range(1, 6):
                c.exec_driver_sql(
                    f"INSERT INTO {tbl} (id, v, updated_at) VALUES (?, ?, ?)",
                    (i, "x", f"2024-03-01{sep}10:00:0{i // 2}"),
                )
    engine.dispose()
    objs = {
        n: ObjectConfig(table=n, key="id", updated_at="updated_at") for n in ("nomicro", "isot")
    }
    c = SqlConnector("ext", url, objs)
    try:
        for tbl in ("nomicro", "isot"):
            recs, cursor = all_changes(c, tbl, 2)
            assert [r.id for r in recs] == ["1", "2", "3", "4", "5"]
            assert recs[0].version == datetime(2024, 3, 1, 10, 0, 0)
            # Our own stamps (with micros) come after, and are found from the cursor.
            res = c.write(tbl, updates=[("1", {"v": "changed"})])
            assert not res.errors
            page = c.read_changes(tbl, json.loads(json.dumps(cursor)), 10)
            assert [r.id for r in page.records] == ["1"]
            assert page.records[0].version > datetime(2024, 3, 1, 10, 0, 2)
            # Lookback from a raw-text cursor works in the table's format.
            again = c.read_changes(tbl, cursor, 10, lookback=1)
            assert {r.id for r in again.records} >= {"4", "5", "1"}
            start = c.start_cursor(tbl)
            assert [r.id for r in c.read_changes(tbl, start, 10).records] == ["1"]
        raw = sa.create_engine(url)
        with raw.connect() as rc:
            stamp = rc.exec_driver_sql("SELECT updated_at FROM isot WHERE id = 1").scalar()
        raw.dispose()
        assert stamp[10] == "T"  # written in the table's own format
    finally:
        c.close()


# -- writes ---------------------------------------------------------------------
def test_create_generated_keys_in_order(conn):
    creates = [{"name": f"n{i}", "active": i % 2 == 0, "revenue": Decimal(i)} for i in range(700)]
    res = conn.write("customers", creates=creates)
    assert not res.errors
    assert len(res.created) == 700 and all(res.created)
    got = conn.read("customers", [i for i in res.created if i])
    for i, rid in enumerate(res.created):
        assert got[rid].values["name"] == f"n{i}"
        assert got[rid].values["active"] is (i % 2 == 0)
        assert got[rid].values["updated_at"] is not None  # stamped


def test_create_given_keys_is_idempotent(db, conn):
    engine, t = db
    rows = [{"code": "A1", "label": "first"}, {"code": "B2", "label": "second"}]
    assert conn.write("codes", creates=rows).created == ["A1", "B2"]
    res = conn.write("codes", creates=[{"code": "A1", "label": "again"}])
    assert res.created == ["A1"] and not res.errors
    with engine.connect() as c:
        assert c.execute(sa.select(sa.func.count()).select_from(t["codes"])).scalar() == 2
    assert conn.read("codes", ["A1"])["A1"].values["label"] == "again"


def test_updates_grouped_deletes_and_stamp(db, conn):
    engine, t = db
    old = datetime(2020, 1, 1)
    insert(
        engine,
        t["customers"],
        [{"id": i, "name": f"n{i}", "updated_at": old} for i in range(1, 7)],
    )
    conn.describe("customers")  # reflection queries are not part of the write
    before = conn.count_calls()
    res = conn.write(
        "customers",
        updates=[
            ("1", {"name": "one"}),
            ("2", {"name": "two"}),
            ("3", {"email": "x@y.z", "active": True}),
            ("4", {"name": "four", "updated_at": datetime(2021, 5, 5)}),
            ("999", {"name": "missing"}),
        ],
        deletes=["5", "6", "12345"],
    )
    assert res.errors == {"999": "record not found"}
    calls = conn.count_calls() - before
    assert calls <= 5  # grouped, not one statement per row
    got = conn.read("customers", ["1", "2", "3", "4", "5", "6"])
    assert set(got) == {"1", "2", "3", "4"}
    assert got["1"].values["name"] == "one" and got["2"].values["name"] == "two"
    assert got["3"].values["active"] is True and got["3"].values["name"] == "n3"
    assert got["1"].version > old  # stamped by the connector
    assert got["4"].version == datetime(2021, 5, 5)  # caller's stamp kept


def test_one_bad_row_fails_alone(db, conn):
    engine, t = db
    insert(engine, t["customers"], [{"id": 1, "name": "keep"}])
    creates = [
        {"name": "ok0"},
        {"name": None},  # NOT NULL violation
        {"name": "ok2"},
    ]
    res = conn.write(
        "customers",
        creates=creates,
        updates=[("1", {"name": None})],
    )
    assert res.created[0] and res.created[2] and res.created[1] is None
    # A create cannot leave out a NOT NULL column: it fails. The update's only
    # field was refused: the row is kept as it was, the field reported refused.
    assert set(res.errors) == {"create:1"}
    assert "null" in res.errors["create:1"].lower()
    assert set(res.refused) == {"1"} and "null" in res.refused["1"]["name"].lower()
    got = conn.read("customers", [res.created[0], res.created[2], "1"])
    assert got["1"].values["name"] == "keep"
    assert got[res.created[0]].values["name"] == "ok0"
    if engine.dialect.name != "sqlite":  # SQLite does not enforce VARCHAR length
        res = conn.write("customers", creates=[{"name": "x" * 50}, {"name": "fits"}])
        assert res.created[0] is None and res.created[1]
        assert "create:0" in res.errors


def test_unknown_field_is_a_per_item_error(db, conn):
    res = conn.write("customers", creates=[{"name": "a", "nope": 1}, {"name": "b"}])
    assert res.created[0] is None and res.created[1]
    assert "nope" in res.errors["create:0"]


def test_hostile_identifiers(conn):
    spec = conn.describe("hostile")
    assert set(spec.fields) == {"order", "select", "from", "Näme", "updated_at"}
    res = conn.write(
        "hostile",
        creates=[{"select": "s", "from": "f", "Näme": "Jörg"}, {"select": "'; DROP TABLE x; --"}],
    )
    assert not res.errors and all(res.created)
    recs = conn.scan("hostile", None, 10)
    assert [r.values["Näme"] for r in recs] == ["Jörg", None]
    assert recs[1].values["select"] == "'; DROP TABLE x; --"
    changes, _ = all_changes(conn, "hostile", 1)
    assert len(changes) == 2
    rid = res.created[0]
    assert conn.write("hostile", updates=[(rid, {"from": "g"})]).errors == {}
    assert conn.read("hostile", [rid])[rid].values["from"] == "g"
    assert [r.id for r in conn.find("hostile", "Näme", ["Jörg"])] == [rid]
    assert conn.write("hostile", deletes=[rid]).errors == {}
    assert conn.read("hostile", [rid]) == {}


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize(
    "scheme",
    ["postgresql+psycopg://u:s3cret-pw@127.0.0.1", "mysql+pymysql://u:s3cret-pw@127.0.0.1"],
)
def test_unreachable_server(scheme):
    url = f"{scheme}:{_free_port()}/db?connect_timeout=2"
    c = SqlConnector("crm", url, dict(OBJECTS))
    try:
        with pytest.raises(SystemUnavailable) as info:
            c.describe("customers")
        assert "system 'crm' is unreachable" in str(info.value)
        assert "s3cret-pw" not in str(info.value)
        with pytest.raises(SystemUnavailable):
            c.scan("customers", None, 10)
    finally:
        c.close()


def test_unavailable_after_describe(db, db_url, conn):
    """The server going away later is SystemUnavailable too (not a record error)."""
    conn.describe("plain")
    backend = sa.make_url(db_url).get_backend_name()
    if backend == "sqlite":
        pytest.skip("a file cannot become unreachable")
    url = sa.make_url(db_url).set(port=_free_port(), query={"connect_timeout": "2"})
    conn._engine.dispose()
    conn._engine = sa.create_engine(url, hide_parameters=True)
    with pytest.raises(SystemUnavailable):
        conn.write("plain", creates=[{"id": 1, "v": "x"}])
    with pytest.raises(SystemUnavailable):
        conn.read_changes("plain", None, 10)


def test_mixed_creates_in_one_batch(conn):
    """Different field sets, given and generated keys: each result at its own index."""
    creates = [
        {"name": "gen1"},
        {"id": 500, "name": "given"},
        {"name": "gen2", "email": "e@x.y"},
        {"id": None, "name": "gen3"},
        {"name": "gen4"},
    ]
    res = conn.write("customers", creates=creates)
    assert not res.errors and res.created[1] == "500" and all(res.created)
    got = conn.read("customers", res.created)
    assert [got[i].values["name"] for i in res.created] == [c["name"] for c in creates]
    assert got[res.created[2]].values["email"] == "e@x.y"


def test_count_does_not_disturb_typed_reads(db_url: str) -> None:
    """count() before a scan must leave dates, decimals and booleans typed."""
    engine = sa.create_engine(db_url)
    md = sa.MetaData()
    t = sa.Table(
        "counted",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("d", sa.Date),
        sa.Column("amount", sa.Numeric(10, 2)),
    )
    md.create_all(engine)
    with engine.begin() as c:
        c.execute(t.insert(), [{"id": 1, "d": date(2024, 5, 1), "amount": Decimal("1.50")}])
    engine.dispose()
    conn = SqlConnector("s", db_url, {"o": ObjectConfig(table="counted", key="id")})
    try:
        assert conn.count("o") == 1
        (rec,) = conn.scan("o", None, 10)
        assert rec.values["d"] == date(2024, 5, 1)
        assert rec.values["amount"] == Decimal("1.50")
    finally:
        conn.close()
