"""Option lists from a real Tryton: a deal's state selection (its options and labels,
only the deal's own states) kept in step with a SQL lookup table (issue 13)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from trytonenv import TrytonServer

from crmsync.config.loader import load_config_with_lines
from crmsync.connectors import build_connectors
from crmsync.engine.check import check_config
from crmsync.engine.runner import Engine
from crmsync.state.store import StateStore

CONFIG = """\
state: sqlite:///{d}/state.db
systems:
  crm:
    connector: tryton
    url: {url}
    database: {db}
    password: {password}
    objects:
      deal: {{}}
  erp:
    connector: sql
    url: sqlite:///{d}/erp.db
    objects:
      orders: {{table: orders, key: id, updated_at: updated_at}}
      stage: {{table: stage_ref, key: code}}
links:
  deals:
    source: crm.deal
    target: erp.orders
    create: false
    fields:
      - {{source: state, target: status, unmapped: keep, values: {{won: WON}},
          options: {{object: stage, key: code, label: name}}}}
"""


def test_a_selection_s_options_and_labels_reach_a_lookup_table(
    tryton: TrytonServer, tmp_path: Path
) -> None:
    erp = sa.create_engine(f"sqlite:///{tmp_path}/erp.db")
    with erp.begin() as c:
        c.exec_driver_sql(
            "CREATE TABLE orders (id TEXT PRIMARY KEY, status TEXT, updated_at DATETIME)"
        )
        c.exec_driver_sql("CREATE TABLE stage_ref (code TEXT PRIMARY KEY, name TEXT)")
    path = tmp_path / "crmsync.yaml"
    path.write_text(CONFIG.format(d=tmp_path, url=tryton.url, db=tryton.database,
                                  password=tryton.password))
    config, smap = load_config_with_lines(path)
    conns = build_connectors(config)
    state = StateStore(config.state)
    try:
        assert check_config(config, conns, str(path), smap.locate) == []
        state.migrate()
        (r,) = Engine(config, state, conns).sync()
    finally:
        state.close()
        for c in conns.values():
            c.close()
    assert r.status == "ok", r.error
    with erp.connect() as c:
        rows = dict(c.exec_driver_sql("SELECT code, name FROM stage_ref").fetchall())
    erp.dispose()
    # The deal's states (not `lead`: that is the lead object's), through values:
    # won -> WON, the others kept; each with Tryton's label.
    assert set(rows) == {"opportunity", "converted", "WON", "lost", "cancelled"}
    assert rows["WON"] == "Won" and rows["opportunity"] == "Opportunity"
    assert r.counts["options_created"] == 5
