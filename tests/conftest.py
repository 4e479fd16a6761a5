from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from dbs import backend_params, fresh_database


@pytest.fixture(params=backend_params())
def backend(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs on SQLite, PostgreSQL and MariaDB."""
    return request.param


@pytest.fixture
def db_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh empty database on the current backend."""
    with fresh_database(backend, tmp_path, "sys") as url:
        yield url
