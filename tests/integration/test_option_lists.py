"""Option lists (issue 13): a SQL ENUM's options kept in step with a lookup table
of the target, before the records that hold them are written (PostgreSQL, MariaDB:
SQLite has no ENUM). The contact's phase is a foreign key to the lookup table, so
a record holding an option the table lacked could not be written without it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dbs import backend_params

from crmsync.config.loader import load_config_with_lines
from crmsync.connectors import build_connectors
from crmsync.engine.check import check_config
from crmsync.engine.runner import Engine, LinkReport
from crmsync.state.store import StateStore

WITH_ENUM = [p for p in backend_params() if p.id != "sqlite"]

CONFIG = """\
state: sqlite:///{state}
systems:
  src:
    connector: sql
    url: {url}
    objects:
      lead: {{table: lead, key: id, updated_at: changed_at}}
  dst:
    connector: sql
    url: {url}
    objects:
      contact: {{table: contact, key: id, updated_at: updated_at}}
      stage: {{table: stage_ref, key: code}}
links:
  leads:
    source: src.lead
    target: dst.contact
    match: {{id: ext}}
    fields:
      - {{source: name, target: name}}
{fields}
"""
FIELDS = """\
      - {source: stage, target: phase, values: {new: N, won: W}, unmapped: keep,
         options: {object: stage, key: code, label: name}}
"""


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


class Sys:
    def __init__(self, tmp: Path, url: str, backend: str, fields: str = FIELDS) -> None:
        self.backend = backend
        self.db = sa.create_engine(url)
        md = sa.MetaData()
        self.lead = sa.Table(
            "lead", md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("name", sa.String(50), nullable=False),
            sa.Column("stage", sa.Enum("new", "won", "lost", name="lead_stage")),
            sa.Column("note", sa.String(20)),
            sa.Column("changed_at", sa.DateTime),
        )
        self.stage = sa.Table(
            "stage_ref", md,
            sa.Column("code", sa.String(10), primary_key=True),
            sa.Column("name", sa.String(40)),
        )
        self.contact = sa.Table(
            "contact", md,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("ext", sa.Integer, unique=True),
            sa.Column("name", sa.String(50)),
            sa.Column("phase", sa.String(10), sa.ForeignKey("stage_ref.code")),
            sa.Column("updated_at", sa.DateTime),
        )
        md.create_all(self.db)
        self.state_path = tmp / "state.db"
        self.config = tmp / "crmsync.yaml"
        self.config.write_text(CONFIG.format(state=self.state_path, url=url, fields=fields))

    def add(self, lid: int, stage: str | None) -> None:
        with self.db.begin() as c:
            c.execute(self.lead.insert().values(
                id=lid, name=f"Lead {lid}", stage=stage, changed_at=now() + timedelta(seconds=lid)
            ))

    def add_option(self, option: str) -> None:
        with self.db.begin() as c:
            if self.backend == "postgresql":
                c.exec_driver_sql(f"ALTER TYPE lead_stage ADD VALUE '{option}'")
            else:
                c.exec_driver_sql(
                    f"ALTER TABLE lead MODIFY stage ENUM('new', 'won', 'lost', '{option}')"
                )

    def rows(self, table: sa.Table, key: str) -> dict[Any, dict[str, Any]]:
        with self.db.connect() as c:
            return {getattr(r, key): dict(r._mapping) for r in c.execute(table.select())}

    def sync(self, *, dry_run: bool = False) -> LinkReport:
        config, _ = load_config_with_lines(self.config)
        connectors = build_connectors(config)
        state = StateStore(config.state, readonly=dry_run)
        if not dry_run:
            state.migrate()
        try:
            (report,) = Engine(config, state, connectors).sync(dry_run=dry_run)
        finally:
            state.close()
            for conn in connectors.values():
                conn.close()
        assert report.status == "ok", report.error
        return report

    def check(self) -> list[tuple[str, str]]:
        config, smap = load_config_with_lines(self.config)
        connectors = build_connectors(config)
        try:
            return check_config(config, connectors, "crmsync.yaml", smap.locate)
        finally:
            for conn in connectors.values():
                conn.close()


@pytest.fixture
def sysdb(db_url: str, backend: str, tmp_path: Path) -> Iterator[Sys]:
    s = Sys(tmp_path, db_url, backend)
    yield s
    s.db.dispose()


@pytest.mark.parametrize("backend", WITH_ENUM, indirect=True)
def test_enum_options_reach_the_lookup_table_before_the_records(sysdb: Sys) -> None:
    s = sysdb
    assert s.check() == []
    s.add(1, "new")
    s.add(2, "lost")
    planned = s.sync(dry_run=True)
    assert planned.counts["options_created"] == 3
    assert s.rows(s.stage, "code") == {}  # a plan writes nothing

    r = s.sync()
    assert r.counts["options_created"] == 3 and r.counts["created"] == 2
    assert r.counts["rejected"] == 0
    # Through the values: map; `lost` has no entry and unmapped: keep writes it as is.
    assert {k: v["name"] for k, v in s.rows(s.stage, "code").items()} == {
        "N": "new", "W": "won", "lost": "lost",
    }
    assert {k: v["phase"] for k, v in s.rows(s.contact, "ext").items()} == {1: "N", 2: "lost"}

    # A new option at the source, and a record holding it: the option comes first.
    s.add_option("paused")
    s.add(3, "paused")
    with s.db.begin() as c:  # someone renamed a label in the lookup table
        c.execute(s.stage.update().where(s.stage.c.code == "W").values(name="Won!"))
    r = s.sync()
    assert r.counts["options_created"] == 1 and r.counts["options_updated"] == 1
    assert r.counts["created"] == 1 and r.counts["failed"] == 0
    assert s.rows(s.contact, "ext")[3]["phase"] == "paused"
    assert s.rows(s.stage, "code")["W"]["name"] == "won"  # the source's label

    # In step: nothing to write.
    r = s.sync()
    assert not any(k.startswith("options_") for k in r.counts if r.counts[k])


REJECTING = """\
      - {source: stage, target: phase, values: {new: N, won: W},
         options: {object: stage, key: code}}
