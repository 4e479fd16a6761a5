"""Timelines in Tryton: notes (``ir.note``) on records, and the records a record points to."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from crmsync.connectors.tryton.read import TrytonRead


class TrytonTimeline(TrytonRead):
    """``related_ids``, ``add_activities`` and ``remove_activities`` of the Tryton connector."""

    def related_ids(self, obj: str, rid: str) -> dict[str, tuple[str, str]]:
        """ref -> (object, id) of the records ``rid`` points to (for timelines)."""
        o = self._obj(obj)
        rec = self._read_ids(o, [int(rid)], refs=True).get(rid) if o.refs else None
        out: dict[str, tuple[str, str]] = {}
        for ref, rc in o.refs.items():
            v = rec.values.get(ref) if rec else None
            if v is not None:
                out[ref] = (rc.object, str(v))
        return out

    def add_activities(self, obj: str, items: Sequence[tuple[str, str]]) -> list[str]:
        """Write ``(record id, text)`` as notes (``ir.note``) on the records."""
        o = self._obj(obj)
        if not items:
            return []
        ids = self.m("ir.note", "create",
                     [{"resource": f"{o.model},{int(rid)}", "message": text}
                      for rid, text in items])
        return [str(i) for i in ids]

    def add_event_activity(
        self, obj: str, rid: str, subject: str, body: str, at: datetime, *, probe: bool
    ) -> str | None:
        """A rule's activity as a note on the record; with ``probe``, the note an
        earlier, interrupted attempt may have written (same record and text) is
        taken instead of writing a second one."""
        o = self._obj(obj)
        text = f"{subject}\n\n{body}" if body else subject
        resource = f"{o.model},{int(rid)}"
        if probe:
            have = self.m("ir.note", "search",
                          [["resource", "=", resource], ["message", "=", text]], 0, 1, None)
            if have:
                return str(have[0])
        ids = self.m("ir.note", "create", [{"resource": resource, "message": text}])
        return str(ids[0]) if ids else None

    def remove_activities(self, ids: Sequence[str]) -> None:
        want = [int(i) for i in ids]
        if want:
            # Only notes that still exist: a note deleted by hand is no error.
            have = self.m("ir.note", "search", [["id", "in", want]], 0, None, None)
            if have:
                self.m("ir.note", "delete", have)
