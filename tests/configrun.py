"""A config given as text, checked or run against its live systems (shared by tests)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from crmsync.config.loader import load_config_text
from crmsync.connectors import build_connectors
from crmsync.engine.check import check_config
from crmsync.engine.runner import Engine
from crmsync.state.store import StateStore


def check_text(text: str, name: str = "c.yaml") -> list[tuple[str, str]]:
    """What `crmsync check` reports for ``text`` (locations as ``name:line key``)."""
    config, smap = load_config_text(text, name)
    state = StateStore(config.state, readonly=True)
    conns = build_connectors(config, state)
    try:
        return check_config(config, conns, name, smap.locate)
    finally:
        for c in conns.values():
            c.close()
        state.close()


@contextmanager
def engine_of(text: str, name: str = "c.yaml") -> Iterator[Engine]:
    """An engine for ``text`` with its state migrated; closes everything afterwards."""
    config, _ = load_config_text(text, name)
    state = StateStore(config.state)
    state.migrate()
    conns = build_connectors(config, state)
    try:
        yield Engine(config, state, conns)
    finally:
        for c in conns.values():
            c.close()
        state.close()
