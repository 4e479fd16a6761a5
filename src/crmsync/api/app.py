"""The FastAPI application: an explicit list of routers over one ServiceContext."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

import sqlalchemy.exc
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from crmsync.api.routes import build_api_router, build_public_router
from crmsync.config.secrets import redact
from crmsync.service.context import ServiceContext

log = logging.getLogger("crmsync.api")


def _version() -> str:
    try:
        return version("crmsync")
    except PackageNotFoundError:
        return "0"


def _hooks_router(ctx: ServiceContext) -> APIRouter | None:
    # The webhook receiver is built alongside; until its module lands the API
    # runs without it. Only a missing module is tolerated, not a broken one.
    try:
        from crmsync.api.hooks import build_router
    except ModuleNotFoundError as exc:
        if exc.name != "crmsync.api.hooks":
            raise
        return None
    return build_router(ctx)


def create_app(ctx: ServiceContext) -> FastAPI:
    app = FastAPI(
        title="crmsync",
        version=_version(),
        description=(
            "The crmsync service: links, queue, runs, outcomes and webhooks. "
            "Send `Authorization: Bearer TOKEN` (crmsync token create); viewers read, "
            "admins switch links, trigger syncs and retry."
        ),
    )
    app.state.ctx = ctx
    routers = [build_public_router(ctx), build_api_router(ctx)]
    hooks = _hooks_router(ctx)
    if hooks is not None:
        routers.append(hooks)
    for r in routers:
        app.include_router(r)

    @app.exception_handler(sqlalchemy.exc.OperationalError)
    async def _state_down(_: Request, exc: sqlalchemy.exc.OperationalError) -> JSONResponse:
        log.warning("state database error: %s", redact(str(exc.orig)), extra={"action": "error"})
        return JSONResponse({"detail": "the state database is unavailable"}, status_code=503)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Our own log line, redacted, instead of a raw traceback that may hold a URL.
        log.error(
            "unexpected error on %s %s: %s: %s", request.method, request.url.path,
            type(exc).__name__, redact(str(exc)), extra={"action": "error"},
        )
        return JSONResponse({"detail": "internal error"}, status_code=500)

    return app
