"""A local Tryton server for the demo and the tests: build, bootstrap, run, stop.

``make demo-tryton`` and the Tryton test suite need the same thing: a SQLite
Tryton database made by ``trytond-admin`` and set up once over JSON-RPC the way
a CRM admin would (currency, own company, employee, relation types, the party
categories Company and Person), and a ``trytond`` on a free loopback port that
is always stopped afterwards. Building takes 15-25 s, so callers build a
*template* once (``build_template``) and copy its file for every run (about
1 ms).

Tryton lives in its own virtualenv (``.venv-tryton``, ``make install-tryton``)
so its dependencies never meet crmsync's: only its executables are run here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

from crmsync.connectors.tryton import TrytonRPC

__all__ = [
    "ADMIN_EMAIL",
    "ADMIN_TIMEOUT",
    "ADMIN_USER",
    "BOOTSTRAP_VERSION",
    "DATABASE",
    "MODULES",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "VENV_VARIABLE",
    "TrytonProcess",
    "answers",
    "bootstrap",
    "build_template",
    "compact",
    "find_venv",
    "free_port",
    "init_database",
    "installed_version",
    "read_password",
    "tail",
    "template_ids",
    "tryton_env",
]

# The Tryton modules a CRM needs (parties, companies, opportunities, relations).
MODULES: tuple[str, ...] = ("party", "company", "sale_opportunity", "party_relationship")
DATABASE = "crm"
ADMIN_USER = "admin"
ADMIN_EMAIL = "admin@example.com"
# Bump when ``bootstrap`` changes, so templates keyed by ``installed_version`` are rebuilt.
BOOTSTRAP_VERSION = 1
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
ADMIN_TIMEOUT = 300.0
# Where to look for the Tryton virtualenv before the checkout's .venv-tryton.
VENV_VARIABLE = "CRMSYNC_TRYTON_VENV"


def find_venv() -> Path:
    """The Tryton virtualenv: ``$CRMSYNC_TRYTON_VENV``, else the checkout's
    ``.venv-tryton`` (crmsync is installed editable), else the one whose
    ``trytond`` is on PATH. Raises when none has ``trytond``."""
    candidates: list[Path] = []
    if os.environ.get(VENV_VARIABLE):
        candidates.append(Path(os.environ[VENV_VARIABLE]))
    candidates.append(Path(__file__).resolve().parents[3] / ".venv-tryton")  # src/crmsync/testing/
    on_path = shutil.which("trytond")
    if on_path:
        candidates.append(Path(on_path).resolve().parent.parent)
    for venv in candidates:
        if (venv / "bin" / "trytond").exists() and (venv / "bin" / "trytond-admin").exists():
            return venv
    raise FileNotFoundError(
        "no Tryton installation found (looked in "
        + ", ".join(str(c) for c in candidates)
        + "); run `make install-tryton` or set " + VENV_VARIABLE
    )


def installed_version(venv: Path) -> str:
    """``trytond-8.2.1-<digest>``: the digest covers every installed trytond*
    distribution, ``MODULES`` and ``BOOTSTRAP_VERSION``, so it names a template
    that stays valid until one of them changes."""
    site = next((venv / "lib").glob("python*/site-packages"))
    dists = sorted(p.name for p in site.glob("trytond*.dist-info"))
    core = next((d for d in dists if d.startswith("trytond-")), "trytond-unknown")
    version = core.removesuffix(".dist-info")
    digest = hashlib.sha1(f"{dists}{list(MODULES)}{BOOTSTRAP_VERSION}".encode()).hexdigest()[:8]
    return f"{version}-{digest}"


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tryton_env(db_dir: Path, port: int | None = None) -> dict[str, str]:
    """The environment for trytond/trytond-admin: SQLite files in ``db_dir``,
    listening on 127.0.0.1:``port``. Any TRYTOND_* of the caller is dropped so
    only these settings apply."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRYTOND")}
    env["TRYTOND_DATABASE__URI"] = "sqlite://"
    env["TRYTOND_DATABASE__PATH"] = str(db_dir)
    if port is not None:
        env["TRYTOND_WEB__LISTEN"] = f"127.0.0.1:{port}"
    return env


