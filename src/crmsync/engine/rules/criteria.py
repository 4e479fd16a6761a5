"""A rule's ``when``: criteria over a change (the values seen last time -> now).

A rule is evaluated once per change of a watched record, a change being any
field that differs from what the rule saw last (crmsync's own writes are
counted as seen, so they are no change: see ``rules.engine``). On that change:

* a filter op (``eq``, ``in``, ``ge``, ``is_true``, ...) tests the value now;
* ``changed``: the field's value differs from the one seen last;
* ``changed_to`` V: the field is V now and was not last time;
* ``changed_from`` V: the field was V last time and is not now;
* ``becomes`` {op, value}: that condition on the field was false last time
  and is true now ("score becomes >= 50").

A record the rule sees for the first time after it started watching (a new
record) changed from nothing: ``changed`` holds, ``changed_to`` and
``becomes`` hold when the value fits now, ``changed_from`` never holds. The
records that existed when the rule started are its baseline: seen, never
fired for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from crmsync.config.models import EVENT_OPS, AllOf, AnyOf, Condition, Criteria, Op
from crmsync.convert import ConversionError, to_json
from crmsync.engine import filters
from crmsync.model import ObjectSpec

# (seen: canonical JSON last seen or None, typed last seen or None, typed now) -> holds?
When = Callable[[dict[str, Any] | None, dict[str, Any] | None, dict[str, Any]], bool]


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def criteria_fields(c: Criteria | None) -> set[str]:
    if c is None:
        return set()
    if isinstance(c, AllOf):
        return set().union(*(criteria_fields(x) for x in c.all))
    if isinstance(c, AnyOf):
        return set().union(*(criteria_fields(x) for x in c.any))
    return {c.field}


def when_problems(c: Criteria | None, spec: ObjectSpec, path: str = "") -> list[tuple[str, str]]:
    """Problems, each ``(relative key path, message)``: unknown fields, ops that do
    not fit the field's type, values that do not convert to it."""
    if c is None:
        return []
    if isinstance(c, AllOf | AnyOf):
        key = "all" if isinstance(c, AllOf) else "any"
        out: list[tuple[str, str]] = []
        for i, child in enumerate(c.all if isinstance(c, AllOf) else c.any):
            out += when_problems(child, spec, f"{_join(path, key)}[{i}]")
        return out
    if c.op not in EVENT_OPS:
        return [(_join(path, p), m) for p, m in filters.criteria_problems(c, spec)]
    fs = spec.fields.get(c.field)
    if fs is None:
        known = ", ".join(spec.fields)
        return [(_join(path, "field"), f"field {c.field!r} not found on {spec.name} "
                 f"(fields: {known})")]
    if c.op is Op.BECOMES:
        assert isinstance(c.value, Condition)
        return [(_join(path, "value", p), m) for p, m in filters.criteria_problems(c.value, spec)
                if p != "field"]
    if c.op in (Op.CHANGED_TO, Op.CHANGED_FROM):
        try:
            filters._coerce(Op.EQ, c.value, fs)
        except ConversionError as e:
            return [(_join(path, "value"), e.reason)]
    return []


def compile_when(c: Criteria | None, spec: ObjectSpec) -> When:
    """The rule's criteria as one function of (seen JSON, seen typed, now typed)."""
    if c is None:
        return lambda seen, prev, cur: True
    if isinstance(c, AllOf):
        parts = [compile_when(x, spec) for x in c.all]
        return lambda seen, prev, cur: all(p(seen, prev, cur) for p in parts)
    if isinstance(c, AnyOf):
        parts = [compile_when(x, spec) for x in c.any]
        return lambda seen, prev, cur: any(p(seen, prev, cur) for p in parts)
    return _condition(c, spec)


def _condition(c: Condition, spec: ObjectSpec) -> When:
    f = c.field
    if c.op is Op.CHANGED:
        return lambda seen, prev, cur: seen is None or seen.get(f) != to_json(cur.get(f))
    if c.op in (Op.CHANGED_TO, Op.CHANGED_FROM):
        want = to_json(filters._coerce(Op.EQ, c.value, spec.fields[f]))
        if c.op is Op.CHANGED_TO:
            def changed_to(seen: Any, prev: Any, cur: dict[str, Any]) -> bool:
                now = to_json(cur.get(f))
                return now == want and (seen is None or seen.get(f) != want)

            return changed_to

        def changed_from(seen: Any, prev: Any, cur: dict[str, Any]) -> bool:
            return seen is not None and seen.get(f) == want and to_json(cur.get(f)) != want

        return changed_from
    if c.op is Op.BECOMES:
        assert isinstance(c.value, Condition)
        test = filters.compile_criteria(c.value, spec)

        def becomes(seen: Any, prev: dict[str, Any] | None, cur: dict[str, Any]) -> bool:
            return test(cur) and (prev is None or not test(prev))

        return becomes
    test = filters.compile_criteria(c, spec)
    return lambda seen, prev, cur: test(cur)