"""


@pytest.mark.parametrize("backend", WITH_ENUM, indirect=True)
def test_an_option_the_map_rejects_is_left_out_and_counted(
    db_url: str, backend: str, tmp_path: Path
) -> None:
    s = Sys(tmp_path, db_url, backend, REJECTING)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "crmsync", "sync", "-c", str(s.config)],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert "leads: options created 2, rejected 1" in out.stdout
        assert "option 'lost' of stage not written to stage: value 'lost' has no entry" in (
            out.stderr
        )
        assert set(s.rows(s.stage, "code")) == {"N", "W"}
    finally:
        s.db.dispose()


BAD = """\
      - {source: note, target: phase, options: {object: stages, key: code}}
      - {source: stage, target: phase, direction: backward,
         options: {object: stage, key: nope, label: name}}
"""


@pytest.mark.parametrize("backend", WITH_ENUM[:1], indirect=True)
def test_check_refuses_options_it_cannot_keep_in_step(
    db_url: str, backend: str, tmp_path: Path
) -> None:
    s = Sys(tmp_path, db_url, backend, BAD)
    try:
        problems = s.check()
    finally:
        s.db.dispose()
    text = "\n".join(f"{loc}: {msg}" for loc, msg in problems)
    assert "fields[1].options: field 'note' of src.lead has no option list" in text, text
    assert (
        "fields[1].options.object: 'stages' is not an object of system 'dst' "
        "(objects: contact, stage)" in text
    ), text
    assert "fields[2].options: options flow from the source field" in text, text
    assert "fields[2].options.key: field 'nope' not found on dst.stage" in text, text
