"""Event triggers: sync a record once, when its condition becomes true.

``trigger: {when: <criteria>}`` takes the filter operators (``score ge 50``,
``status eq signed``, ``in``, ``is_true``, ... joined by ``all``/``any``) and
two that compare what crmsync saw last time with what it sees now:

* ``changed``: the field's value differs from the last one seen;
* ``changed_to``: the field now has ``value`` and did not have it last time.

A trigger fires when its condition becomes true for a record, from false to
true against what crmsync last saw of it, and then not again while the
condition keeps holding: ``score ge 50`` fires when the score reaches 50, not
on every later change while it stays above; if the score drops below 50 and
comes back, it fires again. Formally, it fires when the condition holds now
and did not hold on the values last seen, where ``changed``/``changed_to``
are moments, never standing states: a condition with one of them fires each
time that change happens while the rest holds (``all: [{amount changed},
{status eq signed}]`` fires on every change of the amount of a signed
record). A record seen for the first time counts as changed from nothing,
and nothing held before it.

The last-seen values of the trigger's fields are kept per record in the
state database, committed with the apply, so a re-delivered or re-read record
with the same values never fires again; a record whose write failed keeps
its old seen values, so it fires again. Changes that come and go between two
reads are not seen (crmsync compares states, not events): a status that goes
draft -> signed -> draft before the record is read does not fire.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from crmsync.config.models import AllOf, AnyOf, Condition, Criteria, Op
from crmsync.convert import ConversionError, converter, to_json
from crmsync.engine import filters
from crmsync.model import FieldSpec, ObjectSpec

# prev values (None: never seen), current values -> fires?
Trigger = Callable[[dict[str, Any] | None, dict[str, Any]], bool]
EVENT_OPS = frozenset({Op.CHANGED, Op.CHANGED_TO})


def trigger_fields(c: Criteria) -> set[str]:
    if isinstance(c, AllOf):
        return set().union(*(trigger_fields(x) for x in c.all))
    if isinstance(c, AnyOf):
        return set().union(*(trigger_fields(x) for x in c.any))
    return {c.field}


def trigger_problems(c: Criteria, spec: ObjectSpec, path: str = "") -> list[tuple[str, str]]:
    """Problems, each ``(relative key path, message)``, like ``filters.criteria_problems``."""
    def join(*parts: str) -> str:
        return ".".join(p for p in parts if p)

    if isinstance(c, AllOf | AnyOf):
        key = "all" if isinstance(c, AllOf) else "any"
        out: list[tuple[str, str]] = []
        for i, child in enumerate(c.all if isinstance(c, AllOf) else c.any):
            out += trigger_problems(child, spec, f"{join(path, key)}[{i}]")
        return out
    if c.op not in EVENT_OPS:
        return [(join(path, p), m) for p, m in filters.criteria_problems(c, spec)]
    fs = spec.fields.get(c.field)
    if fs is None:
        known = ", ".join(spec.fields)
        msg = f"field {c.field!r} not found on {spec.name} (fields: {known})"
        return [(join(path, "field"), msg)]
    if c.op is Op.CHANGED_TO:
        try:
            filters._coerce(Op.EQ, c.value, fs)
        except ConversionError as e:
            return [(join(path, "value"), e.reason)]
    return []


def compile_trigger(c: Criteria, spec: ObjectSpec) -> Trigger:
    """fires(prev, cur): the condition holds on ``cur`` and did not hold on ``prev``."""
    now = _now(c, spec)
    held = _held(c, spec)
    decode = decoder(spec, trigger_fields(c))

    def fires(prev: dict[str, Any] | None, cur: dict[str, Any]) -> bool:
        if not now(prev, cur):
            return False
        # Already true when last seen: not a new occurrence.
        return prev is None or not held(decode(prev))

    return fires


def _now(c: Criteria, spec: ObjectSpec) -> Trigger:
    """The condition on the transition prev -> cur (event ops compare the two)."""
    if isinstance(c, AllOf):
        parts = [_now(x, spec) for x in c.all]
        return lambda prev, cur: all(p(prev, cur) for p in parts)
    if isinstance(c, AnyOf):
        parts = [_now(x, spec) for x in c.any]
        return lambda prev, cur: any(p(prev, cur) for p in parts)
    return _condition(c, spec)


def _held(c: Criteria, spec: ObjectSpec) -> filters.Predicate:
    """The condition as a standing state of the values last seen: an event
    (``changed``, ``changed_to``) is a moment, so it never 'already held'."""
    if isinstance(c, AllOf):
        parts = [_held(x, spec) for x in c.all]
        return lambda r: all(p(r) for p in parts)
    if isinstance(c, AnyOf):
        parts = [_held(x, spec) for x in c.any]
        return lambda r: any(p(r) for p in parts)
    if c.op in EVENT_OPS:
        return lambda r: False
    return filters.compile_criteria(c, spec)


def decoder(spec: ObjectSpec, fields: set[str]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Seen values are canonical JSON; filters compare typed values (Decimal, date)."""
    convs = {
        f: converter(None, FieldSpec(f, spec.fields[f].type, nullable=True))
        for f in fields
        if f in spec.fields
    }

    def decode(seen: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f, conv in convs.items():
            try:
                out[f] = conv(seen.get(f))
            except ConversionError:
                out[f] = None  # remembered under another type: treat as unknown
        return out

    return decode


def _condition(c: Condition, spec: ObjectSpec) -> Trigger:
    f = c.field
    if c.op is Op.CHANGED:
        def changed(prev: dict[str, Any] | None, cur: dict[str, Any]) -> bool:
            return prev is None or prev.get(f) != to_json(cur.get(f))

        return changed
    if c.op is Op.CHANGED_TO:
        want = to_json(filters._coerce(Op.EQ, c.value, spec.fields[f]))

        def changed_to(prev: dict[str, Any] | None, cur: dict[str, Any]) -> bool:
            now = to_json(cur.get(f))
            return now == want and (prev is None or prev.get(f) != want)

        return changed_to
    test = filters.compile_criteria(c, spec)
    return lambda prev, cur: test(cur)


def seen_values(fields: set[str], values: dict[str, Any]) -> dict[str, Any]:
    """What to remember of a record for the next comparison (canonical JSON)."""
    return {f: to_json(values.get(f)) for f in sorted(fields)}
