"""`check` refuses an SQL object whose changes a link must capture but that has no
`updated_at`: the migration would run, then every later sync would fail on it."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from configrun import check_text, engine_of

md = sa.MetaData()
for name in ("src", "dst"):
    sa.Table(
        name, md,
        sa.Column("id", sa.String(20), primary_key=True),
        sa.Column("name", sa.String(50)),
        sa.Column("changed_at", sa.DateTime),
    )

CONFIG = """\
state: {state}
systems:
  a:
    connector: sql
    url: {url}
    objects:
      item: {{table: src, key: id{src_ts}}}
  b:
    connector: sql
    url: {url}
    objects:
      item: {{table: dst, key: id{dst_ts}}}
links:
  items:
    source: a.item
    target: b.item
    direction: {direction}
    match: {{id: id}}
    fields:
      - {{source: name, target: name}}
"""
TS = ", updated_at: changed_at"


@pytest.fixture
def url(db_url: str) -> str:
    eng = sa.create_engine(db_url)
    md.create_all(eng)
    with eng.begin() as c:
        c.execute(sa.insert(md.tables["src"]), [{"id": "S1", "name": "Acme"}])
    eng.dispose()
    return db_url


def _text(url: str, tmp_path: Path, src_ts: str, dst_ts: str, direction: str) -> str:
    return CONFIG.format(state=f"sqlite:///{tmp_path / 'state.db'}", url=url, src_ts=src_ts,
                         dst_ts=dst_ts, direction=direction)


@pytest.mark.parametrize(
    ("src_ts", "dst_ts", "direction", "where"),
    [
        ("", TS, "forward", ["c.yaml:7 systems.a.objects.item"]),
        ("", "", "forward", ["c.yaml:7 systems.a.objects.item"]),  # a forward target is not read
        (TS, "", "both", ["c.yaml:12 systems.b.objects.item"]),
        ("", "", "both", ["c.yaml:7 systems.a.objects.item", "c.yaml:12 systems.b.objects.item"]),
        (TS, TS, "both", []),
        (TS, "", "forward", []),
    ],
)
def test_a_captured_sql_object_needs_updated_at(
    url: str, tmp_path: Path, src_ts: str, dst_ts: str, direction: str, where: list[str]
) -> None:
    problems = check_text(_text(url, tmp_path, src_ts, dst_ts, direction))
    assert [loc for loc, _ in problems] == where, problems
    for _, msg in problems:
        assert "links.items captures the changes" in msg and "updated_at: COLUMN" in msg


def test_without_the_check_every_sync_after_the_migration_fails(url: str, tmp_path: Path) -> None:
    with engine_of(_text(url, tmp_path, "", TS, "forward")) as engine:
        with pytest.raises(Exception, match="no updated_at"):
            engine.sync()
