"""Tryton connector: a Tryton server (ERP/CRM) driven only through its JSON-RPC API."""

from __future__ import annotations

from crmsync.connectors.tryton.connector import TrytonConnector
from crmsync.connectors.tryton.rpc import TrytonError, TrytonRPC, dumps, loads

__all__ = ["TrytonConnector", "TrytonError", "TrytonRPC", "dumps", "loads"]
