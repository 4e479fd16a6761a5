"""The CLI starts without loading what only a command needs.

`crmsync --help` (and every command's start) imports the CLI package; SQLAlchemy,
pydantic and the state store are imported by the commands that use them. Checked by
what is imported, not by a timing (the benchmark times start-up).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

HEAVY = ("sqlalchemy", "pydantic", "ruamel.yaml", "crmsync.state.store", "crmsync.config.models",
         "crmsync.connectors", "crmsync.engine.runner", "fastapi")


def test_importing_the_cli_loads_no_command_dependency() -> None:
    code = (
        "import json, sys; import crmsync.cli; "
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=60, check=True)
    assert json.loads(p.stdout) == []


def test_help_still_lists_every_command() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.run([sys.executable, "-m", "crmsync", "--help"], capture_output=True,
                       text=True, env=env, timeout=60, check=True)
    for command in ("check", "plan", "sync", "log", "status", "retry", "erase", "serve",
                    "worker", "token", "schema", "open"):
        assert command in p.stdout, command


SQLITE_CONFIG = """\
state: sqlite:///state.db
systems:
  erp:
    connector: sql
    url: sqlite:///erp.db
    objects:
      customer: {table: customers, key: customer_no, updated_at: changed_at}
  crm:
    connector: sql
    url: sqlite:///crm.db
    objects:
      company: {table: company, key: id, updated_at: updated_at}
      account: {table: account, key: code}
links:
  customers:
    source: erp.customer
    target: crm.company
    match: {customer_no: org_number}
    fields:
      - {source: name, target: name}
  accounts:  # the target key comes from the source: creates are upserts
    source: erp.customer
    target: crm.account
    fields:
      - {source: customer_no, target: code}
      - {source: name, target: name}
"""


def test_a_sync_of_sqlite_systems_loads_no_other_database_dialect(tmp_path: Path) -> None:
    """SQLite state and systems: the PostgreSQL and MySQL dialects (~24 ms of every
    start) stay unloaded, through the first run (which creates the state) and the next."""
    with sqlite3.connect(tmp_path / "erp.db") as c:
        c.execute("CREATE TABLE customers (customer_no TEXT PRIMARY KEY, name TEXT, "
                  "changed_at DATETIME)")
        c.execute("INSERT INTO customers VALUES ('C1', 'Acme', '2024-01-01 00:00:00')")
    with sqlite3.connect(tmp_path / "crm.db") as c:
        c.execute("CREATE TABLE company (id INTEGER PRIMARY KEY, org_number TEXT, "
                  "name TEXT, updated_at DATETIME)")
        c.execute("CREATE TABLE account (code TEXT PRIMARY KEY, name TEXT)")
    (tmp_path / "crmsync.yaml").write_text(SQLITE_CONFIG)
    code = (
        "import atexit, json, sys\n"
        "atexit.register(lambda: print(json.dumps(sorted(m for m in sys.modules if m.startswith("
        "('sqlalchemy.dialects.postgresql', 'sqlalchemy.dialects.mysql'))))))\n"
        "sys.argv = ['crmsync', 'sync']\n"
        "from crmsync.cli import main\n"
        "main()\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "COLUMNS": "200"}
    for _ in range(2):
        p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                           text=True, env=env, timeout=60)
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout.strip().splitlines()[-1]) == []
    with sqlite3.connect(tmp_path / "crm.db") as c:
        assert c.execute("SELECT org_number, name FROM company").fetchall() == [("C1", "Acme")]
        assert c.execute("SELECT code, name FROM account").fetchall() == [("C1", "Acme")]
