"""A live crmsync API on loopback over a small synced SQLite scenario."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from dbs import fresh_database
from scenario import Scenario

from crmsync.api.app import create_app
from crmsync.api.auth import create_token
from crmsync.service.context import ServiceContext


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """uvicorn in a background thread; stopped with should_exit."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(ctx), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="api", daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the API did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@dataclass
class Service:
    scenario: Scenario
    ctx: ServiceContext
    server: LiveServer
    admin: str
    viewer: str

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def config_path(self) -> Path:
        return self.scenario.config_path

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=10)


# A module runs on PostgreSQL state too with:
# pytestmark = pytest.mark.parametrize("service", STATE_BACKENDS, indirect=True, scope="module")
STATE_BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]


@pytest.fixture(scope="module")
def service(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Service]:
    """One synced scenario and one server per test module (tests share it)."""
    backend = getattr(request, "param", "sqlite")
    tmp = tmp_path_factory.mktemp("api")
    with pytest.MonkeyPatch.context() as mp, fresh_database(backend, tmp, "state") as state:
        sc = Scenario(tmp, f"sqlite:///{tmp / 'erp.db'}", f"sqlite:///{tmp / 'crm.db'}",
                      monkeypatch=mp, state_url=state)
        sc.seed(n=40, crm_existing=5)
        sc.sync()
        ctx = ServiceContext.open(sc.config_path)
        server = LiveServer(ctx)
        server.start()
        admin = create_token(ctx.state, "admin", "test-admin")
        viewer = create_token(ctx.state, "viewer", "test-viewer")
        try:
            yield Service(sc, ctx, server, admin, viewer)
        finally:
            server.stop()
            ctx.close()
            sc.close()
