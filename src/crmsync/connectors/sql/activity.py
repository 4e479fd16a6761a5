"""Event activities in a SQL system: one row per rule event in the ``activities:`` table."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from crmsync.config.models import ActivitiesConfig
from crmsync.connectors.sql.core import SqlCore
from crmsync.errors import SchemaError


class SqlActivity(SqlCore):
    """Writes rule activities into the table the system's ``activities:`` names."""

    _activities: ActivitiesConfig | None = None
    _activity_table: sa.Table | None = None

    def _activity(self) -> tuple[ActivitiesConfig, sa.Table]:
        cfg = self._activities
        if cfg is None:
            raise SchemaError(
                "activities",
                f"system {self.name!r} has no `activities:` table: set "
                f"systems.{self.name}.activities {{table, record, subject, body, at}}"
            )
        if self._activity_table is None:
            with self._errors.guard():
                insp = sa.inspect(self._engine)
                if not insp.has_table(cfg.table, schema=cfg.schema_name):
                    raise SchemaError(
                        "activities",
                        f"system {self.name!r}: activity table {cfg.table!r} not found"
                    )
                t = sa.Table(cfg.table, sa.MetaData(), autoload_with=self._engine,
                             schema=cfg.schema_name)
            cols = [cfg.record, cfg.subject, cfg.body, cfg.at]
            missing = [c for c in cols if c is not None and c not in t.c]
            if missing:
                raise SchemaError(
                    "activities",
                    f"system {self.name!r}: activity table {cfg.table!r} has no column "
                    + ", ".join(map(repr, missing)) + f" (columns: {', '.join(t.c.keys())})"
                )
            self._activity_table = t
        return cfg, self._activity_table

    def activity_problem(self) -> str | None:
        """Why rule activities cannot be written here, or None (for ``check``)."""
        try:
            self._activity()
        except SchemaError as exc:
            return str(exc)
        return None

    def remove_activities(self, ids: Sequence[str]) -> None:
        """Delete activity rows crmsync wrote (GDPR erasure); rows already gone are no
        error."""
        if not ids:
            return
        _, t = self._activity()
        pk = list(t.primary_key.columns)
        if len(pk) != 1:
            return  # rows without a single key cannot be named: nothing was recorded
        col = pk[0]
        keys: list[Any] = list(ids)
        try:
            if col.type.python_type is int:
                keys = [int(i) for i in ids]
        except (NotImplementedError, ValueError):
            pass
        with self._errors.guard(), self._engine.begin() as conn:
            conn.execute(sa.delete(t).where(col.in_(keys)))

    def add_event_activity(
        self, obj: str, rid: str, subject: str, body: str, at: datetime, *, probe: bool
    ) -> str | None:
        """Insert one activity row for record ``rid``; with ``probe``, first look for the
        row an earlier, interrupted attempt may have written (same record, subject and
        time) and return that instead."""
        cfg, t = self._activity()
        rec_col = t.c[cfg.record]
        key: Any = rid
        try:
            if rec_col.type.python_type is int:
                key = int(rid)
        except (NotImplementedError, ValueError):
            pass
        values: dict[str, Any] = {cfg.record: key, cfg.subject: subject}
        if cfg.body is not None:
            values[cfg.body] = body
        if cfg.at is not None:
            values[cfg.at] = at
        pk = list(t.primary_key.columns)
        with self._errors.guard(), self._engine.begin() as conn:
            if probe:
                conds = [t.c[k] == v for k, v in values.items()]
                found = conn.execute(sa.select(*(pk or [rec_col])).where(*conds).limit(1)).first()
                if found is not None:
                    return str(found[0])
            res = conn.execute(sa.insert(t).values(**values))
            ids = res.inserted_primary_key
        return str(ids[0]) if ids and ids[0] is not None else None
