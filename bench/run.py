"""crmsync benchmark: prints one `name: value` line per figure.

Figures (all through the real engine, SQLite -> SQLite, on this machine):

* migrate_records_per_s      initial migration of ROWS 12-field records (`crmsync sync`,
                             the whole process: start-up, check, reflection, sync)
* executemany_records_per_s  plain sqlite3 executemany insert of the same rows (the ceiling)
* engine_vs_executemany      their ratio
* peak_rss_mb                peak memory of the process that ran the migration
* state_bytes_per_record     size of the state database after the migration / ROWS
* incremental_small_s        `crmsync sync` after CHANGES changes on a SMALL-row link
* incremental_large_s        the same on a LARGE-row link (whole process)
* incremental_ratio          large / small (flat is the aim: cost follows changes)
* noop_sync_large_s          `crmsync sync` again on the LARGE-row link, nothing changed
* noop_requeued              records that no-op sync queued again (the lookback re-apply)
* help_s                     `crmsync --help`, median of 5

Every figure is a whole `crmsync` process, timed from outside; peak memory is the
child's own (wait4).
Then bench/service.py adds the service figures (webhook latency, workers).
Usage: python bench/run.py [--rows 200000] [--small 10000] [--large 1000000] [--changes 1000]
                           [--skip-service]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent

COLUMNS = (
    "customer_no TEXT PRIMARY KEY, name TEXT, email TEXT, phone TEXT, city TEXT, country TEXT,"
    " credit_limit NUMERIC(12,2), status TEXT, employees INTEGER, since DATE, active BOOLEAN,"
    " changed_at DATETIME"
)
FIELDS = ["name", "email", "phone", "city", "country", "credit_limit", "status", "employees",
          "since", "active"]

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
    batch_size: 2000
    fields:
{fields}
"""


def _rows(n: int, seed: int = 1):
    rng = random.Random(seed)
    cities = ["Oslo", "Lyon", "Graz", "Porto", "Turku", "Gent"]
    base = datetime(2026, 1, 1)
    for i in range(n):
        yield (
            f"C{i:08d}", f"Customer {i}", f"c{i}@example.com", f"+47 {rng.randint(10**7, 10**8)}",
            rng.choice(cities), "NO", f"{rng.randint(0, 10**6)}.{rng.randint(0, 99):02d}",
            rng.choice("AI"), rng.randint(1, 5000),
            f"20{rng.randint(10, 25)}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}",
            rng.random() < 0.5, (base + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S.%f"),
        )


def build(d: Path, n: int) -> None:
    d.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(d / "erp.db") as c:
        c.execute(f"CREATE TABLE customers ({COLUMNS})")
        c.execute("CREATE INDEX ix_customers_changed ON customers (changed_at, customer_no)")
        c.executemany("INSERT INTO customers VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", _rows(n))
    with sqlite3.connect(d / "crm.db") as c:
        c.execute(
            "CREATE TABLE company (id INTEGER PRIMARY KEY AUTOINCREMENT, org_number TEXT,"
            " name TEXT, email TEXT, phone TEXT, city TEXT, country TEXT,"
            " credit_limit NUMERIC(12,2), status TEXT, employees INTEGER, since DATE,"
            " active BOOLEAN, updated_at DATETIME)"
        )
        c.execute("CREATE UNIQUE INDEX ix_company_org ON company (org_number)")
        c.execute("CREATE INDEX ix_company_updated ON company (updated_at, id)")
    fields = "\n".join(f"      - {{source: {f}, target: {f}}}" for f in FIELDS)
    (d / "crmsync.yaml").write_text(CONFIG.format(dir=d, fields=fields))


def ceiling(d: Path, n: int) -> float:
    """Plain executemany of the same rows into a fresh SQLite table."""
    rows = list(_rows(n))
    with sqlite3.connect(d / "ceiling.db") as c:
        c.execute(f"CREATE TABLE customers ({COLUMNS})")
        t0 = time.perf_counter()
        c.executemany("INSERT INTO customers VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        c.commit()
        return n / (time.perf_counter() - t0)


def cli(d: Path, *args: str) -> tuple[float, float]:
    """Run `crmsync ARGS` in ``d`` as its own process: (wall seconds, peak RSS MB)."""
    cmd = [sys.executable, "-m", "crmsync", *args]
    # As installed for a user: bytecode cached after the first run. A shell that
    # sets PYTHONDONTWRITEBYTECODE would make every run compile crmsync again
    # (~0.2 s of each CLI figure).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=d, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    elapsed = time.perf_counter() - t0
    out = p.stdout.read().decode() if p.stdout else ""
    err = p.stderr.read().decode() if p.stderr else ""
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"crmsync {' '.join(args)} exited {p.returncode}:\n{out}\n{err}")
    return elapsed, usage.ru_maxrss / 1024


def last_counts(d: Path) -> dict[str, int]:
    """The counts of the newest run, as `crmsync log` shows them."""
    with sqlite3.connect(d / "state.db") as c:
        (counts,) = c.execute("SELECT counts FROM crmsync_runs ORDER BY id DESC LIMIT 1").fetchone()
    return json.loads(counts)


def sync(d: Path) -> tuple[float, float, dict[str, int]]:
    elapsed, peak = cli(d, "sync")
    return elapsed, peak, last_counts(d)


def state_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.glob("state.db*"))


