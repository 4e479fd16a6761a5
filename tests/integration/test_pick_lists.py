"""Pick lists mapped through `values:` on real databases (issue 13, "Pick lists").

A value with no entry in the map is rejected with the reason, per field, through
the engine's per-field rejection path: the log, the record's timeline and the run
counts say so and the rest of the record is written. `unmapped: keep` and
`unmapped: {value: X}` write what they say, both ways. `crmsync check` lists the
values a column holds (or an ENUM's options) that the map would reject.
"""

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

import crmsync.engine.check as check_module
from crmsync.config.loader import load_config_with_lines
from crmsync.connectors import build_connectors
from crmsync.engine.check import check_config
from crmsync.engine.runner import Engine, LinkReport
from crmsync.state.store import StateStore

STAGES = ("new", "won", "lost")
WITH_ENUM = [p for p in backend_params() if p.id != "sqlite"]  # SQLite has no ENUM


def tables(md: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    lead = sa.Table(
        "lead",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(50), nullable=False),
        sa.Column("tier", sa.String(20)),
        # An ENUM on PostgreSQL and MariaDB; SQLite has none (a VARCHAR there).
        sa.Column("stage", sa.Enum(*STAGES, name="lead_stage")),
        sa.Column("rating", sa.String(5)),
        sa.Column("changed_at", sa.DateTime),
    )
    contact = sa.Table(
        "contact",
        md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ext", sa.Integer, unique=True),
        sa.Column("name", sa.String(50)),
        sa.Column("level", sa.String(20)),
        sa.Column("phase", sa.String(20)),
        sa.Column("grade", sa.String(5)),
        sa.Column("score", sa.Integer),
        sa.Column("updated_at", sa.DateTime),
    )
    return lead, contact


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
links:
  leads:
    source: src.lead
    target: dst.contact
    match: {{id: ext}}
    fields:
      - {{source: name, target: name}}
{fields}
"""
# The default: unmapped values are rejected.
REJECT = """\
      - {source: tier, target: level, values: {Gold: G, Silver: S}}
      - {source: stage, target: phase, values: {new: New, won: Won}}
"""
# Each other mode, both ways where the field flows both ways.
WRITE = """\
      - {source: tier, target: level, direction: both, values: {Gold: G, Silver: S},
         unmapped: {value: Other}}
      - {source: stage, target: phase, values: {new: New, won: Won}, unmapped: keep}
      - {source: rating, target: grade, direction: both, values: {A: '1', B: '2'},
         unmapped: keep}
