"""The rules in the API: list them, and (admins) switch one on or off, audited."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, status
from pydantic import BaseModel, Field

from crmsync.api.auth import Admin, Viewer
from crmsync.api.models import QueueCounts, RunOut, UtcDatetime
from crmsync.api.routes import ADMIN, AUTH, NOT_FOUND, _run, reject_unknown_query
from crmsync.config.models import NAME_RE
from crmsync.engine.rules.memory import rule_queue
from crmsync.service.context import ServiceContext

log = logging.getLogger("crmsync.api")

RuleName = Annotated[str, Path(pattern=NAME_RE, max_length=128, description="a rule name")]


class RuleOut(BaseModel):
    name: str
    on: str = Field(description="SYSTEM.OBJECT the rule watches")
    schedule: str | None = Field(description="when it polls its object itself (null: it "
                                 "sees the changes links capture)")
    actions: list[str] = Field(description="its actions, in order: set, activity, sync, webhook")
    enabled: bool = Field(description="the config's `enabled`, overridden by the API/CLI switch")
    enabled_changed_by: str | None
    enabled_changed_at: UtcDatetime | None
    fired: int = Field(description="times it has fired")
    queue: QueueCounts = Field(description="its evaluations and firings waiting, running, "
                               "failed")
    last_run: RunOut | None


def build_rules_router(ctx: ServiceContext) -> APIRouter:
    router = APIRouter(prefix="/api", tags=["rules"],
                       dependencies=[Depends(reject_unknown_query)])

    def _rules(only: str | None = None) -> list[RuleOut]:
        switches = ctx.state.link_states()
        with ctx.state.connect() as c:
            counts = ctx.state.queue_counts_by_link(c)
            last = ctx.state.last_runs(c)
            fired = ctx.state.firing_counts(c)
        out = []
        for name, rc in ctx.config.rules.items():
            if only is not None and name != only:
                continue
            q = rule_queue(name)
            s: dict[str, Any] = switches.get(q, {})
            on = s.get("enabled")
            out.append(RuleOut(
                name=name, on=rc.on, schedule=rc.schedule,
                actions=[type(a).__name__.removesuffix("Step").lower() for a in rc.then],
                enabled=rc.enabled if on is None else bool(on),
                enabled_changed_by=s.get("changed_by"), enabled_changed_at=s.get("changed_at"),
                fired=fired.get(name, 0), queue=QueueCounts(**counts.get(q, {})),
                last_run=_run(last[q]) if q in last else None,
            ))
        return out

    @router.get("/rules", response_model=list[RuleOut], responses=AUTH)
    def rules(_: Viewer) -> list[RuleOut]:
        """Every rule of the config, with its switch, firings and queue."""
        return _rules()

    def _switch(name: str, enabled: bool, who: Admin) -> RuleOut:
        if name not in ctx.config.rules:
            known = ", ".join(ctx.config.rules) or "none"
            raise HTTPException(status.HTTP_404_NOT_FOUND,
                                detail=f"no rule named {name!r} (rules: {known})")
        now = ctx.clock()
        action = "rule.enable" if enabled else "rule.disable"
        with ctx.state.begin() as c:
            ctx.state.set_link_enabled(c, rule_queue(name), enabled, actor=who.name, now=now)
            ctx.state.add_audit(c, who.name, action, f"rule:{name}", now=now)
        log.info("rule %s", action, extra={"action": action, "rule": name, "actor": who.name})
        return _rules(name)[0]

    @router.post("/rules/{name}/enable", response_model=RuleOut,
                 responses={**ADMIN, **NOT_FOUND})
    def enable(name: RuleName, who: Admin) -> RuleOut:
        """Switch a rule on (overrides the config's `enabled`)."""
        return _switch(name, True, who)

    @router.post("/rules/{name}/disable", response_model=RuleOut,
                 responses={**ADMIN, **NOT_FOUND})
    def disable(name: RuleName, who: Admin) -> RuleOut:
        """Switch a rule off: its changes wait, nothing fires, until it is switched on."""
        return _switch(name, False, who)

    return router
