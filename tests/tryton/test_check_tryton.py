"""`crmsync check` against a real Tryton: typed fields, refs, and list objects refused."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from trytonenv import TrytonServer

from crmsync.config.loader import load_config_with_lines
from crmsync.connectors import build_connectors
from crmsync.engine.check import check_config

CONFIG = """\
state: sqlite:///{d}/state.db
systems:
  erp:
    connector: sql
    url: sqlite:///{d}/erp.db
    objects:
      orders: {{table: orders, key: id, updated_at: updated_at}}
  crm:
    connector: tryton
    url: {url}
    database: {db}
    password: {password}
    objects:
      company: {{}}
      deal: {{}}
links:
  orders:
    source: erp.orders
    target: crm.deal
    match: {{id: reference}}
    fields:
      - {{source: total, target: amount}}
      - {{source: city, target: company.city}}
      - {{source: product, target: lines.product}}
      - {{source: city, target: company.nope}}
"""


def test_check_refuses_list_objects_and_unknown_related_fields(
    tryton: TrytonServer, tmp_path: Path
) -> None:
    eng = sa.create_engine(f"sqlite:///{tmp_path}/erp.db")
    with eng.begin() as c:
        c.exec_driver_sql(
            "CREATE TABLE orders (id TEXT PRIMARY KEY, total NUMERIC(12,2), city TEXT,"
            " product TEXT, updated_at DATETIME)"
        )
    eng.dispose()
    path = tmp_path / "crmsync.yaml"
    path.write_text(CONFIG.format(d=tmp_path, url=tryton.url, db=tryton.database,
                                  password=tryton.password))
    config, smap = load_config_with_lines(path)
    conns = build_connectors(config)
    try:
        problems = check_config(config, conns, str(path), smap.locate)
    finally:
        for c in conns.values():
            c.close()
    text = "\n".join(f"{loc}: {msg}" for loc, msg in problems)
    assert len(problems) == 2, text
    assert "links.orders.fields[2].target" in problems[0][0]
    assert "'lines.product' follows 'lines', a list of records on crm.deal" in problems[0][1]
    assert "list objects (such as product lines) are not supported yet" in problems[0][1]
    assert "links.orders.fields[3].target" in problems[1][0]
    assert "field 'company.nope' not found on crm.deal" in problems[1][1]
    assert tryton.password not in text


def test_check_names_refused_credentials_and_unknown_database(
    tryton: TrytonServer, tmp_path: Path
) -> None:
    eng = sa.create_engine(f"sqlite:///{tmp_path}/erp.db")
    with eng.begin() as c:
        c.exec_driver_sql(
            "CREATE TABLE orders (id TEXT PRIMARY KEY, total NUMERIC(12,2), city TEXT,"
            " product TEXT, updated_at DATETIME)"
        )
    eng.dispose()
    found = {}
    for label, db, password in (("password", tryton.database, "Wr0ng-Passw0rd"),
                                ("database", "crmsync_no_such_db", tryton.password)):
        path = tmp_path / f"{label}.yaml"
        path.write_text(CONFIG.format(d=tmp_path, url=tryton.url, db=db, password=password))
        config, smap = load_config_with_lines(path)
        conns = build_connectors(config)
        try:
            problems = check_config(config, conns, str(path), smap.locate)
        finally:
            for c in conns.values():
                c.close()
        text = "\n".join(f"{loc}: {msg}" for loc, msg in problems)
        assert password not in text
        found[label] = problems
    # one problem per system, at the key to fix, not one per object
    [(loc, msg)] = found["password"]
    assert loc == f"{tmp_path}/password.yaml:12 systems.crm.password", loc
    assert "Tryton refused the login of user 'admin' (check user: and password:)" in msg
    [(loc, msg)] = found["database"]
    assert loc == f"{tmp_path}/database.yaml:11 systems.crm.database", loc
    assert "Tryton has no database 'crmsync_no_such_db'" in msg


PICK_CONFIG = """\
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
links:
  deals:
    source: crm.deal
    target: erp.orders
    create: false
    fields:
      - {{source: state, target: status, values: {{opportunity: Open, won: Won}}}}
"""


def test_check_lists_tryton_selection_options_a_values_map_would_reject(
    tryton: TrytonServer, tmp_path: Path
) -> None:
    eng = sa.create_engine(f"sqlite:///{tmp_path}/erp.db")
    with eng.begin() as c:
        c.exec_driver_sql(
            "CREATE TABLE orders (id TEXT PRIMARY KEY, status TEXT, updated_at DATETIME)"
        )
    eng.dispose()
    path = tmp_path / "crmsync.yaml"
    path.write_text(PICK_CONFIG.format(d=tmp_path, url=tryton.url, db=tryton.database,
                                       password=tryton.password))
    config, smap = load_config_with_lines(path)
    conns = build_connectors(config)
    warnings: list[tuple[str, str]] = []
    try:
        problems = check_config(config, conns, str(path), smap.locate, warnings=warnings)
    finally:
        for c in conns.values():
            c.close()
    assert problems == []
    (loc, msg), = warnings
    assert loc.endswith("links.deals.fields[0].values")
    # The selection's options, from the live server: every state but the two mapped.
    assert msg.startswith("crm.deal 'state' has "), msg
    assert "option(s) with no entry in values: " in msg
    assert "'lost'" in msg and "'cancelled'" in msg
    assert "'won'" not in msg and "'opportunity'" not in msg
    assert "'lead'" not in msg  # a state of the lead object, never a deal's
    assert msg.startswith("crm.deal 'state' has 3 option(s) with no entry in values: "), msg
