"""Connectors under the conformance suite: one ``subject`` fixture per connector kind.

(A uniquely named module, like ``trytonenv`` and ``hookenv``: conftest.py imports
its fixtures, and tests can import ``SUBJECTS`` without meeting another conftest.)

Each subject is built the way users build it: config text -> ``load_config_text``
-> ``build_connectors``. Adding a connector (the HTTP one) is one fixture named
``<kind>_subject`` yielding a ``Subject`` plus one entry in ``SUBJECTS``.

Systems: SQL gets a database per module (``tests/dbs.py``; PostgreSQL and
MariaDB fail instead of skipping when CI=true) and a new hostile table per test;
Tryton shares one real server and connector per module (started from the cached template of
``tests/tryton/trytonenv.py``) and every test works on records of its own; the
webhook system keeps its records in a fresh SQLite state database per test.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).parents[1] / "tryton"))
from dbs import fresh_database
from trytonenv import TrytonServer, free_port, get_template, serve_copy

from crmsync.config.loader import load_config_text
from crmsync.config.models import Config
from crmsync.connectors import Connector, build_connectors
from crmsync.model import FieldType
from crmsync.state.store import StateStore
from crmsync.testing.conformance import (
    FIELD_REJECTIONS,
    HOSTILE,
    HOSTILE_NAMES,
    HOSTILE_TYPES,
    REFUSED_SETTING,
    STAMPS,
    UNAVAILABLE,
    UNSTAMPED,
    WRITE,
    Roles,
    Stamp,
    Subject,
    hostile_table,
    token,
)

__all__ = [
    "SUBJECTS",
    "mariadb_subject",
    "mariadb_url",
    "postgresql_subject",
    "postgresql_url",
    "sqlite_subject",
    "sqlite_url",
    "subject",
    "tryton_server",
    "tryton_subject",
    "webhook_subject",
]

OBJ = "rec"  # the object name in every config (the table/model behind it is hostile)

# label -> (fixture, marks): the connectors every contract test runs against.
SUBJECTS: dict[str, tuple[str, list[pytest.MarkDecorator]]] = {
    "sql-sqlite": ("sqlite_subject", []),
    "sql-postgresql": ("postgresql_subject", [pytest.mark.postgresql]),
    "sql-mariadb": ("mariadb_subject", [pytest.mark.mariadb]),
    "tryton": ("tryton_subject", []),
    "webhook": ("webhook_subject", []),
}


@pytest.fixture(params=[pytest.param(k, marks=m, id=k) for k, (_, m) in SUBJECTS.items()])
def subject(request: pytest.FixtureRequest) -> Subject:
    """Each contract test runs once per connector kind."""
    return request.getfixturevalue(SUBJECTS[request.param][0])


def connectors_of(text: str, env: Mapping[str, str] | None = None,
                  state: StateStore | None = None) -> tuple[Config, dict[str, Connector]]:
    """Config text to connectors, as `crmsync` itself does it."""
    config, _ = load_config_text(text, "conformance.yaml", env=env or {})
    return config, build_connectors(config, state)


def _link(match: str) -> str:
    # A config needs a link; the suite only uses the system's connector.
    m = json.dumps(match)
    return f"links:\n  self:\n    source: sys.{OBJ}\n    target: sys.{OBJ}\n" \
           f"    fields: [{{source: {m}, target: {m}}}]\n"


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# -- SQL: the hostile table on SQLite, PostgreSQL, MariaDB ---------------------------

def _sql_text(url: str) -> str:
    h = {k: json.dumps(v) for k, v in HOSTILE.items()}
    return (
        f"systems:\n  sys:\n    connector: sql\n    url: {json.dumps(url)}\n    objects:\n"
        f"      {OBJ}: {{table: {h['table']}, key: {h['key']}, updated_at: {h['updated']}}}\n"
        + _link(HOSTILE["match"])
    )


@contextmanager
def _sql_subject(backend: str, url: str) -> Iterator[Subject]:
    """The hostile table, new for each test, in the module's database."""
    engine = sa.create_engine(url)
    table = hostile_table(sa.MetaData())
    table.drop(engine, checkfirst=True)
    table.create(engine)

    def seed(rows: Sequence[Mapping[str, Any]], at: Stamp) -> list[str]:
        stamp = None if at is UNSTAMPED else (at or _now())
        ids = []
        with engine.begin() as c:  # one transaction: one instant
            for row in rows:
                values = {table.c[k]: v for k, v in row.items()}
                values[table.c[HOSTILE["updated"]]] = stamp
                res = c.execute(table.insert().values(values))
                ids.append(str(res.inserted_primary_key[0]))
        return ids

    parsed = sa.make_url(url)
    if backend == "sqlite":
        down = _sqlite_locked(url)
        # A mistyped path: SQLite would create an empty file; crmsync refuses it.
        wrong = parsed.set(database=f"{parsed.database}.missing")
    else:
        down = _sql_connector(parsed.set(port=free_port()).render_as_string(False))
        wrong = parsed.set(database=f"{parsed.database}_missing")
    misconfigured = _sql_connector(wrong.render_as_string(False))
    _, conns = connectors_of(_sql_text(url))
    conn = conns["sys"]
    try:
        yield Subject(
            label=f"sql-{backend}", connector=conn, obj=OBJ,
            roles=Roles(HOSTILE["match"], HOSTILE["text"], HOSTILE["refusable"]),
            seed=seed, types=HOSTILE_TYPES, bad_value=-1, down=down,
            misconfigured=misconfigured,
        )
    finally:
        conn.close()
        engine.dispose()


