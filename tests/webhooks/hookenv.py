"""A push-only e-sign system, a SQLite CRM, and the webhook router served on loopback."""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastapi
import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from standardwebhooks import Webhook

from crmsync.api.hooks import build_router
from crmsync.config.secrets import clear_secrets
from crmsync.service.context import ServiceContext
from crmsync.state import schema as S
from crmsync.state.store import utcnow

md = sa.MetaData()
deal = sa.Table(
    "deal",
    md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ref", sa.String(40), unique=True),
    sa.Column("amount", sa.Numeric(12, 2)),
    sa.Column("status", sa.String(20)),
    sa.Column("city", sa.String(60)),
    sa.Column("updated_at", sa.DateTime),
)

CONFIG = """\
state: {state}
systems:
  esign:
    connector: webhook
    webhook_secret: ${{ESIGN_SECRET}}
    objects:
      document:
        fields: {{amount: decimal, status: string, city: string}}
  crm:
    connector: sql
    url: sqlite:///{crm}
    {crm_secret}
    objects:
      deal: {{table: deal, key: id, updated_at: updated_at}}
links:
  contracts:
    source: esign.document
    target: crm.deal
    match: {{id: ref}}
    on_delete: delete
    fields:
      - {{source: amount, target: amount}}
      - {{source: status, target: status}}
      - {{source: city, target: city}}
{extra}"""

BACK_LINK = """\
  back:
    source: crm.deal
    target: esign.document
    match: {ref: id}
    fields:
      - {source: status, target: status}
"""


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


class Clock:
    """The service's clock: fixed unless a test moves it."""

    def __init__(self) -> None:
        self.now = utcnow().replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Env:
    ctx: ServiceContext
    url: str
    secret: str
    clock: Clock
    crm_url: str
    client: httpx.Client
    crm_secret: str | None = None
    _n: int = field(default=0)

    # -- sending ---------------------------------------------------------
    def headers(
        self, body: bytes, wid: str | None = None, *, ts: datetime | None = None,
        secret: str | None = None,
    ) -> dict[str, str]:
        if wid is None:
            self._n += 1
            wid = f"msg_{self._n}"
        when = ts or self.clock()
        sig = Webhook(secret or self.secret).sign(wid, when, body.decode())
        return {
            "webhook-id": wid,
            "webhook-timestamp": str(int(when.replace(tzinfo=UTC).timestamp())),
            "webhook-signature": sig,
            "content-type": "application/json",
        }

    def post(
        self, payload: Any, wid: str | None = None, *, system: str = "esign", **kw: Any
    ) -> httpx.Response:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return self.client.post(
            f"{self.url}/hooks/{system}", content=body, headers=self.headers(body, wid, **kw)
        )

    # -- looking ---------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Rows in every table a delivery writes to."""
        with self.ctx.state.connect() as c:
            return {
                t.name: c.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                for t in (S.messages, S.webhook_deliveries, S.pushed_records)
            }

    def crm_rows(self) -> dict[str, dict[str, Any]]:
        eng = sa.create_engine(self.crm_url)
        try:
            with eng.connect() as c:
                return {
                    r.ref: {"amount": r.amount, "status": r.status, "city": r.city}
                    for r in c.execute(sa.select(deal))
                }
        finally:
            eng.dispose()

    def sync(self) -> None:
        for rep in self.ctx.engine.sync():
            assert rep.status == "ok", rep.error


class Server:
    """uvicorn in a background thread on a free loopback port."""

    def __init__(self, app: fastapi.FastAPI) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit it: without it a keep-alive client waits for
        # a delayed ACK (~40 ms) on every response (asyncio sets it only for
        # servers it binds itself).
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        cfg = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def make_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, crm_secret: bool = False,
    back_link: bool = False, state_url: str | None = None,
) -> Iterator[Env]:
    secret = new_secret()
    monkeypatch.setenv("ESIGN_SECRET", secret)
    crm_sec = new_secret() if crm_secret else None
    if crm_sec:
        monkeypatch.setenv("CRM_SECRET", crm_sec)
    crm = tmp_path / "crm.db"
    eng = sa.create_engine(f"sqlite:///{crm}")
    md.create_all(eng)
    eng.dispose()
    cfg = tmp_path / "crmsync.yaml"
    cfg.write_text(
        CONFIG.format(
            state=state_url or f"sqlite:///{tmp_path / 'state.db'}",
            crm=crm,
            crm_secret="webhook_secret: ${CRM_SECRET}" if crm_secret else "",
            extra=BACK_LINK if back_link else "",
        )
    )
    clock = Clock()
    ctx = ServiceContext.open(cfg, clock=clock)
    app = fastapi.FastAPI()
    app.include_router(build_router(ctx))
    with (
        Server(app) as srv,
        httpx.Client(timeout=30, limits=httpx.Limits(max_connections=8)) as client,
    ):
        yield Env(
            ctx, f"http://127.0.0.1:{srv.port}", secret, clock, f"sqlite:///{crm}", client,
            crm_sec,
        )
    ctx.close()
    clear_secrets()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    yield from make_env(tmp_path, monkeypatch)

