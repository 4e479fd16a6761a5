"""Several processes starting at once on a new state database create its schema once.

`crmsync serve` and a `crmsync worker`, or two CLI calls, may open a state
database that does not exist yet at the same moment: each must find the schema
made by whichever came first, never fail with "table already exists".
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from dbs import fresh_database

from crmsync.state import schema as S
from crmsync.state.store import StateStore

STARTERS = 6

# Each process waits for a go file, then migrates: they start within a few ms.
_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from crmsync.state.store import StateStore
    go = Path(sys.argv[2])
    deadline = time.monotonic() + 30
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    store = StateStore(sys.argv[1])
    try:
        print(store.migrate())
    finally:
        store.close()
    """
)


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]
)
@pytest.mark.parametrize("round_", range(3))
def test_processes_starting_together_create_the_schema_once(
    backend: str, round_: int, tmp_path: Path
) -> None:
    with fresh_database(backend, tmp_path, "state") as url:
        go = tmp_path / "go"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", _CHILD, url, str(go)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for _ in range(STARTERS)
        ]
        go.touch()
        results = [p.communicate(timeout=60) for p in procs]
        for p, (stdout, stderr) in zip(procs, results, strict=True):
            assert p.returncode == 0, stderr
            assert stdout.strip() == str(S.SCHEMA_VERSION)
        store = StateStore(url)
        try:
            assert store.version() == S.SCHEMA_VERSION
        finally:
            store.close()
