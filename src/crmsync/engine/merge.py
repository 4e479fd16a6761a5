"""Per-field three-way merge against the shadow (pure, no I/O).

Every value is compared in its canonical JSON form in the *target's* terms:
the source value mapped and converted to the target field type. The shadow
holds, per field, the value both sides had after the last successful sync.
An empty value is ``None`` or ``''``; two empty values are equal, whatever
their spelling, so NULL on one side and '' on the other is no difference.

Per field, with ``s`` (source), ``t`` (target) and ``b`` (shadow):

* ``s == t``: unchanged; the shadow becomes ``s``.
* only one side moved away from ``b``: that side's value is written to the
  other side, if the field's direction allows; a forward field whose target
  moved locally is left alone until the source changes it.
* both moved to different values: a conflict, settled by the link's policy
  (``source``, ``target``, or ``newest``: the side whose own version, its
  ``updated_at``, is later; the source when either is unknown).

First pairing (no ``b``: the pair was just matched by key, or the mapping is
new) has no history to say which side changed, so it never erases data:

* one side empty, the other filled: the filled value is copied to the empty
  side if the field's direction allows (a forward field fills the target, a
  backward field the source, a both-way field either), whatever the policy;
  never the other way. A forward field with an empty source (or a backward
  field with an empty target) is left as it is, with no base, until that
  side gets a value.
* both filled and different: a forward field takes the source value, a
  backward field the target value, a both-way field the policy's winner
  (``newest`` by each side's version), reported as a conflict.

Writing exactly the winning value and recording it as the new shadow is what
makes the echo of our own write look unchanged: no ping-pong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crmsync.config.models import ConflictPolicy, Direction
from crmsync.convert import identity, to_json
from crmsync.model import FieldOutcome, FieldStatus

MISSING: Any = object()


class Rejected:
    """A value that could not be converted, with the reason."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


@dataclass(slots=True)
class FieldPlan:
    """One compiled mapping."""

    key: str  # shadow key: the target field
    source: str
    target: str
    direction: Direction
    # source raw value -> target-typed value (value map, default, conversion)
    forward: Callable[[Any], Any]
    # target raw value -> source-typed value (inverse value map, conversion)
    backward: Callable[[Any], Any]
    # canonical JSON of a raw target value (normalised to the field's type
    # first); values already converted by ``forward`` only need ``to_json``
    canon: Callable[[Any], Any]
    # canonical JSON of a source-typed value (for outcomes of source writes)
    source_canon: Callable[[Any], Any]


@dataclass(slots=True)
class MergeResult:
    target_updates: dict[str, Any]
    source_updates: dict[str, Any]
    shadow: dict[str, Any]
    fields: list[FieldOutcome]


def _convert(fn: Callable[[Any], Any], value: Any) -> Any:
    try:
        return fn(value)
    except ValueError as exc:  # ConversionError is a ValueError
        return Rejected(str(exc))


def _empty(v: Any) -> bool:
    return v is None or v == ""


def _same(a: Any, b: Any) -> bool:
    """Equal canonical values; NULL and '' are both just empty."""
    return a == b or (_empty(a) and _empty(b))


