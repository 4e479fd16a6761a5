"""Accepted deliveries: durable, queued, and applied to the CRM with typed values."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from hookenv import Env, deal, make_env

from crmsync.state import schema as S


def test_signed_delivery_is_queued_and_lands_typed(env: Env) -> None:
    r = env.post(
        {"object": "document", "id": "D-17", "op": "created",
         "values": {"amount": "1234.50", "status": "signed", "city": "Oslo"}}
    )
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 1, "queued": 1}
    with env.ctx.state.connect() as c:
        msgs = c.execute(sa.select(S.messages.c.link, S.messages.c.record_id)).all()
    assert msgs == [("contracts", "D-17")]
    env.sync()
    assert env.crm_rows() == {
        "D-17": {"amount": Decimal("1234.50"), "status": "signed", "city": "Oslo"}
    }


def test_batch_partial_update_and_delete(env: Env) -> None:
    r = env.post({"changes": [
        {"object": "document", "id": "A", "op": "created",
         "values": {"amount": 10, "status": "draft", "city": "Bergen"}},
        {"object": "document", "id": "B", "op": "created",
         "values": {"amount": 20.25, "status": "draft", "city": "Tromsø"}},
    ]})
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 2, "queued": 2}
    env.sync()
    # partial values merge into the stored record; a delete removes it (on_delete: delete)
    r = env.post({"changes": [
        {"object": "document", "id": "A", "op": "updated", "values": {"status": "signed"}},
        {"object": "document", "id": "B", "op": "deleted"},
    ]})
    assert r.status_code == 202, r.text
    env.sync()
    assert env.crm_rows() == {
        "A": {"amount": Decimal("10.00"), "status": "signed", "city": "Bergen"}
    }


def test_versions_older_or_equal_are_accepted_but_ignored(env: Env) -> None:
    doc = {"object": "document", "id": "V", "op": "updated"}
    assert env.post(doc | {"version": 5, "values": {"status": "five", "amount": 5}}).json() == {
        "accepted": 1, "queued": 1}
    for v in (4, 5):  # older and equal: accepted, nothing changes, nothing queued
        r = env.post(doc | {"version": v, "values": {"status": f"v{v}"}})
        assert r.status_code == 202 and r.json() == {"accepted": 1, "queued": 0}
    env.sync()
    assert env.crm_rows()["V"]["status"] == "five"
    # ISO timestamps compare as instants (naive = UTC)
    ts = {"object": "document", "id": "T", "op": "updated"}
    env.post(ts | {"version": "2026-05-01T12:00:00+02:00", "values": {"status": "b"}})
    r = env.post(ts | {"version": "2026-05-01T09:59:59", "values": {"status": "a"}})
    assert r.json()["queued"] == 0
    r = env.post(ts | {"version": "2026-05-01T10:00:01Z", "values": {"status": "c"}})
    assert r.json()["queued"] == 1
    env.sync()
    assert env.crm_rows()["T"]["status"] == "c"


def test_sql_system_with_secret_queues_its_readers_and_ignores_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for env in make_env(tmp_path, monkeypatch, crm_secret=True, back_link=True):
        eng = sa.create_engine(env.crm_url)
        with eng.begin() as c:
            c.execute(sa.insert(deal).values(
                ref="D-1", status="won", amount=1, city="Oslo"))
        eng.dispose()
        r = env.post({"object": "deal", "id": 1, "op": "updated", "values": {"nope": "x"}},
                     system="crm", secret=env.crm_secret)
        assert r.status_code == 202, r.text
        assert r.json() == {"accepted": 1, "queued": 1}
        with env.ctx.state.connect() as c:
            assert c.execute(sa.select(S.messages.c.link, S.messages.c.record_id)).all() == [
                ("back", "1")]
        # The link targets the push-only system: it fails per record, visibly.
        reps = {rep.link: rep for rep in env.ctx.engine.sync()}
        assert reps["back"].counts["failed"] >= 1
        failed = env.ctx.state.outcomes(link="back", status="failed")
        assert failed and "push-only" in (failed[0]["message"] or "")
        # the e-sign secret does not sign for the crm
        r = env.post({"object": "deal", "id": 1, "op": "updated"}, system="crm")
        assert r.status_code == 401



def test_a_link_switched_off_at_runtime_gets_nothing_queued(env: Env) -> None:
    with env.ctx.state.begin() as c:
        env.ctx.state.set_link_enabled(c, "contracts", False, actor="test", now=env.clock())
    doc = {"object": "document", "id": "OFF", "op": "created", "values": {"status": "x"}}
    assert env.post(doc).json() == {"accepted": 1, "queued": 0}
    # the record is kept: switched on again, capture picks it up from its cursor
    with env.ctx.state.begin() as c:
        env.ctx.state.set_link_enabled(c, "contracts", True, actor="test", now=env.clock())
    env.sync()
    assert env.crm_rows()["OFF"]["status"] == "x"


def test_openapi_documents_the_route(env: Env) -> None:
    doc = env.client.get(f"{env.url}/openapi.json").json()
    op = doc["paths"]["/hooks/{system}"]["post"]
    assert {p["name"] for p in op["parameters"]} >= {
        "system", "webhook-id", "webhook-timestamp", "webhook-signature"}
    assert "application/json" in op["requestBody"]["content"]
    assert {"202", "401", "409", "413", "422"} <= set(op["responses"])
    assert "$ref" not in str(op["requestBody"])  # inlined: resolvable anywhere


def test_an_erased_record_pushed_again_is_neither_kept_nor_queued(env: Env) -> None:
    st = env.ctx.state
    with st.begin() as c:
        st.mark_erased(c, ["esign.document:GDPR-1"], by="dpo", now=env.clock())
    r = env.post({"changes": [
        {"object": "document", "id": "GDPR-1", "op": "updated",
         "values": {"amount": 1, "status": "signed", "city": "Secret City"}},
        {"object": "document", "id": "OTHER", "op": "created",
         "values": {"amount": 2, "status": "signed", "city": "Oslo"}},
    ]})
    assert r.status_code == 202, r.text
    assert r.json() == {"accepted": 2, "queued": 1}
    with st.connect() as c:
        kept = c.execute(sa.select(S.pushed_records.c.record_id)).scalars().all()
        dump = " ".join(str(v) for row in c.execute(sa.select(S.pushed_records)) for v in row)
    assert kept == ["OTHER"] and "Secret City" not in dump
