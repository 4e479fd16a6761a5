"""Everything a running service shares: config, state, connectors, engine, clock.

Passed explicitly to the API, the webhook receiver, the worker and the
scheduler (no hidden globals), so tests can build one with their own clock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from crmsync.config.models import Config
from crmsync.connectors.base import Connector
from crmsync.engine.quota import QuotaGuard
from crmsync.engine.runner import Engine
from crmsync.state.store import StateStore, utcnow


@dataclass
class ServiceContext:
    config_path: Path
    config: Config
    state: StateStore
    connectors: dict[str, Connector]
    engine: Engine
    # naive UTC "now"; tests inject their own
    clock: Callable[[], datetime] = utcnow
    # webhook settings: accepted clock difference and largest body
    webhook_tolerance_s: int = 300
    max_body_bytes: int = 1024 * 1024
    worker_id: str = field(default="")
    quota: QuotaGuard | None = None
    # Set when work was queued in this process (a webhook, a sync request):
    # workers in the process start at once instead of at their next poll.
    wake: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        if self.quota is None:
            self.quota = QuotaGuard(self.config, self.state, self.clock)
        # One guard, one clock: the engine counts every call against it. Its
        # threads never sleep on a rate: the worker and scheduler look again later.
        self.engine.use_quota(self.quota, wait_rate=False)

    @classmethod
    def open(
        cls,
        config_path: str | Path,
        *,
        clock: Callable[[], datetime] | None = None,
        reuse: Mapping[str, Connector] | None = None,
    ) -> ServiceContext:
        """``reuse``: connectors the start-up check built and described (each
        schema reflected once per process)."""
        from crmsync.config.loader import load_config
        from crmsync.connectors import build_connectors

        path = Path(config_path)
        config = load_config(path)
        state = StateStore(config.state)
        state.migrate()
        connectors = build_connectors(config, state, reuse=reuse)
        engine = Engine(config, state, connectors)
        return cls(path, config, state, connectors, engine, clock or utcnow)

    def close(self) -> None:
        self.state.close()
        for c in self.connectors.values():
            c.close()
