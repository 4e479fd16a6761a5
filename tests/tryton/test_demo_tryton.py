"""``python -m crmsync.demo.tryton`` end to end, as ``make demo-tryton`` runs it.

The first run builds the demo's own Tryton database with trytond-admin (a real
build, about 15-20 s), so one folder is shared: first run, second run (reuses
the template), then a run stopped with Ctrl-C (SIGINT).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from trytonenv import TRYTON_VENV, ensure_tryton_venv

FIRST_RUN_TIMEOUT = 240  # the trytond-admin build included
RUN_TIMEOUT = 90


@dataclass
class Run:
    code: int
    out: str
    seconds: float


def demo_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRYTON_PASSWORD"}
    env["COLUMNS"] = "200"  # rich wraps nothing at this width: assertions see whole lines
    return env


def demo_cmd() -> list[str]:
    return [sys.executable, "-m", "crmsync.demo.tryton", "--tryton-venv", str(TRYTON_VENV)]


def run_demo(folder: Path, timeout: float) -> Run:
    started = time.monotonic()
    done = subprocess.run(
        demo_cmd(), cwd=folder, env=demo_env(), capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip
    return Run(done.returncode, done.stdout + done.stderr, time.monotonic() - started)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose; only a live process has a non-Z state.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return True


def trytond_pid(out: str) -> int:
    m = re.search(r"trytond \(pid (\d+)\) answers at", out)
    assert m, out
    return int(m.group(1))


def count(out: str, label: str) -> int:
    """A number from the summary table: the row whose text starts with ``label``."""
    m = re.search(re.escape(label) + r"[^│\n]*│\s*(\d+)", out)
    assert m, f"no summary row {label!r} in:\n{out}"
    return int(m.group(1))


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    ensure_tryton_venv()
    path = tmp_path_factory.mktemp("demo-tryton")
    yield path
    # A demo killed by a timeout leaves its trytond: stop that one (its PID file).
    pid_file = path / "trytond.pid"
    with contextlib.suppress(OSError, ValueError, ProcessLookupError):
        os.kill(int(pid_file.read_text()), signal.SIGTERM)


@pytest.fixture(scope="module")
def first(folder: Path) -> Run:
    run = run_demo(folder, FIRST_RUN_TIMEOUT)
    assert run.code == 0, run.out
    return run


def test_first_run_builds_tryton_syncs_and_reports(first: Run, folder: Path) -> None:
    out = first.out
    assert "generated into admin-password" in out
    assert "building the Tryton database" in out
    assert "crmsync.yaml: OK" in out
    # The summary, read back from Tryton: 40 stale companies matched on code (plus the
    # one whose contract became active later), two archived after an ERP delete.
    active = count(out, "ERP customers with an active contract")
    matched = count(out, "  matched:")
    created = count(out, "  created by crmsync")
    assert matched == 41
    assert matched + created == active
    assert count(out, "  archived after an ERP delete") == 2
    assert count(out, "active ERP customers missing in Tryton") == 0
    assert count(out, "ERP renames visible in Tryton") == 5
    assert count(out, "timeline notes (ir.note)") >= matched + created
    assert "Fields updated: email = office@" in out  # the highlighted record's timeline
    m = re.search(r"\n(crm\.company:\d+)\s+(tryton://127\.0\.0\.1:\d+/crm/model/party\.party/\d+)",
                  out)  # fmt: skip
    assert m and m.group(2).endswith("/" + m.group(1).split(":")[1]), out
    assert re.search(r"\nerp\.customer:C\d+\s+https://erp\.example/customers/C\d+", out)
    # trytond was stopped with SIGTERM, and nothing is left running.
    pid = trytond_pid(out)
    assert f"stopped trytond (pid {pid}, SIGTERM)" in out
    assert not alive(pid)
    assert not (folder / "trytond.pid").exists()


def test_the_password_stays_in_its_file(first: Run, folder: Path) -> None:
    passfile = folder / "admin-password"
    assert passfile.stat().st_mode & 0o777 == 0o600
    password = passfile.read_text().strip()
    assert len(password) >= 20
    for text in (first.out, (folder / "crmsync.yaml").read_text(),
                 (folder / "trytond.log").read_text(errors="replace")):  # fmt: skip
        assert password not in text
    assert "${TRYTON_PASSWORD}" in (folder / "crmsync.yaml").read_text()


def test_tryton_holds_the_erp_as_the_link_says(first: Run, folder: Path) -> None:
    """Read the stopped server's database file: what the demo claims is really there."""
    with contextlib.closing(sqlite3.connect(folder / "erp.db")) as erp:
        customers = {
            r[0]: r[1:]
            for r in erp.execute(
                "SELECT customer_no, name, email, contract_status, status FROM customers"
            )
        }
    uri = f"file:{folder / 'tryton' / 'crm.sqlite'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as crm:
        parties = {
            r[0]: r[1:]
            for r in crm.execute(
                "SELECT p.code, p.name, p.active, (SELECT value FROM party_contact_mechanism m"
                " WHERE m.party = p.id AND m.type = 'email' ORDER BY m.id LIMIT 1)"
                " FROM party_party p WHERE p.code LIKE 'C%'"
            )
        }
        (notes,) = crm.execute(
            "SELECT count(*) FROM ir_note WHERE message LIKE 'Sync completed%'"
        ).fetchone()
    wanted = {c for c, r in customers.items() if r[2] == "active" and r[3] != "X"}
    deleted = {c for c, r in customers.items() if r[2] == "active" and r[3] == "X"}
    assert len(deleted) == 2
    for c in wanted:
        name, email = customers[c][0], customers[c][1]
        assert parties[c] == (name, 1, email), c
    for c in deleted:
        assert parties[c][1] == 0  # archived
    assert notes >= len(wanted)


def test_second_run_reuses_the_template(first: Run, folder: Path) -> None:
    run = run_demo(folder, RUN_TIMEOUT)
    assert run.code == 0, run.out
    assert "read from admin-password" in run.out
    assert "reusing the Tryton database template" in run.out
    assert "building the Tryton database" not in run.out
    # Same story, same numbers: every run starts from fresh data.
    for label in ("  matched:", "  created by crmsync", "  archived after an ERP delete"):
        assert count(run.out, label) == count(first.out, label)
    assert not alive(trytond_pid(run.out))
    assert run.seconds < 60, run.seconds


def test_ctrl_c_stops_trytond(first: Run, folder: Path) -> None:
    proc = subprocess.Popen(
        demo_cmd(), cwd=folder, env=demo_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        seen = ""
        deadline = time.monotonic() + RUN_TIMEOUT
        while "answers at" not in seen and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
        pid = trytond_pid(seen)
        assert alive(pid)
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends the demo (trytond has its own session)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = seen + rest
    assert proc.returncode == 130, out
    assert "interrupted" in out
    assert f"stopped trytond (pid {pid}, SIGTERM)" in out
    assert not alive(pid)
    assert not (folder / "trytond.pid").exists()
