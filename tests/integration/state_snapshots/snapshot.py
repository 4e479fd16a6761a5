"""Freeze the state schema of an earlier release as SQL, for the upgrade tests.

    python tests/integration/state_snapshots/snapshot.py GIT_REV

reads ``src/crmsync/state/schema.py`` as it was at ``GIT_REV`` (the last commit
before the next schema version) and writes ``v<N>_sqlite.sql`` and
``v<N>_postgresql.sql`` beside this file: the DDL a fresh database at that
version got (SQLAlchemy's ``create_all`` of every table, as its steps ran) and
its version row. Rows a step writes besides its DDL (v6: the meta row
``timeline_from_outcome``) are appended by hand, as such a database holds them.
The files are then committed and never regenerated: they stand for databases
already out there. Run it once per schema version, when the next
version is added.
"""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

HERE = Path(__file__).parent
DIALECTS = {"sqlite": sqlite.dialect(), "postgresql": postgresql.dialect()}


def old_schema(rev: str) -> types.ModuleType:
    """``crmsync.state.schema`` as it was at ``rev`` (its own module, never imported)."""
    text = subprocess.run(
        ["git", "show", f"{rev}:src/crmsync/state/schema.py"],
        check=True, capture_output=True, text=True, cwd=HERE,
    ).stdout
    mod = types.ModuleType(f"schema_at_{rev}")
    exec(compile(text, f"schema.py@{rev}", "exec"), mod.__dict__)  # our own history
    return mod


def ddl(schema: types.ModuleType, dialect: sa.engine.Dialect) -> list[str]:
    if hasattr(schema, "for_dialect"):  # partial indexes' conditions per dialect
        schema.for_dialect(dialect.name)
    tables = sorted(schema.metadata.tables.values(), key=lambda t: t.name)
    out = [str(sa.schema.CreateTable(t).compile(dialect=dialect)).strip() for t in tables]
    indexes = sorted((i for t in tables for i in t.indexes), key=lambda i: str(i.name))
    out += [str(sa.schema.CreateIndex(i).compile(dialect=dialect)).strip() for i in indexes]
    return out


def main(rev: str) -> None:
    rev = subprocess.run(
        ["git", "rev-parse", "--short", rev], check=True, capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    schema = old_schema(rev)
    version = schema.SCHEMA_VERSION
    for name, dialect in DIALECTS.items():
        lines = [f"-- crmsync state schema version {version} ({name}), as created by"
                 f" schema.py at {rev}"]
        lines += [s + ";" for s in ddl(schema, dialect)]
        lines.append(f"INSERT INTO crmsync_meta (key, value) VALUES ('version', '{version}');")
        (HERE / f"v{version}_{name}.sql").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
