"""Link filters: criteria compiled once into closures, evaluated per source record.

Config values are coerced to the field's type at compile time, so evaluation
is plain comparisons with no dispatch on op names per record.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from crmsync.config.models import AllOf, AnyOf, Condition, Criteria, Op
from crmsync.convert import ConversionError, converter
from crmsync.errors import ConfigError
from crmsync.model import FieldSpec, FieldType, ObjectSpec

Predicate = Callable[[dict[str, Any]], bool]

_ORDERING = frozenset({Op.LT, Op.LE, Op.GT, Op.GE})
_EQUALITY = frozenset({Op.EQ, Op.NE, Op.IN, Op.NOT_IN})
_TEXT_OPS = frozenset({Op.CONTAINS, Op.STARTS_WITH})
_BOOL_OPS = frozenset({Op.IS_TRUE, Op.IS_FALSE})
_EMPTY_OPS = frozenset({Op.IS_EMPTY, Op.IS_NOT_EMPTY})

_ORDERED_TYPES = frozenset(
    {
        FieldType.STRING,
        FieldType.CHOICE,
        FieldType.INTEGER,
        FieldType.DECIMAL,
        FieldType.DATE,
        FieldType.DATETIME,
    }
)
_EQUALITY_TYPES = _ORDERED_TYPES | {FieldType.BOOLEAN, FieldType.REFERENCE}
_TEXT_TYPES = frozenset({FieldType.STRING, FieldType.CHOICE})


def _always(_record: dict[str, Any]) -> bool:
    return True


def _op_fits(op: Op, ftype: FieldType) -> bool:
    if op in _ORDERING:
        return ftype in _ORDERED_TYPES
    if op in _EQUALITY:
        return ftype in _EQUALITY_TYPES
    if op in _TEXT_OPS:
        return ftype in _TEXT_TYPES
    if op in _BOOL_OPS:
        return ftype == FieldType.BOOLEAN
    return True  # is_empty / is_not_empty fit every type


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _coerce(op: Op, value: Any, spec: FieldSpec) -> Any:
    """The condition's value in the field's type; raises ConversionError."""
    if op in _TEXT_OPS:
        if not isinstance(value, str):
            raise ConversionError(f"expected text, got {value!r}")
        return value
    # A filter compares, it does not write: length and choice limits do not apply.
    conv = converter(None, FieldSpec(spec.name, spec.type, nullable=True))
    if op in (Op.IN, Op.NOT_IN):
        return [conv(v) for v in value]
    return conv(value)


def criteria_problems(criteria: Criteria | None, spec: ObjectSpec) -> list[tuple[str, str]]:
    """Problems with ``criteria`` against ``spec``, each ``(relative key path, message)``."""
    problems: list[tuple[str, str]] = []
    if criteria is not None:
        _problems(criteria, spec, "", problems)
    return problems


def _problems(c: Criteria, spec: ObjectSpec, path: str, out: list[tuple[str, str]]) -> None:
    if isinstance(c, AllOf | AnyOf):
        key = "all" if isinstance(c, AllOf) else "any"
        for i, child in enumerate(c.all if isinstance(c, AllOf) else c.any):
            _problems(child, spec, f"{_join(path, key)}[{i}]", out)
        return
    fs = spec.fields.get(c.field)
    if fs is None:
        known = ", ".join(spec.fields)
        out.append(
            (_join(path, "field"), f"field {c.field!r} not found on {spec.name} (fields: {known})")
        )
        return
    if not _op_fits(c.op, fs.type):
        out.append(
            (
                _join(path, "op"),
                f"op {c.op.value} does not apply to {fs.type.value} field {c.field!r}",
            )
        )
        return
    if c.op in _EMPTY_OPS or c.op in _BOOL_OPS:
        return
    if c.op in (Op.IN, Op.NOT_IN):
        for i, v in enumerate(c.value):
            try:
                _coerce(Op.EQ, v, fs)
            except ConversionError as e:
                out.append((f"{_join(path, 'value')}[{i}]", e.reason))
        return
    try:
        _coerce(c.op, c.value, fs)
    except ConversionError as e:
        out.append((_join(path, "value"), e.reason))


def compile_criteria(criteria: Criteria | None, spec: ObjectSpec) -> Predicate:
    """A predicate over a source record's values; raises ``ConfigError`` when the
    criteria do not fit ``spec`` (run ``criteria_problems`` first to report them)."""
    if criteria is None:
        return _always
    problems = criteria_problems(criteria, spec)
    if problems:
        raise ConfigError([(f"filter.{p}", m) for p, m in problems])
    return _compile(criteria, spec)


def _compile(c: Criteria, spec: ObjectSpec) -> Predicate:
    if isinstance(c, AllOf):
        return _all([_compile(x, spec) for x in c.all])
    if isinstance(c, AnyOf):
        return _any([_compile(x, spec) for x in c.any])
    return _condition(c, spec.fields[c.field])


def _all(preds: list[Predicate]) -> Predicate:
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        a, b = preds
        return lambda r: a(r) and b(r)

    def every(r: dict[str, Any]) -> bool:
        for p in preds:
            if not p(r):
                return False
        return True

    return every


def _any(preds: list[Predicate]) -> Predicate:
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        a, b = preds
        return lambda r: a(r) or b(r)

    def some(r: dict[str, Any]) -> bool:
        for p in preds:
            if p(r):
                return True
        return False

    return some


def _condition(c: Condition, fs: FieldSpec) -> Predicate:
    name = c.field
    op = c.op

    if op is Op.IS_EMPTY or op is Op.IS_NOT_EMPTY:
        want = op is Op.IS_EMPTY

        def empty(r: dict[str, Any]) -> bool:
            v = r.get(name)
            if v is None:
                return want
            if type(v) is str:
                return (not v.strip()) is want
            if isinstance(v, list | dict | tuple):
                return (len(v) == 0) is want
            return not want

        return empty
    if op is Op.IS_TRUE:
        # Drivers may hand booleans over as 0/1 integers.
        return lambda r: (v := r.get(name)) is True or (type(v) is int and v == 1)
    if op is Op.IS_FALSE:
        return lambda r: (v := r.get(name)) is False or (type(v) is int and v == 0)

    value = _coerce(op, c.value, fs)
    if op is Op.CONTAINS:
        return lambda r: type(v := r.get(name)) is str and value in v
    if op is Op.STARTS_WITH:
        return lambda r: type(v := r.get(name)) is str and v.startswith(value)

    if fs.type == FieldType.DECIMAL:
        # FLOAT columns give floats, and 1.1 != Decimal('1.1'): compare as Decimal.
        def get(r: dict[str, Any]) -> Any:
            v = r.get(name)
            return Decimal(str(v)) if type(v) is float else v
    else:
        get = None

    if op is Op.IN or op is Op.NOT_IN:
        try:
            members: Any = frozenset(value)
        except TypeError:
            members = value
        if get is None:
            if op is Op.IN:
                return lambda r: r.get(name) in members
            return lambda r: r.get(name) not in members
        if op is Op.IN:
            return lambda r: get(r) in members
        return lambda r: get(r) not in members

    if op is Op.EQ:
        if get is None:
            return lambda r: r.get(name) == value
        return lambda r: get(r) == value
    if op is Op.NE:
        if get is None:
            return lambda r: r.get(name) != value
        return lambda r: get(r) != value

    # Ordering: None (and values of another type) are never less or greater.
    fetch = get or (lambda r: r.get(name))
    cmp: Callable[[Any, Any], bool] = {
        Op.LT: operator.lt,
        Op.LE: operator.le,
        Op.GT: operator.gt,
        Op.GE: operator.ge,
    }[op]

    def ordered(r: dict[str, Any]) -> bool:
        v = fetch(r)
        if v is None:
            return False
        try:
            return cmp(v, value)
        except TypeError:
            return False

    return ordered
