"""Every CLI command against a matrix of broken configurations (a subprocess each).

No "Traceback" may reach the user; each command exits with the documented code
(0 success, 1 records failed, 2 bad configuration or arguments, 3 a system
unreachable) and names the file, line and key where the problem has one.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from dbs import MARIADB_ADMIN, _unavailable

GOOD = """\
state: {state}
systems:
  erp:
    connector: sql
    url: {erp_url}
    objects:
      customer: {{table: customers, key: customer_no, updated_at: changed_at}}
  crm:
    connector: sql
    url: {crm_url}
    objects:
      company: {{table: company, key: id, updated_at: updated_at}}
links:
  customers:
    source: erp.customer
    target: crm.company
    match: {{customer_no: org_number}}
    fields:
      - {{source: name, target: name}}
"""
# Line numbers in GOOD, for the file:line the problems must name.
STATE_LINE, ERP_URL_LINE, CRM_URL_LINE = 1, 5, 10
PASSWORD = "Wr0ngPassw0rd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Each command with its arguments. `touches`: what it reaches ("systems" also
# means the state database).
COMMANDS: dict[str, tuple[list[str], str]] = {
    "check": (["check"], "systems"),
    "plan": (["plan"], "systems"),
    "sync": (["sync"], "systems"),
    "log": (["log"], "state"),
    "open": (["open", "crm.company:1"], "systems"),
    "erase": (["erase", "crm.company:1", "--yes"], "systems"),
    "status": (["status"], "state"),
    "retry": (["retry"], "state"),
    "token list": (["token", "list"], "state"),
    "token create": (["token", "create", "--role", "viewer"], "state"),
    "serve": (["serve", "--port", "{port}"], "systems"),
    "worker": (["worker"], "systems"),
}


@dataclass
class Broken:
    """One broken configuration: what to change in GOOD, and what every command must say."""

    changes: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    text: str | None = None  # the whole file instead of GOOD with changes
    file: str | None = "bad.yaml"  # None: the config file does not exist
    # Where the problem is found: "load" (every command), "systems" (commands
    # that reach the systems), "state" (every command that opens the state).
    found: str = "load"
    code: int = 2
    where: str = ""  # "bad.yaml:LINE key.path" the message must contain
    says: str = ""  # a phrase of the message
    not_said: tuple[str, ...] = ()  # secrets that must never be printed
    # Commands that are right to keep running (a service pauses a link whose system
    # is down): not run here, tests/service covers them.
    skip: tuple[str, ...] = ()


def _good(**kw: str) -> dict[str, str]:
    return {"state": "sqlite:///state.db", "erp_url": "sqlite:///erp.db",
            "crm_url": "sqlite:///crm.db"} | kw


MISSING_DB = "crmsync_no_such_db"
CASES: dict[str, Broken] = {
    "missing config file": Broken(file=None, where="nosuch.yaml", says="not found"),
    "YAML syntax error": Broken(
        text=GOOD.format(**_good()).replace("objects:\n      customer:", "objects:\n   - x: [",
                                            1),
        where="bad.yaml:", says="invalid YAML"),
    "unknown key": Broken(
        text=GOOD.format(**_good()).replace("key: customer_no,", "kee: customer_no,"),
        where="bad.yaml:7 systems.erp.objects.customer.kee", says="unknown key 'kee'"),
    "wrong type": Broken(
        text=GOOD.format(**_good()).replace("match:", "create: maybe\n    match:"),
        where="bad.yaml:17 links.customers.create", says="true or false"),
    "URL without scheme": Broken(
        {"erp_url": "erp.db"}, where=f"bad.yaml:{ERP_URL_LINE} systems.erp.url",
        says="sqlite:///PATH"),
    "sqlite:/ with one slash": Broken(
        {"crm_url": "sqlite:/crm.db"}, where=f"bad.yaml:{CRM_URL_LINE} systems.crm.url",
        says="sqlite:///relative/path.db"),
    "empty ${ERP_DB_URL}": Broken(
        {"erp_url": "${ERP_DB_URL}"}, env={"ERP_DB_URL": ""},
        where=f"bad.yaml:{ERP_URL_LINE} systems.erp.url", says="the URL is empty"),
    "postgres:// dialect": Broken(
        {"crm_url": "postgres://postgres@127.0.0.1:5432/test"},
        where=f"bad.yaml:{CRM_URL_LINE} systems.crm.url", says="postgresql+psycopg://"),
    "mysql:// without driver": Broken(
        {"crm_url": "mysql://root@127.0.0.1:3306/test"}, found="systems",
        where=f"bad.yaml:{CRM_URL_LINE} systems.crm.url", says="mysql+pymysql://"),
    "Tryton URL without scheme": Broken(
        text=GOOD.format(**_good()).replace(
            "links:",
            "  tryton:\n    connector: tryton\n    url: localhost:8000\n    database: crm\n"
            "    password: x\n    objects:\n      company: {}\nlinks:"),
        where="bad.yaml:15 systems.tryton.url", says="expected http://HOST:PORT"),
    "state URL unknown dialect": Broken(
        {"state": "sqlit:///state.db"}, where=f"bad.yaml:{STATE_LINE} state",
        says="unknown database kind"),
    "state folder missing": Broken(
        {"state": "sqlite:///no/such/folder/state.db"}, found="state",
        where=f"bad.yaml:{STATE_LINE} state", says="does not exist"),
    "state MariaDB unknown database (1049)": Broken(
        {"state": f"mysql+pymysql://root@127.0.0.1:3306/{MISSING_DB}"}, found="state",
        where=f"bad.yaml:{STATE_LINE} state", says="database does not exist"),
    "mistyped SQLite path": Broken(
        {"crm_url": "sqlite:///crm_typo.db"}, found="systems",
        where=f"bad.yaml:{CRM_URL_LINE} systems.crm.url", says="does not exist"),
    "system file is not a database": Broken(
        {"crm_url": "sqlite:///notes.txt"}, found="systems",
        where=f"bad.yaml:{CRM_URL_LINE} systems.crm.url", says="not a SQLite database"),
    "state file is not a database": Broken(
        {"state": "sqlite:///notes.txt"}, found="state",
        where=f"bad.yaml:{STATE_LINE} state", says="not a SQLite database"),
    "MariaDB unknown database (1049)": Broken(
        {"crm_url": f"mysql+pymysql://root@127.0.0.1:3306/{MISSING_DB}"}, found="systems",
        where=f"bad.yaml:{CRM_URL_LINE} systems.crm.url", says="database does not exist"),
    "MariaDB wrong password (1045)": Broken(
        {"crm_url": "${CRM_DB_URL}"},
        env={"CRM_DB_URL": f"mysql+pymysql://root:{PASSWORD}@127.0.0.1:3306/test"},
        found="systems", where=f"bad.yaml:{CRM_URL_LINE} systems.crm.url",
        says="access denied", not_said=(PASSWORD,)),
    "system unreachable": Broken(
        {"crm_url": "postgresql+psycopg://postgres@127.0.0.1:1/crm"}, found="systems",
        code=3, says="unreachable", skip=("serve", "worker")),
}


def _expected(case: Broken, command: str) -> int:
    """The documented exit code of ``command`` on ``case``."""
    touches = COMMANDS[command][1]
    if case.found == "systems" and touches == "state":
        return 0  # it never reaches the systems: nothing is wrong for it
    return case.code


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        eng = sa.create_engine(MARIADB_ADMIN)
        with eng.connect():
            pass
        eng.dispose()
    except sa.exc.OperationalError as exc:
        _unavailable("MariaDB at 127.0.0.1:3306", exc)
    work = tmp_path_factory.mktemp("broken")
    with sqlite3.connect(work / "erp.db") as c:
        c.execute("CREATE TABLE customers (customer_no TEXT PRIMARY KEY, name TEXT, "
                  "changed_at DATETIME)")
        c.execute("INSERT INTO customers VALUES ('C1', 'Acme', '2024-01-01 00:00:00')")
    with sqlite3.connect(work / "crm.db") as c:
        c.execute("CREATE TABLE company (id INTEGER PRIMARY KEY, org_number TEXT, name TEXT, "
                  "updated_at DATETIME)")
    (work / "notes.txt").write_text("not a database\n" * 100)
    return work


def _run(work: Path, args: list[str], cfg: str, env: dict[str, str]) -> tuple[int, str]:
    full = {**os.environ, "COLUMNS": "200", **env}
    full.pop("CRMSYNC_DEBUG", None)
    try:
        r = subprocess.run(
            [sys.executable, "-m", "crmsync", *args, "-c", cfg], cwd=work, env=full,
            capture_output=True, text=True, timeout=60,
        )
    except subprocess.TimeoutExpired as exc:  # a service that started: a failure
        return -1, f"timed out after 60 s: {exc.stdout!r} {exc.stderr!r}"
    return r.returncode, r.stdout + r.stderr


@pytest.mark.parametrize("name", list(CASES))
def test_every_command_names_the_problem_and_exits_with_its_code(work: Path, name: str) -> None:
    case = CASES[name]
    cfg = "nosuch.yaml"
    if case.file is not None:
        cfg = f"{name.replace(' ', '_').replace('/', '_')}.yaml"
        text = case.text if case.text is not None else GOOD.format(**_good(**case.changes))
        (work / cfg).write_text(text)
    before = sorted(p.name for p in work.iterdir())

    def one(command: str) -> tuple[str, int, str]:
        args = [a.replace("{port}", str(_free_port())) for a in COMMANDS[command][0]]
        code, output = _run(work, args, cfg, case.env)
        return command, code, output

    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(one, [c for c in COMMANDS if c not in case.skip]))
    wrong = []
    for command, code, output in results:
        want = _expected(case, command)
        where = case.where.replace("bad.yaml", cfg)
        bad = []
        if "Traceback" in output:
            bad.append("a traceback")
        if code != want:
            bad.append(f"exit {code}, expected {want}")
        if want == case.code and where and where not in output:
            bad.append(f"no {where!r}")
        if want == case.code and case.says and case.says not in output:
            bad.append(f"no {case.says!r}")
        bad += [f"printed the secret {s!r}" for s in case.not_said if s in output]
        if bad:
            wrong.append(f"{command}: {', '.join(bad)}\n{output}")
    assert not wrong, "\n\n".join(wrong)
    # A broken config creates nothing: no SQLite file for a mistyped path, no state
    # (commands that never reach the broken system open the state as usual).
    new = set(p.name for p in work.iterdir()) - set(before)
    if case.found == "systems":
        new -= {"state.db", "state.db-wal", "state.db-shm"}
    assert not new
    assert not (work / "crm_typo.db").exists()
