"""Check a loaded config against the live systems (``crmsync check``).

It lives in the engine, not in ``config``: it asks the connectors and uses the
engine's own rules (conversions, filters, triggers) on what they describe.

Every problem is collected; nothing is written anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from crmsync.config.loader import join_path, sort_problems
from crmsync.config.models import (
    Config,
    ConflictPolicy,
    Direction,
    LinkConfig,
    SetAction,
    UnmappedValue,
)
from crmsync.config.secrets import redact
from crmsync.connectors.base import Connector
from crmsync.convert import (
    ConversionError,
    compatible,
    converter,
    is_scalar,
    value_key,
    value_mapper,
)
from crmsync.engine.filters import criteria_problems
from crmsync.engine.trigger import trigger_problems
from crmsync.errors import CrmsyncError, SchemaError, SettingError, SystemUnavailable
from crmsync.model import FieldSpec, FieldType, ObjectSpec

Problem = tuple[str, str]
# How a problem that is only "the system is down" starts: `check` exits 3, not 2,
# when every problem is one of these.
UNREACHABLE = "cannot reach "
Locate = Callable[[str], str]


def check_config(
    config: Config,
    connectors: Mapping[str, Connector],
    source_file: str,
    locate: Locate | None = None,
    *,
    unreachable_ok: bool = False,
    warnings: list[Problem] | None = None,
) -> list[Problem]:
    """Every problem of ``config`` against the live systems, sorted by line.

    With ``unreachable_ok`` a system that cannot be reached is no problem and
    its links are not checked: ``sync`` then pauses them and exits 3 instead.

    With ``warnings`` (``crmsync check`` only: it reads data, not just schemas)
    the values the source holds that a ``values:`` map would reject are added
    to it, sorted by line (see ``_Checker.check_coverage``).

    ``locate`` turns a key path into ``file:line key.path`` (``SourceMap.locate``
    from ``load_config_with_lines``); without it locations are ``file key.path``.
    """
    loc = locate or (lambda path: f"{source_file} {path}")
    checker = _Checker(config, connectors, loc, unreachable_ok)
    checker.coverage = warnings is not None
    checker.run()
    if warnings is not None:
        warnings.extend(sort_problems(checker.warnings))
    return sort_problems(checker.problems)


def _fields_of(spec: ObjectSpec) -> str:
    return ", ".join(spec.fields) or "none"


class _Checker:
    def __init__(
        self, config: Config, connectors: Mapping[str, Connector], locate: Locate,
        unreachable_ok: bool = False,
    ) -> None:
        self.config = config
        self.unreachable_ok = unreachable_ok
        self.unreachable: set[str] = set()
        self.connectors = connectors
        self.locate = locate
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.coverage = False
        self.specs: dict[tuple[str, str], ObjectSpec] = {}

    def add(self, path: str, message: str) -> None:
        self.problems.append((self.locate(path), redact(message)))

    def run(self) -> None:
        self.describe_all()
        for name, link in self.config.links.items():
            if {link.source_system, link.target_system} & self.unreachable:
                continue
            self.check_link(join_path("links", name), link)
        if self.config.rules:
            from crmsync.engine.rules.check import rule_problems

            for path, msg in rule_problems(
                self.config, self.connectors, self.specs, self.unreachable
            ):
                self.add(path, msg)

    # -- systems -------------------------------------------------------------

    def describe_all(self) -> None:
        for sname, scfg in self.config.systems.items():
            spath = join_path("systems", sname)
            conn = self.connectors.get(sname)
            if conn is None:
                self.add(join_path(spath, "connector"), f"no connector for system {sname!r}")
                continue
            for oname, ocfg in scfg.objects.items():
                opath = join_path(join_path(spath, "objects"), oname)
                try:
                    spec = conn.describe(oname)
                except SchemaError as err:
                    self.add(f"{opath}.{err.key}" if err.key else opath, err.user_message)
                    continue
                except SettingError as err:
                    # Refused credentials, unknown database, missing SQLite file: a
                    # config problem even when unreachable systems are tolerated.
                    self.add(err.key, err.user_message)
                    self.unreachable.add(sname)
                    break
                except SystemUnavailable as err:
                    if self.unreachable_ok:
                        self.unreachable.add(sname)
                        break
                    # One unreachable system gives one problem, not one per object.
                    self.add(join_path(spath, "url"), f"{UNREACHABLE}{sname}: {err.user_message}")
                    break
                except CrmsyncError as err:
                    self.add(opath, err.user_message)
                    continue
                self.specs[(sname, oname)] = spec
                if ocfg.deleted is not None:
                    self.check_deleted(
                        opath, spec, f"{sname}.{oname}", ocfg.deleted.field, ocfg.deleted.value
                    )
                anonymize = getattr(ocfg, "anonymize", None)
                if anonymize:
                    self.check_anonymize(
                        join_path(opath, "anonymize"), spec, f"{sname}.{oname}", anonymize
                    )

    def check_deleted(self, opath: str, spec: ObjectSpec, obj: str, field: str, value: Any) -> None:
        fs = spec.fields.get(field)
        path = f"{opath}.deleted"
        if fs is None:
            self.add(
                f"{path}.field",
                f"field {field!r} not found on {obj} (fields: {_fields_of(spec)})",
            )
            return
        try:
            converter(None, _loose(fs))(value)
        except ConversionError as err:
            self.add(f"{path}.value", f"{err.reason} (field {field!r} is {fs.type.value})")

    def check_anonymize(
        self, path: str, spec: ObjectSpec, obj: str, anonymize: Mapping[str, Any]
    ) -> None:
        """What ``crmsync erase`` would refuse (engine/erase.py ``_plan``), found up front."""
        for fname, value in anonymize.items():
            fpath = join_path(path, fname)
            fs = self.field(spec, fname, obj, fpath)
            if fs is None:
                continue
            if fname == spec.key:
                self.add(fpath, f"{fname!r} is the key of {obj}; anonymize cannot replace it")
                continue
            if fs.read_only:
                self.add(
                    fpath, f"{fname!r} is filled by {obj} itself and cannot be written (anonymize)"
                )
                continue
            self.check_value(fpath, fs, value, fname)

    # -- links ---------------------------------------------------------------

    def check_link(self, lpath: str, link: LinkConfig) -> None:
        src = self.specs.get((link.source_system, link.source_object))
        dst = self.specs.get((link.target_system, link.target_object))
        src_name, dst_name = link.source, link.target
        for i, m in enumerate(link.fields):
            mpath = join_path(join_path(lpath, "fields"), i)
            self.check_mapping(mpath, link, m, src, dst, src_name, dst_name)
        for sfield, tfield in link.match.items():
            mpath = join_path(join_path(lpath, "match"), sfield)
            self.check_match(mpath, sfield, tfield, src, dst, src_name, dst_name)
        if link.filter is not None and src is not None:
            for rel, msg in criteria_problems(link.filter, replace(src, name=src_name)):
                self.add(f"{lpath}.filter.{rel}", msg)
        if link.trigger is not None and src is not None:
            for rel, msg in trigger_problems(link.trigger.when, replace(src, name=src_name)):
                self.add(f"{lpath}.trigger.when.{rel}", msg)
        if link.create and dst is not None:
            self.check_creates(lpath, link, dst, dst_name)
        if isinstance(link.on_delete, SetAction) and dst is not None:
            for fname, value in link.on_delete.set.items():
                path = join_path(f"{lpath}.on_delete.set", fname)
                fs = self.field(dst, fname, dst_name, path)
                if fs is not None:
                    self.check_value(path, fs, value, fname)
        self.check_capture(lpath, link)
        if link.conflict == ConflictPolicy.NEWEST and link.reads_target:
            for side, (sname, oname) in (
                ("source", (link.source_system, link.source_object)),
                ("target", (link.target_system, link.target_object)),
            ):
                obj = self.config.systems[sname].objects[oname]
                # Tryton objects always carry last_modified_at.
                if getattr(obj, "updated_at", "last_modified_at") is None:
                    self.add(
                        f"{lpath}.conflict",
                        f"conflict: newest needs updated_at on the {side} object {sname}.{oname}",
                    )

    def check_capture(self, lpath: str, link: LinkConfig) -> None:
        """Every sync captures the sides a link reads by their `updated_at`: an SQL
        object without one would fail every run after the migration."""
        sides = [("source", link.source_system, link.source_object)]
        if link.reads_target:
            sides.append(("target", link.target_system, link.target_object))
        for side, sname, oname in sides:
            scfg = self.config.systems[sname]
            obj = scfg.objects.get(oname)
            if scfg.connector != "sql" or obj is None or getattr(obj, "updated_at", "") is not None:
                continue
            self.add(
                join_path(join_path(join_path("systems", sname), "objects"), oname),
                f"{lpath} captures the changes of its {side} {sname}.{oname}: give the "
                "object `updated_at: COLUMN`, a column stamped on every change",
            )

    def check_creates(
        self, lpath: str, link: LinkConfig, dst: ObjectSpec, dst_name: str
    ) -> None:
        """Columns every create would leave empty though they may not be: each create
        would fail (an IntegrityError per record) until the config writes them."""
        written = {
            m.target for m in link.fields
            if link.mapping_direction(m) in (Direction.FORWARD, Direction.BOTH)
        }
        written |= set(link.match.values())
        if dst.updated_at:
            written.add(dst.updated_at)  # stamped by the connector on every write
        for fs in dst.fields.values():
            if fs.required and not fs.read_only and fs.name not in written:
                self.add(
                    f"{lpath}.create",
                    f"{dst_name} column {fs.name!r} is NOT NULL without a default and no "
                    "field maps to it, so every create would fail: map a field to it (with "
                    "`default:` for empty values) or set create: false",
                )

    def field(self, spec: ObjectSpec, name: str, obj: str, path: str) -> FieldSpec | None:
        fs = spec.fields.get(name)
        if fs is None:
            head = spec.fields.get(name.partition(".")[0])
            if "." in name and head is not None and head.type is FieldType.LIST:
                self.add(
                    path,
                    f"{name!r} follows {head.name!r}, a list of records on {obj}: list objects "
                    "(such as product lines) are not supported yet; map a single reference",
                )
                return None
            self.add(path, f"field {name!r} not found on {obj} (fields: {_fields_of(spec)})")
        return fs

    def check_value(self, path: str, fs: FieldSpec, value: Any, fname: str) -> None:
        try:
            converter(None, fs)(value)
        except ConversionError as err:
            self.add(path, f"{err.reason} (field {fname!r} is {fs.type.value})")

    def check_mapping(
        self,
        mpath: str,
        link: LinkConfig,
        m: Any,
        src: ObjectSpec | None,
        dst: ObjectSpec | None,
        src_name: str,
        dst_name: str,
    ) -> None:
        direction = link.mapping_direction(m)
        forward = direction in (Direction.FORWARD, Direction.BOTH)
        backward = direction in (Direction.BACKWARD, Direction.BOTH)
        sf = self.field(src, m.source, src_name, f"{mpath}.source") if src else None
        tf = self.field(dst, m.target, dst_name, f"{mpath}.target") if dst else None

        # Writes to fields the system fills itself.
        if forward and tf is not None and dst is not None:
            self.check_writable(f"{mpath}.target", tf, dst, dst_name, "forward")
        if backward and sf is not None and src is not None:
            self.check_writable(f"{mpath}.source", sf, src, src_name, "backward")
        if m.default is not None and forward and tf is not None:
            self.check_value(f"{mpath}.default", tf, m.default, m.target)
        if sf is None or tf is None:
            return
        if m.options is not None:
            self.check_options(f"{mpath}.options", link, m, sf, src_name, forward)

        if m.values:
            for fs in (sf, tf):
                if not is_scalar(fs.type):
                    self.add(
                        f"{mpath}.values",
                        f"value maps apply only to scalar fields; {fs.name!r} is {fs.type.value}",
                    )
                    return
            for key, value in m.values.items():
                vpath = join_path(f"{mpath}.values", key)
                if forward:
                    self.check_value(vpath, _loose_len(tf), value, m.target)
                if backward:
                    self.check_value(vpath, _loose_len(sf), key, m.source)
            if isinstance(m.unmapped, UnmappedValue):
                upath = f"{mpath}.unmapped.value"
                if forward:
                    self.check_value(upath, _loose_len(tf), m.unmapped.value, m.target)
                if backward:
                    self.check_value(upath, _loose_len(sf), m.unmapped.value, m.source)
            if self.coverage and m.unmapped in (None, "reject"):
                if forward:
                    self.check_coverage(f"{mpath}.values", link, m, link.source, sf, False)
                if backward:
                    self.check_coverage(f"{mpath}.values", link, m, link.target, tf, True)
            return

        if forward:
            reason = compatible(sf.type, tf.type)
            if reason:
                self.add(
                    mpath,
                    f"cannot map {sf.type.value} field {sf.name!r} to {tf.type.value} "
                    f"field {tf.name!r}: {reason}",
                )
                return
        if backward:
            reason = compatible(tf.type, sf.type)
            if reason:
                self.add(
                    mpath,
                    f"cannot map {tf.type.value} field {tf.name!r} back to {sf.type.value} "
                    f"field {sf.name!r}: {reason}",
                )

    def check_options(
        self, path: str, link: LinkConfig, m: Any, sf: FieldSpec, src_name: str, forward: bool
    ) -> None:
        """``options:``: a lookup object of the target system, fields it has and
        takes, and a source field with an option list (engine/options.py)."""
        opts = m.options
        if not forward:
            self.add(path, "options flow from the source field to the target system; "
                     "this mapping is backward only")
        if not sf.choices:
            self.add(
                path,
                f"field {sf.name!r} of {src_name} has no option list (a Tryton selection or "
                "a SQL ENUM); a lookup table is kept in step by a link of its own",
            )
        system = link.target_system
        if opts.object not in self.config.systems[system].objects:
            known = ", ".join(self.config.systems[system].objects)
            self.add(
                f"{path}.object",
                f"{opts.object!r} is not an object of system {system!r} (objects: {known}); "
                "configure the lookup table there",
            )
            return
        spec = self.specs.get((system, opts.object))
        if spec is None:
            return  # not described: already reported
        obj = f"{system}.{opts.object}"
        for key in ("key", "label"):
            fname = getattr(opts, key)
            if fname is None:
                continue
            fs = self.field(spec, fname, obj, f"{path}.{key}")
            if fs is not None:
                self.check_writable(f"{path}.{key}", fs, spec, obj, "options")

    def check_coverage(
        self, path: str, link: LinkConfig, m: Any, obj: str, fs: FieldSpec, backward: bool
    ) -> None:
        """Values ``obj``'s field holds (its options, or its distinct values when
        the system can list them) that the ``values:`` map has no entry for: a
        record holding one syncs without this field (``unmapped: reject``).

        A warning, not a problem: it is about data, which changes between
        ``check`` and a run, and the run rejects that field only, with the reason;
        refusing every run for one odd value would stop every other record too.
        """
        system, _, oname = obj.partition(".")
        conn = self.connectors.get(system)
        if fs.choices:
            # Read now (a Tryton deal's state: only the object's own states).
            try:
                opts = conn.options(oname, fs.name) if conn else None
            except CrmsyncError:
                opts = None
            held: list[Any] = [k for k, _ in opts] if opts is not None else list(fs.choices)
            kind, truncated = "option", False
        else:
            try:
                got = conn.distinct_values(oname, fs.name, _DISTINCT + 1) if conn else None
            except CrmsyncError:
                return  # cannot tell now; the schema checks already reported the system
            if got is None:
                return
            held, kind, truncated = got[:_DISTINCT], "value", len(got) > _DISTINCT
        # A soft-delete marker never goes through the map: the record is a delete.
        ocfg = self.config.systems[system].objects.get(oname)
        marker = getattr(ocfg, "deleted", None)
        if marker is not None and marker.field == fs.name:
            held = [v for v in held if v != marker.value and str(v) != str(marker.value)]
        mapper = value_mapper(m.values, backward)
        uncovered = []
        for v in held:
            try:
                mapper(v)
            except ConversionError:
                uncovered.append(v)
        if not uncovered:
            return
        shown = ", ".join(map(_show_value, uncovered[:_SHOWN]))
        if len(uncovered) > _SHOWN:
            shown += f" and {len(uncovered) - _SHOWN} more"
        has = "has" if kind == "option" else "holds"
        entry = "none of the targets in" if backward else "with no entry in"
        msg = (
            f"{obj} {fs.name!r} {has} {len(uncovered)} {kind}(s) {entry} values: {shown}; a record "
            "holding one syncs without this field (unmapped: reject): map them, or set "
            "unmapped: keep or {value: ...}"
        )
        if truncated:
            msg += f" (only the first {_DISTINCT} different values were read)"
        self.warnings.append((self.locate(path), redact(msg)))

    def check_writable(
        self, path: str, fs: FieldSpec, spec: ObjectSpec, obj: str, direction: str
    ) -> None:
        if spec.key_generated and fs.name == spec.key:
            self.add(
                path,
                f"{fs.name!r} is the key {obj} generates itself; it cannot be written "
                f"({direction} mapping)",
            )
        elif fs.read_only:
            self.add(
                path,
                f"{fs.name!r} is filled by {obj} itself and cannot be written "
                f"({direction} mapping)",
            )

    def check_match(
        self,
        path: str,
        sfield: str,
        tfield: str,
        src: ObjectSpec | None,
        dst: ObjectSpec | None,
        src_name: str,
        dst_name: str,
    ) -> None:
        sf = tf = None
        if src is not None:
            sf = src.fields.get(sfield)
            if sf is None:
                self.add(
                    path,
                    f"source field {sfield!r} not found on {src_name} (fields: {_fields_of(src)})",
                )
        if dst is not None:
            tf = dst.fields.get(tfield)
            if tf is None:
                self.add(
                    path,
                    f"target field {tfield!r} not found on {dst_name} (fields: {_fields_of(dst)})",
                )
        if sf is None or tf is None:
            return
        reason = compatible(sf.type, tf.type)
        if reason is None and not (is_scalar(sf.type) or sf.type == tf.type):
            reason = f"{sf.type.value} fields cannot be matched"
        if reason:
            self.add(
                path,
                f"cannot match {sf.type.value} field {sfield!r} with {tf.type.value} "
                f"field {tfield!r}: {reason}",
            )


# Different values ``check`` reads from a column, and uncovered ones it names.
_DISTINCT = 1000
_SHOWN = 50


def _show_value(v: Any) -> str:
    return repr(v) if isinstance(v, str) else value_key(v)


def _loose(fs: FieldSpec) -> FieldSpec:
    """The field without write limits: a value compared against it need not fit them."""
    return FieldSpec(fs.name, fs.type, scale=fs.scale, choices=fs.choices)


def _loose_len(fs: FieldSpec) -> FieldSpec:
    """Value-map entries are checked for type and choices; length is checked per record."""
    return FieldSpec(fs.name, fs.type, nullable=True, scale=fs.scale, choices=fs.choices)
