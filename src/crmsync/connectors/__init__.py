"""Connectors: how crmsync reaches systems."""

from __future__ import annotations

from crmsync.config.models import Config
from crmsync.connectors.base import Capabilities, ChangePage, Connector, Cursor, WriteResult

__all__ = [
    "Capabilities",
    "ChangePage",
    "Connector",
    "Cursor",
    "WriteResult",
    "build_connectors",
]


def build_connectors(config: Config) -> dict[str, Connector]:
    """One connector per configured system (connections open lazily)."""
    from crmsync.connectors.sql import SqlConnector

    out: dict[str, Connector] = {}
    for name, sys_cfg in config.systems.items():
        if sys_cfg.connector == "sql":
            out[name] = SqlConnector(name, sys_cfg.url, sys_cfg.objects)
        else:  # pragma: no cover - the config model admits only known connectors
            raise ValueError(f"unknown connector {sys_cfg.connector!r}")
    return out
