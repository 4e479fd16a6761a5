"""A link's status, computed in one place for the CLI (`status`), the API
(`/api/links`) and the runner (which links run).

- enabled: the runtime switch (API/CLI enable/disable) wins over the config's
  ``enabled``;
- paused: pending messages were put back because a system did not answer; the
  link waits until they get through (seen alike by every worker, since it is in
  the queue itself);
- waiting: a system's quota is spent; the link goes on once the last of its
  systems reopens.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from crmsync.config.models import Config, LinkConfig
from crmsync.engine.quota import QuotaGuard
from crmsync.errors import UnknownLink
from crmsync.state.store import StateStore


def require_link(config: Config, name: str | None, *, rules: bool = False) -> None:
    """Refuse a link name the config does not have (None: every link); with ``rules``,
    a rule's queue ``rule:NAME`` too (its messages, runs and log)."""
    if name is None or name in config.links:
        return
    if rules and name.startswith("rule:") and name[5:] in config.rules:
        return
    known = list(config.links) + ([f"rule:{r}" for r in config.rules] if rules else [])
    raise UnknownLink(name, known)


def effective_enabled(lc: LinkConfig, switched: bool | None) -> bool:
    """Whether the link runs: the runtime switch, when set, wins over the config."""
    return lc.enabled if switched is None else bool(switched)


def enabled_links(config: Config, switches: Mapping[str, bool]) -> list[str]:
    """The links that run, in config order; ``switches`` are the runtime overrides."""
    return [n for n, lc in config.links.items() if effective_enabled(lc, switches.get(n))]


@dataclass(slots=True)
class LinkStatus:
    name: str
    enabled: bool  # effective: the switch, else the config
    switched: bool  # the runtime switch set it (the config's value is overridden)
    changed_by: str | None
    changed_at: datetime | None
    next_run_at: datetime | None
    queue: dict[str, int] = field(default_factory=dict)  # messages per queue status
    oldest_waiting_at: datetime | None = None
    paused: tuple[int, str] | None = None  # (messages put back, the newest reason)
    quota_wait: tuple[int, datetime, str] | None = None  # (messages, reopens at, system)
    last_run: dict[str, Any] | None = None


def link_statuses(
    config: Config, state: StateStore, quota: QuotaGuard | None, only: str | None = None
) -> list[LinkStatus]:
    """The status of every link of the config (or of ``only``), in config order."""
    switches = state.link_states()
    with state.connect() as c:
        counts = state.queue_counts_by_link(c)
        oldest = state.oldest_waiting(c)
        paused = state.waiting_unreachable(c)
        last = state.last_runs(c)
    pending = {name: q.get("pending", 0) for name, q in counts.items()}
    waits = quota.link_waits(config, pending) if quota is not None else {}
    out = []
    for name, lc in config.links.items():
        if only is not None and name != only:
            continue
        s = switches.get(name, {})
        out.append(
            LinkStatus(
                name=name,
                enabled=effective_enabled(lc, s.get("enabled")),
                switched=s.get("enabled") is not None,
                changed_by=s.get("changed_by"),
                changed_at=s.get("changed_at"),
                next_run_at=s.get("next_run_at"),
                queue=counts.get(name, {}),
                oldest_waiting_at=oldest.get(name),
                paused=paused.get(name),
                quota_wait=waits.get(name),
                last_run=last.get(name),
            )
        )
    return out