def merge(
    plans: list[FieldPlan],
    src: dict[str, Any],
    tgt: dict[str, Any],
    shadow: dict[str, Any] | None,
    policy: ConflictPolicy,
    source_is_newer: bool | None,
) -> MergeResult:
    """Merge one paired record; ``shadow`` None means first pairing (no base)."""
    tu: dict[str, Any] = {}
    su: dict[str, Any] = {}
    new_shadow: dict[str, Any] = dict(shadow) if shadow else {}
    outs: list[FieldOutcome] = []
    for p in plans:
        b = shadow.get(p.key, MISSING) if shadow is not None else MISSING
        first = b is MISSING
        t_raw = tgt.get(p.target)
        t = p.canon(t_raw)
        sv = _convert(p.forward, src.get(p.source))
        d = p.direction
        if isinstance(sv, Rejected):
            if d is Direction.BACKWARD and (not _empty(t) if first else not _same(t, b)):
                _write_source(p, t_raw, t, src, su, new_shadow, outs)
            elif d is not Direction.BACKWARD:
                outs.append(FieldOutcome(p.target, FieldStatus.REJECTED, reason=sv.reason))
            else:
                outs.append(FieldOutcome(p.target, FieldStatus.UNCHANGED))
            continue
        s = to_json(sv)
        if _same(s, t):
            if first or not _same(s, b):
                new_shadow[p.key] = s
            outs.append(FieldOutcome(p.target, FieldStatus.UNCHANGED))
            continue
        if first:
            # No history: an empty side is filled from the other, never the
            # reverse (see the module docstring); both filled differ here.
            if _empty(s) or _empty(t):
                to_target = _empty(t)
                allowed = d is Direction.BOTH or d is (
                    Direction.FORWARD if to_target else Direction.BACKWARD
                )
                if not allowed:
                    outs.append(FieldOutcome(p.target, FieldStatus.UNCHANGED))
                elif to_target:
                    _write_target(p, sv, s, t, tu, new_shadow, outs)
                else:
                    _write_source(p, t_raw, t, src, su, new_shadow, outs)
                continue
            s_moved = t_moved = d is Direction.BOTH
            if d is Direction.FORWARD:
                s_moved = True
            elif d is Direction.BACKWARD:
                t_moved = True
        else:
            s_moved = not _same(s, b)
            t_moved = not _same(t, b)
        if d is Direction.FORWARD:
            if s_moved:
                _write_target(p, sv, s, t, tu, new_shadow, outs)
            else:
                outs.append(FieldOutcome(p.target, FieldStatus.UNCHANGED))
            continue
        if d is Direction.BACKWARD:
            if t_moved:
                _write_source(p, t_raw, t, src, su, new_shadow, outs)
            else:
                outs.append(FieldOutcome(p.target, FieldStatus.UNCHANGED))
            continue
        # both directions
        if s_moved and not t_moved:
            _write_target(p, sv, s, t, tu, new_shadow, outs)
        elif t_moved and not s_moved:
            _write_source(p, t_raw, t, src, su, new_shadow, outs)
        else:
            source_wins = policy is ConflictPolicy.SOURCE or (
                policy is ConflictPolicy.NEWEST and source_is_newer is not False
            )
            why = "the two sides differ at first pairing" if first else "both sides changed"
            if source_wins:
                _write_target(p, sv, s, t, tu, new_shadow, outs)
                outs[-1].status = FieldStatus.CONFLICT
                outs[-1].reason = f"{why}; kept the source value ({policy.value})"
            else:
                before = len(outs)
                _write_source(p, t_raw, t, src, su, new_shadow, outs)
                if len(outs) > before and outs[-1].status is FieldStatus.UPDATED:
                    o = outs[-1]
                    o.status = FieldStatus.CONFLICT
                    o.reason = f"{why}; kept the target value ({policy.value})"
    return MergeResult(tu, su, new_shadow, outs)


def _write_target(
    p: FieldPlan,
    sv: Any,
    s: Any,
    t: Any,
    tu: dict[str, Any],
    new_shadow: dict[str, Any],
    outs: list[FieldOutcome],
) -> None:
    tu[p.target] = sv
    new_shadow[p.key] = s
    outs.append(FieldOutcome(p.target, FieldStatus.UPDATED, "target", t, s))


def _write_source(
    p: FieldPlan,
    t_raw: Any,
    t: Any,
    src: dict[str, Any],
    su: dict[str, Any],
    new_shadow: dict[str, Any],
    outs: list[FieldOutcome],
) -> None:
    bv = _convert(p.backward, t_raw)
    if isinstance(bv, Rejected):
        outs.append(FieldOutcome(p.source, FieldStatus.REJECTED, "source", reason=bv.reason))
        return
    su[p.source] = bv
    new_shadow[p.key] = t
    outs.append(
        FieldOutcome(
            p.source,
            FieldStatus.UPDATED,
            "source",
            p.source_canon(src.get(p.source)),
            p.source_canon(bv),
        )
    )