"""
BRONZE_WHY = (
    "value 'Bronze' has no entry in values: (Gold, Silver); "
    "set unmapped: keep or {value: ...} to write it"
)


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)


class Sys:
    """Both systems' tables in one database, a state database and a config file."""

    def __init__(self, tmp: Path, url: str, backend: str, fields: str) -> None:
        self.tmp, self.url, self.backend = tmp, url, backend
        self.db = sa.create_engine(url)
        md = sa.MetaData()
        self.lead, self.contact = tables(md)
        md.create_all(self.db)
        self.state_path = tmp / "state.db"
        self.config = tmp / "crmsync.yaml"
        self.config.write_text(CONFIG.format(state=self.state_path, url=url, fields=fields))

    def seed(self, rows: list[tuple[int, str | None, str | None, str | None]]) -> None:
        stamp = now() - timedelta(days=1)
        with self.db.begin() as c:
            c.execute(
                self.lead.insert(),
                [
                    {"id": i, "name": f"Lead {i}", "tier": tier, "stage": stage,
                     "rating": rating, "changed_at": stamp}
                    for i, tier, stage, rating in rows
                ],
            )

    def edit(self, lid: int, **values: Any) -> None:
        with self.db.begin() as c:
            c.execute(
                self.lead.update().where(self.lead.c.id == lid)
                .values(**values, changed_at=now() + timedelta(seconds=5))
            )

    def edit_target(self, ext: int, **values: Any) -> None:
        with self.db.begin() as c:
            c.execute(
                self.contact.update().where(self.contact.c.ext == ext)
                .values(**values, updated_at=now() + timedelta(seconds=5))
            )

    def source(self) -> dict[int, dict[str, Any]]:
        with self.db.connect() as c:
            return {r.id: dict(r._mapping) for r in c.execute(self.lead.select())}

    def target(self) -> dict[int, dict[str, Any]]:
        with self.db.connect() as c:
            return {r.ext: dict(r._mapping) for r in c.execute(self.contact.select())}

    def sync(self) -> LinkReport:
        config, _ = load_config_with_lines(self.config)
        connectors = build_connectors(config)
        state = StateStore(config.state)
        state.migrate()
        try:
            (report,) = Engine(config, state, connectors).sync()
        finally:
            state.close()
            for conn in connectors.values():
                conn.close()
        assert report.status == "ok", report.error
        return report

    def check(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        config, smap = load_config_with_lines(self.config)
        connectors = build_connectors(config)
        warnings: list[tuple[str, str]] = []
        try:
            problems = check_config(
                config, connectors, "crmsync.yaml", smap.locate, warnings=warnings
            )
        finally:
            for conn in connectors.values():
                conn.close()
        return problems, warnings

    def state(self) -> StateStore:
        return StateStore(f"sqlite:///{self.state_path}")

    def log(self, **kw: Any) -> list[dict[str, Any]]:
        st = self.state()
        try:
            return st.outcomes(limit=10_000, **kw)
        finally:
            st.close()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "crmsync", *args, "-c", str(self.config)],
            capture_output=True, text=True, timeout=60, cwd=self.tmp,
        )

    def close(self) -> None:
        self.db.dispose()


@pytest.fixture
def rejecting(db_url: str, backend: str, tmp_path: Path) -> Iterator[Sys]:
    s = Sys(tmp_path, db_url, backend, REJECT)
    yield s
    s.close()


@pytest.fixture
def writing(db_url: str, backend: str, tmp_path: Path) -> Iterator[Sys]:
    s = Sys(tmp_path, db_url, backend, WRITE)
    yield s
    s.close()


def _field(outcome: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in outcome["fields"] if f["field"] == name)


def test_an_unmapped_value_rejects_its_field_and_the_rest_is_written(rejecting: Sys) -> None:
    s = rejecting
    s.seed([(1, "Gold", "new", None), (2, "Bronze", "won", None), (3, None, None, None),
            (4, "Silver", "won", None)])
    r = s.sync()
    assert r.counts["created"] == 4
    assert r.counts["rejected"] == 1
    tgt = s.target()
    assert tgt[1]["level"] == "G" and tgt[1]["phase"] == "New"
    assert tgt[2]["level"] is None  # rejected, not written through as 'Bronze'
    assert tgt[2]["name"] == "Lead 2" and tgt[2]["phase"] == "Won"  # the rest is written
    assert tgt[3]["level"] is None and tgt[3]["phase"] is None  # empty is not unmapped
    assert tgt[4]["level"] == "S"
    (o,) = s.log(record="src.lead:2")
    assert o["action"] == "created" and o["status"] == "rejected"
    f = _field(o, "level")
    assert f["status"] == "rejected" and f["reason"] == BRONZE_WHY
    (o,) = s.log(status="rejected")  # the count is findable in the log
    assert o["source_ref"] == "src.lead:2"
    out = s.cli("log", "--record", "src.lead:2", "--json")
    assert out.returncode == 0, out.stderr
    assert BRONZE_WHY in out.stdout
    out = s.cli("log", "--status", "rejected", "--json")
    assert out.returncode == 0, out.stderr
    assert "src.lead:2" in out.stdout and BRONZE_WHY in out.stdout

    # Incremental: a new option at the source rejects that field only.
    s.edit(1, tier="Platinum", name="Renamed 1")
    r = s.sync()
    assert r.counts["updated"] == 1 and r.counts["rejected"] == 1
    tgt = s.target()
    assert tgt[1]["name"] == "Renamed 1" and tgt[1]["level"] == "G"  # kept
    o = s.log(record="src.lead:1")[0]
    assert o["action"] == "updated" and o["status"] == "rejected"
    assert _field(o, "name")["status"] == "updated"
    assert "value 'Platinum' has no entry in values:" in _field(o, "level")["reason"]
    st = s.state()
    try:
        entry = st.activities(f"dst.contact:{tgt[1]['id']}")[0]
    finally:
        st.close()
    assert "Fields not updated: level: " in entry["text"] and "'Platinum'" in entry["text"]
    # Mapped again: written, the rejection is over.
    s.edit(1, tier="Silver")
    r = s.sync()
    assert r.counts["updated"] == 1 and r.counts["rejected"] == 0
    assert s.target()[1]["level"] == "S"


