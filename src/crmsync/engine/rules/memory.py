"""What each rule saw of each watched record, and crmsync's own writes entered into it.

Kept as trigger memory under the rule's queue name (``rule:NAME``): the
canonical JSON of the record's fields as last seen. A write crmsync makes to a
watched record (a link's apply, a rule's ``set``) is merged into that memory
in the write's own state transaction, so when the record is captured again the
values crmsync wrote are no change and no rule fires on its own echo. A record
crmsync created gets a memory of just the fields it wrote; fields a memory
does not hold are adopted when next seen, never counted as changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from crmsync.config.models import Config
from crmsync.convert import to_json
from crmsync.state.store import StateStore

RULE_PREFIX = "rule:"


def rule_queue(name: str) -> str:
    """The queue (and memory) name of a rule."""
    return RULE_PREFIX + name


def rule_feeds(config: Config) -> dict[tuple[str, str], tuple[str, ...]]:
    """(link, side) -> the rule queues that see the changes queued for it."""
    out: dict[tuple[str, str], list[str]] = {}
    for rname, rule in config.rules.items():
        for lname, lc in config.links.items():
            if lc.source == rule.on:
                out.setdefault((lname, "source"), []).append(rule_queue(rname))
            if lc.target == rule.on and lc.reads_target:
                out.setdefault((lname, "target"), []).append(rule_queue(rname))
    return {k: tuple(v) for k, v in out.items()}


def rule_watch(config: Config) -> dict[tuple[str, str], tuple[str, ...]]:
    """(system, object) -> the rule queues watching it."""
    out: dict[tuple[str, str], list[str]] = {}
    for rname, rule in config.rules.items():
        out.setdefault((rule.system, rule.object), []).append(rule_queue(rname))
    return {k: tuple(v) for k, v in out.items()}


def wire(config: Config, state: StateStore) -> None:
    """Let the state feed the rules and take note of crmsync's writes for them."""
    state.rule_feeds = rule_feeds(config)
    state.rule_watch = rule_watch(config)


def note_written(
    state: StateStore,
    c: sa.Connection,
    system: str,
    obj: str,
    writes: Mapping[str, Mapping[str, Any]],
) -> None:
    """Enter ``writes`` (record id -> field -> value written) into what the rules
    watching ``system.obj`` saw, in the caller's transaction."""
    queues = state.rule_watch.get((system, obj))
    if not queues or not writes:
        return
    ids = list(writes)
    for q in queues:
        seen = state.trigger_seen(c, q, ids)
        rows = []
        for rid, vals in writes.items():
            mem = dict(seen.get(rid) or {})
            mem.update({k: to_json(v) for k, v in vals.items() if not k.startswith("~")})
            rows.append((rid, mem))
        state.save_trigger_seen(c, q, rows)

