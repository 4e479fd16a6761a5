"""The connector packages' facades export what the rest of crmsync imports from them."""

from __future__ import annotations

import importlib

import pytest

FACADES = {
    "crmsync.connectors.sql": {"SqlConnector"},
    "crmsync.connectors.tryton": {"TrytonConnector", "TrytonError", "TrytonRPC", "dumps", "loads"},
}


@pytest.mark.parametrize("name", sorted(FACADES))
def test_facade_exports(name: str) -> None:
    module = importlib.import_module(name)
    assert set(module.__all__) == FACADES[name]
    for export in module.__all__:
        assert getattr(module, export) is not None


def test_connectors_implement_the_whole_interface() -> None:
    from crmsync.connectors.sql import SqlConnector
    from crmsync.connectors.tryton import TrytonConnector

    assert not SqlConnector.__abstractmethods__
    assert not TrytonConnector.__abstractmethods__
