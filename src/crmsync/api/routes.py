"""The HTTP API: links, runs, the queue, outcomes, quotas, audit, health, metrics.

Viewers read; admins switch links, trigger syncs and retry. Every admin
change commits together with its audit row. Text that may hold a URL (run
errors, message errors, outcome messages) goes through ``redact``.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from crmsync.api.auth import Admin, Viewer
from crmsync.api.models import (
    ActivityOut,
    AuditOut,
    DeepLinkOut,
    EraseOut,
    ErrorOut,
    HealthOut,
    LinkOut,
    MessageOut,
    OutcomeOut,
    QueueCounts,
    QueueStatus,
    QuotaOut,
    QuotasOut,
    RecordId,
    RecordOutcomeOut,
    RetryOut,
    RunOut,
    SyncIn,
    SyncOut,
    SystemCalls,
)
from crmsync.config.models import NAME_RE
from crmsync.config.secrets import redact
from crmsync.engine.deeplinks import deep_links
from crmsync.engine.erase import EraseError, EraseRefused, RecordNotFound, erase
from crmsync.engine.graph import object_config
from crmsync.engine.requests import request_records
from crmsync.engine.status import link_statuses, require_link
from crmsync.errors import SystemUnavailable, UnknownLink, UnknownRecordType
from crmsync.model import RecordRef, Side
from crmsync.service.context import ServiceContext

log = logging.getLogger("crmsync.api")

Name = Annotated[str, Path(pattern=NAME_RE, max_length=128, description="a link name")]
# A link, or a rule's queue (``rule:NAME``): its messages, runs and log.
LinkQ = Annotated[
    str | None,
    Query(pattern=r"^(rule:)?" + NAME_RE[1:], max_length=128,
          description="only this link (or rule, as rule:NAME)"),
]
Limit = Annotated[int, Query(ge=1, le=1000)]
SystemName = Annotated[str, Path(pattern=NAME_RE, max_length=128, description="a system name")]
ObjectName = Annotated[str, Path(pattern=NAME_RE, max_length=128, description="an object name")]
MessageId = Annotated[int, Path(ge=1, le=2**31 - 1)]

AUTH = {401: {"model": ErrorOut}}
ADMIN = {401: {"model": ErrorOut}, 403: {"model": ErrorOut}}
NOT_FOUND = {404: {"model": ErrorOut}}
BAD_BODY = {400: {"model": ErrorOut, "description": "the body is not JSON"}}


def _ctx(request: Request) -> ServiceContext:
    ctx: ServiceContext = request.app.state.ctx
    return ctx


def _opt(text: str | None) -> str | None:
    return redact(text) if text else text


def _known_link(ctx: ServiceContext, name: str | None, *, rules: bool = False) -> None:
    try:
        require_link(ctx.config, name, rules=rules)
    except UnknownLink as exc:
        detail = f"no link named {exc.name!r}"
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=detail) from None


def _run(r: dict[str, Any]) -> RunOut:
    return RunOut(**{**r, "error": _opt(r.get("error"))})


def reject_unknown_query(request: Request) -> None:
    """A misspelt query parameter (``?lmit=5``) is an error, not silently ignored."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return
    known: set[str] = set()
    todo = [dependant]
    while todo:  # the route's own parameters and those of its dependencies
        d = todo.pop()
        known.update(p.alias for p in d.query_params)
        todo.extend(d.dependencies)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        raise HTTPException(
            422,
            detail=[
                {"loc": ["query", k], "msg": "unknown query parameter", "type": "extra_forbidden"}
                for k in unknown
            ],
        )


def _links(ctx: ServiceContext, only: str | None = None) -> list[LinkOut]:
    out = []
    for st in link_statuses(ctx.config, ctx.state, ctx.quota, only):
        lc = ctx.config.links[st.name]
        wait = st.quota_wait
        out.append(
            LinkOut(
                name=st.name,
                source=lc.source,
                target=lc.target,
                direction=str(lc.direction),
                schedule=lc.schedule,
                enabled=st.enabled,
                enabled_changed_by=st.changed_by,
                enabled_changed_at=st.changed_at,
                next_run_at=st.next_run_at,
                queue=QueueCounts(**st.queue),
                oldest_waiting_at=st.oldest_waiting_at,
                paused_messages=st.paused[0] if st.paused else 0,
                quota_waiting=wait[0] if wait else 0,
                quota_resets_at=wait[1] if wait else None,
                quota_system=wait[2] if wait else None,
                last_run=_run(st.last_run) if st.last_run is not None else None,
            )
        )
    return out


