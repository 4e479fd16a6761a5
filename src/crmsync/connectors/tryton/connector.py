"""The Tryton connector: a Tryton server (ERP/CRM) driven only through its JSON-RPC API.

Objects are Tryton models, optionally narrowed to one kind of record: company
and person are both ``party.party`` told apart by a party category; deal and
lead are ``sale.opportunity`` in its states. Contact mechanisms (email, phone,
...) and the first address (street, postal code, city) appear as plain fields
of a party and are written through their child models, because Tryton refuses
writes of ``party.email`` and friends.

A reference (``refs``) lets a mapping reach a related record: on a deal,
``company.city`` is the city of the party the deal points to, and a write of
it updates that party (``contact.email`` likewise, through the contact
mechanism's party).

Capture follows ``last_modified_at`` (a transaction's start, so the engine
re-reads an overlap window) and also polls the children (addresses, contact
mechanisms), whose edits do not touch the parent's stamp. An archived record
(``active`` false) is still returned by ``read_changes`` but absent from
``read`` and ``scan``: the engine then treats it as deleted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from crmsync.config.models import RefConfig, TrytonObjectConfig, TrytonSystemConfig
from crmsync.connectors.base import Capabilities, ChangePage, Connector, Cursor, WriteResult
from crmsync.connectors.tryton.rpc import TrytonError, TrytonRPC
from crmsync.errors import SchemaError, SettingError
from crmsync.model import FieldSpec, FieldType, ObjectSpec, Record

log = logging.getLogger(__name__)

PARTY = "party.party"
OPPORTUNITY = "sale.opportunity"
ADDRESS = "party.address"
CONTACT = "party.contact_mechanism"
DEAL_STATES = ["opportunity", "converted", "won", "lost", "cancelled"]
CONTACT_TYPES = ("email", "phone", "mobile", "fax", "website")
ADDRESS_FIELDS = ("street", "postal_code", "city")

_TYPES: dict[str, FieldType] = {
    "char": FieldType.STRING,
    "text": FieldType.STRING,
    "selection": FieldType.CHOICE,
    "integer": FieldType.INTEGER,
    "biginteger": FieldType.INTEGER,
    "float": FieldType.DECIMAL,
    "numeric": FieldType.DECIMAL,
    "boolean": FieldType.BOOLEAN,
    "date": FieldType.DATE,
    "datetime": FieldType.DATETIME,
    "timestamp": FieldType.DATETIME,
    "many2one": FieldType.REFERENCE,
    "one2many": FieldType.LIST,
    "many2many": FieldType.LIST,
}
# Internal or costly computed fields nobody maps: never read.
_SKIP = {"xml_id", "create_uid", "write_uid", "create_date", "write_date"}


def _defaults(name: str, cfg: TrytonObjectConfig, names: set[str]) -> dict[str, Any]:
    """The object's model, category, states and refs, with the named defaults filled in."""
    model = cfg.model
    category, states, refs = cfg.category, cfg.states, cfg.refs
    if name in ("company", "person") and model in (None, PARTY):
        model = PARTY
        category = category or name.capitalize()
    elif name in ("deal", "lead") and model in (None, OPPORTUNITY):
        model = OPPORTUNITY
        states = states or (["lead"] if name == "lead" else DEAL_STATES)
        if refs is None:
            refs = {}
            if "company" in names:
                refs["company"] = RefConfig(field="party", object="company")
            if "person" in names:
                refs["contact"] = RefConfig(field="contact", object="person")
    return {
        "model": model or name,
        "category": category,
        "states": states,
        "refs": refs or {},
    }


class _Obj:
    def __init__(self, name: str, model: str, category: str | None, states: list[str] | None,
                 refs: dict[str, RefConfig]) -> None:
        self.name = name
        self.model = model
        self.category = category
        self.category_id: int | None = None
        self.states = states
        self.refs = refs
        self.meta: dict[str, dict[str, Any]] | None = None  # fields_get
        self.spec: ObjectSpec | None = None
        self.own: list[str] = []  # own scalar fields read
        self.has_active = False

    @property
    def is_party(self) -> bool:
        return self.model == PARTY


