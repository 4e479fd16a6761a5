"""SQL connector: one database (SQLite, PostgreSQL, MariaDB/MySQL) via SQLAlchemy 2 Core.

See ``connector.py`` for how the parts fit together.
"""

from __future__ import annotations

from crmsync.connectors.sql.connector import SqlConnector

__all__ = ["SqlConnector"]
