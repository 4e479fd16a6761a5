"""Option lists: a lookup table of the target kept in step with a pick list's options.

A mapping with ``options: {object, key, label}`` makes every option of its source
field (a Tryton selection, a SQL ENUM: ``Connector.options``) a record of that
object of the target system, before the link's records are written, so a record
holding a new option finds it there (a foreign key to the lookup table holds).
An option is written through the mapping's ``values:`` like a record's value; an
option the map rejects is counted and left out. Options are created when missing
and their label updated; none is deleted (records may still hold an old one).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from crmsync.config.models import LinkConfig, Mapping
from crmsync.connectors.base import Connector
from crmsync.convert import ConversionError, converter, identity, to_json, value_mapper
from crmsync.engine.link import unmapped_mode

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class OptionsPlan:
    """What one run writes to one lookup table."""

    object: str
    creates: list[dict[str, Any]]
    updates: list[tuple[str, dict[str, Any]]]
    rejected: dict[str, str]  # source option -> why it is left out


def plan_options(
    m: Mapping, link: LinkConfig, src: Connector, tgt: Connector
) -> OptionsPlan | None:
    """The creates and label updates that bring ``m.options``'s table in step
    (None: the source field has no option list; ``check`` says so)."""
    opts = m.options
    assert opts is not None
    found = src.options(link.source_object, m.source)
    if found is None:
        return None
    spec = tgt.describe(opts.object)
    to_key = converter(None, spec.fields[opts.key])
    to_label = converter(None, spec.fields[opts.label]) if opts.label else identity
    mapper = value_mapper(m.values, False, *unmapped_mode(m)) if m.values else identity
    wanted: dict[Any, Any] = {}  # canonical key -> (key, label)
    rejected: dict[str, str] = {}
    for value, label in found:
        try:
            key = to_key(mapper(value))
            text = to_label(label) if opts.label else None
        except ConversionError as exc:
            rejected[value] = exc.reason
            continue
        if key is None:
            continue
        wanted.setdefault(to_json(key), (key, text))
    existing = {
        to_json(r.values.get(opts.key)): r for r in tgt.find(opts.object, opts.key, [
            k for k, _ in wanted.values()
        ])
    }
    creates: list[dict[str, Any]] = []
    updates: list[tuple[str, dict[str, Any]]] = []
    for canon, (key, text) in wanted.items():
        rec = existing.get(canon)
        if rec is None:
            creates.append({opts.key: key} | ({opts.label: text} if opts.label else {}))
        elif opts.label and rec.values.get(opts.label) != text:
            updates.append((rec.id, {opts.label: text}))
    return OptionsPlan(opts.object, creates, updates, rejected)


def sync_options(
    link_name: str, link: LinkConfig, src: Connector, tgt: Connector, *, dry_run: bool
) -> Counter[str]:
    """Bring every ``options:`` lookup table of ``link`` in step; the counts
    (``options_created``, ``options_updated``, ``options_rejected``, ``options_failed``)."""
    counts: Counter[str] = Counter()
    for m in link.fields:
        if m.options is None:
            continue
        plan = plan_options(m, link, src, tgt)
        if plan is None:
            continue
        for value, why in plan.rejected.items():
            _log.warning("link %s: option %r of %s not written to %s: %s",
                         link_name, value, m.source, plan.object, why)
        counts["options_rejected"] += len(plan.rejected)
        if dry_run or not (plan.creates or plan.updates):
            counts["options_created"] += len(plan.creates)
            counts["options_updated"] += len(plan.updates)
            continue
        res = tgt.write(plan.object, creates=plan.creates, updates=plan.updates)
        for where, why in res.errors.items():
            _log.warning("link %s: option not written to %s (%s): %s",
                         link_name, plan.object, where, why)
        counts["options_failed"] += len(res.errors)
        counts["options_created"] += sum(1 for i in res.created if i is not None)
        counts["options_updated"] += sum(
            1 for rid, _ in plan.updates if rid not in res.errors
        )
    return +counts
