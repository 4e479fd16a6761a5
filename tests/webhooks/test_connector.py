"""The push-only connector on its own: typed round trip, seq cursor, deletes, versions."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from hookenv import Env

from crmsync.config.models import WebhookSystemConfig
from crmsync.connectors.webhook import PushRejected, WebhookConnector
from crmsync.model import FieldType
from crmsync.state.store import StateStore


def _push(env: Env, rid: str, values: dict | None, op: str = "updated", version=None) -> bool:
    conn = env.ctx.connectors["esign"]
    assert isinstance(conn, WebhookConnector)
    with env.ctx.state.begin() as c:
        return conn.push(c, "document", rid, values, op, version, now=env.clock())


def test_describe_needs_no_database() -> None:
    cfg = WebhookSystemConfig.model_validate({
        "connector": "webhook", "webhook_secret": "whsec_x",
        "objects": {"doc": {"key": "ref", "fields": {"n": "integer", "on": "date"}}},
    })
    conn = WebhookConnector("s", cfg, StateStore.__new__(StateStore))  # no engine at all
    spec = conn.describe("doc")
    assert spec.key == "ref" and spec.updated_at is None
    assert {n: f.type for n, f in spec.fields.items()} == {
        "ref": FieldType.STRING, "n": FieldType.INTEGER, "on": FieldType.DATE}


def test_typed_round_trip_merge_and_reads(env: Env) -> None:
    conn = env.ctx.connectors["esign"]
    assert _push(env, "A", {"amount": "10.50", "status": "new", "city": "Oslo"}, "created")
    assert _push(env, "A", {"status": "signed"})  # partial: merges
    rec = conn.read("document", ["A", "nope"])["A"]
    assert rec.values == {"id": "A", "amount": Decimal("10.5"), "status": "signed",
                          "city": "Oslo"}
    assert type(rec.values["amount"]) is Decimal
    assert [r.id for r in conn.find("document", "city", ["Oslo"])] == ["A"]
    assert [r.id for r in conn.find("document", "id", ["A", "B"])] == ["A"]
    assert conn.count("document") == 1


def test_seq_cursor_pages_and_deleted_records(env: Env) -> None:
    conn = env.ctx.connectors["esign"]
    assert conn.start_cursor("document") == {"seq": 0}
    for i in range(5):
        _push(env, f"R{i}", {"status": str(i)}, "created")
    start = conn.start_cursor("document")
    assert start == {"seq": 5}
    page = conn.read_changes("document", None, 3)
    assert [r.id for r in page.records] == ["R0", "R1", "R2"] and page.more
    page = conn.read_changes("document", page.cursor, 3)
    assert [r.id for r in page.records] == ["R3", "R4"] and not page.more
    _push(env, "R1", None, "deleted")
    page = conn.read_changes("document", start, 10)
    assert [r.id for r in page.records] == ["R1"]  # the delete is a change...
    assert "R1" not in conn.read("document", ["R1"])  # ...and the record is gone
    assert [r.id for r in conn.scan("document", None, 10)] == ["R0", "R2", "R3", "R4"]
    assert [r.id for r in conn.scan("document", "R2", 10)] == ["R3", "R4"]
    # revived by a later push
    _push(env, "R1", {"city": "Bergen"}, "created")
    assert conn.read("document", ["R1"])["R1"].values["status"] == "1"


def test_versions(env: Env) -> None:
    assert _push(env, "V", {"status": "3"}, version=3)
    assert not _push(env, "V", {"status": "2"}, version=2)
    assert not _push(env, "V", {"status": "3b"}, version=3)
    assert _push(env, "V", {"status": "nov"})  # without version: always applies
    assert _push(env, "V", {"status": "4"}, version=4)
    assert not _push(env, "V", None, "deleted", version=1)  # an old delete is ignored too
    conn = env.ctx.connectors["esign"]
    assert conn.read("document", ["V"])["V"].values["status"] == "4"
    with pytest.raises(PushRejected, match="version"):
        _push(env, "V", None, version=True)
    with pytest.raises(PushRejected, match="amount"):
        _push(env, "V", {"amount": date(2026, 1, 1)})
    with pytest.raises(PushRejected, match="unknown field"):
        _push(env, "V", {"colour": "red"})


def test_crmsync_cannot_write_to_it(env: Env) -> None:
    res = env.ctx.connectors["esign"].write(
        "document", creates=[{"status": "x"}], updates=[("A", {"status": "y"})], deletes=["B"]
    )
    assert res.created == [None]
    assert set(res.errors) == {"create:0", "A", "B"}
    assert all("push-only" in e for e in res.errors.values())
