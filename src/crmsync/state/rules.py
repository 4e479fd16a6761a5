"""Rules: what each firing saw and how far its actions got.

The rule's memory of each watched record (what it saw last) is the trigger
memory of ``pairs`` under the name ``rule:NAME``; a firing's delivery is a
queue message of that name (side ``action``, record id = the firing's id), so
it is claimed, leased, retried and listed as failed like any message.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from crmsync.state import schema as S
from crmsync.state.db import Database, dumps


class RulesMixin(Database):
    """Firings of rules: insert, read, advance."""

    def add_firing(
        self,
        c: sa.Connection,
        rule: str,
        record_ref: str,
        values: dict[str, Any],
        changed: Sequence[str],
        fired_at: datetime,
    ) -> int:
        f = S.rule_firings
        return int(
            c.execute(
                sa.insert(f)
                .values(
                    rule=rule,
                    record_ref=record_ref,
                    record_values=dumps(values),
                    changed=dumps(list(changed)),
                    fired_at=fired_at,
                    step=0,
                )
                .returning(f.c.id)
            ).scalar_one()
        )

    def firings(self, c: sa.Connection, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        f = S.rule_firings
        out: dict[int, dict[str, Any]] = {}
        for r in c.execute(sa.select(f).where(self.in_keys(f.c.id, list(ids)))):
            row = dict(r._mapping)
            row["record_values"] = json.loads(row["record_values"])
            row["changed"] = json.loads(row["changed"])
            out[int(row["id"])] = row
        return out

    def firing_step(
        self, c: sa.Connection, fid: int, *, step: int, tried: int | None
    ) -> None:
        """Record progress: ``step`` actions done; ``tried``: one begun, maybe done."""
        f = S.rule_firings
        c.execute(sa.update(f).where(f.c.id == fid).values(step=step, tried_step=tried))

    def scrub_firings(self, c: sa.Connection, refs: Sequence[str]) -> int:
        """GDPR: firings about these records keep when and what changed, not the values;
        their actions not done yet never run (they would carry the values)."""
        f, m = S.rule_firings, S.messages
        ids = [int(i) for i in c.execute(
            sa.select(f.c.id).where(self.in_keys(f.c.record_ref, list(refs)))).scalars()]
        if not ids:
            return 0
        c.execute(sa.update(f).where(self.in_keys(f.c.id, ids)).values(record_values="{}"))
        c.execute(sa.delete(m).where(m.c.link.like("rule:%"), m.c.side == "action",
                                     self.in_keys(m.c.record_id, [str(i) for i in ids])))
        return len(ids)

    def firing_counts(self, c: sa.Connection) -> dict[str, int]:
        f = S.rule_firings
        q = sa.select(f.c.rule, sa.func.count()).group_by(f.c.rule)
        return {str(r): int(n) for r, n in c.execute(q)}
