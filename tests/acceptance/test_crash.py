"""Crash safety: `crmsync sync` killed with SIGKILL at random points during a migration.

The final state after the kills and one last clean run must equal an
uninterrupted run: every record present once, with the same values. Two
migrations: one that matches some existing target records, and one of plain
creates only, which takes the bulk path on every page.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

N = 15000
BULK_N = 40000  # the bulk path is fast: more rows, so kills land inside it
CONFIG = """\
state: sqlite:///{dir}/state.db
systems:
  erp:
    connector: sql
    url: sqlite:///{dir}/erp.db
    objects:
      customer: {{table: customers, key: customer_no, updated_at: changed_at}}
  crm:
    connector: sql
    url: sqlite:///{dir}/crm.db
    objects:
      company: {{table: company, key: id, updated_at: updated_at}}
links:
  customers:
    source: erp.customer
    target: crm.company
    match: {{customer_no: org_number}}
    fields:
      - {{source: name, target: name}}
      - {{source: city, target: city}}
      - {{source: credit_limit, target: credit_limit}}
    batch_size: {batch}
"""


def _build(
    d: Path, *, existing: bool = True, batch: int = 100, n: int = N, spread: bool = False
) -> None:
    """``spread``: each record stamped one second after the previous (else all in
    one instant, which the incremental pass after the migration reads again)."""
    d.mkdir(parents=True)
    rng = random.Random(7)
    with sqlite3.connect(d / "erp.db") as c:
        c.execute(
            "CREATE TABLE customers (customer_no TEXT PRIMARY KEY, name TEXT, city TEXT,"
            " credit_limit NUMERIC(12,2), changed_at DATETIME)"
        )
        c.executemany(
            "INSERT INTO customers VALUES (?,?,?,?,?)",
            [
                (f"C{i:06d}", f"Customer {i}", rng.choice(["Oslo", "Lyon", "Graz"]),
                 f"{rng.randint(0, 99999)}.50",
                 f"{datetime(2026, 1, 1, 10) + timedelta(seconds=i if spread else 0)}.000000")
                for i in range(n)
            ],
        )
    with sqlite3.connect(d / "crm.db") as c:
        # No unique constraint on org_number on purpose: a duplicate create
        # must show up as a duplicate row, not be hidden by the database.
        c.execute(
            "CREATE TABLE company (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT,"
            " org_number TEXT, city TEXT, credit_limit NUMERIC(12,2), updated_at DATETIME)"
        )
        if existing:
            c.executemany(
                "INSERT INTO company (name, org_number, updated_at) VALUES (?,?,?)",
                [(f"Old {i}", f"C{i:06d}", "2026-01-01 09:00:00") for i in range(0, N, 10)],
            )
    (d / "crmsync.yaml").write_text(CONFIG.format(dir=d, batch=batch))


def _cmd(d: Path) -> list[str]:
    return [sys.executable, "-m", "crmsync", "sync", "-c", str(d / "crmsync.yaml")]


def _created(d: Path, existing: int = N // 10) -> int:
    with sqlite3.connect(d / "crm.db") as c:
        return c.execute("SELECT count(*) FROM company").fetchone()[0] - existing


def _content(d: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(d / "crm.db") as c:
        return c.execute(
            "SELECT org_number, name, city, credit_limit FROM company ORDER BY org_number, id"
        ).fetchall()


@pytest.mark.slow
def test_kill_dash_nine_during_migration_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref = tmp_path / "ref"
    _build(ref)
    t0 = time.monotonic()
    subprocess.run(_cmd(ref), check=True, env=env, capture_output=True, timeout=300)
    clean_time = time.monotonic() - t0
    expected = _content(ref)
    assert len(expected) == N
    assert len({r[0] for r in expected}) == N

    # Start-up (interpreter, imports, reflection) is part of every run; aim the
    # kills inside the migration work that is still left.
    t0 = time.monotonic()
    subprocess.run([*_cmd(ref)[:-3], "schema"], check=True, env=env, capture_output=True)
    startup = time.monotonic() - t0
    work = max(clean_time - startup, 0.2)

    crash = tmp_path / "crash"
    _build(crash)
    rng = random.Random(int(os.environ.get("CRASH_SEED", "11")))
    kills = 0
    for _ in range(15):
        left = 1 - _created(crash) / N
        if kills >= 6 or left < 0.05:
            break
        p = subprocess.Popen(_cmd(crash), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(startup + rng.uniform(0.1, 0.8) * work * left)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait(timeout=60)
    assert kills >= 3, f"only {kills} kills landed inside the migration"
    done = subprocess.run(_cmd(crash), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _content(crash) == expected
    # and a further run finds nothing to do
    again = subprocess.run(_cmd(crash), env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0
    assert _content(crash) == expected
    shutil.rmtree(tmp_path, ignore_errors=True)


def _pairs(d: Path) -> list[tuple[object, ...]]:
    """Each pair's source id, its target record's key and its shadow (target ids
    differ between two runs; the record they name must not)."""
    with sqlite3.connect(d / "state.db") as c:
        c.execute("ATTACH DATABASE ? AS crm", (str(d / "crm.db"),))
        return c.execute(
            "SELECT i.source_id, t.org_number, i.shadow, i.deleted FROM crmsync_identities i"
            " LEFT JOIN crm.company t ON t.id = CAST(i.target_id AS INTEGER)"
            " ORDER BY i.source_id"
        ).fetchall()


@pytest.mark.slow
def test_kill_dash_nine_during_bulk_migration_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    """Plain creates only (no target record to match): every page takes the bulk
    path, and a page whose target insert committed before the kill is found again
    by its match keys on the next run, never created twice."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref = tmp_path / "ref"
    _build(ref, existing=False, batch=1000, n=BULK_N, spread=True)
    t0 = time.monotonic()
    subprocess.run(_cmd(ref), check=True, env=env, capture_output=True, timeout=300)
    clean_time = time.monotonic() - t0
    expected, expected_pairs = _content(ref), _pairs(ref)
    assert len(expected) == BULK_N and len(expected_pairs) == BULK_N
    assert [p[0] for p in expected_pairs] == [p[1] for p in expected_pairs]

    t0 = time.monotonic()
    subprocess.run([*_cmd(ref)[:-3], "schema"], check=True, env=env, capture_output=True)
    startup = time.monotonic() - t0
    work = max(clean_time - startup, 0.2)

    crash = tmp_path / "crash"
    _build(crash, existing=False, batch=1000, n=BULK_N, spread=True)
    rng = random.Random(int(os.environ.get("CRASH_SEED", "13")))
    kills = 0
    for _ in range(15):
        left = 1 - _created(crash, 0) / BULK_N
        if kills >= 5 or left < 0.05:
            break
        p = subprocess.Popen(_cmd(crash), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        time.sleep(startup + rng.uniform(0.1, 0.8) * work * left)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        p.wait(timeout=60)
    assert kills >= 3, f"only {kills} kills landed inside the migration"
    done = subprocess.run(_cmd(crash), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _content(crash) == expected  # every record once, same values: no duplicate
    assert _pairs(crash) == expected_pairs  # each paired with its own record, same shadow
    again = subprocess.run(_cmd(crash), env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0
    assert _content(crash) == expected
    assert _pairs(crash) == expected_pairs
    shutil.rmtree(tmp_path, ignore_errors=True)
