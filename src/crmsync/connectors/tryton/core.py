"""The Tryton connector's core: calls, refusals as crmsync errors, objects from fields_get.

Everything the read, capture, write and timeline parts share; each of them is
a mixin on ``TrytonCore`` and ``TrytonConnector`` joins them.
"""

from __future__ import annotations

import threading
from typing import Any

from crmsync.config.models import RefConfig, TrytonSystemConfig
from crmsync.connectors.base import Connector
from crmsync.connectors.tryton.rpc import TrytonError, TrytonRPC
from crmsync.connectors.tryton.types import (
    ADDRESS_FIELDS,
    CATEGORY,
    CONTACT_TYPES,
    SKIP,
    TYPES,
    TrytonObject,
    defaults,
)
from crmsync.errors import SchemaError, SettingError
from crmsync.model import FieldSpec, FieldType, ObjectSpec


class TrytonCore(Connector):
    """A Tryton database reached through JSON-RPC (shared plumbing)."""

    def __init__(self, name: str, cfg: TrytonSystemConfig) -> None:
        super().__init__(name)
        self.cfg = cfg
        self.rpc = TrytonRPC(cfg.url, cfg.database, cfg.user, cfg.password, timeout=cfg.timeout)
        names = set(cfg.objects)
        self._objs = {
            n: TrytonObject(n, **defaults(n, o, names)) for n, o in cfg.objects.items()
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

    # -- description -------------------------------------------------------------
    def objects(self) -> list[str]:
        return list(self._objs)

    def describe(self, obj: str) -> ObjectSpec:
        spec = self._obj(obj).spec
        assert spec is not None
        return spec

    def options(self, obj: str, field_name: str) -> list[tuple[str, str]] | None:
        o = self._obj(obj)
        assert o.spec is not None
        fs = o.spec.fields.get(field_name)
        if fs is None or not fs.choices or "." in field_name:
            return super().options(obj, field_name)
        # Asked again, not from the cached fields_get: a module installed since the
        # start may have added options.
        meta = self.m(o.model, "fields_get", [field_name]).get(field_name) or {}
        sel = meta.get("selection")
        if not isinstance(sel, list):
            return None
        out = [(str(k), str(label)) for k, label in sel if k is not None]
        if field_name == "state" and o.states is not None:
            out = [(k, label) for k, label in out if k in o.states]  # this object's states only
        return out

    def refs(self, obj: str) -> dict[str, str]:
        return {ref: rc.object for ref, rc in self._obj(obj).refs.items()}

    def _fields_get(self, model: str) -> dict[str, dict[str, Any]]:
        meta = self._meta.get(model)
        if meta is None:
            try:
                meta = self.m(model, "fields_get", None)
            except TrytonError as exc:
                raise SchemaError("model", f"Tryton model {model!r}: {exc.user_message}") from exc
            self._meta[model] = meta
        return meta

    def _obj(self, obj: str) -> TrytonObject:
        o = self._objs.get(obj)
        if o is None:
            raise SchemaError("", f"system {self.name!r} has no object {obj!r}")
        if o.spec is None:
            with self._lock:
                if o.spec is None:
                    self._prepare(o)
        return o

    def _prepare(self, o: TrytonObject) -> None:
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
            ftype = TYPES.get(str(fm.get("type")))
            if ftype is None or fname in SKIP:
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
            # The kind of party (Lead, Contact, ...): its categories' names but the one
            # that defines the object, so rules can ask `category in [Lead, Contact]`.
            fields[CATEGORY] = FieldSpec(CATEGORY, FieldType.STRING, read_only=True)
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

    def _domain(self, o: TrytonObject, *, archived: bool = False) -> list[Any]:
        d: list[Any] = []
        if o.has_active and archived:
            d.append(["active", "in", [True, False]])
        if o.category_id is not None:
            d.append(["categories", "in", [o.category_id]])
        if o.states is not None:
            d.append(["state", "in", list(o.states)])
        return d

    def _relation(self, o: TrytonObject, rc: RefConfig) -> str:
        assert o.meta is not None
        return str(o.meta[rc.field].get("relation"))
