"""A link compiled against the live object descriptions: everything apply needs, precomputed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crmsync.config.models import (
    ConflictPolicy,
    Direction,
    LinkConfig,
    Mapping,
    ObjectConfig,
    SetAction,
    UnmappedValue,
)
from crmsync.convert import (
    UNMAPPED_REJECT,
    UNMAPPED_VALUE,
    converter,
    identity,
    to_json,
    value_mapper,
)
from crmsync.engine.filters import compile_criteria
from crmsync.engine.merge import FieldPlan
from crmsync.engine.trigger import Trigger, compile_trigger, trigger_fields
from crmsync.model import FieldSpec, ObjectSpec


@dataclass(slots=True)
class MatchPlan:
    source: str
    target: str
    # source value -> canonical target-typed value, to compare with target values
    forward: Callable[[Any], Any]
    canon: Callable[[Any], Any]


@dataclass(slots=True)
class CompiledLink:
    name: str
    config: LinkConfig
    source_spec: ObjectSpec
    target_spec: ObjectSpec
    plans: list[FieldPlan]
    # plans whose values flow to the target / to the source
    matches: list[MatchPlan]
    accepts: Callable[[dict[str, Any]], bool]
    is_deleted: Callable[[dict[str, Any]], bool]
    target_is_deleted: Callable[[dict[str, Any]], bool]
    on_delete: str  # "ignore" | "set" | "delete"
    delete_values: dict[str, Any]
    policy: ConflictPolicy
    batch_size: int
    # event trigger: fires(prev_seen, current values); the fields it watches
    trigger: Trigger | None = None
    trigger_fields: frozenset[str] = frozenset()

    @property
    def reads_target(self) -> bool:
        return self.config.reads_target


def _deleted_test(obj: ObjectConfig | None) -> Callable[[dict[str, Any]], bool]:
    if obj is None or obj.deleted is None:
        return lambda values: False
    field, marker = obj.deleted.field, obj.deleted.value
    smarker = str(marker)

    def test(values: dict[str, Any]) -> bool:
        v = values.get(field)
        return v == marker or (v is not None and str(v) == smarker)

    return test


def _with_default(fn: Callable[[Any], Any], default: Any) -> Callable[[Any], Any]:
    if default is None:
        return fn

    def f(v: Any) -> Any:
        if v is None or v == "":
            v = default
        return fn(v)

    return f


def _chain(first: Callable[[Any], Any] | None, then: Callable[[Any], Any]) -> Callable[[Any], Any]:
    if first is None:
        return then
    return lambda v: then(first(v))


def _plan(m: Mapping, link: LinkConfig, src: FieldSpec, dst: FieldSpec) -> FieldPlan:
    direction = link.mapping_direction(m)
    if m.values:
        mode, replacement = unmapped_mode(m)
        # The mapper fills an empty value with the default itself: a default is
        # a target value, not an unmapped source value to reject.
        fwd = _chain(
            value_mapper(m.values, False, mode, replacement, default=m.default),
            converter(None, dst),
        )
        bwd = _chain(value_mapper(m.values, True, mode, replacement), converter(None, src))
    else:
        fwd = _with_default(converter(src, dst), m.default)
        bwd = converter(dst, src)
    return FieldPlan(
        key=m.target,
        source=m.source,
        target=m.target,
        direction=Direction(direction),
        forward=fwd,
        backward=bwd,
        canon=_canon_for(dst),
        source_canon=_canon_for(src),
    )


def unmapped_mode(m: Mapping) -> tuple[str, Any]:
    """``unmapped:`` as (mode, replacement) for ``value_mapper``."""
    if isinstance(m.unmapped, UnmappedValue):
        return UNMAPPED_VALUE, m.unmapped.value
    return m.unmapped or UNMAPPED_REJECT, None


def _canon_for(spec: FieldSpec) -> Callable[[Any], Any]:
    """Canonical JSON of a value of this field, normalised first.

    Drivers hand back floats for decimals or 0/1 for booleans; the field's own
    converter makes them the same Python value the converted side has, so the
    comparison never flaps between two spellings of one value.
    """
    # Type-trusting: a raw value the driver could not convert is compared as is.
    norm = converter(spec, spec, trust_type=True)
    if norm is identity:
        return to_json

    def canon(v: Any) -> Any:
        try:
            return to_json(norm(v))
        except ValueError:
            return to_json(v)

    return canon


def compile_link(
    name: str,
    link: LinkConfig,
    source_spec: ObjectSpec,
    target_spec: ObjectSpec,
    source_obj: ObjectConfig | None = None,
    target_obj: ObjectConfig | None = None,
) -> CompiledLink:
    """Precompute converters, the filter and delete handling (``check`` has validated names)."""
    plans = [
        _plan(m, link, source_spec.fields[m.source], target_spec.fields[m.target])
        for m in link.fields
    ]
    matches = [
        MatchPlan(s, t, converter(source_spec.fields[s], target_spec.fields[t]), to_json)
        for s, t in link.match.items()
    ]
    when = link.trigger.when if link.trigger is not None else None
    if isinstance(link.on_delete, SetAction):
        on_delete = "set"
        delete_values = {
            f: converter(None, target_spec.fields[f])(v) for f, v in link.on_delete.set.items()
        }
    else:
        on_delete = link.on_delete
        delete_values = {}
    return CompiledLink(
        name=name,
        config=link,
        source_spec=source_spec,
        target_spec=target_spec,
        plans=plans,
        matches=matches,
        accepts=compile_criteria(link.filter, source_spec),
        is_deleted=_deleted_test(source_obj),
        target_is_deleted=_deleted_test(target_obj),
        on_delete=on_delete,
        delete_values=delete_values,
        policy=link.conflict,
        batch_size=link.batch_size,
        trigger=compile_trigger(when, source_spec) if when is not None else None,
        trigger_fields=frozenset(trigger_fields(when)) if when is not None else frozenset(),
    )