def build_public_router(ctx: ServiceContext) -> APIRouter:
    """Health and metrics: no token (load balancers and Prometheus call them)."""
    from crmsync.api.metrics import build_registry

    router = APIRouter(tags=["service"], dependencies=[Depends(reject_unknown_query)])
    registry = build_registry(ctx)

    @router.get("/health", response_model=HealthOut, responses={503: {"model": HealthOut}})
    def health() -> Any:
        try:
            version = ctx.state.ping()
        except Exception as exc:
            log.warning(
                "health: state database unreachable: %s", redact(str(exc)),
                extra={"action": "health"},
            )
            return JSONResponse(
                HealthOut(status="unavailable", schema_version=None).model_dump(), 503
            )
        return HealthOut(status="ok", schema_version=version)

    @router.get(
        "/metrics",
        response_class=PlainTextResponse,
        description="Prometheus exposition: queue depth and age, outcomes, connector calls.",
    )
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router


def build_api_router(ctx: ServiceContext) -> APIRouter:
    router = APIRouter(
        prefix="/api", tags=["api"], dependencies=[Depends(reject_unknown_query)]
    )

    # -- links -----------------------------------------------------------------
    @router.get("/links", response_model=list[LinkOut], responses=AUTH)
    def links(_: Viewer) -> list[LinkOut]:
        return _links(ctx)

    def _switch(name: str, enabled: bool, who: Admin) -> LinkOut:
        _known_link(ctx, name)
        now = ctx.clock()
        action = "link.enable" if enabled else "link.disable"
        with ctx.state.begin() as c:
            ctx.state.set_link_enabled(c, name, enabled, actor=who.name, now=now)
            ctx.state.add_audit(c, who.name, action, f"link:{name}", now=now)
        log.info("link %s", action, extra={"action": action, "link": name, "actor": who.name})
        return _links(ctx, name)[0]

    @router.post(
        "/links/{name}/enable", response_model=LinkOut, responses={**ADMIN, **NOT_FOUND}
    )
    def enable(name: Name, who: Admin) -> LinkOut:
        """Switch a link on (overrides the config's `enabled`)."""
        return _switch(name, True, who)

    @router.post(
        "/links/{name}/disable", response_model=LinkOut, responses={**ADMIN, **NOT_FOUND}
    )
    def disable(name: Name, who: Admin) -> LinkOut:
        """Switch a link off: the scheduler and workers leave it alone."""
        return _switch(name, False, who)

    @router.post(
        "/links/{name}/sync",
        response_model=SyncOut,
        status_code=status.HTTP_202_ACCEPTED,
        responses={
            **ADMIN, **NOT_FOUND, 409: {"model": ErrorOut}, **BAD_BODY,
            503: {"model": ErrorOut, "description": "the source system is unreachable, so the "
                  "records cannot be checked; nothing was queued: ask again"},
        },
    )
    def sync(name: Name, who: Admin, body: SyncIn | None = None) -> SyncOut:
        """Sync now: the given source records, or the whole link (run requested).

        Each given record is checked first and gets an outcome, in the response
        (`records`) and in the log: `queued`, `skipped` with the reason (erased,
        trigger condition not met, does not pass the link's filter) or `not found`.
        """
        _known_link(ctx, name)
        if not _links(ctx, name)[0].enabled:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=f"link {name!r} is disabled")
        now = ctx.clock()
        ids = list(dict.fromkeys(body.records)) if body and body.records is not None else None
        def audit(c: Any, done: list[Any] | None = None) -> None:
            detail: dict[str, Any] = {"run_requested": True} if done is None else {
                "records": len(done),
                **{k: sum(1 for r in done if r.status == s)
                   for k, s in (("queued", "queued"), ("skipped", "skipped"),
                                ("not_found", "not found"))},
            }
            ctx.state.add_audit(c, who.name, "link.sync", f"link:{name}", detail, now=now)

        if ids is not None:
            try:
                done = request_records(
                    ctx.engine, name, Side.SOURCE, ids, actor=who.name, now=now, on_commit=audit
                )
            except SystemUnavailable as exc:
                raise HTTPException(
                    status.HTTP_503_SERVICE_UNAVAILABLE,
                    detail=redact(f"{exc.user_message}; nothing was queued: ask again"),
                ) from None
            tally = {s: sum(1 for r in done if r.status == s) for s in ("queued", "skipped")}
            result = SyncOut(
                queued=tally["queued"], skipped=tally["skipped"],
                not_found=len(done) - tally["queued"] - tally["skipped"],
                records=[RecordOutcomeOut(**r.to_json()) for r in done],
            )
        else:
            with ctx.state.begin() as c:
                ctx.state.request_run(c, name, now=now)
                audit(c)
            result = SyncOut(queued=0, run_requested=True)
        if result.queued:
            ctx.wake.set()  # committed: a worker of this process takes it now
        log.info(
            "sync requested",
            extra={"action": "link.sync", "link": name, "actor": who.name,
                   "queued": result.queued, "skipped": result.skipped,
                   "not_found": result.not_found},
        )
        return result

    # -- runs and messages ---------------------------------------------------------
    @router.get("/runs", response_model=list[RunOut], responses=AUTH)
    def runs(_: Viewer, link: LinkQ = None, limit: Limit = 20) -> list[RunOut]:
        return [_run(r) for r in ctx.state.runs(link, limit)]

    @router.get("/messages", response_model=list[MessageOut], responses=AUTH)
    def messages(
        _: Viewer,
        status: QueueStatus | None = None,
        link: LinkQ = None,
        limit: Limit = 100,
    ) -> list[MessageOut]:
        rows = ctx.state.list_messages(status=status, link=link, limit=limit)
        return [MessageOut(**{**r, "last_error": _opt(r["last_error"])}) for r in rows]

    @router.post(
        "/messages/retry", response_model=RetryOut, responses={**ADMIN, **NOT_FOUND}
    )
    def retry_all(who: Admin, link: LinkQ = None) -> RetryOut:
        """Every failed message (of one link, with `link`) back to pending, attempts reset."""
        _known_link(ctx, link, rules=True)
        now = ctx.clock()
        with ctx.state.begin() as c:
            n = ctx.state.retry_failed_messages(c, link=link, now=now)
            ctx.state.add_audit(
                c, who.name, "messages.retry", f"link:{link}" if link else "all", {"retried": n},
                now=now,
            )
        log.info("failed messages retried",
                 extra={"action": "messages.retry", "actor": who.name, "count": n})
        return RetryOut(retried=n)

    @router.post(
        "/messages/{id}/retry",
        response_model=RetryOut,
        responses={**ADMIN, **NOT_FOUND, 409: {"model": ErrorOut}},
    )
    def retry_one(id: MessageId, who: Admin) -> RetryOut:
        """A failed message back to pending with its attempts reset."""
        now = ctx.clock()
        with ctx.state.begin() as c:
            result = ctx.state.retry_message(c, id, now=now)
            if result in ("retried", "superseded"):
                ctx.state.add_audit(
                    c, who.name, "message.retry", f"message:{id}", {"result": result}, now=now
                )
        if result == "missing":
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no message {id}")
        if result not in ("retried", "superseded"):
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                detail=f"message {id} is {result}, not failed: only failed messages are retried",
            )
        log.info("message retried",
                 extra={"action": "message.retry", "actor": who.name, "message_id": id})
        return RetryOut(retried=1)

    # -- records ---------------------------------------------------------------------
    @router.get(
        "/records/{system}/{object}/{id}/outcomes",
        response_model=list[OutcomeOut],
        responses={**AUTH, **NOT_FOUND},
    )
    def record_outcomes(
        _: Viewer,
        system: Annotated[str, Path(pattern=NAME_RE, max_length=128)],
        object: Annotated[str, Path(pattern=NAME_RE, max_length=128)],
        id: Annotated[RecordId, Path()],
        limit: Limit = 100,
    ) -> list[OutcomeOut]:
        """What happened to one record, newest first (as source or as target)."""
        sys_cfg = ctx.config.systems.get(system)
        if sys_cfg is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no system named {system!r}")
        if object not in sys_cfg.objects:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, detail=f"system {system!r} has no object {object!r}"
            )
        rows = ctx.state.outcomes(record=str(RecordRef(system, object, id)), limit=limit)
        return [OutcomeOut(**{**r, "message": _opt(r["message"])}) for r in rows]

    @router.get(
        "/records/{system}/{object}/{id}/activity",
        response_model=list[ActivityOut],
        responses={**AUTH, **NOT_FOUND},
    )
    def record_activity(
        _: Viewer,
        system: SystemName,
        object: ObjectName,
        id: Annotated[RecordId, Path()],
        limit: Limit = 100,
    ) -> list[ActivityOut]:
        """The record's timeline, newest first: every sync that touched it, in words,
        and whether it was also written into the system's own timeline (notes)."""
        ref = _ref(system, object, id)
        return [ActivityOut(**r) for r in ctx.state.activities(str(ref), limit=limit)]

    def _ref(system: str, object: str, id: str) -> RecordRef:
        try:
            object_config(ctx.config, system, object)
        except UnknownRecordType as exc:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=exc.user_message) from None
        return RecordRef(system, object, id)

    @router.get(
        "/records/{system}/{object}/{id}/links",
        response_model=list[DeepLinkOut],
        responses={**AUTH, **NOT_FOUND},
    )
    def record_links(
        _: Viewer, system: SystemName, object: ObjectName, id: Annotated[RecordId, Path()]
    ) -> list[DeepLinkOut]:
        """The record and every record paired with it (any link, both ways), with URLs.

        A URL comes from the system's `links_to` template (null without one).
        """
        ref = _ref(system, object, id)
        return [DeepLinkOut(**d.to_json()) for d in deep_links(ctx.config, ctx.state, ref)]

    @router.post(
        "/records/{system}/{object}/{id}/erase",
        response_model=EraseOut,
        responses={
            **ADMIN,
            404: {"model": ErrorOut, "description": "no such system or object, or the record "
                  "is neither in its system nor known to crmsync; nothing was marked"},
            409: {"model": ErrorOut, "description": "no linked object declares `anonymize:`, "
                  "or its `anonymize:` does not fit the object; nothing was changed"},
            502: {"model": ErrorOut, "description": "a system refused the replacement values; "
                  "the records stay marked erased: run the erasure again"},
            503: {"model": ErrorOut, "description": "a system is unreachable; run it again"},
        },
    )
    def record_erase(
        who: Admin, system: SystemName, object: ObjectName, id: Annotated[RecordId, Path()]
    ) -> EraseOut:
        """GDPR erasure of the record and every record linked to it, in every system.

        Each record whose object declares `anonymize:` gets the replacement values in
        its system; crmsync's own state keeps no personal value of them (log values,
        shadows, queued messages, push-only copies); the records are never synced
        again. Audited. Running it again is harmless (it finishes an erasure that
        failed half-way).
        """
        ref = _ref(system, object, id)
        try:
            report = erase(ctx.config, ctx.state, ctx.connectors, ref, who.name)
        except EraseError as exc:
            ctx.engine.settle_quota()  # never held back by a quota; its calls count
            code = (
                status.HTTP_404_NOT_FOUND if isinstance(exc, RecordNotFound)
                else status.HTTP_503_SERVICE_UNAVAILABLE if exc.unavailable
                else status.HTTP_409_CONFLICT if isinstance(exc, EraseRefused)
                else status.HTTP_502_BAD_GATEWAY
            )
            log.warning("erasure failed: %s", redact(exc.user_message),
                        extra={"action": "record.erase", "actor": who.name})
            raise HTTPException(code, detail=redact(str(exc))) from None
        ctx.engine.settle_quota()
        log.info("record erased",
                 extra={"action": "record.erase", "actor": who.name, "record": str(ref)})
        return EraseOut(**report.to_json())

    # -- quotas and audit ------------------------------------------------------------
    @router.get(
        "/quotas",
        response_model=QuotasOut,
        responses=AUTH,
        description=(
            "Per-system API budgets (`quotas`: use in the current window, remaining calls "
            "and when the window resets) and the connector calls this service process has "
            "made (`calls`)."
        ),
    )
    def quotas(_: Viewer) -> QuotasOut:
        calls = [
            SystemCalls(system=n, calls=c.count_calls()) for n, c in sorted(ctx.connectors.items())
        ]
        budgets = [
            QuotaOut(
                system=q.system, calls=q.calls, per=q.per, used=q.used, remaining=q.remaining,
                resets_at=q.resets_at, rate=q.rate, rate_wait_s=round(q.rate_wait_s, 3),
            )
            for q in (ctx.quota.all() if ctx.quota is not None else [])
        ]
        return QuotasOut(quotas=budgets, calls=calls)

    @router.get("/audit", response_model=list[AuditOut], responses=ADMIN)
    def audit(_: Admin, limit: Limit = 100) -> list[AuditOut]:
        """Recent admin actions, newest first."""
        return [AuditOut(**r) for r in ctx.state.audit_rows(limit)]

    return router