def touch(d: Path, changes: int, total: int) -> None:
    rng = random.Random(5)
    now = datetime(2027, 1, 1).strftime("%Y-%m-%d %H:%M:%S.%f")
    keys = [f"C{i:08d}" for i in rng.sample(range(total), changes)]
    with sqlite3.connect(d / "erp.db") as c:
        c.executemany(
            "UPDATE customers SET name = name || ' v2', changed_at = ? WHERE customer_no = ?",
            [(now, k) for k in keys],
        )


def incremental(root: Path, rows: int, changes: int) -> tuple[float, float, int]:
    """(seconds of the incremental sync, seconds of a no-op sync after it, records the
    no-op sync queued again)."""
    d = root / f"inc{rows}"
    build(d, rows)
    _, _, first = sync(d)
    assert first.get("created") == rows, first
    touch(d, changes, rows)
    seconds, _, counts = sync(d)
    assert counts.get("updated") == changes, counts
    noop, _, again = sync(d)
    return seconds, noop, again.get("captured", 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--large", type=int, default=1_000_000)
    ap.add_argument("--changes", type=int, default=1_000)
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--skip-service", action="store_true", help="do not run bench/service.py")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="crmsync-bench-"))
    try:
        d = root / "migrate"
        build(d, a.rows)
        seconds, peak, counts = sync(d)
        assert counts.get("created") == a.rows, counts
        engine_rps = a.rows / seconds
        ceil_rps = ceiling(root, a.rows)
        print(f"rows: {a.rows}")
        print(f"migrate_records_per_s: {engine_rps:,.0f}")
        print(f"executemany_records_per_s: {ceil_rps:,.0f}")
        print(f"engine_vs_executemany: {engine_rps / ceil_rps:.3f}")
        print(f"peak_rss_mb: {peak:.1f}")
        print(f"state_bytes_per_record: {state_bytes(d) / a.rows:,.0f}")
        sys.stdout.flush()
        small, _, _ = incremental(root, a.small, a.changes)
        large, noop, requeued = incremental(root, a.large, a.changes)
        print(f"incremental_small_rows: {a.small}")
        print(f"incremental_large_rows: {a.large}")
        print(f"incremental_changes: {a.changes}")
        print(f"incremental_small_s: {small:.3f}")
        print(f"incremental_large_s: {large:.3f}")
        print(f"incremental_ratio: {large / small:.2f}")
        print(f"noop_sync_large_s: {noop:.3f}")
        print(f"noop_requeued: {requeued}")
        print(f"help_s: {statistics.median(cli(root, '--help')[0] for _ in range(5)):.3f}")
        if not a.skip_service:
            sys.stdout.flush()  # ours first: the child writes to the same stdout
            subprocess.run([sys.executable, str(HERE / "service.py")], check=True)
    finally:
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"work folder: {root}", file=sys.stderr)


if __name__ == "__main__":
    main()
