"""Change capture from Tryton: pages ordered by (last_modified_at, id), children and deletes.

``last_modified_at`` is a transaction's start, so the engine re-reads an
overlap window (``lookback``). A party's children (addresses, contact
mechanisms) do not touch the parent's stamp: they are polled too, with their
own positions in the cursor's ``kids``, and a changed child brings its party
into the page. Deletes leave a line in ``ir.model.log``: the cursor keeps the
last one seen (``log``) and a page reports ``check_known`` when there are new
ones. An archived record (``active`` false) is still returned here.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from crmsync.connectors.base import ChangePage, Cursor
from crmsync.connectors.tryton.read import TrytonRead
from crmsync.connectors.tryton.types import ADDRESS, CONTACT, TrytonObject, as_time


class TrytonCapture(TrytonRead):
    """``read_changes`` and ``start_cursor`` of the Tryton connector."""

    def read_changes(
        self, obj: str, cursor: Cursor | None, limit: int, lookback: float = 0.0
    ) -> ChangePage:
        o = self._obj(obj)
        kids: dict[str, Cursor | None] = dict((cursor or {}).get("kids") or {})
        if o.is_party and cursor is None:
            # First read: the parents are all read anyway; children start at "now".
            for km in (ADDRESS, CONTACT):
                kids[km] = self._high(km, [["active", "in", [True, False]]])
        rows = self._changed(
            o.model, self._domain(o, archived=True), cursor, limit, lookback,
            self._read_fields(o),
        )
        more = len(rows) >= limit
        records = self._records(o, rows)
        new: Cursor = dict(cursor or {})
        new["kids"] = kids
        check_known = self._deletes_logged(o, new)
        if rows:
            last = rows[-1]
            new["ts"] = as_time(last["last_modified_at"]).isoformat()
            new["key"] = int(last["id"])
        elif cursor is None:
            new["ts"] = None
            new["key"] = None
        if o.is_party:
            have = {int(r["id"]) for r in rows}
            parents: list[int] = []
            for km in (ADDRESS, CONTACT):
                krows = self._changed(
                    km, [["active", "in", [True, False]]], kids.get(km), limit, lookback,
                    ["party", "last_modified_at"],
                )
                if krows:
                    kids[km] = {"ts": as_time(krows[-1]["last_modified_at"]).isoformat(),
                                "key": int(krows[-1]["id"])}
                    more = more or len(krows) >= limit
                parents.extend(int(k["party"]) for k in krows if k.get("party"))
            extra = sorted(set(parents) - have)
            if extra:
                prow = self._search_read(
                    o, [["id", "in", extra], *self._domain(o, archived=True)], None, None
                )
                records.extend(self._records(o, prow))
        return ChangePage(
            records, new if (rows or cursor is not None or kids or check_known) else None,
            more, check_known,
        )

    def start_cursor(self, obj: str) -> Cursor | None:
        o = self._obj(obj)
        cur = self._high(o.model, self._domain(o, archived=True))
        cur = dict(cur or {"ts": None, "key": None})
        self._deletes_logged(o, cur)
        if o.is_party:
            cur["kids"] = {
                km: self._high(km, [["active", "in", [True, False]]]) for km in (ADDRESS, CONTACT)
            }
        return cur

    def _changed(
        self, model: str, domain: list[Any], pos: Cursor | None, limit: int, lookback: float,
        fields: list[str],
    ) -> list[dict[str, Any]]:
        order = [["last_modified_at", "ASC"], ["id", "ASC"]]
        if pos is None or pos.get("ts") is None:
            return list(self.m(model, "search_read", domain, 0, limit, order, fields))
        ts = as_time(pos["ts"])
        if pos.get("key") is None or lookback:
            d = [*domain, ["last_modified_at", ">=", ts - timedelta(seconds=lookback)]]
            return list(self.m(model, "search_read", d, 0, limit, order, fields))
        # (stamp, id) after the cursor, in two queries: a nested OR next to an
        # `active` clause matches nothing in Tryton 8.2 (seen on SQLite).
        same = [*domain, ["last_modified_at", "=", ts], ["id", ">", int(pos["key"])]]
        rows = list(self.m(model, "search_read", same, 0, limit, order, fields))
        if len(rows) < limit:
            later = [*domain, ["last_modified_at", ">", ts]]
            rows += self.m(model, "search_read", later, 0, limit - len(rows), order, fields)
        return rows

    def _high(self, model: str, domain: list[Any]) -> Cursor | None:
        rows = self.m(model, "search_read", domain, 0, 1,
                      [["last_modified_at", "DESC"], ["id", "DESC"]], ["last_modified_at"])
        if not rows:
            return None
        return {"ts": as_time(rows[0]["last_modified_at"]).isoformat(), "key": None}

    def _deletes_logged(self, o: TrytonObject, cur: Cursor) -> bool:
        """Whether ``ir.model.log`` holds deletes of the model past the cursor's mark.

        The log keeps that a record was deleted but reading its resource gives
        null, so which ones is left to ``existing`` on the ids the engine knows.
        """
        last = cur.get("log")
        dom: list[Any] = [["event", "=", "delete"], ["resource", "like", f"{o.model},%"]]
        if last is None:
            # First read: deletes from before crmsync looked are not news.
            rows = self.m("ir.model.log", "search", [], 0, 1, [["id", "DESC"]])
            cur["log"] = int(rows[0]) if rows else 0
            return False
        rows = self.m("ir.model.log", "search", [*dom, ["id", ">", int(last)]], 0, None,
                      [["id", "ASC"]])
        if not rows:
            return False
        cur["log"] = int(rows[-1])
        return True
