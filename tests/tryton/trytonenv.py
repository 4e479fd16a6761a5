"""A real Tryton 8.2 server per test, started from a template database built once.

The template (``trytond-admin`` + an RPC bootstrap: currency, own company,
employee, relation types, categories) takes about 15-25 s to build, so it is
cached across pytest runs in a temp directory keyed by the installed Tryton
versions and by ``BOOTSTRAP_VERSION``; a file lock makes concurrent pytest
processes build it once. Each test copies the SQLite file (about 1 ms) and
starts its own ``trytond`` on a free loopback port (about 1-2 s).

Other suites use it with, in their conftest.py (this directory is only on
``sys.path`` once its own conftest has been imported)::

    sys.path.insert(0, str(Path(__file__).parents[1] / "tryton"))
    from trytonenv import *  # noqa: E402, F403
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from crmsync.connectors.tryton_rpc import TrytonRPC

__all__ = [
    "ADMIN_PASSWORD",
    "DATABASE",
    "TRYTON_VENV",
    "TrytonServer",
    "TrytonTemplate",
    "ensure_tryton_venv",
    "free_port",
    "get_template",
    "tryton",
    "tryton_template",
]

REPO = Path(__file__).resolve().parents[2]
TRYTON_VENV = REPO / ".venv-tryton"
# Same pins as the Makefile's TRYTON_PKGS (used when `make` is not available).
TRYTON_PKGS = [
    "trytond==8.2.*",
    "trytond-party==8.2.*",
    "trytond-company==8.2.*",
    "trytond-sale-opportunity==8.2.*",
    "trytond-party-relationship==8.2.*",
]
MODULES = ["party", "company", "sale_opportunity", "party_relationship"]
DATABASE = "crm"
ADMIN_USER = "admin"
# A test-only password: the cached template is built with it, so it must be fixed.
ADMIN_PASSWORD = "crmsync-test-admin"
# Bump when the bootstrap below changes, so cached templates are rebuilt.
BOOTSTRAP_VERSION = 1
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock across processes (another pytest may be building too)."""
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_tryton_venv() -> Path:
    """Install .venv-tryton the way `make install-tryton` does, if it is missing."""
    trytond = TRYTON_VENV / "bin" / "trytond"
    if trytond.exists() and (TRYTON_VENV / "bin" / "trytond-admin").exists():
        return TRYTON_VENV
    repo_key = hashlib.sha1(str(REPO).encode()).hexdigest()[:8]
    # The lock lives outside the repo so it never shows up in `git status`.
    with _lock(Path(tempfile.gettempdir()) / f"crmsync-venv-tryton-{repo_key}.lock"):
        if trytond.exists():
            return TRYTON_VENV
        if shutil.which("make"):
            subprocess.run(["make", "-C", str(REPO), "install-tryton"], check=True)
        else:
            if not (TRYTON_VENV / "bin" / "python").exists():
                subprocess.run([sys.executable, "-m", "venv", str(TRYTON_VENV)], check=True)
            pip = [str(TRYTON_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
            subprocess.run([*pip, "--disable-pip-version-check", *TRYTON_PKGS], check=True)
    return TRYTON_VENV


def _tryton_versions() -> str:
    """``trytond-8.2.1`` plus a digest of every installed trytond* distribution."""
    site = next((TRYTON_VENV / "lib").glob("python*/site-packages"))
    dists = sorted(p.name for p in site.glob("trytond*.dist-info"))
    core = next((d for d in dists if d.startswith("trytond-")), "trytond-unknown")
    version = core.removesuffix(".dist-info")
    digest = hashlib.sha1(f"{dists}{MODULES}{BOOTSTRAP_VERSION}".encode()).hexdigest()[:8]
    return f"{version}-{digest}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tryton_env(db_dir: Path, port: int | None = None) -> dict[str, str]:
    # Drop any TRYTOND_* of the caller so only these settings apply.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRYTOND")}
    env["TRYTOND_DATABASE__URI"] = "sqlite://"
    env["TRYTOND_DATABASE__PATH"] = str(db_dir)
    if port is not None:
        env["TRYTOND_WEB__LISTEN"] = f"127.0.0.1:{port}"
    return env


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _server_answers(url: str) -> bool:
    try:
        r = httpx.post(
            url + "/rpc/",
            json={"id": 0, "method": "common.server.version", "params": []},
            timeout=2.0,
        )
    except httpx.TransportError:
        return False
    return r.status_code == 200


@dataclass
class TrytonServer:
    """One ``trytond`` on loopback; ``stop()``/``start()`` keep the port and the DB file.

    The ``*_id`` attributes are the records the template's bootstrap created.
    """

    db_dir: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    database: str = DATABASE
    user: str = ADMIN_USER
    password: str = field(default=ADMIN_PASSWORD, repr=False)
    user_id: int = 0
    currency_id: int = 0
    company_id: int = 0
    company_party_id: int = 0
    employee_id: int = 0
    employee_party_id: int = 0
    relation_employee_of_id: int = 0
    relation_employer_id: int = 0
    category_company_id: int = 0
    category_person_id: int = 0
    start_seconds: float = 0.0  # how long the last start() took
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _clients: list[TrytonRPC] = field(default_factory=list, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.db_dir / f"{self.database}.sqlite"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start trytond and wait (bounded) until it answers JSON-RPC."""
        if self.running:
            return
        started = time.monotonic()
        log = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                [str(TRYTON_VENV / "bin" / "trytond"), "-d", self.database],
                env=_tryton_env(self.db_dir, self.port),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.db_dir,
            )
        finally:
            log.close()
        deadline = started + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if _server_answers(self.url):
                self.start_seconds = time.monotonic() - started
                return
            time.sleep(0.05)
        code = self._proc.poll()
        self.stop()
        raise RuntimeError(
            f"trytond on port {self.port} did not answer within {START_TIMEOUT:.0f} s "
            f"(exit code {code}); log {self.log_path}:\n{_tail(self.log_path)}"
        )

    def stop(self) -> None:
        """SIGTERM, wait, SIGKILL if it lingers."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)

    def rpc(self, timeout: float = 30.0) -> TrytonRPC:
        """A logged-in client, closed at teardown."""
        client = TrytonRPC(self.url, self.database, self.user, self.password, timeout=timeout)
        self._clients.append(client)
        client.login()
        return client

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        self.stop()


@dataclass(frozen=True)
class TrytonTemplate:
    """The cached, bootstrapped database: copy ``db_path``, never start on it."""

    dir: Path
    ids: dict[str, int]
    version: str
    build_seconds: float  # 0.0 when reused from the cache

    @property
    def db_path(self) -> Path:
        return self.dir / f"{DATABASE}.sqlite"

    def copy_to(self, target_dir: Path) -> Path:
        target = target_dir / f"{DATABASE}.sqlite"
        shutil.copyfile(self.db_path, target)
        return target


def _bootstrap(rpc: TrytonRPC) -> dict[str, int]:
    """What an opportunity needs (currency, company, employee) plus relation types
    and categories, as a CRM admin would set them up once."""
    m = "model."
    [currency] = rpc.call(
        m + "currency.currency.create",
        [{"name": "US Dollar", "symbol": "$", "code": "USD", "digits": 2}],
    )
    [company_party] = rpc.call(m + "party.party.create", [{"name": "crmsync Inc"}])
    [company] = rpc.call(
        m + "company.company.create", [{"party": company_party, "currency": currency}]
    )
    [employee_party] = rpc.call(m + "party.party.create", [{"name": "Sam Sales"}])
    [employee] = rpc.call(
        m + "company.employee.create", [{"party": employee_party, "company": company}]
    )
    rpc.call(
        m + "res.user.write",
        [rpc.uid],
        {
            "companies": [["add", [company]]],
            "company": company,
            "employees": [["add", [employee]]],
            "employee": employee,
        },
    )
    [employee_of] = rpc.call(m + "party.relation.type.create", [{"name": "Employee of"}])
    [employer] = rpc.call(
        m + "party.relation.type.create", [{"name": "Employer", "reverse": employee_of}]
    )
    rpc.call(m + "party.relation.type.write", [employee_of], {"reverse": employer})
    cat_company, cat_person = rpc.call(
        m + "party.category.create", [{"name": "Company"}, {"name": "Person"}]
    )
    return {
        "user_id": int(rpc.uid or 0),
        "currency_id": currency,
        "company_id": company,
        "company_party_id": company_party,
        "employee_id": employee,
        "employee_party_id": employee_party,
        "relation_employee_of_id": employee_of,
        "relation_employer_id": employer,
        "category_company_id": cat_company,
        "category_person_id": cat_person,
    }


def _template_ok(path: Path) -> dict[str, int] | None:
    """The template's ids when it is complete and readable, else None."""
    try:
        ids = json.loads((path / "ids.json").read_text())
        with contextlib.closing(
            sqlite3.connect(f"file:{path / 'crm.sqlite'}?mode=ro", uri=True)
        ) as c:
            (activated,) = c.execute(
                "SELECT count(*) FROM ir_module WHERE state = 'activated' AND name IN "
                "('party', 'company', 'sale_opportunity', 'party_relationship')"
            ).fetchone()
            (companies,) = c.execute("SELECT count(*) FROM company_company").fetchone()
    except (OSError, ValueError, sqlite3.Error):
        return None
    if activated != len(MODULES) or companies < 1:
        return None
    return {str(k): int(v) for k, v in ids.items()}


def _build_template(target: Path) -> None:
    """trytond-admin, then the RPC bootstrap, into a scratch dir renamed to ``target``."""
    build = Path(tempfile.mkdtemp(prefix=target.name + ".build-", dir=target.parent))
    try:
        db = build / f"{DATABASE}.sqlite"
        db.touch()  # trytond-admin refuses a SQLite database whose file does not exist
        passfile = build / "admin-password"
        passfile.write_text(ADMIN_PASSWORD)
        env = _tryton_env(build)
        env["TRYTONPASSFILE"] = str(passfile)
        log = build / "build.log"
        with log.open("wb") as fh:
            done = subprocess.run(
                [
                    str(TRYTON_VENV / "bin" / "trytond-admin"),
                    "-d",
                    DATABASE,
                    "--email",
                    "admin@example.com",
                    "-u",
                    *MODULES,
                    "--activate-dependencies",
                ],
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=build,
                timeout=300,
            )
        passfile.unlink()
        if done.returncode:
            raise RuntimeError(f"trytond-admin failed ({done.returncode}):\n{_tail(log)}")
        server = TrytonServer(db_dir=build, log_path=log)
        server.start()
        try:
            rpc = server.rpc()
            ids = _bootstrap(rpc)
        finally:
            server.close()
        # trytond runs SQLite in WAL mode and SIGTERM leaves the WAL behind:
        # fold it into the main file so copying crm.sqlite alone is complete.
        with contextlib.closing(sqlite3.connect(db)) as c:
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            c.execute("PRAGMA journal_mode = DELETE")
        (build / "ids.json").write_text(json.dumps(ids, indent=1))
        if target.exists():
            shutil.rmtree(target)
        build.rename(target)
    finally:
        if build.exists():
            shutil.rmtree(build, ignore_errors=True)


def get_template() -> TrytonTemplate:
    ensure_tryton_venv()
    version = _tryton_versions()
    target = Path(tempfile.gettempdir()) / f"crmsync-tryton-template-{version}"
    with _lock(target.with_name(target.name + ".lock")):
        ids = _template_ok(target)
        if ids is not None:
            return TrytonTemplate(target, ids, version, 0.0)
        started = time.monotonic()
        _build_template(target)
        ids = _template_ok(target)
        if ids is None:
            raise RuntimeError(f"the Tryton template in {target} is unusable after a build")
        return TrytonTemplate(target, ids, version, time.monotonic() - started)


@pytest.fixture(scope="session")
def tryton_template() -> TrytonTemplate:
    """The bootstrapped template database (built on first use, then cached)."""
    return get_template()


@pytest.fixture
def tryton(tryton_template: TrytonTemplate, tmp_path: Path) -> Iterator[TrytonServer]:
    """A fresh Tryton server on a copy of the template, stopped at teardown."""
    db_dir = tmp_path / "tryton"
    db_dir.mkdir()
    tryton_template.copy_to(db_dir)
    server = TrytonServer(db_dir=db_dir, log_path=tmp_path / "trytond.log", **tryton_template.ids)
    server.start()
    try:
        yield server
    finally:
        server.close()
