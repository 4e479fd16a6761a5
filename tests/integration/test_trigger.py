"""Event triggers: a contract reaches the CRM once, when it becomes signed, never before."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from crmsync.config.loader import load_config
from crmsync.connectors import build_connectors
from crmsync.engine.runner import Engine
from crmsync.errors import ConfigError
from crmsync.state.store import StateStore, utcnow

CONFIG = """\
state: sqlite:///{d}/state.db
systems:
  esign:
    connector: sql
    url: sqlite:///{d}/esign.db
    objects:
      document: {{table: document, key: id, updated_at: updated_at, lookback: 0}}
  crm:
    connector: sql
    url: sqlite:///{d}/crm.db
    objects:
      deal: {{table: deal, key: id, updated_at: updated_at}}
links:
  contracts:
    source: esign.document
    target: crm.deal
    match: {{id: ref}}
    trigger:
      when: {when}
    fields:
      - {{source: amount, target: amount}}
      - {{source: status, target: status}}
"""


class Setup:
    def __init__(self, d: Path, when: str = "{field: status, op: changed_to, value: signed}"):
        self.d = d
        self.esign = sa.create_engine(f"sqlite:///{d}/esign.db")
        self.crm = sa.create_engine(f"sqlite:///{d}/crm.db")
        with self.esign.begin() as c:
            c.exec_driver_sql(
                "CREATE TABLE document (id TEXT PRIMARY KEY, amount NUMERIC(12,2), status TEXT,"
                " score INTEGER, approved BOOLEAN, updated_at DATETIME)"
            )
        with self.crm.begin() as c:
            c.exec_driver_sql(
                "CREATE TABLE deal (id INTEGER PRIMARY KEY AUTOINCREMENT, ref TEXT,"
                " amount NUMERIC(12,2), status TEXT, updated_at DATETIME)"
            )
        (d / "crmsync.yaml").write_text(CONFIG.format(d=d, when=when))

    def doc(self, id_: str, **values: object) -> None:
        values["updated_at"] = utcnow().strftime("%Y-%m-%d %H:%M:%S.%f")
        with self.esign.begin() as c:
            cols = ", ".join(values)
            marks = ", ".join(f":{k}" for k in values)
            sets = ", ".join(f"{k} = excluded.{k}" for k in values)
            c.execute(
                sa.text(
                    f"INSERT INTO document (id, {cols}) VALUES (:id, {marks})"
                    f" ON CONFLICT (id) DO UPDATE SET {sets}"
                ),
                {"id": id_, **values},
            )

    def deals(self) -> dict[str, tuple[object, ...]]:
        with self.crm.connect() as c:
            return {r[0]: tuple(r[1:]) for r in c.exec_driver_sql(
                "SELECT ref, amount, status FROM deal")}

    def deal_writes(self) -> list[object]:
        with self.crm.connect() as c:
            return [r[0] for r in c.exec_driver_sql("SELECT updated_at FROM deal ORDER BY id")]

    def sync(self) -> dict[str, int]:
        config = load_config(self.d / "crmsync.yaml")
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


def test_nothing_before_signing_once_after(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    s.doc("D-1", amount="100.00", status="draft")
    s.doc("D-2", amount="50.00", status="sent")
    s.sync()
    assert s.deals() == {}  # nothing reaches the CRM before signing
    s.doc("D-1", amount="120.00", status="sent")
    s.sync()
    assert s.deals() == {}
    s.doc("D-1", amount="125.00", status="signed")
    s.sync()
    assert set(s.deals()) == {"D-1"}
    assert s.deals()["D-1"][1] == "signed"
    assert float(s.deals()["D-1"][0]) == 125.0  # the final values
    writes = s.deal_writes()
    # re-reading the same signed document fires nothing
    s.doc("D-1", amount="125.00", status="signed")
    counts = s.sync()
    assert counts.get("updated", 0) == 0 and s.deal_writes() == writes
    # an edit after signing is not a new signing: not synced
    s.doc("D-1", amount="999.00", status="signed")
    s.sync()
    assert float(s.deals()["D-1"][0]) == 125.0


def test_changed_and_criteria_combine(tmp_path: Path) -> None:
    when = "{all: [{field: amount, op: changed}, {field: status, op: eq, value: signed}]}"
    s = Setup(tmp_path, when=when)
    s.doc("D-1", amount="1.00", status="draft")
    s.sync()
    assert s.deals() == {}
    s.doc("D-1", amount="1.00", status="signed")  # amount did not change
    s.sync()
    assert s.deals() == {}
    s.doc("D-1", amount="2.00", status="signed")
    s.sync()
    assert float(s.deals()["D-1"][0]) == 2.0


def test_event_ops_refused_in_filters(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    text = (tmp_path / "crmsync.yaml").read_text().replace(
        "    trigger:", "    filter: {field: status, op: changed}\n    trigger:"
    )
    (tmp_path / "crmsync.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"only allowed in trigger\.when"):
        load_config(tmp_path / "crmsync.yaml")
    del s


# -- thresholds fire when the condition becomes true, once ---------------------------
# Each step: the document's values, and whether the trigger fires on them. Every
# step also changes the amount, so a firing shows as the deal taking that amount.
THRESHOLDS = {
    "ge": (
        "{field: score, op: ge, value: 50}",
        [({"score": 10}, False), ({"score": 60}, True), ({"score": 70}, False),
         ({"score": 90}, False), ({"score": 20}, False), ({"score": 55}, True),
         ({"score": 55}, False)],
    ),
    "eq": (
        "{field: status, op: eq, value: signed}",
        [({"status": "draft"}, False), ({"status": "signed"}, True), ({"status": "signed"}, False),
         ({"status": "draft"}, False), ({"status": "signed"}, True)],
    ),
    "in": (
        "{field: status, op: in, value: [signed, countersigned]}",
        [({"status": "sent"}, False), ({"status": "signed"}, True),
         ({"status": "countersigned"}, False), ({"status": "draft"}, False),
         ({"status": "countersigned"}, True)],
    ),
    "is_true": (
        "{field: approved, op: is_true}",
        [({"approved": False}, False), ({"approved": True}, True), ({"approved": True}, False),
         ({"approved": None}, False), ({"approved": True}, True)],
    ),
    "all": (
        "{all: [{field: score, op: ge, value: 50}, {field: approved, op: is_true}]}",
        [({"score": 60, "approved": False}, False), ({"score": 70, "approved": True}, True),
         ({"score": 80, "approved": True}, False), ({"score": 10, "approved": True}, False),
         ({"score": 50, "approved": True}, True)],
    ),
    "any": (
        "{any: [{field: score, op: ge, value: 50}, {field: status, op: eq, value: signed}]}",
        [({"score": 10, "status": "draft"}, False), ({"score": 60, "status": "draft"}, True),
         # still true through the other branch: no new occurrence
         ({"score": 10, "status": "signed"}, False), ({"score": 10, "status": "draft"}, False),
         ({"score": 10, "status": "signed"}, True)],
    ),
    "first sight": (
        "{field: score, op: ge, value: 50}",
        [({"score": 75}, True), ({"score": 80}, False)],
    ),
    "changed_to in any": (
        "{any: [{field: status, op: changed_to, value: signed},"
        " {field: status, op: changed_to, value: paid}]}",
        [({"status": "draft"}, False), ({"status": "signed"}, True), ({"status": "paid"}, True),
         ({"status": "paid"}, False)],
    ),
    "changed with a threshold": (
        "{all: [{field: score, op: changed}, {field: status, op: eq, value: signed}]}",
        [({"score": 1, "status": "signed"}, True), ({"score": 1, "status": "signed"}, False),
         ({"score": 2, "status": "signed"}, True), ({"score": 3, "status": "draft"}, False)],
    ),
}


@pytest.mark.parametrize("shape", list(THRESHOLDS))
def test_condition_fires_when_it_becomes_true_not_while_it_holds(
    tmp_path: Path, shape: str
) -> None:
    when, steps = THRESHOLDS[shape]
    s = Setup(tmp_path, when=when)
    synced: float | None = None
    fired_log = 0
    for i, (values, fires) in enumerate(steps):
        amount = 100.0 + i
        s.doc("D-1", amount=f"{amount:.2f}", **values)
        counts = s.sync()
        deal = s.deals().get("D-1")
        if fires:
            synced = amount
            fired_log += 1
        got = None if deal is None else float(deal[0])  # type: ignore[arg-type]
        assert got == synced, (shape, i, values, fires)
        assert counts.get("waiting", 0) == (0 if fires else 1), (shape, i, counts)
    st = StateStore(f"sqlite:///{tmp_path}/state.db")
    try:
        rows = st.outcomes(record="esign.document:D-1", limit=100)
    finally:
        st.close()
    # one logged outcome per firing, and one `waiting` per pass that did not fire
    assert len([r for r in rows if r["action"] != "waiting"]) == fired_log
    assert len([r for r in rows if r["status"] == "waiting"]) == len(steps) - fired_log
