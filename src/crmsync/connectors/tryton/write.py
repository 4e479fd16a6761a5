"""Writes to Tryton: one call per batch, one call per record to find a refused one.

Contact mechanisms and the first address are written through their child
models (Tryton refuses writes of ``party.email`` and friends); a write of a
ref's field (``company.city`` on a deal) updates the related record.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from crmsync.connectors.base import WriteResult
from crmsync.connectors.tryton.read import TrytonRead
from crmsync.connectors.tryton.rpc import TrytonError
from crmsync.connectors.tryton.types import (
    ADDRESS,
    ADDRESS_FIELDS,
    CONTACT,
    CONTACT_TYPES,
    OPPORTUNITY,
    PARTY,
    PersonId,
    TrytonObject,
    wire,
)

# The package's name, as before the split (log configuration may name it).
log = logging.getLogger("crmsync.connectors.tryton")


class TrytonWrite(TrytonRead):
    """``write`` of the Tryton connector."""

    def write(
        self,
        obj: str,
        creates: Sequence[Mapping[str, Any]] = (),
        updates: Sequence[tuple[str, Mapping[str, Any]]] = (),
        deletes: Sequence[str] = (),
        *,
        keep: Collection[str] = (),
    ) -> WriteResult:
        o = self._obj(obj)
        res = WriteResult(created=[None] * len(creates))
        related_todo: list[tuple[str, str, dict[str, dict[str, Any]]]] = []  # (err key, id, rel)
        # -- creates: one call for the batch; on a refusal, one call each to find the culprit
        if creates:
            vlist: list[dict[str, Any]] = []
            rels: list[dict[str, dict[str, Any]]] = []
            for values in creates:
                own, contact, address, related = self._split(o, values)
                if o.category_id is not None:
                    own["categories"] = [["add", [o.category_id]]]
                if contact:
                    own["contact_mechanisms"] = [
                        ["create", [{"type": t, "value": v} for t, v in contact.items() if v]]
                    ]
                if address and any(v not in (None, "") for v in address.values()):
                    own["addresses"] = [["create", [address]]]
                vlist.append(own)
                rels.append(related)
            self._resolve_refs(vlist)
            try:
                ids = [str(i) for i in self.m(o.model, "create", vlist)]
                res.created = list(ids)
            except TrytonError:
                for i, one in enumerate(vlist):
                    try:
                        res.created[i] = str(self.m(o.model, "create", [one])[0])
                    except TrytonError as exc:
                        res.errors[f"create:{i}"] = exc.user_message
            self._enter_states(o, res)
            for i, rel in enumerate(rels):
                new_id = res.created[i]
                if rel and new_id is not None:
                    related_todo.append((new_id, new_id, rel))
        # -- updates
        own_args: list[Any] = []
        own_ids: list[str] = []
        contacts: dict[str, dict[str, Any]] = {}
        addresses: dict[str, dict[str, Any]] = {}
        for rid, values in updates:
            if not str(rid).isdigit():
                # Tryton ids are numbers: this one names no record (as read treats it).
                res.errors[rid] = "record not found"
                continue
            own, contact, address, related = self._split(o, values)
            if own:
                own_args.extend([[int(rid)], own])
                own_ids.append(rid)
            if contact:
                contacts[rid] = contact
            if address:
                addresses[rid] = address
            if related:
                related_todo.append((rid, rid, related))
        if own_args:
            self._resolve_refs(own_args[1::2])
            try:
                self.m(o.model, "write", *own_args)
            except TrytonError:
                for j, rid in enumerate(own_ids):
                    try:
                        self.m(o.model, "write", *own_args[2 * j: 2 * j + 2])
                    except TrytonError as exc:
                        res.errors[rid] = exc.user_message
        if contacts:
            self._write_contacts(contacts, res)
        if addresses:
            self._write_addresses(addresses, res)
        if related_todo:
            self._write_related(o, related_todo, res)
        for d in deletes:
            if not str(d).isdigit():
                res.errors[d] = "record not found"
        deletes = [d for d in deletes if str(d).isdigit()]
        if deletes:
            ids = [int(d) for d in deletes]
            try:
                self.m(o.model, "delete", ids)
            except TrytonError:
                for d in deletes:
                    try:
                        self.m(o.model, "delete", [int(d)])
                    except TrytonError as exc:
                        res.errors[d] = exc.user_message
        return res

    def _split(
        self, o: TrytonObject, values: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, dict[str, Any]]]:
        """Own model values, contact values, address values, related values by ref."""
        own: dict[str, Any] = {}
        contact: dict[str, Any] = {}
        address: dict[str, Any] = {}
        related: dict[str, dict[str, Any]] = {}
        for k, v in values.items():
            head, dot, rest = k.partition(".")
            if dot and head in o.refs:
                related.setdefault(head, {})[rest] = v
            elif o.is_party and k in CONTACT_TYPES:
                contact[k] = v
            elif o.is_party and k in ADDRESS_FIELDS:
                address[k] = v
            elif k in o.refs:
                # The ref's value is the related record's id; through a contact
                # mechanism it is the person's id, resolved in _resolve_refs.
                rc = o.refs[k]
                if self._relation(o, rc) == CONTACT:
                    own[rc.field] = PersonId(v) if v is not None else None
                else:
                    own[rc.field] = int(v) if v is not None else None
            else:
                own[k] = wire(v)
        return own, contact, address, related

    def _resolve_refs(self, vlists: list[dict[str, Any]]) -> None:
        """Replace person ids given for a contact-mechanism ref by that person's
        first contact mechanism (one search for the whole batch)."""
        people = {v.party for vals in vlists for v in vals.values() if isinstance(v, PersonId)}
        if not people:
            return
        rows = self.m(CONTACT, "search_read", [["party", "in", sorted(people)]], 0, None,
                      [["sequence", "ASC"], ["id", "ASC"]], ["party"])
        first: dict[int, int] = {}
        for r in rows:
            first.setdefault(int(r["party"]), int(r["id"]))
        for vals in vlists:
            for k, v in list(vals.items()):
                if isinstance(v, PersonId):
                    vals[k] = first.get(v.party)

    def _enter_states(self, o: TrytonObject, res: WriteResult) -> None:
        """A new opportunity starts as a lead: move new deals on to ``opportunity``
        (Tryton's own button), so they belong to the object they were created in."""
        if o.model != OPPORTUNITY or o.states is None or "lead" in o.states:
            return
        for rid in res.created:
            if rid is None:
                continue
            try:
                self.m(o.model, "opportunity", [int(rid)])
            except TrytonError as exc:
                # The record exists: reporting the create as failed would make a
                # retry create it twice. It stays a lead, and the log says why.
                log.warning("new %s %s stays a lead: %s", o.name, rid, exc.user_message)

    def _write_contacts(self, todo: dict[str, dict[str, Any]], res: WriteResult) -> None:
        parties = [int(p) for p in todo]
        types = sorted({t for c in todo.values() for t in c})
        rows = self.m(CONTACT, "search_read",
                      [["party", "in", parties], ["type", "in", types]], 0, None,
                      [["sequence", "ASC"], ["id", "ASC"]], ["party", "type"])
        first: dict[tuple[int, str], int] = {}
        for r in rows:
            first.setdefault((int(r["party"]), str(r["type"])), int(r["id"]))
        creates: list[dict[str, Any]] = []
        args: list[Any] = []
        deletes: list[int] = []
        for pid, values in todo.items():
            for t, v in values.items():
                cm = first.get((int(pid), t))
                if v in (None, ""):
                    if cm is not None:
                        deletes.append(cm)
                elif cm is None:
                    creates.append({"party": int(pid), "type": t, "value": str(v)})
                else:
                    args.extend([[cm], {"value": str(v)}])
        self._best_effort(CONTACT, creates, args, deletes, list(todo), res)

    def _write_addresses(self, todo: dict[str, dict[str, Any]], res: WriteResult) -> None:
        rows = self.m(PARTY, "read", [int(p) for p in todo], ["addresses"])
        first = {int(r["id"]): (r["addresses"][0] if r["addresses"] else None) for r in rows}
        creates: list[dict[str, Any]] = []
        args: list[Any] = []
        for pid, values in todo.items():
            aid = first.get(int(pid))
            vals = {k: (None if v == "" else v) for k, v in values.items()}
            if aid is None:
                creates.append({"party": int(pid), **vals})
            else:
                args.extend([[aid], vals])
        self._best_effort(ADDRESS, creates, args, [], list(todo), res)

    def _best_effort(self, model: str, creates: list[dict[str, Any]], args: list[Any],
                     deletes: list[int], owners: list[str], res: WriteResult) -> None:
        try:
            if creates:
                self.m(model, "create", creates)
            if args:
                self.m(model, "write", *args)
            if deletes:
                self.m(model, "delete", deletes)
        except TrytonError as exc:
            # Children of several records went in one call: name them all.
            for rid in owners:
                res.errors.setdefault(rid, f"{model}: {exc.user_message}")

    def _write_related(
        self, o: TrytonObject, todo: list[tuple[str, str, dict[str, dict[str, Any]]]],
        res: WriteResult,
    ) -> None:
        recs = self._read_ids(o, [int(rid) for _, rid, _ in todo])
        by_obj: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        owner: dict[tuple[str, str], list[str]] = {}
        for key, rid, rel in todo:
            rec = recs.get(rid)
            for ref, values in rel.items():
                rel_id = rec.values.get(ref) if rec else None
                if rel_id is None:
                    res.errors.setdefault(
                        key, f"{ref}: the {o.name} has no related {o.refs[ref].object} to update"
                    )
                    continue
                tobj = o.refs[ref].object
                by_obj.setdefault(tobj, []).append((str(rel_id), values))
                owner.setdefault((tobj, str(rel_id)), []).append(key)
        for tobj, ups in by_obj.items():
            sub = self.write(tobj, updates=ups)
            for rel_id, msg in sub.errors.items():
                for key in owner.get((tobj, rel_id), []):
                    res.errors.setdefault(key, f"related {tobj} {rel_id}: {msg}")
