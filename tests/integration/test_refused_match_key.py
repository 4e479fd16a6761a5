"""A create never goes without its match key: a refused match value fails the record.

Other refused fields are left out and the row is written (a rejected field), but the
match key is what lets a create retried after a crash find its row instead of making a
second one, so a create the target refuses it for is `failed`, not made without it.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from configrun import engine_of

md = sa.MetaData()
src = sa.Table(
    "src", md,
    sa.Column("id", sa.String(20), primary_key=True),
    sa.Column("code", sa.String(20)),
    sa.Column("note", sa.String(20)),
    sa.Column("changed_at", sa.DateTime),
)
dst = sa.Table(
    "dst", md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ref", sa.String(20)),
    sa.Column("note", sa.String(20)),
    sa.Column("updated_at", sa.DateTime),
    # Table-level: MariaDB refuses a named CHECK on the column itself.
    sa.CheckConstraint("length(ref) <= 5", name="ref_len"),
    sa.CheckConstraint("length(note) <= 5", name="note_len"),
)

CONFIG = """\
state: sqlite:///{state}
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
    match: {{code: ref}}
    fields:
      - {{source: note, target: note}}
"""


def test_a_refused_match_key_fails_the_create_other_fields_do_not(
    db_url: str, tmp_path: Path
) -> None:
    eng = sa.create_engine(db_url)
    md.create_all(eng)
    with eng.begin() as c:
        c.execute(sa.insert(src), [
            {"id": "S1", "code": "K1", "note": "fine"},
            {"id": "S2", "code": "K2", "note": "far too long"},  # the note is refused
            {"id": "S3", "code": "KEY-TOO-LONG", "note": "fine"},  # the match key is refused
        ])
    with engine_of(CONFIG.format(state=tmp_path / "s.db", url=db_url)) as engine:
        (r,) = engine.sync()
        logged = {o["source_ref"]: o for o in engine.state.outcomes(link="items", limit=50)}
    with eng.connect() as c:
        rows = {row.ref: row.note for row in c.execute(sa.select(dst.c.ref, dst.c.note))}
    eng.dispose()
    assert rows == {"K1": "fine", "K2": None}  # S3 was not made without its key
    assert r.counts["created"] == 2 and r.counts["failed"] == 1, r.counts
    assert logged["a.item:S2"]["action"] == "created"
    assert logged["a.item:S2"]["status"] == "rejected"
    assert logged["a.item:S3"]["action"] == "failed"
