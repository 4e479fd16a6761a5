# Over 500 lines: the sample data and the story that shows it, read together top to bottom.
"""The demo: a sample ERP and CRM on SQLite, synced by the real CLI.

Run ``python -m crmsync.demo`` in an empty folder (``make demo`` uses ``demo/``).
It builds ``erp.db`` (customers) and ``crm.db`` (companies, some already carrying
a matching customer number), writes ``crmsync.yaml``, runs ``check``, ``plan``
and a first ``sync``, edits both sides, plans and syncs again, shows the
rejected fields and prints a summary read from the two databases.

The data builders are plain functions so the tests can call them.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table

ERP_DB = "erp.db"
CRM_DB = "crm.db"
STATE_DB = "crmsync.db"
CONFIG = "crmsync.yaml"
DEFAULT_CUSTOMERS = 5_000
DEFAULT_SEED = 42
MATCHED_COMPANIES = 300  # CRM companies that already carry an active customer's number
UNRELATED_COMPANIES = 50
LOG_LINES = 80  # the demo shows at most this many lines of `crmsync log`
CLI = [sys.executable, "-m", "crmsync"]  # how the demo runs the real CLI

# Values the ERP keeps as free text in `employees`; the CRM wants an integer.
AWKWARD_EMPLOYEES = ("ten thousand", "approx. 50", "1,200", "n/a", "12.5k", "about 300")

_ADJ = (
    "Nordic", "Alpine", "Baltic", "Golden", "Silver", "Blue", "Green", "Rapid", "Prime",
    "United", "Royal", "Atlas", "Delta", "Summit", "Harbor", "Pioneer", "Vertex", "Crown",
)
_NOUN = (
    "Timber", "Steel", "Logistics", "Foods", "Textiles", "Energy", "Robotics", "Pharma",
    "Optics", "Marine", "Print", "Software", "Farms", "Ceramics", "Motors", "Glass",
)
_SUFFIX = ("GmbH", "AG", "Ltd", "BV", "SA", "Oy", "AB", "SRL", "Inc", "KG")
_PLACES = (
    ("Berlin", "DE"), ("Hamburg", "DE"), ("Munich", "DE"), ("Vienna", "AT"),
    ("Zurich", "CH"), ("Amsterdam", "NL"), ("Rotterdam", "NL"), ("Stockholm", "SE"),
    ("Helsinki", "FI"), ("Copenhagen", "DK"), ("Oslo", "NO"), ("Paris", "FR"),
    ("Lyon", "FR"), ("Milan", "IT"), ("Madrid", "ES"), ("Lisbon", "PT"), ("Dublin", "IE"),
    ("London", "GB"), ("Warsaw", "PL"), ("Prague", "CZ"),
)

CONFIG_TEXT = """\
# crmsync demo: mirror active ERP customers into CRM companies.
state: sqlite:///crmsync.db
systems:
  erp:
    connector: sql
    url: ${ERP_DB_URL}                  # from the environment, never stored
    objects:
      customer:
        table: customers
        key: customer_no
        updated_at: changed_at
        deleted: {field: status, value: X}   # status X: deleted in the ERP
  crm:
    connector: sql
    url: sqlite:///crm.db
    objects:
      company: {table: company, key: id, updated_at: updated_at}
links:
  customers:
    source: erp.customer
    target: crm.company
    direction: forward
    match: {customer_no: org_number}    # pairs companies that carry the number
    create: true
    filter:
      all:
        - {field: contract_status, op: eq, value: active}
    fields:
      - {source: name, target: name}
      - {source: credit_limit, target: credit_limit}
      - {source: status, target: status, values: {A: Active, I: Inactive}}
      - {source: email, target: email, direction: both}
      - {source: phone, target: phone}
      - {source: city, target: city}
      - {source: employees, target: employees}
    conflict: source
    on_delete: {set: {status: Deleted}}
