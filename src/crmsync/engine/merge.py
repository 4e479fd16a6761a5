"""Per-field three-way merge against the shadow (pure, no I/O).

Every value is compared in its canonical JSON form in the *target's* terms:
the source value mapped and converted to the target field type. The shadow
holds, per field, the value both sides had after the last successful sync.

Per field, with ``s`` (source), ``t`` (target) and ``b`` (shadow):

* ``s == t``: unchanged; the shadow becomes ``s``.
* only one side moved away from ``b`` (or there is no ``b``, the first
  pairing): that side's value is written to the other side, if the field's
  direction allows; a forward field whose target moved locally is left alone
  until the source changes it.
* both moved to different values: a conflict, settled by the link's policy.

Writing exactly the winning value and recording it as the new shadow is what
makes the echo of our own write look unchanged: no ping-pong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from crmsync.config.models import ConflictPolicy, Direction
from crmsync.engine.convert import to_json
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
        t_raw = tgt.get(p.target)
        t = p.canon(t_raw)
        sv = _convert(p.forward, src.get(p.source))
        if isinstance(sv, Rejected):
            if p.direction is Direction.BACKWARD and (b is MISSING or t != b):
                _write_source(p, t_raw, t, src, su, new_shadow, outs)
            elif p.direction is not Direction.BACKWARD:
                outs.append(FieldOutcome(p.target, FieldStatus.REJECTED, reason=sv.reason))
            else:
                outs.append(FieldOutcome(p.target, FieldStatus.UNCHANGED))
            continue
        s = to_json(sv)
        if s == t:
            new_shadow[p.key] = s
            outs.append(FieldOutcome(p.target, FieldStatus.UNCHANGED))
            continue
        s_moved = b is MISSING or s != b
        t_moved = b is MISSING or t != b
        d = p.direction
        if d is Direction.FORWARD:
            if s_moved:
                tu[p.target] = sv
                new_shadow[p.key] = s
                outs.append(FieldOutcome(p.target, FieldStatus.UPDATED, "target", t, s))
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
            tu[p.target] = sv
            new_shadow[p.key] = s
            outs.append(FieldOutcome(p.target, FieldStatus.UPDATED, "target", t, s))
        elif t_moved and not s_moved:
            _write_source(p, t_raw, t, src, su, new_shadow, outs)
        else:
            source_wins = policy is ConflictPolicy.SOURCE or (
                policy is ConflictPolicy.NEWEST and source_is_newer is not False
            )
            if source_wins:
                tu[p.target] = sv
                new_shadow[p.key] = s
                outs.append(
                    FieldOutcome(
                        p.target,
                        FieldStatus.CONFLICT,
                        "target",
                        t,
                        s,
                        reason=f"both sides changed; kept the source value ({policy.value})",
                    )
                )
            else:
                before = len(outs)
                _write_source(p, t_raw, t, src, su, new_shadow, outs)
                if len(outs) > before and outs[-1].status is FieldStatus.UPDATED:
                    o = outs[-1]
                    o.status = FieldStatus.CONFLICT
                    o.reason = f"both sides changed; kept the target value ({policy.value})"
    return MergeResult(tu, su, new_shadow, outs)


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