def _sql_connector(url: str) -> Any:
    @contextmanager
    def build() -> Iterator[Connector]:
        # The system at another URL: a port nobody listens on, a missing database.
        _, conns = connectors_of(_sql_text(url))
        try:
            yield conns["sys"]
        finally:
            conns["sys"].close()

    return build


def _sqlite_locked(url: str) -> Any:
    @contextmanager
    def down() -> Iterator[Connector]:
        # SQLite has no server to stop: another process holding the file's
        # exclusive lock is its outage ("database is locked").
        path = sa.make_url(url).database
        assert path
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        _, conns = connectors_of(_sql_text(url + "?timeout=0.05"))
        try:
            yield conns["sys"]
        finally:
            conns["sys"].close()
            holder.execute("ROLLBACK")
            holder.close()

    return down


@contextmanager
def _module_database(backend: str, factory: pytest.TempPathFactory) -> Iterator[str]:
    # One database per module and backend: creating one per test costs a second
    # or two on PostgreSQL; each test gets its own new table instead.
    with fresh_database(backend, factory.mktemp(f"conformance-{backend}"), "conf") as url:
        yield url


@pytest.fixture(scope="module")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with _module_database("sqlite", tmp_path_factory) as url:
        yield url


@pytest.fixture(scope="module")
def postgresql_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with _module_database("postgresql", tmp_path_factory) as url:
        yield url


@pytest.fixture(scope="module")
def mariadb_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with _module_database("mariadb", tmp_path_factory) as url:
        yield url


@pytest.fixture
def sqlite_subject(sqlite_url: str) -> Iterator[Subject]:
    with _sql_subject("sqlite", sqlite_url) as s:
        yield s


@pytest.fixture
def postgresql_subject(postgresql_url: str) -> Iterator[Subject]:
    with _sql_subject("postgresql", postgresql_url) as s:
        yield s


@pytest.fixture
def mariadb_subject(mariadb_url: str) -> Iterator[Subject]:
    with _sql_subject("mariadb", mariadb_url) as s:
        yield s


# -- Tryton: one real server per module, parties of the Company category -------------

def _tryton_text(url: str, database: str, user: str) -> str:
    return (
        f"systems:\n  sys:\n    connector: tryton\n    url: {url}\n    database: {database}\n"
        f"    user: {user}\n    password: ${{TRYTON_PASSWORD}}\n    timeout: 10\n"
        f"    objects:\n      {OBJ}: {{model: party.party, category: Company}}\n"
        + _link("code")
    )


@pytest.fixture(scope="module")
def tryton_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrytonServer]:
    """One server for the module's Tryton tests (a start costs 1-2 s; tests share it),
    on a copy of the template the Tryton tests use (built once, then cached)."""
    base = tmp_path_factory.mktemp("conformance-tryton")
    with serve_copy(get_template(), base / "db", base / "trytond.log") as server:
        yield server