"""


def fmt_ts(ts: datetime) -> str:
    """A naive UTC datetime as SQLAlchemy stores it in SQLite (so cursors compare right)."""
    return ts.strftime("%Y-%m-%d %H:%M:%S.%f")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _company_name(rng: random.Random) -> str:
    return f"{rng.choice(_ADJ)} {rng.choice(_NOUN)} {rng.choice(_SUFFIX)}"


def _slug(name: str) -> str:
    return "".join(name.lower().split(" ")[:2])


def _phone(rng: random.Random) -> str:
    return f"+{rng.randint(30, 49)} {rng.randint(10, 99)} {rng.randint(1_000_000, 9_999_999)}"


@contextmanager
def _connect(path: str | Path) -> Iterator[sqlite3.Connection]:
    """A connection that commits on success and is always closed."""
    db = sqlite3.connect(str(path))
    try:
        with db:
            yield db
    finally:
        db.close()


def build_erp(path: str | Path, n: int = DEFAULT_CUSTOMERS, seed: int = DEFAULT_SEED) -> int:
    """Create the ERP's ``customers`` table with ``n`` customers; return the row count."""
    rng = random.Random(seed)
    base = datetime(2024, 1, 1)
    rows: list[tuple[object, ...]] = []
    for i in range(1, n + 1):
        name = _company_name(rng)
        city, country = rng.choice(_PLACES)
        active = rng.random() < 0.40
        # ~5% never stamped (legacy rows): the first run must still migrate them.
        # Timestamps are whole minutes, so many rows share one (cursor page boundaries).
        changed = (
            None
            if rng.random() < 0.05
            else fmt_ts(base + timedelta(minutes=rng.randrange(0, 60 * 24 * 600)))
        )
        employees: str | None = str(rng.choice((5, 12, 40, 85, 250, 1200, 4800)))
        if rng.random() < 0.03:
            employees = None
        rows.append((
            f"C{i:06d}",
            name,
            f"info{i}@{_slug(name)}.example",
            _phone(rng),
            rng.randrange(0, 25_000_000) / 100,  # up to 250,000.00
            "A" if rng.random() < 0.85 else "I",
            "active" if active else "none",
            city,
            country,
            (date(2005, 1, 1) + timedelta(days=rng.randrange(0, 7000))).isoformat(),
            changed,
            employees,
        ))
    # A few active customers carry employee counts the CRM cannot take as integers:
    # those fields are rejected with a reason, the rest of each record is applied.
    active_idx = [i for i, r in enumerate(rows) if r[6] == "active"]
    for k, i in enumerate(rng.sample(active_idx, min(len(active_idx), 2 * len(AWKWARD_EMPLOYEES)))):
        rows[i] = (*rows[i][:11], AWKWARD_EMPLOYEES[k % len(AWKWARD_EMPLOYEES)])

    Path(path).unlink(missing_ok=True)
    with _connect(path) as db:
        db.executescript(
            """
            CREATE TABLE customers (
                customer_no     TEXT PRIMARY KEY,
                name            TEXT NOT NULL,
                email           TEXT,
                phone           TEXT,
                credit_limit    NUMERIC(12, 2),
                status          TEXT NOT NULL,          -- A active, I inactive, X deleted
                contract_status TEXT NOT NULL,          -- active | none
                city            TEXT,
                country         TEXT,
                since           DATE,
                changed_at      DATETIME,               -- naive UTC; NULL on legacy rows
                employees       TEXT                    -- free text in this ERP
            );
            CREATE INDEX ix_customers_changed ON customers (changed_at, customer_no);
            """
        )
        db.executemany("INSERT INTO customers VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
    return len(rows)


def build_crm(
    path: str | Path, erp_path: str | Path, seed: int = DEFAULT_SEED
) -> tuple[int, int]:
    """Create the CRM's ``company`` table: stale copies of some active customers
    (matched by ``org_number``) plus unrelated companies. Returns (matched, unrelated)."""
    rng = random.Random(seed + 1)
    with _connect(erp_path) as erp:
        active = erp.execute(
            "SELECT customer_no, name, email, phone, city FROM customers "
            "WHERE contract_status = 'active' ORDER BY customer_no"
        ).fetchall()
    matched = rng.sample(active, min(MATCHED_COMPANIES, len(active)))
    matched.sort()
    base = datetime(2023, 6, 1)
    rows: list[tuple[object, ...]] = []
    for customer_no, name, email, phone, city in matched:
        rows.append((
            f"{name.rsplit(' ', 1)[0]} (old)",  # stale name: the migration overwrites it
            customer_no,
            email if rng.random() < 0.7 else None,
            phone,
            rng.randrange(0, 5_000_000) / 100,
            "Active",
            city,
            None,
            fmt_ts(base + timedelta(minutes=rng.randrange(0, 60 * 24 * 180))),
        ))
    for j in range(1, UNRELATED_COMPANIES + 1):
        name = _company_name(rng)
        rows.append((
            f"{name} (prospect)",
            # Half have no number at all, half a number the ERP does not know.
            None if j % 2 else f"N{j:06d}",
            f"hello{j}@{_slug(name)}.example",
            _phone(rng),
            None,
            "Prospect",
            rng.choice(_PLACES)[0],
            rng.choice((None, 10, 50, 200)),
            fmt_ts(base + timedelta(minutes=rng.randrange(0, 60 * 24 * 180))),
        ))

    Path(path).unlink(missing_ok=True)
    with _connect(path) as db:
        db.executescript(
            """
            CREATE TABLE company (
                id           INTEGER PRIMARY KEY AUTOINCREMENT,
                name         TEXT NOT NULL,
                org_number   TEXT UNIQUE,
                email        TEXT,
                phone        TEXT,
                credit_limit NUMERIC(12, 2),
                status       TEXT,
                city         TEXT,
                employees    INTEGER,
                updated_at   DATETIME
            );
            CREATE INDEX ix_company_updated ON company (updated_at, id);
            """
        )
        db.executemany(
            "INSERT INTO company (name, org_number, email, phone, credit_limit, status, city,"
            " employees, updated_at) VALUES (?,?,?,?,?,?,?,?,?)",
            rows,
        )
    return len(matched), UNRELATED_COMPANIES


def write_config(path: str | Path) -> Path:
    """Write the demo's ``crmsync.yaml``."""
    p = Path(path)
    p.write_text(CONFIG_TEXT, encoding="utf-8")
    return p


# The ERP edits both demos make: renamed, soft-deleted (status X), contract activated.
_COMMON_EDITS = {
    "renamed": "UPDATE customers SET name = name || ' Holding', changed_at = ? "
    "WHERE customer_no = ?",
    "deleted": "UPDATE customers SET status = 'X', changed_at = ? WHERE customer_no = ?",
    "activated": "UPDATE customers SET contract_status = 'active', changed_at = ? "
    "WHERE customer_no = ?",
}


def apply_common_edits(db: sqlite3.Connection, edits: dict[str, list[str]], now: str) -> None:
    """Run the renamed/deleted/activated edits listed in ``edits`` (customer numbers)."""
    for kind, sql in _COMMON_EDITS.items():
        db.executemany(sql, [(now, c) for c in edits.get(kind, [])])


def edit_erp(path: str | Path, seed: int = DEFAULT_SEED) -> dict[str, list[str]]:
    """Change the ERP after the first sync; return the customer numbers per kind of edit."""
    rng = random.Random(seed + 2)
    now = fmt_ts(utcnow())
    with _connect(path) as db:
        active = [
            r[0]
            for r in db.execute(
                "SELECT customer_no FROM customers WHERE contract_status = 'active' "
                "AND status != 'X' ORDER BY customer_no"
            )
        ]
        inactive = [
            r[0]
            for r in db.execute(
                "SELECT customer_no FROM customers WHERE contract_status != 'active' "
                "AND status != 'X' ORDER BY customer_no"
            )
        ]
        picked = rng.sample(active, 33)  # distinct customers for each kind of edit
        edits = {
            "renamed": sorted(picked[:20]),
            "credit_changed": sorted(picked[20:30]),
            "deleted": sorted(picked[30:33]),
            "activated": sorted(rng.sample(inactive, 5)),
        }
        db.executemany(
            "UPDATE customers SET credit_limit = ?, changed_at = ? WHERE customer_no = ?",
            [(rng.randrange(100, 5000) * 100.0, now, c) for c in edits["credit_changed"]],
        )
        apply_common_edits(db, edits, now)
    return edits


def edit_crm(
    path: str | Path, seed: int = DEFAULT_SEED, exclude: Collection[str] = ()
) -> dict[str, str]:
    """Change the email of 5 CRM companies that carry a customer number (synced ones),
    skipping the numbers in ``exclude``; return {customer number: new email}."""
    rng = random.Random(seed + 3)
    now = fmt_ts(utcnow())
    with _connect(path) as db:
        synced = [
            r[0]
            for r in db.execute(
                "SELECT org_number FROM company WHERE org_number LIKE 'C%' "
                "AND status IN ('Active', 'Inactive') ORDER BY org_number"
            )
            if r[0] not in exclude
        ]
        changed = {c: f"accounts.{c.lower()}@crm-updated.example" for c in rng.sample(synced, 5)}
        db.executemany(
            "UPDATE company SET email = ?, updated_at = ? WHERE org_number = ?",
            [(email, now, c) for c, email in changed.items()],
        )
    return dict(sorted(changed.items()))


def run_cli(console: Console, args: Sequence[str], max_lines: int | None = None) -> int:
    """Run ``python -m crmsync ARGS`` and stream its output; return its exit code.

    With ``max_lines`` the output is captured and cut after that many lines."""
    cmd = [*CLI, *args]
    console.rule(f"[bold]$ crmsync {' '.join(args)}")
    sys.stdout.flush()
    env = dict(os.environ)
    if max_lines is not None or not sys.stdout.isatty():
        # Output to a pipe or log: let rich's tables use a readable width.
        env.setdefault("COLUMNS", str(max(shutil.get_terminal_size().columns, 140)))
    if max_lines is None:
        return subprocess.run(cmd, check=False, env=env).returncode
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as proc:
        assert proc.stdout is not None
        shown = hidden = 0
        for line in proc.stdout:
            if shown < max_lines:
                sys.stdout.write(line)
                shown += 1
            else:
                hidden += 1
        if hidden:
            console.print(f"[dim]... {hidden} more lines[/dim]")
        return proc.wait()


def _scalar(db: sqlite3.Connection, sql: str, params: Sequence[object] = ()) -> int:
    return int(db.execute(sql, params).fetchone()[0])


def summary(
    console: Console,
    erp_path: str | Path,
    crm_path: str | Path,
    erp_edits: dict[str, list[str]],
    crm_edits: dict[str, str],
) -> None:
    """Print what the two databases hold after the demo."""
    with _connect(erp_path) as erp, _connect(crm_path) as crm:
        active = _scalar(
            erp, "SELECT count(*) FROM customers WHERE contract_status='active' AND status!='X'"
        )
        renamed = sum(
            _scalar(
                crm,
                "SELECT count(*) FROM company c WHERE org_number = ? AND name = ?",
                (c, erp.execute("SELECT name FROM customers WHERE customer_no=?", (c,))
                 .fetchone()[0]),
            )
            for c in erp_edits["renamed"]
        )
        emails_back = sum(
            _scalar(erp, "SELECT count(*) FROM customers WHERE customer_no=? AND email=?", (c, e))
            for c, e in crm_edits.items()
        )
        rows = [
            ("ERP customers", _scalar(erp, "SELECT count(*) FROM customers")),
            ("ERP customers with an active contract (not deleted)", active),
            ("CRM companies", _scalar(crm, "SELECT count(*) FROM company")),
            ("CRM companies with an org_number",
             _scalar(crm, "SELECT count(*) FROM company WHERE org_number IS NOT NULL")),
            ("CRM companies with status Deleted",
             _scalar(crm, "SELECT count(*) FROM company WHERE status = 'Deleted'")),
            (f"ERP renames visible in the CRM (of {len(erp_edits['renamed'])})", renamed),
            (f"CRM email edits written back to the ERP (of {len(crm_edits)})", emails_back),
        ]
    table = Table(title="Demo summary (read from erp.db and crm.db)")
    table.add_column("what")
    table.add_column("count", justify="right")
    for what, n in rows:
        table.add_row(what, str(n))
    console.print(table)


def reset(folder: Path) -> None:
    """Remove what an earlier demo run left, so every run starts from scratch."""
    for name in (ERP_DB, CRM_DB, STATE_DB, CONFIG):
        for suffix in ("", "-journal", "-wal", "-shm"):
            (folder / (name + suffix)).unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crmsync.demo", description=__doc__)
    parser.add_argument("--customers", type=int, default=DEFAULT_CUSTOMERS,
                        help="number of ERP customers (default %(default)s)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    if args.customers < 500:
        parser.error("--customers must be at least 500")

    console = Console()
    here = Path.cwd()
    reset(here)
    # Secrets come from the environment: the config says ${ERP_DB_URL}.
    os.environ["ERP_DB_URL"] = f"sqlite:///{ERP_DB}"

    console.rule("[bold]1. Sample data")
    t0 = time.perf_counter()
    n = build_erp(here / ERP_DB, args.customers, args.seed)
    matched, unrelated = build_crm(here / CRM_DB, here / ERP_DB, args.seed)
    write_config(here / CONFIG)
    with _connect(here / ERP_DB) as erp:
        active = _scalar(erp, "SELECT count(*) FROM customers WHERE contract_status='active'")
        unstamped = _scalar(erp, "SELECT count(*) FROM customers WHERE changed_at IS NULL")
    console.print(
        f"{ERP_DB}: {n} customers, {active} with an active contract, "
        f"{unstamped} never stamped (changed_at NULL)\n"
        f"{CRM_DB}: {matched} companies already carrying an active customer's number "
        f"(with stale names), {unrelated} unrelated\n"
        f"{CONFIG}: written; ERP_DB_URL={os.environ['ERP_DB_URL']} is set in the environment\n"
        f"[dim](built in {time.perf_counter() - t0:.2f}s in {here})[/dim]",
        soft_wrap=True,
    )
    console.print(CONFIG_TEXT, markup=False, highlight=False, soft_wrap=True)

    steps: list[tuple[str, list[str], int | None]] = [
        ("2. Validate the config and the live systems", ["check"], None),
        ("3. Dry run: what the first sync would do", ["plan"], None),
        ("4. First sync: the initial migration", ["sync"], None),
    ]
    for title, cli_args, limit in steps:
        console.rule(f"[bold]{title}")
        if (rc := run_cli(console, cli_args, limit)) != 0:
            console.print(f"[red]crmsync {' '.join(cli_args)} failed (exit {rc})")
            return rc

    console.rule("[bold]5. Changes on both sides")
    erp_edits = edit_erp(here / ERP_DB, args.seed)
    crm_edits = edit_crm(here / CRM_DB, args.seed, exclude=erp_edits["deleted"])
    console.print(
        f"ERP: renamed {len(erp_edits['renamed'])} customers, changed "
        f"{len(erp_edits['credit_changed'])} credit limits, marked "
        f"{len(erp_edits['deleted'])} as deleted (status X: {', '.join(erp_edits['deleted'])}), "
        f"gave {len(erp_edits['activated'])} more an active contract "
        f"({', '.join(erp_edits['activated'])})\n"
        f"CRM: changed the email of {len(crm_edits)} synced companies "
        f"({', '.join(crm_edits)})",
        soft_wrap=True,
    )

    steps = [
        ("6. Dry run of the incremental pass", ["plan"], None),
        ("7. Incremental sync", ["sync"], None),
        ("8. Fields that were rejected, with the reason",
         ["log", "--link", "customers", "--status", "rejected", "--limit", "12"], LOG_LINES),
    ]
    for title, cli_args, limit in steps:
        console.rule(f"[bold]{title}")
        if (rc := run_cli(console, cli_args, limit)) != 0:
            console.print(f"[red]crmsync {' '.join(cli_args)} failed (exit {rc})")
            return rc

    console.rule("[bold]9. Result")
    summary(console, here / ERP_DB, here / CRM_DB, erp_edits, crm_edits)
    console.print(
        f"Explore further in {here}, for example:\n"
        f"  export ERP_DB_URL={os.environ['ERP_DB_URL']}\n"
        f"  {Path(sys.executable).parent / 'crmsync'} log --record "
        f"erp.customer:{erp_edits['renamed'][0]}\n"
        f"  {Path(sys.executable).parent / 'crmsync'} plan    # nothing left to do",
        soft_wrap=True,
        highlight=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
