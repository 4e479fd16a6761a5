"""10,000 deliveries, shuffled and duplicated, converge to one clean delivery of each newest."""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hookenv import Env, make_env

DOCS = 500
VERSIONS = 16  # 500 x 16 = 8,000 distinct deliveries
DUPLICATES = 2_000  # re-sent verbatim (same webhook-id): 10,000 in all
STATUSES = ["draft", "sent", "viewed", "signed", "countersigned"]
CITIES = ["Oslo", "Bergen", "Tromsø", "Zürich", "São Paulo", "Kraków"]


def _versions(rng: random.Random) -> list[list[dict[str, Any]]]:
    """Per document its changes in version order; about 10% end deleted (voided)."""
    base = datetime(2026, 5, 1, tzinfo=UTC)
    out = []
    for d in range(DOCS):
        doc_id = f"D-{d:04d}"
        changes = []
        for v in range(1, VERSIONS + 1):
            # even documents use integer versions, odd ones ISO timestamps
            version: int | str = v if d % 2 == 0 else (base + timedelta(minutes=v)).isoformat()
            change: dict[str, Any] = {"object": "document", "id": doc_id, "version": version}
            if v == VERSIONS and d % 10 == 3:
                change["op"] = "deleted"
            else:
                change["op"] = "created" if v == 1 else "updated"
                change["values"] = {
                    # whole records (see the connector: versions want full values)
                    "amount": f"{rng.randint(1, 10**7) / 100:.2f}" if v % 3 else rng.randint(
                        1, 9999),
                    "status": rng.choice(STATUSES),
                    "city": rng.choice(CITIES),
                }
            changes.append(change)
        out.append(changes)
    return out


def _send_all(env: Env, deliveries: list[tuple[str, bytes]]) -> Counter[int]:
    """Signed POSTs over 8 connections; returns the count of each status."""
    signed = [(body, env.headers(body, wid)) for wid, body in deliveries]

    def one(item: tuple[bytes, dict[str, str]]) -> int:
        body, headers = item
        return env.client.post(f"{env.url}/hooks/esign", content=body, headers=headers).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        return Counter(pool.map(one, signed, chunksize=16))


def test_ten_thousand_shuffled_duplicated_deliveries_converge(
    env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(20261124)
    docs = _versions(rng)
    distinct = [
        (f"msg_{c['id']}_{n}", json.dumps(c).encode())
        for changes in docs
        for n, c in enumerate(changes)
    ]
    deliveries = distinct + rng.sample(distinct, DUPLICATES)
    rng.shuffle(deliveries)
    assert len(deliveries) == 10_000

    # The worker's job meanwhile: sync continuously while deliveries arrive.
    stop = threading.Event()
    errors: list[BaseException] = []

    def syncing() -> None:
        while not stop.is_set():
            try:
                env.sync()
            except BaseException as exc:  # reported by the test below
                errors.append(exc)
                return
            stop.wait(0.2)

    bg = threading.Thread(target=syncing)
    bg.start()
    t0 = time.monotonic()
    try:
        statuses = _send_all(env, deliveries)
    finally:
        elapsed = time.monotonic() - t0
        stop.set()
        bg.join()
    assert not errors, errors
    rate = len(deliveries) / elapsed
    print(f"\n10,000 deliveries in {elapsed:.1f} s: {rate:.0f} deliveries/s")
    # every delivery answered: accepted once per id, the re-sends refused as replays
    assert statuses == Counter({202: len(distinct), 409: DUPLICATES}), statuses
    env.sync()
    shuffled = env.crm_rows()

    # What one clean, in-order delivery of each document's newest version gives.
    expected = {}
    for changes in docs:
        last = changes[-1]
        if last["op"] != "deleted":
            vals = last["values"]
            expected[last["id"]] = {
                "amount": Decimal(str(vals["amount"])).quantize(Decimal("0.01")),
                "status": vals["status"], "city": vals["city"],
            }
    assert len(expected) == DOCS - DOCS // 10
    assert shuffled == expected

    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    gen = make_env(clean_dir, monkeypatch)
    clean = next(gen)
    try:
        newest = [(f"clean_{c[-1]['id']}", json.dumps(c[-1]).encode()) for c in docs]
        assert _send_all(clean, newest) == Counter({202: DOCS})
        clean.sync()
        assert clean.crm_rows() == shuffled
    finally:
        gen.close()

    with env.ctx.state.connect() as c:
        counts = env.ctx.state.queue_counts(c)
    assert counts.get("pending", 0) == 0 and counts.get("failed", 0) == 0
    assert env.counts()["crmsync_webhook_deliveries"] == len(distinct)


@pytest.mark.postgresql
def test_concurrent_pushes_on_postgresql_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Advisory lock: concurrent pushes get distinct seqs, and versions still converge."""
    import sqlalchemy as sa
    from dbs import fresh_database

    from crmsync.state import schema as S

    with fresh_database("postgresql", tmp_path, "state") as url:
        gen = make_env(tmp_path, monkeypatch, state_url=url)
        env = next(gen)
        try:
            rng = random.Random(7)
            docs = [changes[:6] for changes in _versions(rng)[:60]]
            distinct = [
                (f"pg_{c['id']}_{n}", json.dumps(c).encode())
                for changes in docs for n, c in enumerate(changes)
            ]
            deliveries = distinct + rng.sample(distinct, 60)
            rng.shuffle(deliveries)
            assert _send_all(env, deliveries) == Counter({202: len(distinct), 409: 60})
            with env.ctx.state.connect() as c:
                seqs = list(c.execute(sa.select(S.pushed_records.c.seq)).scalars())
            assert len(seqs) == len(set(seqs)) == 60
            env.sync()
            expected = {
                ch[-1]["id"]: {
                    "amount": Decimal(str(ch[-1]["values"]["amount"])).quantize(Decimal("0.01")),
                    "status": ch[-1]["values"]["status"], "city": ch[-1]["values"]["city"],
                }
                for ch in docs
            }
            assert env.crm_rows() == expected
        finally:
            gen.close()
