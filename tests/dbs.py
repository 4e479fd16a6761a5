"""Real databases for tests: a fresh, empty database per test on each backend.

PostgreSQL (127.0.0.1:5432, trust) and MariaDB (127.0.0.1:3306, root) must be
running; when CI=true a missing server is a failure, never a skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MARIADB_ADMIN = "mysql+pymysql://root@127.0.0.1:3306/test"
BACKENDS = ("sqlite", "postgresql", "mariadb")


def _unavailable(what: str, exc: Exception) -> None:
    msg = f"{what} is not reachable: {exc}"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@contextmanager
def fresh_database(backend: str, tmp_path: Path, label: str = "db") -> Iterator[str]:
    """Yield the URL of a new empty database on ``backend``; drop it afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / (label + '.sqlite')}"
        return
    name = f"cs_{label}_{uuid.uuid4().hex[:10]}"
    if backend == "postgresql":
        admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as c:
                c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        except sa.exc.OperationalError as exc:
            _unavailable("PostgreSQL at 127.0.0.1:5432", exc)
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        finally:
            with admin.connect() as c:
                c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.dispose()
        return
    if backend == "mariadb":
        admin = sa.create_engine(MARIADB_ADMIN, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as c:
                c.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        except sa.exc.OperationalError as exc:
            _unavailable("MariaDB at 127.0.0.1:3306", exc)
        try:
            yield f"mysql+pymysql://root@127.0.0.1:3306/{name}?charset=utf8mb4"
        finally:
            with admin.connect() as c:
                c.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
            admin.dispose()
        return
    raise ValueError(f"unknown backend {backend!r}")


def backend_params() -> list[object]:
    marks = {"postgresql": pytest.mark.postgresql, "mariadb": pytest.mark.mariadb}
    return [
        pytest.param(b, marks=[marks[b]] if b in marks else [], id=b) for b in BACKENDS
    ]
