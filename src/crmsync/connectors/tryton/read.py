"""Reads from Tryton: records with their children (contacts, first address) and refs.

A party's contact mechanisms and first address appear as plain fields; a ref
(``company.city`` on a deal) is read from the related record in one batch call.
An archived record is absent from ``read`` and ``scan`` (the engine then treats
it as deleted).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from crmsync.connectors.tryton.core import TrytonCore
from crmsync.connectors.tryton.types import (
    ADDRESS,
    ADDRESS_FIELDS,
    CATEGORY,
    CONTACT,
    CONTACT_TYPES,
    TrytonObject,
)
from crmsync.errors import SchemaError
from crmsync.model import FieldType, Record


class TrytonRead(TrytonCore):
    """``read``, ``scan``, ``count``, ``find`` and ``existing`` of the Tryton connector."""

    def read(self, obj: str, ids: Sequence[str]) -> dict[str, Record]:
        o = self._obj(obj)
        return self._read_ids(o, [int(i) for i in ids if str(i).isdigit()])

    def scan(self, obj: str, after_id: str | None, limit: int) -> list[Record]:
        o = self._obj(obj)
        d = self._domain(o)
        if after_id is not None:
            d.append(["id", ">", int(after_id)])
        return self._records(o, self._search_read(o, d, limit, [["id", "ASC"]]))

    def count(self, obj: str) -> int | None:
        o = self._obj(obj)
        return int(self.m(o.model, "search_count", self._domain(o)))

    def find(self, obj: str, field_name: str, values: Sequence[Any]) -> list[Record]:
        o = self._obj(obj)
        if "." in field_name:
            raise SchemaError("match", f"cannot match on a related field ({field_name!r})")
        path = f"addresses.{field_name}" if o.is_party and field_name in ADDRESS_FIELDS else (
            "contact_mechanisms.value" if o.is_party and field_name in CONTACT_TYPES
            else field_name
        )
        d = [*self._domain(o), [path, "in", list(values)]]
        return self._records(o, self._search_read(o, d, None, [["id", "ASC"]]))

    def existing(self, obj: str, ids: Sequence[str]) -> set[str]:
        o = self._obj(obj)
        want = [int(i) for i in ids if str(i).isdigit()]
        if not want:
            return set()
        found = self.m(o.model, "search", [["id", "in", want], *self._domain(o)], 0, None, None)
        return {str(i) for i in found}

    def _read_fields(self, o: TrytonObject) -> list[str]:
        out = list(o.own)
        if o.is_party:
            out += ["addresses", "categories.name"]
        for rc in o.refs.values():
            if self._relation(o, rc) == CONTACT:
                out.append(f"{rc.field}.party")
        return out

    def _search_read(
        self, o: TrytonObject, domain: list[Any], limit: int | None,
        order: list[list[str]] | None,
    ) -> list[dict[str, Any]]:
        return list(self.m(o.model, "search_read", domain, 0, limit, order, self._read_fields(o)))

    def _records(
        self, o: TrytonObject, rows: list[dict[str, Any]], *, refs: bool = True
    ) -> list[Record]:
        """Rows as records: children and related records loaded in a few batch calls."""
        assert o.spec is not None
        addr: dict[int, dict[str, Any]] = {}
        if o.is_party:
            first = [r["addresses"][0] for r in rows if r.get("addresses")]
            if first:
                for a in self.m(ADDRESS, "read", first, list(ADDRESS_FIELDS)):
                    addr[int(a["id"])] = a
        related: dict[str, dict[str, Record]] = {}
        ref_ids: dict[str, dict[int, int | None]] = {}
        if refs:
            for ref, rc in o.refs.items():
                ids: dict[int, int | None] = {}
                via_contact = self._relation(o, rc) == CONTACT
                for r in rows:
                    if via_contact:
                        sub = r.get(f"{rc.field}.")
                        ids[int(r["id"])] = int(sub["party"]) if sub and sub.get("party") else None
                    else:
                        v = r.get(rc.field)
                        ids[int(r["id"])] = int(v) if v is not None else None
                ref_ids[ref] = ids
                wanted = sorted({i for i in ids.values() if i is not None})
                related[ref] = self._read_ids(self._obj(rc.object), wanted, refs=False)
        out: list[Record] = []
        bools = {f for f, fs in o.spec.fields.items() if fs.type is FieldType.BOOLEAN}
        for r in rows:
            values: dict[str, Any] = {}
            for f in o.own:
                v = r.get(f)
                if f in bools and v is not None:
                    v = bool(v)  # SQLite answers 1/0
                elif v == "" and o.is_party and f in CONTACT_TYPES:
                    v = None  # Tryton answers "" for a missing contact mechanism
                values[f] = v
            if o.is_party:
                a = addr.get(r["addresses"][0]) if r.get("addresses") else None
                for f in ADDRESS_FIELDS:
                    values[f] = a.get(f) if a else None
                kinds = [str(c.get("name")) for c in r.get("categories.") or ()
                         if c.get("name") != o.category]
                values[CATEGORY] = ", ".join(sorted(kinds)) or None
            rid = int(r["id"])
            for ref in o.refs:
                values[ref] = ref_ids[ref].get(rid)
                rel_id = ref_ids[ref].get(rid)
                rel = related[ref].get(str(rel_id)) if rel_id is not None else None
                for f, v in (rel.values.items() if rel else ()):
                    if "." not in f and f != "id":
                        values[f"{ref}.{f}"] = v
            out.append(Record(str(rid), values, r.get("last_modified_at")))
        return out

    def _read_ids(
        self, o: TrytonObject, ids: Sequence[int], *, refs: bool = True
    ) -> dict[str, Record]:
        if not ids:
            return {}
        rows = self._search_read(o, [["id", "in", list(ids)], *self._domain(o)], None, None)
        return {r.id: r for r in self._records(o, rows, refs=refs)}
