"""Connectors: how crmsync reaches systems."""

from __future__ import annotations

from collections.abc import Mapping

from crmsync.config.models import Config
from crmsync.connectors.base import Capabilities, ChangePage, Connector, Cursor, WriteResult
from crmsync.state.store import StateStore

__all__ = [
    "Capabilities",
    "ChangePage",
    "Connector",
    "Cursor",
    "WriteResult",
    "build_connectors",
]


def build_connectors(
    config: Config,
    state: StateStore | None = None,
    reuse: Mapping[str, Connector] | None = None,
) -> dict[str, Connector]:
    """One connector per configured system (connections open lazily).

    Push-only (``webhook``) systems keep their records in the state database,
    so they need ``state``. ``reuse`` hands over connectors already built (and
    described) for the same config, e.g. by the check before a run, so each
    schema is reflected once per process.
    """
    from crmsync.connectors.sql import SqlConnector

    out: dict[str, Connector] = {}
    for name, sys_cfg in config.systems.items():
        if reuse is not None and name in reuse:
            out[name] = reuse[name]
        elif sys_cfg.connector == "sql":
            out[name] = SqlConnector(name, sys_cfg.url, sys_cfg.objects)
            out[name]._activities = sys_cfg.activities
        elif sys_cfg.connector == "webhook":
            from crmsync.connectors.webhook import WebhookConnector

            if state is None:
                raise ValueError(f"system {name!r} is push-only: it needs the state database")
            out[name] = WebhookConnector(name, sys_cfg, state)
        elif sys_cfg.connector == "tryton":
            from crmsync.connectors.tryton import TrytonConnector

            out[name] = TrytonConnector(name, sys_cfg)
        else:  # pragma: no cover - the config model admits only known connectors
            raise ValueError(f"unknown connector {sys_cfg.connector!r}")
    return out