def test_unmapped_keep_and_value_write_what_they_say_both_ways(writing: Sys) -> None:
    s = writing
    s.seed([(1, "Gold", "new", "A"), (2, "Bronze", "lost", "C"), (3, None, None, None)])
    r = s.sync()
    assert r.counts["created"] == 3 and r.counts["rejected"] == 0
    tgt = s.target()
    assert (tgt[1]["level"], tgt[1]["phase"], tgt[1]["grade"]) == ("G", "New", "1")
    # {value: Other} writes Other; keep writes the value as it is.
    assert (tgt[2]["level"], tgt[2]["phase"], tgt[2]["grade"]) == ("Other", "lost", "C")
    assert (tgt[3]["level"], tgt[3]["phase"], tgt[3]["grade"]) == (None, None, None)

    # Backward, through the inverted map: the same modes.
    s.edit_target(1, level="Diamond", grade="Z")
    s.edit_target(3, level="S", grade="2")
    r = s.sync()
    assert r.counts["rejected"] == 0, s.log(status="rejected")
    src = s.source()
    assert src[1]["tier"] == "Other" and src[1]["rating"] == "Z"
    assert src[3]["tier"] == "Silver" and src[3]["rating"] == "B"


def test_a_target_value_none_of_the_targets_is_rejected_on_its_way_back(
    db_url: str, backend: str, tmp_path: Path
) -> None:
    s = Sys(tmp_path, db_url, backend, BOTH_WAYS)
    try:
        s.seed([(1, "Gold", None, None), (2, "Silver", None, None)])
        s.sync()
        s.edit_target(1, level="Diamond", name="Renamed")
        r = s.sync()
        assert r.counts["rejected"] == 1
        assert s.source()[1]["tier"] == "Gold"  # not written back
        (o,) = s.log(status="rejected")
        f = _field(o, "tier")
        assert f["status"] == "rejected" and f["side"] == "source"
        assert f["reason"] == (
            "value 'Diamond' is none of the targets in values: (G, S); "
            "set unmapped: keep or {value: ...} to write it"
        )
    finally:
        s.close()


BAD_REPLACEMENT = """\
      - {source: tier, target: score, values: {Gold: 1}, unmapped: {value: many}}
"""


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_check_refuses_an_unmapped_value_the_target_cannot_take(
    db_url: str, backend: str, tmp_path: Path
) -> None:
    s = Sys(tmp_path, db_url, backend, BAD_REPLACEMENT)
    try:
        problems, _ = s.check()
    finally:
        s.close()
    assert problems == [(
        f"{s.config}:20 links.leads.fields[1].unmapped.value",
        "expected a number, got 'many' (field 'score' is integer)",
    )]


def _warnings_for(warnings: list[tuple[str, str]], key: str) -> list[str]:
    return [msg for loc, msg in warnings if loc.endswith(key)]


