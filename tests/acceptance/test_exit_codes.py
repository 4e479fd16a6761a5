"""The documented exit codes of the CLI (README "The CLI"), in a subprocess each:
0 success, 1 some records failed, 2 bad configuration or arguments, 3 a system
unreachable."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

CONFIG = """\
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
    links_to: "https://crm.example/{object}/{id}"
    objects:
      company: {table: company, key: id, updated_at: updated_at}
links:
  customers:
    source: erp.customer
    target: crm.company
    match: {customer_no: org_number}
    fields:
      - {source: name, target: name}
"""


def cli(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("CRMSYNC_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "crmsync", *args], cwd=work, env=env, capture_output=True,
        text=True, timeout=60,
    )


@pytest.fixture
def work(tmp_path: Path) -> Path:
    with sqlite3.connect(tmp_path / "erp.db") as c:
        c.execute("CREATE TABLE customers (customer_no TEXT PRIMARY KEY, name TEXT, "
                  "changed_at DATETIME)")
        c.executemany(
            "INSERT INTO customers VALUES (?, ?, '2024-01-01 00:00:00')",
            [("C1", "Acme"), ("C2", "Beta"), ("C3", "Acme")],  # C3's name is taken: fails
        )
    with sqlite3.connect(tmp_path / "crm.db") as c:
        c.execute("CREATE TABLE company (id INTEGER PRIMARY KEY, org_number TEXT, "
                  "name TEXT NOT NULL UNIQUE, updated_at DATETIME)")  # C3 cannot go in
    (tmp_path / "crmsync.yaml").write_text(CONFIG)
    return tmp_path


def test_sync_with_failed_records_exits_1_and_log_finds_them(work: Path) -> None:
    r = cli(work, "sync")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    r = cli(work, "log", "--status", "failed", "--json")
    assert r.returncode == 0, r.stderr
    failed = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert {f["source_ref"] for f in failed} == {"erp.customer:C3"}
    # the others were written: a run with failures still did its work
    with sqlite3.connect(work / "crm.db") as c:
        assert sorted(n for (n,) in c.execute("SELECT org_number FROM company")) == ["C1", "C2"]


def test_sync_and_plan_that_work_exit_0(work: Path) -> None:
    with sqlite3.connect(work / "erp.db") as c:
        c.execute("UPDATE customers SET name = 'Gamma' WHERE customer_no = 'C3'")
    assert cli(work, "plan").returncode == 0
    r = cli(work, "sync")
    assert r.returncode == 0, r.stdout + r.stderr


def test_unknown_link_or_status_exits_2_listing_the_valid_values(work: Path) -> None:
    for args in (("log", "--link", "nolink"), ("plan", "--link", "nolink"),
                 ("sync", "--link", "nolink")):
        r = cli(work, *args)
        assert r.returncode == 2, (args, r.stdout + r.stderr)
        assert "no link named 'nolink'" in r.stderr and "customers" in r.stderr, args
    r = cli(work, "log", "--status", "bogus")
    assert r.returncode == 2, r.stderr
    assert "unknown value 'bogus'" in r.stderr
    for value in ("ok", "failed", "rejected", "conflict", "skipped", "created", "updated",
                  "deleted", "matched", "erased"):
        assert value in r.stderr
        assert cli(work, "log", "--status", value).returncode == 0, value
    assert not (work / "state.db").exists()  # refused arguments wrote nothing
    for args in (("status", "--link", "nolink"), ("retry", "--link", "nolink")):
        r = cli(work, *args)
        assert r.returncode == 2 and "no link named 'nolink'" in r.stderr, args
    assert not (work / "state.db").exists()  # not even status/retry's refusals
    r = cli(work, "status")  # looking creates no state database either
    assert r.returncode == 0 and "customers" in r.stdout, r.stdout + r.stderr
    assert not (work / "state.db").exists()


def test_open_of_a_record_that_does_not_exist_exits_2(work: Path) -> None:
    r = cli(work, "open", "crm.company:999")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "crm.company:999 does not exist" in r.stderr
    r = cli(work, "open", "erp.customer:NOPE")
    assert r.returncode == 2 and "does not exist" in r.stderr
    # a record that exists but is paired with nothing yet: itself, with its URL
    r = cli(work, "open", "erp.customer:C1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["erp.customer:C1", "-"]
    assert cli(work, "sync").returncode == 1  # C3 fails (see above)
    r = cli(work, "open", "erp.customer:C1")
    assert r.returncode == 0, r.stderr
    assert "https://crm.example/company/1" in r.stdout
    # the CRM record is gone, but crmsync paired it: still shown, not "does not exist"
    with sqlite3.connect(work / "crm.db") as c:
        c.execute("DELETE FROM company WHERE id = 1")
    r = cli(work, "open", "crm.company:1")
    assert r.returncode == 0 and "erp.customer:C1" in r.stdout


def test_a_system_that_is_down_exits_3(work: Path) -> None:
    cfg = CONFIG.replace("url: sqlite:///crm.db",
                         "url: postgresql+psycopg://postgres@127.0.0.1:1/crm")
    (work / "down.yaml").write_text(cfg)
    for cmd in ("check", "plan", "sync"):
        r = cli(work, cmd, "-c", "down.yaml")
        assert r.returncode == 3, (cmd, r.stdout + r.stderr)
        assert "Traceback" not in r.stdout + r.stderr
    r = cli(work, "open", "crm.company:1", "-c", "down.yaml")
    assert r.returncode == 3 and "unreachable" in r.stderr


def test_serve_on_a_taken_port_or_a_bad_one_exits_2(work: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = cli(work, "serve", "--port", str(port))
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr
    assert "Traceback" not in r.stdout + r.stderr and "serving on" not in r.stdout
    for args in (("--port", "70000"), ("--host", "no.such.host.invalid", "--port", "0")):
        r = cli(work, "serve", *args)
        assert r.returncode == 2, (args, r.stdout + r.stderr)
        assert "Traceback" not in r.stdout + r.stderr
