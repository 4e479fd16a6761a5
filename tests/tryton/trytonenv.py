"""A real Tryton 8.2 server per test, started from a template database built once.

The template (``trytond-admin`` + an RPC bootstrap: currency, own company,
employee, relation types, categories; see ``crmsync.testing.tryton``, which the
Tryton demo shares) takes about 15-25 s to build, so it is cached across pytest
runs in a temp directory keyed by the installed Tryton versions and by
``BOOTSTRAP_VERSION``; a file lock makes concurrent pytest processes build it
once. Each test copies the SQLite file (about 1 ms) and starts its own
``trytond`` on a free loopback port (about 1-2 s).

Other suites use it with, in their conftest.py (this directory is only on
``sys.path`` once its own conftest has been imported)::

    sys.path.insert(0, str(Path(__file__).parents[1] / "tryton"))
    from trytonenv import *  # noqa: E402, F403
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from crmsync.testing.tryton import (
    ADMIN_USER,  # noqa: F401  (kept as names of this module)
    BOOTSTRAP_VERSION,  # noqa: F401
    DATABASE,
    MODULES,  # noqa: F401
    START_TIMEOUT,  # noqa: F401
    STOP_TIMEOUT,  # noqa: F401
    TrytonProcess,
    build_template,
    free_port,
    installed_version,
    template_ids,
)

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
# A test-only password: the cached template is built with it, so it must be fixed.
ADMIN_PASSWORD = "crmsync-test-admin"


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


@dataclass
class TrytonServer(TrytonProcess):
    """One ``trytond`` on loopback; ``stop()``/``start()`` keep the port and the DB file.

    The ``*_id`` attributes are the records the template's bootstrap created.
    """

    password: str = field(default=ADMIN_PASSWORD, repr=False)
    venv: Path = TRYTON_VENV
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


def get_template() -> TrytonTemplate:
    ensure_tryton_venv()
    version = installed_version(TRYTON_VENV)
    target = Path(tempfile.gettempdir()) / f"crmsync-tryton-template-{version}"
    with _lock(target.with_name(target.name + ".lock")):
        ids = template_ids(target)
        if ids is not None:
            return TrytonTemplate(target, ids, version, 0.0)
        started = time.monotonic()
        fd, name = tempfile.mkstemp(prefix="crmsync-tryton-pass-")  # mode 0600
        passfile = Path(name)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(ADMIN_PASSWORD + "\n")
            build_template(target, passfile, venv=TRYTON_VENV)
        finally:
            passfile.unlink(missing_ok=True)
        ids = template_ids(target)
        if ids is None:
            raise RuntimeError(f"the Tryton template in {target} is unusable after a build")
        return TrytonTemplate(target, ids, version, time.monotonic() - started)


@pytest.fixture(scope="session")
def tryton_template() -> TrytonTemplate:
    """The bootstrapped template database (built on first use, then cached)."""
    return get_template()


@contextlib.contextmanager
def serve_copy(
    template: TrytonTemplate, db_dir: Path, log_path: Path
) -> Iterator[TrytonServer]:
    """A Tryton server on a fresh copy of ``template`` in ``db_dir``, stopped on exit."""
    db_dir.mkdir()
    template.copy_to(db_dir)
    server = TrytonServer(db_dir=db_dir, log_path=log_path, **template.ids)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def tryton(tryton_template: TrytonTemplate, tmp_path: Path) -> Iterator[TrytonServer]:
    """A fresh Tryton server on a copy of the template, stopped at teardown."""
    with serve_copy(tryton_template, tmp_path / "tryton", tmp_path / "trytond.log") as server:
        yield server
