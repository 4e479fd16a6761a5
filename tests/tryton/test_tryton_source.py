"""Tryton as the source: incremental capture of edits, child edits, archives and hard deletes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from trytonenv import TrytonServer

from crmsync.config.secrets import clear_secrets
from crmsync.service.context import ServiceContext

CONFIG = """\
state: sqlite:///{d}/state.db
systems:
  crm:
    connector: tryton
    url: {url}
    database: {db}
    password: ${{TRYTON_PASSWORD}}
    objects:
      company: {{lookback: 2}}
  mart:
    connector: sql
    url: sqlite:///{d}/mart.db
    objects:
      account: {{table: account, key: id, updated_at: updated_at}}
links:
  accounts:
    source: crm.company
    target: mart.account
    match: {{id: crm_id}}
    on_delete: delete
    fields:
      - {{source: name, target: name}}
      - {{source: email, target: email}}
      - {{source: city, target: city}}
"""


class Env:
    def __init__(self, ctx: ServiceContext, mart: sa.Engine, tryton: TrytonServer) -> None:
        self.ctx = ctx
        self.mart = mart
        self.rpc = tryton.rpc()
        self.tryton = tryton

    def sync(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for rep in self.ctx.engine.sync():
            assert rep.status == "ok", rep.error
            for k, v in rep.counts.items():
                counts[k] = counts.get(k, 0) + v
        return counts

    def rows(self) -> dict[str, tuple[Any, ...]]:
        with self.mart.connect() as c:
            return {
                str(r[0]): tuple(r[1:])
                for r in c.exec_driver_sql("SELECT crm_id, name, email, city FROM account")
            }

    def call(self, method: str, *args: Any) -> Any:
        return self.rpc.call(method, *args)


@pytest.fixture
def env(tryton: TrytonServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    mart = sa.create_engine(f"sqlite:///{tmp_path}/mart.db")
    with mart.begin() as c:
        c.exec_driver_sql(
            "CREATE TABLE account (id INTEGER PRIMARY KEY AUTOINCREMENT, crm_id TEXT UNIQUE,"
            " name TEXT, email TEXT, city TEXT, updated_at DATETIME)"
        )
    monkeypatch.setenv("TRYTON_PASSWORD", tryton.password)
    cfg = tmp_path / "crmsync.yaml"
    cfg.write_text(CONFIG.format(d=tmp_path, url=tryton.url, db=tryton.database))
    ctx = ServiceContext.open(cfg)
    try:
        yield Env(ctx, mart, tryton)
    finally:
        ctx.close()
        mart.dispose()
        clear_secrets()


def test_edits_child_edits_archives_and_hard_deletes_flow_out(env: Env) -> None:
    cat = env.tryton.category_company_id
    ids = env.call("model.party.party.create", [
        {"name": f"Co {i}", "categories": [["add", [cat]]],
         "contact_mechanisms": [["create", [{"type": "email", "value": f"co{i}@x.test"}]]],
         "addresses": [["create", [{"city": f"City {i}"}]]]}
        for i in range(5)
    ])
    # A party without the category is not a company.
    env.call("model.party.party.create", [{"name": "Someone"}])
    env.sync()
    assert env.rows() == {
        str(p): (f"Co {i}", f"co{i}@x.test", f"City {i}") for i, p in enumerate(ids)
    }
    time.sleep(0.05)
    a, b, c, d, _ = ids
    env.call("model.party.party.write", [a], {"name": "Co A"})
    [cm] = env.call("model.party.contact_mechanism.search", [["party", "=", b]], 0, None, None)
    env.call("model.party.contact_mechanism.write", [cm], {"value": "b@new.test"})
    [addr] = env.call("model.party.address.search", [["party", "=", c]], 0, None, None)
    env.call("model.party.address.write", [addr], {"city": "Moved"})
    env.call("model.party.party.write", [d], {"active": False})
    counts = env.sync()
    rows = env.rows()
    assert rows[str(a)][0] == "Co A"
    assert rows[str(b)][1] == "b@new.test"
    assert rows[str(c)][2] == "Moved"
    assert str(d) not in rows  # archived in the CRM: deleted, as the link says
    assert counts.get("deleted") == 1, counts
    # A hard delete leaves only a log entry without the id: still found.
    env.call("model.party.party.delete", [a])
    counts = env.sync()
    assert str(a) not in env.rows()
    assert counts.get("deleted") == 1, counts
    # Nothing new: a quiet pass writes nothing.
    counts = env.sync()
    assert counts.get("updated", 0) == 0 and counts.get("deleted", 0) == 0, counts
