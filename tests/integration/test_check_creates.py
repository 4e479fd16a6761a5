"""`check` names target columns that every create would leave empty though they may not
be (NOT NULL without a default, mapped by nothing), on every database, and the
sync proves it right: such a create fails."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from configrun import check_text, engine_of

md = sa.MetaData()
src = sa.Table(
    "src", md,
    sa.Column("id", sa.String(20), primary_key=True),
    sa.Column("name", sa.String(50)),
    sa.Column("code", sa.String(20)),
    sa.Column("changed_at", sa.DateTime),
)
dst = sa.Table(
    "dst", md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ref", sa.String(20), nullable=False),  # written through match
    sa.Column("name", sa.String(50), nullable=False),  # mapped
    sa.Column("code", sa.String(20), nullable=False),  # needed, mapped by nothing
    sa.Column("region", sa.String(20), nullable=False),  # needed, mapped by nothing
    sa.Column("kind", sa.String(20), nullable=False, server_default="customer"),
    sa.Column("note", sa.Text, nullable=True),
    sa.Column("updated_at", sa.DateTime, nullable=False),  # stamped by crmsync
)

CONFIG = """\
state: {state}
systems:
  a:
    connector: sql
    url: {url}
    objects:
      item: {{table: src, key: id, updated_at: changed_at}}
  b:
    connector: sql
    url: {url}
    objects:
      item: {{table: dst, key: id, updated_at: updated_at}}
links:
  items:
    source: a.item
    target: b.item
    match: {{id: ref}}
{create}    fields:
      - {{source: name, target: name}}
{extra}"""


def _check(url: str, tmp_path: Path, create: str = "", extra: str = "") -> list[tuple[str, str]]:
    text = CONFIG.format(state=f"sqlite:///{tmp_path / 'state.db'}", url=url, create=create,
                         extra=extra)
    return check_text(text)


@pytest.fixture
def url(db_url: str) -> str:
    eng = sa.create_engine(db_url)
    md.create_all(eng)
    with eng.begin() as c:
        c.execute(sa.insert(src), [{"id": "S1", "name": "Acme", "code": "A1"}])
    eng.dispose()
    return db_url


def test_unmapped_not_null_columns_are_named_one_problem_each(url: str, tmp_path: Path) -> None:
    problems = _check(url, tmp_path)
    assert [loc for loc, _ in problems] == ["c.yaml:14 links.items.create"] * 2, problems
    text = "\n".join(msg for _, msg in problems)
    assert "b.item column 'code' is NOT NULL without a default" in text
    assert "b.item column 'region' is NOT NULL without a default" in text
    # ref (match), name (mapped), kind (default), note (nullable), updated_at (stamped),
    # id (generated) are fine
    for fine in ("'ref'", "'name'", "'kind'", "'note'", "'updated_at'", "'id'"):
        assert fine not in text


def test_the_problem_points_at_create_and_goes_with_a_mapping(url: str, tmp_path: Path) -> None:
    problems = _check(url, tmp_path, create="    create: true\n")
    assert [loc for loc, _ in problems] == ["c.yaml:18 links.items.create"] * 2, problems
    # a backward-only mapping writes nothing into b: still a problem
    back = "      - {source: code, target: code, direction: backward}\n"
    problems = _check(url, tmp_path, create="    create: true\n", extra=back)
    assert sum("'code'" in msg for _, msg in problems) == 1, problems
    mapped = ("      - {source: code, target: code}\n"
              "      - {source: code, target: region, default: north}\n")
    assert _check(url, tmp_path, extra=mapped) == []
    assert _check(url, tmp_path, create="    create: false\n") == []


def test_sync_proves_it_every_create_fails(url: str, tmp_path: Path) -> None:
    text = CONFIG.format(state=f"sqlite:///{tmp_path / 'state.db'}", url=url, create="",
                         extra="")
    with engine_of(text) as engine:
        (report,) = engine.sync()
    assert report.summary()["failed"] >= 1 and report.summary()["created"] == 0