def _ts(v: Any) -> datetime:
    return v if isinstance(v, datetime) else datetime.fromisoformat(str(v))


class TrytonConnector(Connector):
    capabilities = Capabilities(batch_size=200, upsert=False, activities=True, deep_links=True)

    def __init__(self, name: str, cfg: TrytonSystemConfig) -> None:
        super().__init__(name)
        self.cfg = cfg
        self.rpc = TrytonRPC(cfg.url, cfg.database, cfg.user, cfg.password, timeout=cfg.timeout)
        names = set(cfg.objects)
        self._objs = {
            n: _Obj(n, **_defaults(n, o, names)) for n, o in cfg.objects.items()
        }
        self._meta: dict[str, dict[str, dict[str, Any]]] = {}
        self._lock = threading.RLock()  # preparing a deal prepares its refs

    # -- plumbing --------------------------------------------------------------
    def call(self, method: str, *args: Any) -> Any:
        try:
            return self.rpc.call(method, *args)
        except TrytonError as exc:
            raise self._refused(exc) from None

    def m(self, model: str, method: str, *args: Any) -> Any:
        return self.call(f"model.{model}.{method}", *args)

    def _refused(self, exc: TrytonError) -> Exception:
        """A login Tryton refuses is the config's credentials or database: a
        SettingError naming that key (exit 2 before a run; a running worker pauses,
        as for an outage). Any other refusal stays what it is."""
        key = f"systems.{self.name}"
        if exc.kind == "LoginError":
            return SettingError(
                f"{key}.password",
                f"system {self.name!r}: Tryton refused the login of user {self.cfg.user!r} "
                "(check user: and password:)",
            )
        if exc.kind == "NotFound" and "common.db.login" in exc.user_message:
            return SettingError(
                f"{key}.database",
                f"system {self.name!r}: Tryton has no database {self.cfg.database!r}",
            )
        return exc

    def count_calls(self) -> int:
        return self.rpc.count_calls()

    def thread_calls(self) -> int:
        return self.rpc.thread_calls()

    def close(self) -> None:
        self.rpc.close()

    def _fields_get(self, model: str) -> dict[str, dict[str, Any]]:
        meta = self._meta.get(model)
        if meta is None:
            try:
                meta = self.m(model, "fields_get", None)
            except TrytonError as exc:
                raise SchemaError("model", f"Tryton model {model!r}: {exc.user_message}") from exc
            self._meta[model] = meta
        return meta

    def _obj(self, obj: str) -> _Obj:
        o = self._objs.get(obj)
        if o is None:
            raise SchemaError("", f"system {self.name!r} has no object {obj!r}")
        if o.spec is None:
            with self._lock:
                if o.spec is None:
                    self._prepare(o)
        return o

    def _prepare(self, o: _Obj) -> None:
        meta = self._fields_get(o.model)
        o.meta = meta
        o.has_active = "active" in meta
        if o.category is not None:
            found = self.m("party.category", "search", [["name", "=", o.category]], 0, 2, None)
            if not found:
                raise SchemaError(
                    "category",
                    f"party category {o.category!r} does not exist in Tryton "
                    f"(create it, or set `category:` to an existing one)",
                )
            o.category_id = int(found[0])
        if o.states is not None and "state" not in meta:
            raise SchemaError("states", f"model {o.model!r} has no state field")
        fields: dict[str, FieldSpec] = {}
        own: list[str] = []
        for fname, fm in sorted(meta.items()):
            ftype = _TYPES.get(str(fm.get("type")))
            if ftype is None or fname in _SKIP:
                continue
            readonly = fm.get("readonly") is True
            choices = None
            if ftype is FieldType.CHOICE:
                sel = fm.get("selection")
                if isinstance(sel, list):
                    choices = tuple(str(k) for k, _ in sel if k is not None)
                else:
                    ftype = FieldType.STRING  # selection computed per record
            if readonly and ftype in (FieldType.DECIMAL, FieldType.INTEGER) and fname != "id":
                continue  # computed balances and the like: costly to read, never mapped
            if fname == "id":
                readonly = True
            scale = None
            digits = fm.get("digits")
            if isinstance(digits, list) and len(digits) == 2 and isinstance(digits[1], int):
                scale = digits[1]
            fields[fname] = FieldSpec(
                fname, ftype, nullable=not fm.get("required"), scale=scale,
                choices=choices, read_only=readonly,
            )
            if ftype is not FieldType.LIST:
                own.append(fname)
        if o.is_party:
            for f in CONTACT_TYPES:
                fields[f] = FieldSpec(f, FieldType.STRING)
            for f in ADDRESS_FIELDS:
                fields[f] = FieldSpec(f, FieldType.STRING)
        for ref in o.refs:
            # A ref shadows a model field of its name (a deal's own ``company``
            # field is the selling company; the ref ``company`` is its party).
            fields[ref] = FieldSpec(ref, FieldType.REFERENCE, read_only=True)
            if ref in own:
                own.remove(ref)
        o.own = own
        for ref, rc in o.refs.items():
            if rc.field not in meta or meta[rc.field].get("type") != "many2one":
                raise SchemaError(
                    f"refs.{ref}.field", f"{o.model}.{rc.field} is not a Many2One field"
                )
            target = self._objs.get(rc.object)
            if target is None or target is o:
                raise SchemaError(
                    f"refs.{ref}.object", f"refs.{ref} names unknown object {rc.object!r}"
                )
            tspec = self._obj(rc.object).spec
            assert tspec is not None
            for f, fs in tspec.fields.items():
                if "." in f or f == "id":
                    continue
                fields[f"{ref}.{f}"] = FieldSpec(
                    f"{ref}.{f}", fs.type, True, fs.max_length, fs.scale, fs.choices, fs.read_only
                )
        o.spec = ObjectSpec(o.name, "id", fields, updated_at="last_modified_at", key_generated=True)

    def _domain(self, o: _Obj, *, archived: bool = False) -> list[Any]:
        d: list[Any] = []
        if o.has_active and archived:
            d.append(["active", "in", [True, False]])
        if o.category_id is not None:
            d.append(["categories", "in", [o.category_id]])
        if o.states is not None:
            d.append(["state", "in", list(o.states)])
        return d

    # -- description -------------------------------------------------------------
    def objects(self) -> list[str]:
        return list(self._objs)

    def describe(self, obj: str) -> ObjectSpec:
        spec = self._obj(obj).spec
        assert spec is not None
        return spec

    # -- reads ----------------------------------------------------------------------
    def _read_fields(self, o: _Obj) -> list[str]:
        out = list(o.own)
        if o.is_party:
            out.append("addresses")
        for rc in o.refs.values():
            if self._relation(o, rc) == CONTACT:
                out.append(f"{rc.field}.party")
        return out

    def _relation(self, o: _Obj, rc: RefConfig) -> str:
        assert o.meta is not None
        return str(o.meta[rc.field].get("relation"))

    def _search_read(
        self, o: _Obj, domain: list[Any], limit: int | None, order: list[list[str]] | None,
    ) -> list[dict[str, Any]]:
        return list(self.m(o.model, "search_read", domain, 0, limit, order, self._read_fields(o)))

    def _records(self, o: _Obj, rows: list[dict[str, Any]], *, refs: bool = True) -> list[Record]:
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

    def _read_ids(self, o: _Obj, ids: Sequence[int], *, refs: bool = True) -> dict[str, Record]:
        if not ids:
            return {}
        rows = self._search_read(o, [["id", "in", list(ids)], *self._domain(o)], None, None)
        return {r.id: r for r in self._records(o, rows, refs=refs)}

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

    # -- change capture ---------------------------------------------------------------
    def _changed(
        self, model: str, domain: list[Any], pos: Cursor | None, limit: int, lookback: float,
        fields: list[str],
    ) -> list[dict[str, Any]]:
        order = [["last_modified_at", "ASC"], ["id", "ASC"]]
        if pos is None or pos.get("ts") is None:
            return list(self.m(model, "search_read", domain, 0, limit, order, fields))
        ts = _ts(pos["ts"])
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
        return {"ts": _ts(rows[0]["last_modified_at"]).isoformat(), "key": None}

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
            new["ts"] = _ts(last["last_modified_at"]).isoformat()
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
                    kids[km] = {"ts": _ts(krows[-1]["last_modified_at"]).isoformat(),
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

    def _deletes_logged(self, o: _Obj, cur: Cursor) -> bool:
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

    def existing(self, obj: str, ids: Sequence[str]) -> set[str]:
        o = self._obj(obj)
        want = [int(i) for i in ids if str(i).isdigit()]
        if not want:
            return set()
        found = self.m(o.model, "search", [["id", "in", want], *self._domain(o)], 0, None, None)
        return {str(i) for i in found}

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

    # -- writes -----------------------------------------------------------------------
    def _split(
        self, o: _Obj, values: Mapping[str, Any]
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
                    own[rc.field] = _PersonId(v) if v is not None else None
                else:
                    own[rc.field] = int(v) if v is not None else None
            else:
                own[k] = _wire(v)
        return own, contact, address, related

    def _resolve_refs(self, vlists: list[dict[str, Any]]) -> None:
        """Replace person ids given for a contact-mechanism ref by that person's
        first contact mechanism (one search for the whole batch)."""
        people = {v.party for vals in vlists for v in vals.values() if isinstance(v, _PersonId)}
        if not people:
            return
        rows = self.m(CONTACT, "search_read", [["party", "in", sorted(people)]], 0, None,
                      [["sequence", "ASC"], ["id", "ASC"]], ["party"])
        first: dict[int, int] = {}
        for r in rows:
            first.setdefault(int(r["party"]), int(r["id"]))
        for vals in vlists:
            for k, v in list(vals.items()):
                if isinstance(v, _PersonId):
                    vals[k] = first.get(v.party)

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

    def _enter_states(self, o: _Obj, res: WriteResult) -> None:
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
        self, o: _Obj, todo: list[tuple[str, str, dict[str, dict[str, Any]]]], res: WriteResult
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

    def refs(self, obj: str) -> dict[str, str]:
        return {ref: rc.object for ref, rc in self._obj(obj).refs.items()}

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

    # -- timelines ---------------------------------------------------------------------
    def add_activities(self, obj: str, items: Sequence[tuple[str, str]]) -> list[str]:
        """Write ``(record id, text)`` as notes (``ir.note``) on the records."""
        o = self._obj(obj)
        if not items:
            return []
        ids = self.m("ir.note", "create",
                     [{"resource": f"{o.model},{int(rid)}", "message": text}
                      for rid, text in items])
        return [str(i) for i in ids]

    def remove_activities(self, ids: Sequence[str]) -> None:
        want = [int(i) for i in ids]
        if want:
            # Only notes that still exist: a note deleted by hand is no error.
            have = self.m("ir.note", "search", [["id", "in", want]], 0, None, None)
            if have:
                self.m("ir.note", "delete", have)


class _PersonId:
    """A person's party id standing where a contact mechanism id is written."""

    __slots__ = ("party",)

    def __init__(self, party: Any) -> None:
        self.party = int(party)


def _wire(v: Any) -> Any:
    # Floats travel as Decimal so amounts keep their digits.
    if isinstance(v, float):
        return Decimal(str(v))
    return v