# Target-typed values whose canonical JSON form is the value itself.
_PLAIN = frozenset({str, int, bool, type(None)})


def create_values(
    plans: list[FieldPlan], src: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], list[FieldOutcome]]:
    """Values for a new target record, its shadow, and the fields rejected.

    The hot path of a migration: every other field is implicitly ``updated``
    from nothing to its shadow value, so no per-field object is built for it.
    """
    values: dict[str, Any] = {}
    shadow: dict[str, Any] = {}
    rejected: list[FieldOutcome] = []
    get = src.get
    for p in plans:
        if p.direction is Direction.BACKWARD:
            # The new target record starts empty there: base it so the empty
            # target value is not mistaken for a change to copy back.
            shadow[p.key] = p.canon(None)
            continue
        try:
            v = p.forward(get(p.source))
        except ValueError as exc:
            rejected.append(FieldOutcome(p.target, FieldStatus.REJECTED, reason=str(exc)))
            continue
        values[p.target] = v
        shadow[p.key] = v if type(v) in _PLAIN else to_json(v)
    return values, shadow, rejected


# A value a converter refused, in a column converted at once.
UNCONVERTED: Any = object()


def convert_column(fn: Callable[[Any], Any], raw: list[Any]) -> list[Any]:
    """``fn`` over a column of values; a value it refuses (ValueError) becomes
    ``UNCONVERTED``. One C-level ``map`` when none is refused."""
    try:
        return list(map(fn, raw))
    except ValueError:
        out: list[Any] = []
        for v in raw:
            try:
                out.append(fn(v))
            except ValueError:
                out.append(UNCONVERTED)
        return out


def create_columns(
    plans: list[FieldPlan],
    extra: list[tuple[str, str, Callable[[Any], Any]]],
    rows: list[dict[str, Any]],
) -> list[tuple[dict[str, Any], dict[str, Any]] | None]:
    """``create_values`` (plus ``extra`` fields) of many new records, converted
    column by column: one ``map`` per field instead of a loop step per value.

    ``extra`` are (target field, source field, converter) written besides the
    plans when the plans do not write that field (a link's match keys, so a
    retried create is found). A record with a value that does not convert gets
    None: ``create_values`` then decides it one by one (its rejected fields and
    reasons), so the result for every record is what the per-record path gives.
    """
    n = len(rows)
    bad: set[int] = set()

    def column(source: str, fn: Callable[[Any], Any]) -> list[Any]:
        raw = [r.get(source) for r in rows]
        if fn is identity:
            return raw  # a field of the same type on both sides: nothing to convert
        try:
            return list(map(fn, raw))
        except ValueError:
            col = convert_column(fn, raw)
            bad.update(i for i, v in enumerate(col) if v is UNCONVERTED)
            return col

    vnames: list[str] = []
    vcols: list[list[Any]] = []
    snames: list[str] = []
    scols: list[list[Any]] = []
    for p in plans:
        if p.direction is Direction.BACKWARD:
            snames.append(p.key)
            scols.append([p.canon(None)] * n)
            continue
        conv = column(p.source, p.forward)
        vnames.append(p.target)
        vcols.append(conv)
        snames.append(p.key)
        # A column of plain values is its own shadow column (checked at C level).
        plain = _PLAIN.issuperset(map(type, conv))
        scols.append(conv if plain else [v if type(v) in _PLAIN else to_json(v) for v in conv])
    written = set(vnames)
    for target, source, fn in extra:
        if target in written:
            continue
        written.add(target)
        vnames.append(target)
        vcols.append(column(source, fn))
    vrows = zip(*vcols, strict=True) if vcols else [()] * n
    srows = zip(*scols, strict=True) if scols else [()] * n
    out: list[tuple[dict[str, Any], dict[str, Any]] | None] = [
        (dict(zip(vnames, vrow, strict=True)), dict(zip(snames, srow, strict=True)))
        for vrow, srow in zip(vrows, srows, strict=True)
    ]
    for i in bad:
        out[i] = None
    return out
