"""First pairing through the engine on real databases: an empty value (NULL or '')
never erases a filled one, under every conflict policy, in every field direction."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dbs import fresh_database

from crmsync.config.loader import load_config
from crmsync.connectors import build_connectors
from crmsync.engine.runner import Engine
from crmsync.state.store import StateStore

CONFIG = """\
state: sqlite:///{d}/state.db
systems:
  erp:
    connector: sql
    url: {erp}
    objects:
      customer: {{table: customers, key: k, updated_at: changed_at, lookback: 0}}
  crm:
    connector: sql
    url: {crm}
    objects:
      company: {{table: company, key: id, updated_at: updated_at, lookback: 0}}
links:
  customers:
    source: erp.customer
    target: crm.company
    direction: both
    match: {{k: k}}
    create: false
    fields:
      - {{source: fwd, target: fwd, direction: forward}}
      - {{source: bwd, target: bwd, direction: backward}}
      - {{source: two, target: two, direction: both}}
    conflict: {policy}
"""

FIELDS = {"fwd": "forward", "bwd": "backward", "two": "both"}
OLD = datetime(2024, 1, 1, 12, 0, 0)
NEW = OLD + timedelta(hours=1)

# key -> (source value, target value, source stamp, target stamp); the same values
# in all three fields, so each row checks every direction at once.
ROWS: dict[str, tuple[Any, Any, datetime, datetime]] = {
    "se-null": (None, "T", OLD, NEW),
    "se-blank": ("", "T", NEW, OLD),
    "te-null": ("S", None, OLD, NEW),
    "te-blank": ("S", "", NEW, OLD),
    "diff-src-newer": ("S", "T", NEW, OLD),
    "diff-tgt-newer": ("S", "T", OLD, NEW),
    "equal": ("X", "X", NEW, OLD),
    "empty-mixed": (None, "", NEW, OLD),
}


def expected(key: str, direction: str, policy: str) -> tuple[Any, Any]:
    s, t, s_at, t_at = ROWS[key]
    if key.startswith("se"):
        return (s, t) if direction == "forward" else (t, t)
    if key.startswith("te"):
        return (s, t) if direction == "backward" else (s, s)
    if key.startswith("diff"):
        if direction == "forward":
            return s, s
        if direction == "backward":
            return t, t
        source_wins = policy == "source" or (policy == "newest" and s_at > t_at)
        return (s, s) if source_wins else (t, t)
    return s, t


def _tables(erp: sa.Engine, crm: sa.Engine) -> tuple[sa.Table, sa.Table]:
    md = sa.MetaData()
    cust = sa.Table(
        "customers", md,
        sa.Column("k", sa.String(20), primary_key=True),
        *(sa.Column(f, sa.String(40)) for f in FIELDS),
        sa.Column("changed_at", sa.DateTime),
    )
    comp = sa.Table(
        "company", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("k", sa.String(20), unique=True),
        *(sa.Column(f, sa.String(40)) for f in FIELDS),
        sa.Column("updated_at", sa.DateTime),
    )
    md.create_all(erp, tables=[cust])
    md.create_all(crm, tables=[comp])
    with erp.begin() as c:
        c.execute(cust.insert(), [
            {"k": k, **dict.fromkeys(FIELDS, s), "changed_at": sa_} for k, (s, _, sa_, _) in
            ROWS.items()
        ])
    with crm.begin() as c:
        c.execute(comp.insert(), [
            {"k": k, **dict.fromkeys(FIELDS, t), "updated_at": ta} for k, (_, t, _, ta) in
            ROWS.items()
        ])
    return cust, comp


def _rows(eng: sa.Engine, table: sa.Table) -> dict[str, tuple[Any, ...]]:
    with eng.connect() as c:
        return {r.k: tuple(r._mapping[f] for f in FIELDS) for r in c.execute(table.select())}


def _sync(cfg: Path) -> dict[str, int]:
    config = load_config(cfg)
    state = StateStore(config.state)
    state.migrate()
    conns = build_connectors(config, state)
    try:
        (r,) = Engine(config, state, conns).sync()
        assert r.status == "ok", r.error
        return dict(r.counts)
    finally:
        state.close()
        for c in conns.values():
            c.close()


@pytest.mark.parametrize("policy", ["source", "target", "newest"])
def test_first_pairing_never_erases(
    db_url: str, backend: str, tmp_path: Path, policy: str
) -> None:
    with fresh_database(backend, tmp_path, "crm") as crm_url:
        erp, crm = sa.create_engine(db_url), sa.create_engine(crm_url)
        try:
            cust, comp = _tables(erp, crm)
            cfg = tmp_path / "crmsync.yaml"
            cfg.write_text(CONFIG.format(d=tmp_path, erp=db_url, crm=crm_url, policy=policy))
            counts = _sync(cfg)
            assert counts.get("failed", 0) == 0
            src, tgt = _rows(erp, cust), _rows(crm, comp)
            for key in ROWS:
                for i, (field, direction) in enumerate(FIELDS.items()):
                    got = (src[key][i], tgt[key][i])
                    assert got == expected(key, direction, policy), (key, field)
                    # no filled value became empty on either side
                    s0, t0 = ROWS[key][0], ROWS[key][1]
                    for before, after in ((s0, got[0]), (t0, got[1])):
                        assert not (before not in (None, "") and after in (None, "")), (key, field)
            # the log says the same: no field was written empty at first pairing
            st = StateStore(f"sqlite:///{tmp_path}/state.db")
            try:
                log = st.outcomes(limit=1000)
            finally:
                st.close()
            assert {r["source_ref"] for r in log} >= {
                f"erp.customer:{k}" for k in ROWS if k not in ("equal", "empty-mixed")
            }
            for r in log:
                for f in r["fields"]:
                    if f["status"] in ("updated", "conflict"):
                        assert f["new"] not in (None, ""), (r["source_ref"], f)
            # everything agreed is now the base: a second run writes nothing
            snap = _rows(erp, cust), _rows(crm, comp)
            again = _sync(cfg)
            assert again.get("updated", 0) == again.get("conflicts", 0) == 0
            assert (_rows(erp, cust), _rows(crm, comp)) == snap
        finally:
            erp.dispose()
            crm.dispose()