def test_check_lists_source_values_the_map_would_reject(rejecting: Sys) -> None:
    s = rejecting
    s.seed([(1, "Gold", "new", None), (2, "Bronze", "won", None), (3, "Copper", None, None),
            (4, None, "lost", None)])
    problems, warnings = s.check()
    assert problems == []
    (tier,) = _warnings_for(warnings, "links.leads.fields[1].values")
    assert tier.startswith(
        "src.lead 'tier' holds 2 value(s) with no entry in values: 'Bronze', 'Copper'; "
        "a record holding one syncs without this field (unmapped: reject)"
    ), tier
    (stage,) = _warnings_for(warnings, "links.leads.fields[2].values")
    if s.backend == "sqlite":
        # No ENUM: the values the column holds.
        assert stage.startswith("src.lead 'stage' holds 1 value(s) with no entry in values: 'lost'")
    else:
        # An ENUM's options, whether a row holds them or not.
        assert stage.startswith("src.lead 'stage' has 1 option(s) with no entry in values: 'lost'")
    assert warnings[0][0].endswith("crmsync.yaml:20 links.leads.fields[1].values")


@pytest.mark.parametrize("backend", WITH_ENUM, indirect=True)
def test_check_warns_for_postgres_and_mariadb_enum_options_no_row_holds(
    rejecting: Sys,
) -> None:
    rejecting.seed([(1, "Gold", "new", None)])
    _, warnings = rejecting.check()
    (stage,) = _warnings_for(warnings, "links.leads.fields[2].values")
    assert "'lost'" in stage and "'won'" not in stage
    assert _warnings_for(warnings, "links.leads.fields[1].values") == []


def test_check_has_nothing_to_warn_about_when_unmapped_values_are_written(
    writing: Sys,
) -> None:
    # keep and {value: X} write unmapped values: they are what the user asked for.
    writing.seed([(1, "Bronze", "lost", "C")])
    problems, warnings = writing.check()
    assert problems == [] and warnings == []


BOTH_WAYS = """\
      - {source: tier, target: level, direction: both, values: {Gold: G, Silver: S}}
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)
def test_check_lists_target_values_for_a_map_used_backward(
    db_url: str, backend: str, tmp_path: Path
) -> None:
    s = Sys(tmp_path, db_url, backend, BOTH_WAYS)
    try:
        s.seed([(1, "Gold", None, None), (2, "Bronze", None, None)])
        with s.db.begin() as c:
            c.execute(s.contact.insert(), [{"ext": 7, "name": "x", "level": "G"},
                                            {"ext": 8, "name": "y", "level": "Diamond"}])
        _, warnings = s.check()
    finally:
        s.close()
    tier, level = _warnings_for(warnings, "links.leads.fields[1].values")
    assert tier.startswith("src.lead 'tier' holds 1 value(s) with no entry in values: 'Bronze';")
    assert level.startswith(
        "dst.contact 'level' holds 1 value(s) none of the targets in values: 'Diamond';"
    )


def test_check_reads_a_bounded_number_of_values_and_says_so(
    rejecting: Sys, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = rejecting
    s.seed([(i, f"T{i:02d}", "new", None) for i in range(1, 8)])
    monkeypatch.setattr(check_module, "_DISTINCT", 5)
    monkeypatch.setattr(check_module, "_SHOWN", 3)
    _, warnings = s.check()
    (tier,) = _warnings_for(warnings, "links.leads.fields[1].values")
    assert "holds 5 value(s) with no entry in values: 'T01', 'T02', 'T03' and 2 more;" in tier
    assert tier.endswith("(only the first 5 different values were read)")


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_check_cli_prints_warnings_and_exits_0(rejecting: Sys) -> None:
    rejecting.seed([(1, "Bronze", "new", None)])
    out = rejecting.cli("check")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "links.leads.fields[1].values: warning: src.lead 'tier' holds 1 value(s)" in out.stderr
    assert "1 warning(s)" in out.stderr and "Traceback" not in out.stderr
