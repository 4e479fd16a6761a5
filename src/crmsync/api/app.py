"""The FastAPI application: an explicit list of routers over one ServiceContext."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crmsync.api.docs import add_docs
from crmsync.api.hooks import build_router as build_hooks_router
from crmsync.api.routes import build_api_router, build_public_router
from crmsync.config.secrets import redact
from crmsync.service.context import ServiceContext

log = logging.getLogger("crmsync.api")


class _RedactedErrors:
    """An unexpected error becomes our own redacted log line and a JSON 500.

    Without it the server logs the raw traceback, whose text may hold a URL
    with a password; this catches the error before it gets there.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            log.error(
                "unexpected error on %s %s: %s: %s", scope.get("method"), scope.get("path"),
                type(exc).__name__, redact(str(exc)), extra={"action": "error"},
            )
            if not started:
                response = JSONResponse({"detail": "internal error"}, status_code=500)
                await response(scope, receive, send)


def _version() -> str:
    try:
        return version("crmsync")
    except PackageNotFoundError:
        return "0"


@asynccontextmanager
async def _frozen_heap(_: FastAPI) -> AsyncIterator[None]:
    """What start-up built (modules, schemas, routes, compiled statements) is
    left out of the garbage collector's full passes while the app serves.

    Those ~110k objects never become garbage, yet every full pass walked them:
    60-100 ms with the whole process stopped, every few seconds at a few hundred
    webhooks a second, and most of the webhook latency tail. Unfrozen at shutdown,
    so a process that goes on (a test run) collects them as usual again.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def create_app(ctx: ServiceContext) -> FastAPI:
    app = FastAPI(
        lifespan=_frozen_heap,
        title="crmsync",
        version=_version(),
        description=(
            "The crmsync service: links, queue, runs, outcomes and webhooks. "
            "Send `Authorization: Bearer TOKEN` (crmsync token create); viewers read, "
            "admins switch links, trigger syncs and retry."
        ),
        # Swagger UI and ReDoc load their assets from a CDN: blank without internet.
        # /docs is our own self-contained page instead (crmsync.api.docs).
        docs_url=None,
        redoc_url=None,
    )
    app.state.ctx = ctx
    from crmsync.api.rules import build_rules_router

    # The webhook route first: routing tries routes in order, and at a few
    # hundred deliveries a second matching them against every API route first
    # was a sixth of the serving thread's time.
    routers = [build_hooks_router(ctx), build_public_router(ctx), build_api_router(ctx),
               build_rules_router(ctx)]
    for r in routers:
        app.include_router(r)
    add_docs(app)
    app.add_middleware(_RedactedErrors)

    @app.exception_handler(sqlalchemy.exc.OperationalError)
    async def _state_down(_: Request, exc: sqlalchemy.exc.OperationalError) -> JSONResponse:
        log.warning("state database error: %s", redact(str(exc.orig)), extra={"action": "error"})
        return JSONResponse({"detail": "the state database is unavailable"}, status_code=503)

    return app