def tail(path: Path, lines: int = 40) -> str:
    """The end of a log, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def answers(url: str, timeout: float = 2.0) -> bool:
    """Whether a Tryton server answers JSON-RPC at ``url`` (a server-level call, no login)."""
    try:
        r = httpx.post(
            url + "/rpc/",
            json={"id": 0, "method": "common.server.version", "params": []},
            timeout=timeout,
        )
    except httpx.TransportError:
        return False
    return r.status_code == 200


def read_password(password_file: Path) -> str:
    """The password in a TRYTONPASSFILE: trytond-admin wants exactly one line."""
    lines = password_file.read_text().splitlines()
    if len(lines) != 1 or not lines[0]:
        raise ValueError(f"{password_file} must hold the password on one line")
    return lines[0]


def init_database(
    venv: Path,
    db_dir: Path,
    password_file: Path,
    log_path: Path,
    *,
    database: str = DATABASE,
    modules: tuple[str, ...] = MODULES,
    timeout: float = ADMIN_TIMEOUT,
) -> None:
    """Create ``db_dir/<database>.sqlite`` with ``modules`` activated.

    The admin password comes from ``password_file`` (TRYTONPASSFILE), so it is
    never on a command line or prompted for; trytond-admin's output goes to
    ``log_path``.
    """
    # trytond-admin refuses a SQLite database whose file does not exist yet.
    (db_dir / f"{database}.sqlite").touch()
    env = tryton_env(db_dir)
    env["TRYTONPASSFILE"] = str(password_file)
    cmd = [
        str(venv / "bin" / "trytond-admin"), "-d", database, "--email", ADMIN_EMAIL,
        "-u", *modules, "--activate-dependencies",
    ]  # fmt: skip
    with log_path.open("ab") as fh:
        done = subprocess.run(
            cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=db_dir, timeout=timeout, check=False,
        )  # fmt: skip
    if done.returncode:
        raise RuntimeError(f"trytond-admin failed ({done.returncode}):\n{tail(log_path)}")


def bootstrap(rpc: TrytonRPC) -> dict[str, int]:
    """What an opportunity needs (currency, own company, employee on the admin
    user) plus relation types and the Company/Person categories, as a CRM
    admin sets them up once. Returns the new records' ids by name."""
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


def compact(db_path: Path) -> None:
    """Fold the WAL into the main file: trytond runs SQLite in WAL mode and a
    SIGTERM leaves the WAL behind, so copying the ``.sqlite`` alone would lose
    the newest writes."""
    with contextlib.closing(sqlite3.connect(db_path)) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        c.execute("PRAGMA journal_mode = DELETE")


@dataclass
class TrytonProcess:
    """One ``trytond`` on loopback; ``stop()``/``start()`` keep the port and the DB file.

    ``own_session`` starts it in its own session, so a Ctrl-C at the terminal
    reaches only the caller, which then stops it with SIGTERM.
    """

    db_dir: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    database: str = DATABASE
    user: str = ADMIN_USER
    password: str = field(default="", repr=False)
    venv: Path = field(default_factory=find_venv)
    own_session: bool = False
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

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start trytond and wait (bounded) until it answers JSON-RPC."""
        if self.running:
            return
        started = time.monotonic()
        log = self.log_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                [str(self.venv / "bin" / "trytond"), "-d", self.database],
                env=tryton_env(self.db_dir, self.port),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.db_dir,
                start_new_session=self.own_session,
            )
        finally:
            log.close()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if answers(self.url):
                self.start_seconds = time.monotonic() - started
                return
            time.sleep(0.05)
        code = self._proc.poll()
        self.stop()
        raise RuntimeError(
            f"trytond on port {self.port} did not answer within {timeout:.0f} s "
            f"(exit code {code}); log {self.log_path}:\n{tail(self.log_path)}"
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
        """A logged-in client, closed by ``close()``."""
        client = TrytonRPC(self.url, self.database, self.user, self.password, timeout=timeout)
        self._clients.append(client)
        client.login()
        return client

    def close(self) -> None:
        """Close the clients handed out, then stop the server."""
        for client in self._clients:
            client.close()
        self._clients.clear()
        self.stop()

    def __enter__(self) -> TrytonProcess:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def template_ids(path: Path, database: str = DATABASE) -> dict[str, int] | None:
    """The bootstrap's ids of the template in ``path`` when it is complete and
    readable, else None (a half-built or foreign directory is rebuilt)."""
    placeholders = ", ".join("?" for _ in MODULES)
    try:
        ids = json.loads((path / "ids.json").read_text())
        uri = f"file:{path / f'{database}.sqlite'}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as c:
            (activated,) = c.execute(
                "SELECT count(*) FROM ir_module WHERE state = 'activated' "
                f"AND name IN ({placeholders})",
                MODULES,
            ).fetchone()
            (companies,) = c.execute("SELECT count(*) FROM company_company").fetchone()
    except (OSError, ValueError, sqlite3.Error):
        return None
    if activated != len(MODULES) or companies < 1:
        return None
    return {str(k): int(v) for k, v in ids.items()}


def build_template(
    target: Path, password_file: Path, *, venv: Path, database: str = DATABASE
) -> dict[str, int]:
    """trytond-admin, then the RPC bootstrap, into a scratch directory renamed
    to ``target`` only when complete (an interrupted build leaves no half
    template). ``target`` then holds ``<database>.sqlite`` (WAL folded in, so
    it can be copied alone), ``ids.json`` and ``build.log``; returns the ids."""
    target.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=target.name + ".build-", dir=target.parent))
    try:
        log = build / "build.log"
        init_database(venv, build, password_file, log, database=database)
        server = TrytonProcess(
            db_dir=build, log_path=log, database=database,
            password=read_password(password_file), venv=venv,
        )  # fmt: skip
        server.start()
        try:
            ids = bootstrap(server.rpc())
        finally:
            server.close()
        compact(server.db_path)
        (build / "ids.json").write_text(json.dumps(ids, indent=1))
        if target.exists():
            shutil.rmtree(target)
        build.rename(target)
    finally:
        if build.exists():
            shutil.rmtree(build, ignore_errors=True)
    return ids