@pytest.fixture(scope="module")
def tryton_subject(tryton_server: TrytonServer) -> Iterator[Subject]:
    """Shared by the module's tests like the server: a Tryton login costs a password
    hash, and the engine too keeps one connector per system."""
    s = tryton_server
    env = {"TRYTON_PASSWORD": s.password}
    rpc = s.rpc(timeout=10)
    category = s.category_company_id

    def seed(rows: Sequence[Mapping[str, Any]], at: Stamp) -> list[str]:
        if at is not None:
            raise ValueError("Tryton stamps its records itself")
        # One call, one transaction: the records share one stamp.
        vlist = [{**row, "categories": [["add", [category]]]} for row in rows]
        return [str(i) for i in rpc.call("model.party.party.create", vlist)]

    # A code some party already has: Tryton refuses it on create (unique) and on
    # update (the code of a party cannot change).
    taken = f"taken-{token()}"
    seed([{"name": "holder of the taken code", "code": taken}], None)

    @contextmanager
    def down() -> Iterator[Connector]:
        # Nothing listens on that port: the server is down.
        _, conns = connectors_of(
            _tryton_text(f"http://127.0.0.1:{free_port()}", s.database, s.user), env
        )
        try:
            yield conns["sys"]
        finally:
            conns["sys"].close()

    @contextmanager
    def misconfigured() -> Iterator[Connector]:
        _, conns = connectors_of(_tryton_text(s.url, "crmsync_no_such_db", s.user), env)
        try:
            yield conns["sys"]
        finally:
            conns["sys"].close()

    _, conns = connectors_of(_tryton_text(s.url, s.database, s.user), env)
    conn = conns["sys"]
    try:
        yield Subject(
            label="tryton", connector=conn, obj=OBJ, roles=Roles("code", "name", "code"),
            seed=seed, bad_value=taken, down=down, misconfigured=misconfigured,
            types={"id": FieldType.INTEGER, "code": FieldType.STRING, "name": FieldType.STRING,
                   "active": FieldType.BOOLEAN, "last_modified_at": FieldType.DATETIME},
            lacks={
                FIELD_REJECTIONS: "Tryton refuses a record whole (WriteResult.errors); writing "
                "it without the refused field (WriteResult.refused) is optional in the contract",
                STAMPS: "Tryton stamps records itself (its transaction's start): the suite "
                "cannot choose a stamp nor leave it NULL",
                HOSTILE_NAMES: "model and field names are fixed by Tryton's modules",
            },
        )
    finally:
        conn.close()


# -- webhook: a push-only system with hostile field names ---------------------------

def _webhook_text(state_url: str) -> str:
    types = {
        HOSTILE["match"]: "string", HOSTILE["text"]: "string", HOSTILE["refusable"]: "integer",
        HOSTILE["amount"]: "decimal", HOSTILE["flag"]: "boolean", HOSTILE["day"]: "date",
    }
    fields = ", ".join(f"{json.dumps(k)}: {v}" for k, v in types.items())
    return (
        f"state: {json.dumps(state_url)}\n"
        f"systems:\n  sys:\n    connector: webhook\n    webhook_secret: ${{HOOK_SECRET}}\n"
        f"    objects:\n      {OBJ}:\n        key: {json.dumps(HOSTILE['key'])}\n"
        f"        fields: {{{fields}}}\n"
        + _link(HOSTILE["match"])
    )


@pytest.fixture
def webhook_subject(tmp_path: Path) -> Iterator[Subject]:
    config, _ = load_config_text(
        _webhook_text(f"sqlite:///{tmp_path / 'state.db'}"), "conformance.yaml",
        env={"HOOK_SECRET": "whsec_Y29uZm9ybWFuY2UtdGVzdC1zZWNyZXQ="},
    )
    state = StateStore(config.state)
    state.migrate()
    conn = build_connectors(config, state)["sys"]
    tok = token()
    counter = iter(range(1_000_000))

    def seed(rows: Sequence[Mapping[str, Any]], at: Stamp) -> list[str]:
        if at is UNSTAMPED:
            raise ValueError("a push always has a sequence number")
        ids = []
        # One state transaction, as the receiver stores one delivery.
        with state.begin() as c:
            for row in rows:
                # Ids are the sender's text: hostile too.
                rid = str(row.get(HOSTILE["key"]) or f"R {tok} 'ü' {next(counter):04d}")
                values = {k: v for k, v in row.items() if k != HOSTILE["key"]}
                conn.push(c, OBJ, rid, values, "created", now=at)  # type: ignore[attr-defined]
                ids.append(rid)
        return ids

    try:
        yield Subject(
            label="webhook", connector=conn, obj=OBJ,
            roles=Roles(HOSTILE["match"], HOSTILE["text"], None),
            seed=seed, types={HOSTILE["key"]: FieldType.STRING, **HOSTILE_TYPES},
            lacks={
                WRITE: "push-only: write() refuses every item (crmsync cannot write to it)",
                FIELD_REJECTIONS: "push-only: nothing is written, so no field is refused",
                STAMPS: "records are ordered by a commit sequence, not by a stamp",
                UNAVAILABLE: "push-only: crmsync never calls the system (its records are "
                "read from the state database)",
                REFUSED_SETTING: "push-only: no connection settings to get wrong",
            },
        )
    finally:
        conn.close()
        state.close()
